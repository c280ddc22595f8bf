//! What a new user trips over: `rill up` side by side and failing, errors
//! that suggest the right name, readers that go away, exact messages.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::check;
use crate::support::{Flow, Processes, free_port, machines, rill, rill_json, wait_status};

/// A timer feeding a node that prints a line per tick: output that never ends.
const CHATTY: &str =
    "nodes:\n  - id: talker\n    path: {node}\n    args: [print]\n    inputs: { tick: rill/timer/millis/10 }\n";

/// `rill` with its state and data directories in `home` (nothing shared
/// with the user's own `rill up`).
fn rill_in(home: &Path) -> Command {
    let mut cmd = rill();
    cmd.env("RILL_STATE_DIR", home.join("state"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"));
    cmd
}

/// Pids of `rill` processes whose command line names `port`.
fn rill_processes_on(port: u16) -> Vec<u32> {
    let exe = env!("CARGO_BIN_EXE_rill");
    let port = port.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first() == Some(&exe.as_bytes()) && args.contains(&port.as_bytes()) && crate::support::alive(*pid)
        })
        .collect()
}

/// `rill destroy` on drop, so a failed assertion leaves nothing running.
struct Up<'a> {
    home: &'a Path,
    port: u16,
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        let _ = rill_in(self.home).args(["destroy", "--port", &self.port.to_string()]).output();
    }
}

/// Runs `cmd` to its end (killed after 60 s, failing the test).
fn output(cmd: Command) -> (Option<i32>, String, String, Duration) {
    let done = crate::support::Running::start(cmd).wait(Duration::from_secs(60));
    (done.code, done.stdout, done.stderr, done.elapsed)
}

#[test]
fn two_rill_up_on_different_ports_run_side_by_side() {
    let home = tempfile::tempdir().expect("tempdir");
    let (first, second) = (free_port(), free_port());
    let mut ups = Vec::new();
    for port in [first, second] {
        ups.push(Up { home: home.path(), port });
        let mut cmd = rill_in(home.path());
        cmd.args(["up", "--json", "--port", &port.to_string()]);
        let (code, stdout, stderr, _) = output(cmd);
        assert_eq!(code, Some(0), "rill up --port {port}: {stdout}{stderr}");
        let value: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
        assert_eq!(value["status"], "up", "{stdout}");
    }
    for port in [first, second] {
        let mut cmd = rill_in(home.path());
        cmd.args(["status", "--coordinator-port", &port.to_string()]);
        let (code, stdout, stderr, _) = output(cmd);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stdout.contains("1 daemon connected"), "{stdout}");
    }
    let stores: Vec<_> = std::fs::read_dir(home.path().join("data/rill"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(stores.contains(&format!("coordinator-{first}.redb")), "{stores:?}");
    assert!(stores.contains(&format!("coordinator-{second}.redb")), "{stores:?}");
    drop(ups);
    for port in [first, second] {
        assert_eq!(rill_processes_on(port), Vec::<u32>::new(), "destroy --port {port} left processes");
    }
}

#[test]
fn a_failing_up_says_why_at_once_and_leaves_nothing_running() {
    let home = tempfile::tempdir().expect("tempdir");
    // The port is taken by something that is not a coordinator.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port();
    let _up = Up { home: home.path(), port };
    let mut cmd = rill_in(home.path());
    cmd.args(["up", "--port", &port.to_string()]);
    let (code, stdout, stderr, elapsed) = output(cmd);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("the coordinator exited at once"), "{stderr}");
    assert_eq!(stderr.matches("Address already in use").count(), 1, "the cause, once: {stderr}");
    assert!(!stderr.contains("listening on"), "it never listened: {stderr}");
    // The old `up` waited its full 20 s before giving up.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert_eq!(rill_processes_on(port), Vec::<u32>::new(), "nothing left running");
    assert!(!home.path().join(format!("state/up-{port}.pids")).exists(), "no pid file of a failed up");

    // The store is in use by another coordinator.
    let store = format!("redb:{}", home.path().join("shared.redb").display());
    let mut procs = Processes::new();
    let busy_port = free_port();
    procs.start("coordinator", &["coordinator", "--port", &busy_port.to_string(), "--store", &store]);
    wait_status(&procs, busy_port, "first coordinator up", Duration::from_secs(15), |_| true);
    let port = free_port();
    let _up = Up { home: home.path(), port };
    let mut cmd = rill_in(home.path());
    cmd.args(["up", "--port", &port.to_string(), "--store", &store]);
    let (code, stdout, stderr, _) = output(cmd);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("is in use by another coordinator"), "{stderr}");
    assert!(!stderr.contains("Redb("), "no debug formatting: {stderr}");
    assert_eq!(rill_processes_on(port), Vec::<u32>::new(), "nothing left running");
}

#[test]
fn a_coordinator_that_cannot_listen_says_so_once() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = squatter.local_addr().expect("addr").port().to_string();
    let mut cmd = rill();
    cmd.args(["coordinator", "--port", &port, "--store", "memory"]);
    let (code, _, stderr, _) = output(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("error: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)")
    );
}

/// A coordinator and an unnamed daemon running the chatty dataflow as `app`.
fn chatty_cluster() -> (Processes, u16, Flow) {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    procs.start("daemon", &["daemon", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "daemon registered", Duration::from_secs(15), |v| {
        v["daemons"].as_array().is_some_and(|d| d.len() == 1)
    });
    let flow = Flow::new(CHATTY);
    let file = flow.file.display().to_string();
    let (code, _, stderr) = rill_json(&["start", &file, "--name", "app", "--coordinator-port", &port_text, "--json"]);
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    (procs, port, flow)
}

#[test]
fn logs_of_an_unknown_node_or_dataflow_fail_with_a_suggestion() {
    let (procs, port, _flow) = chatty_cluster();
    let port = port.to_string();
    let mut cmd = rill();
    cmd.args(["logs", "app", "talkr", "--coordinator-port", &port]);
    let (code, stdout, stderr, _) = output(cmd);
    assert_eq!(code, Some(1), "{stdout}{stderr}\n{}", procs.logs());
    assert!(stderr.contains("dataflow `app` has no node `talkr`; did you mean `talker`?"), "{stderr}");
    // --follow does not wait forever for a node that does not exist.
    let mut cmd = rill();
    cmd.args(["logs", "app", "talkr", "--follow", "--coordinator-port", &port]);
    let (code, _, stderr, _) = output(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    let mut cmd = rill();
    cmd.args(["logs", "ap", "--coordinator-port", &port]);
    let (code, _, stderr, _) = output(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no dataflow named or with uuid `ap`; did you mean `app`? (dataflows: app)"), "{stderr}");
}

/// Reads one line of `child`'s stdout, closes the pipe (as `head -1` does)
/// and waits for the exit, at most `limit`. The status and the stderr.
fn read_one_line_then_close(mut child: Child, limit: Duration) -> (ExitStatus, String) {
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut first = String::new();
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let _ = reader.read_line(&mut first);
    assert!(!first.is_empty(), "no first line");
    drop(reader);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {limit:?} after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, stderr.join().unwrap_or_default())
}

#[test]
fn logs_into_a_reader_that_goes_away_end_quietly() {
    let (procs, port, _flow) = chatty_cluster();
    let child = rill()
        .args(["logs", "app", "--follow", "--coordinator-port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rill logs");
    let (status, stderr) = read_one_line_then_close(child, Duration::from_secs(20));
    assert!(!stderr.contains("panicked"), "{stderr}\n{}", procs.logs());
    assert!(
        status.code() == Some(0) || status.signal() == Some(libc::SIGPIPE),
        "exit 0 or SIGPIPE, got {status:?}: {stderr}"
    );
}

#[test]
fn run_into_a_reader_that_goes_away_stops_the_dataflow() {
    let flow = Flow::new(CHATTY);
    let child = rill()
        .arg("run")
        .arg(&flow.file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rill run");
    let (status, stderr) = read_one_line_then_close(child, Duration::from_secs(20));
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("stdout was closed; stopping the dataflow"), "{stderr}");
    assert!(stderr.contains("rill: dataflow stopped (1 node)"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_misspelled_machine_gets_a_suggestion_and_no_daemon_says_so() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    let flow = Flow::new("nodes:\n  - id: cam\n    path: {node}\n    deploy: { machine: robt }\n");
    let file = flow.file.display().to_string();
    wait_status(&procs, port, "coordinator up", Duration::from_secs(15), |_| true);
    let (code, _, stderr) = rill_json(&["start", &file, "--dry-run", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("node `cam`: no daemon is connected"), "{stderr}");

    procs.start("daemon-robot", &["daemon", "--machine-id", "robot", "--coordinator-port", &port_text]);
    procs.start("daemon-gpu", &["daemon", "--machine-id", "gpu", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "daemons registered", Duration::from_secs(15), |v| machines(v).len() == 2);
    let (code, _, stderr) = rill_json(&["start", &file, "--dry-run", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "node `cam`: no matching daemon for machine id \"robt\"; did you mean `robot`? (connected machine ids: gpu, robot)"
        ),
        "{stderr}"
    );
}

#[test]
fn status_columns_line_up_with_long_labels() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    let labels = "gpu=nvidia-jetson-orin-agx-64gb,zone=warehouse-north-dock-7,arch=aarch64";
    procs.start(
        "daemon",
        &["daemon", "--machine-id", "a-rather-long-machine-id", "--labels", labels, "--coordinator-port", &port_text],
    );
    wait_status(&procs, port, "daemon registered", Duration::from_secs(15), |v| machines(v).len() == 1);
    let mut cmd = rill();
    cmd.args(["status", "--coordinator-port", &port_text]);
    let (code, stdout, stderr, _) = output(cmd);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines.iter().position(|l| l.starts_with("DAEMON")).expect("a header line");
    let column = |line: &str, word: &str| line.find(word);
    let heartbeat_at = column(lines[header], "LAST HEARTBEAT").expect("heartbeat column");
    let row = lines[header + 1];
    assert!(row.contains("a-rather-long-machine-id"), "{stdout}");
    let value_at = row.rfind(' ').map(|i| i + 1);
    assert_eq!(value_at, Some(heartbeat_at), "the heartbeat is under its header:\n{stdout}");
    assert_eq!(column(row, "{\"arch\""), column(lines[header], "LABELS"), "labels under LABELS:\n{stdout}");
}

#[test]
fn second_ctrl_c_reports_only_the_signal_that_was_sent() {
    let flow = Flow::new(
        "nodes:\n  - id: stubborn\n    path: /bin/sh\n    args: ['-c', \"trap '' TERM INT; echo ready; while true; do sleep 0.05; done\"]\n",
    );
    let mut running = flow.spawn(&["--grace", "30"]);
    running.wait_for("node running", Duration::from_secs(20), |out| out.contains("[stubborn] ready"));
    running.signal(libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running.stderr().contains("stopping") {
        assert!(Instant::now() < deadline, "no stop began\n{}", running.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(20));
    check!(run, run.stderr.contains("node `stubborn`: killed with SIGKILL (the stop was forced)"), "forced kill");
    check!(run, !run.stderr.contains("SIGTERM"), "no SIGTERM was sent, none is mentioned");
    check!(run, run.code == Some(1), "exit 1");
}

#[test]
fn check_warns_about_a_missing_program_and_counts_in_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dataflow.yml");
    std::fs::write(&file, "nodes:\n  - id: cam\n    build: cargo build -p cam\n    path: ./target/debug/cam\n")
        .expect("write");
    let (code, stdout, stderr, _) = output({
        let mut cmd = rill();
        cmd.arg("check").arg(&file);
        cmd
    });
    assert_eq!(code, Some(0), "a warning does not fail the check: {stderr}");
    assert!(stdout.contains("(1 node)"), "{stdout}");
    let name = file.display();
    assert!(stderr.contains(&format!("{name}:4:11: warning: node `cam`: executable")), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("its build step `cargo build -p cam`"), "{stderr}");
    let (_, stdout, _, _) = output({
        let mut cmd = rill();
        cmd.args(["check", "--json"]).arg(&file);
        cmd
    });
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    assert_eq!(value["warnings"][0]["line"], 4, "{stdout}");

    std::fs::write(&file, "nodes:\n  - id: cam\n    path: /bin/true\n    colour: red\n").expect("write");
    let (code, _, stderr, _) = output({
        let mut cmd = rill();
        cmd.arg("check").arg(&file);
        cmd
    });
    assert_eq!(code, Some(1));
    assert!(stderr.ends_with("1 error found\n"), "{stderr:?}");
}

#[test]
fn destroy_leaves_alone_a_pid_that_is_no_longer_rill() {
    let home = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A stale pid file whose numbers now belong to something else.
    let mut bystander = Command::new("sleep").arg("60").spawn().expect("spawn sleep");
    std::fs::create_dir_all(home.path().join("state")).expect("state dir");
    std::fs::write(home.path().join(format!("state/up-{port}.pids")), format!("{}\n", bystander.id())).expect("pids");
    let mut cmd = rill_in(home.path());
    cmd.args(["destroy", "--port", &port.to_string()]);
    let (code, stdout, stderr, _) = output(cmd);
    let still_there = matches!(bystander.try_wait(), Ok(None));
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(still_there, "destroy signalled a process that is not rill");
    assert!(stdout.contains("nothing was running for port"), "{stdout}");
}

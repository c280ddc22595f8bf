//! Faults a fleet meets: a daemon stopped by systemd, a coordinator that
//! goes silent, a daemon reconnecting before its old connection is dropped.
//! Real processes on loopback; each test prints every log when it fails.

use std::time::{Duration, Instant};

use crate::cgroup::Group;
use crate::relay::Relay;
use crate::support::{Flow, Processes, free_port, machines, rill_json, spawned_pids, wait_status};

/// One node on machine `a` that prints its pid, waits for Stop and says so.
const WAITER: &str = "nodes:\n  - id: w\n    path: {node}\n    args: [wait-stop]\n    deploy: { machine: a }\n";

/// A coordinator and daemon `a` running [`WAITER`] as `app`.
fn waiter_on_a(coordinator_args: &[&str]) -> (Processes, u16, Flow) {
    let (procs, port, _, flow) = app_on_a(coordinator_args, WAITER, "[app/w] waiting");
    (procs, port, flow)
}

/// A coordinator (`--store memory` unless `coordinator_args` name one;
/// `{store}` becomes a redb file of the test) and daemon `a`, running `yaml`
/// as `app` until daemon a's log shows `ready`. Also returns the
/// coordinator's arguments, to start it again.
pub(crate) fn app_on_a(coordinator_args: &[&str], yaml: &str, ready: &str) -> (Processes, u16, Vec<String>, Flow) {
    let (procs, port, coordinator, flow, _) = app_on_a_through(coordinator_args, yaml, ready, None);
    (procs, port, coordinator, flow)
}

/// [`app_on_a`], with daemon a connected through a [`Relay`] when `relayed`
/// is given, with these environment variables set.
fn app_on_a_through(
    coordinator_args: &[&str],
    yaml: &str,
    ready: &str,
    relayed: Option<&[(&str, &str)]>,
) -> (Processes, u16, Vec<String>, Flow, Option<Relay>) {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    let store = procs.dir.path().join("store.redb").display().to_string();
    let mut coordinator = vec!["coordinator".to_owned(), "--port".into(), port_text.clone()];
    if !coordinator_args.contains(&"--store") {
        coordinator.extend(["--store".into(), "memory".into()]);
    }
    coordinator.extend(coordinator_args.iter().map(|a| a.replace("{store}", &store)));
    procs.start("coordinator", &coordinator.iter().map(String::as_str).collect::<Vec<_>>());
    let relay = relayed.map(|_| Relay::to(port));
    let daemon_port = relay.as_ref().map_or(port, |r| r.port).to_string();
    let mut daemon = crate::support::rill();
    daemon.args(["daemon", "--machine-id", "a", "--coordinator-port", &daemon_port]);
    if relay.is_some() {
        // The relay's port is not the coordinator's: the daemon joins with a
        // token, as a daemon on another machine would.
        wait_status(&procs, port, "the coordinator answers", Duration::from_secs(15), |_| true);
        let token = crate::support::join_token(&procs, port, "a", &["--ttl", "none"]);
        let cache = procs.dir.path().join("cache-a");
        daemon.arg("--join-token-file").arg(token).arg("--cache-dir").arg(cache);
    }
    daemon.envs(relayed.into_iter().flatten().copied());
    procs.start_command("daemon-a", daemon);
    wait_status(&procs, port, "daemon a registered", Duration::from_secs(15), |v| machines(v) == ["a"]);
    let flow = Flow::new(yaml);
    let (code, _, stderr) =
        rill_json(&["start", &flow.file.display().to_string(), "--name", "app", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    procs.wait_log("daemon-a", "the node is ready", Duration::from_secs(20), |l| l.contains(ready));
    (procs, port, coordinator, flow, relay)
}

/// `rill list --json`'s first dataflow once `pred` holds (at most 20 s).
pub(crate) fn dataflow_when(
    procs: &Processes,
    port: u16,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port.to_string()]);
        let first = &list["dataflows"][0];
        if pred(first) {
            return first.clone();
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s; last {list}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pids the waiter printed, in order.
fn waiter_pids(log: &str) -> Vec<u32> {
    log.lines().filter_map(|l| l.strip_prefix("[app/w] waiting pid=")?.trim().parse().ok()).collect()
}

#[test]
fn daemon_sigterm_stops_its_nodes_then_they_run_again_when_it_returns() {
    let (mut procs, port, _flow) = waiter_on_a(&[]);
    procs.signal("daemon-a", libc::SIGTERM);
    assert_eq!(procs.wait_exit("daemon-a", Duration::from_secs(20)), Some(0), "exit 0\n{}", procs.logs());
    assert!(procs.log("daemon-a").contains("[app/w] got stop"), "the node saw Stop\n{}", procs.logs());
    let dataflow = dataflow_when(&procs, port, "degraded", |d| d["status"] == "degraded");
    assert_eq!(
        dataflow["nodes"]["w"],
        serde_json::json!({"state": "lost", "reason": "daemon shut down"}),
        "{dataflow}"
    );

    procs.start("daemon-a2", &["daemon", "--machine-id", "a", "--coordinator-port", &port.to_string()]);
    procs.wait_log("daemon-a2", "the node runs again", Duration::from_secs(20), |l| l.contains("[app/w] waiting"));
    let dataflow = dataflow_when(&procs, port, "running again", |d| d["status"] == "running");
    assert_eq!(dataflow["nodes"]["w"]["state"], "running", "{dataflow}");
}

#[test]
fn lost_nodes_fail_the_dataflow_after_the_lost_timeout() {
    let (mut procs, port, _flow) = waiter_on_a(&["--lost-timeout", "1"]);
    procs.signal("daemon-a", libc::SIGTERM);
    procs.wait_exit("daemon-a", Duration::from_secs(20));
    let dataflow = dataflow_when(&procs, port, "failed", |d| d["status"] == "failed");
    let reason = dataflow["reason"].as_str().unwrap_or("");
    assert!(reason.contains("node(s) w lost: machine(s) a did not come back within 1 s"), "{dataflow}");
    assert_eq!(dataflow["nodes"]["w"]["state"], "failed", "{dataflow}");
}

#[test]
fn a_coordinator_silent_for_8_s_finds_the_same_daemon_and_nodes_after() {
    let (procs, port, _flow) = waiter_on_a(&[]);
    let pids = waiter_pids(&procs.log("daemon-a"));
    let daemon_id = |v: &serde_json::Value| v["daemons"][0]["daemon_id"].as_str().unwrap_or("").to_owned();
    let before = wait_status(&procs, port, "status", Duration::from_secs(5), |_| true);
    procs.signal("coordinator", libc::SIGSTOP);
    // The daemon notices the silence (3 heartbeats) and starts reconnecting.
    procs.wait_log("daemon-a", "silence noticed", Duration::from_secs(8), |l| l.contains("has been silent"));
    std::thread::sleep(Duration::from_secs(8).saturating_sub(Duration::from_secs(3)));
    procs.signal("coordinator", libc::SIGCONT);
    let after = wait_status(&procs, port, "daemon a back", Duration::from_secs(20), |v| machines(v) == ["a"]);
    assert_eq!(machines(&after), ["a"], "the same machine\n{}", procs.logs());
    let dataflow =
        dataflow_when(&procs, port, "running", |d| d["status"] == "running" && d["nodes"]["w"]["state"] == "running");
    assert_eq!(waiter_pids(&procs.log("daemon-a")), pids, "the node was not restarted\n{}", procs.logs());
    assert_eq!(dataflow["nodes"]["w"]["pid"].as_u64(), pids.first().map(|p| u64::from(*p)), "{dataflow}");
    assert!(crate::support::alive(pids[0]), "the node kept running");
    let _ = (before, daemon_id);
}

#[test]
fn a_full_disk_fails_start_and_stop_with_a_clear_error_and_the_coordinator_keeps_serving() {
    // A real full disk: the store on a 512 KiB tmpfs in the coordinator's own
    // mount namespace. Mounting needs root, which CI has.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    let disk = procs.dir.path().join("disk");
    std::fs::create_dir_all(&disk).expect("mount point");
    let script = format!(
        "mount -t tmpfs -o size=512k tmpfs {disk} && exec {rill} coordinator --port {port} --store redb:{disk}/store.redb",
        disk = disk.display(),
        rill = env!("CARGO_BIN_EXE_rill"),
    );
    let mut coordinator = std::process::Command::new("unshare");
    coordinator.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    coordinator.env("XDG_DATA_HOME", crate::support::xdg_home().join("data"));
    procs.start_command("coordinator", coordinator);
    procs.start("daemon-a", &["daemon", "--machine-id", "a", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "daemon a registered", Duration::from_secs(15), |v| machines(v) == ["a"]);
    // Each record carries its descriptor: 100 KB of environment fills the disk in a few starts.
    let big = "x".repeat(100_000);
    let flow = Flow::new(&format!(
        "nodes:\n  - id: w\n    path: {{node}}\n    args: [wait-stop]\n    env: {{ BIG: {big} }}\n    deploy: {{ machine: a }}\n"
    ));
    let file = flow.file.display().to_string();
    let mut refused = None;
    for n in 0..20 {
        let name = format!("app{n}");
        let (code, _, stderr) = rill_json(&["start", &file, "--name", &name, "--coordinator-port", &port_text]);
        if code != Some(0) {
            refused = Some((name, stderr));
            break;
        }
    }
    let Some((refused, stderr)) = refused else { panic!("the disk never filled\n{}", procs.logs()) };
    assert!(stderr.contains("the dataflow was not started: its record cannot be stored"), "{stderr}\n{}", procs.logs());
    let (code, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(0), "the coordinator keeps serving\n{}", procs.logs());
    let names: Vec<&str> =
        list["dataflows"].as_array().into_iter().flatten().filter_map(|d| d["name"].as_str()).collect();
    assert!(!names.contains(&refused.as_str()), "a refused start leaves no record: {names:?}");
    assert!(!procs.log("daemon-a").contains(&format!("starting w of dataflow {refused}")), "nothing ran");
    let (code, _, stderr) = rill_json(&["stop", "app0", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is stopping, but that cannot be stored"), "{stderr}");
    procs.wait_log("daemon-a", "app0 stopped anyway", Duration::from_secs(20), |l| l.contains("[app0/w] got stop"));
}

#[test]
fn a_node_printing_a_huge_line_gets_it_cut_at_64_kib() {
    let flow = Flow::new(
        "nodes:\n  - id: loud\n    path: /bin/sh\n    args: ['-c', \"head -c 1000000 /dev/zero | tr '\\\\0' x; echo; echo done\"]\n",
    );
    let run = flow.run(&[], Duration::from_secs(30));
    let lines = run.node_lines("loud");
    crate::check!(run, lines.last().map(String::as_str) == Some("done"), "the next line is intact");
    let long = lines.first().cloned().unwrap_or_default();
    crate::check!(run, long.ends_with("[line cut at 64 KiB]"), "the long line is marked");
    crate::check!(run, long.len() < 64 * 1024 + 64, "and cut: {} bytes", long.len());
}

#[test]
fn ended_dataflows_beyond_keep_ended_are_pruned_from_list_logs_and_store() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    let store = format!("redb:{}", procs.dir.path().join("store.redb").display());
    let coordinator = ["coordinator", "--port", &port_text, "--store", &store, "--keep-ended", "2"];
    procs.start("coordinator", &coordinator);
    procs.start("daemon", &["daemon", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "daemon registered", Duration::from_secs(15), |v| {
        v["daemons"].as_array().is_some_and(|d| d.len() == 1)
    });
    let flow = Flow::new("nodes:\n  - id: once\n    path: /bin/echo\n    args: [hello]\n");
    let file = flow.file.display().to_string();
    let list = || rill_json(&["list", "--json", "--coordinator-port", &port_text]).1;
    let names = |_: &Processes| -> Vec<String> {
        let list = list();
        list["dataflows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect()
    };
    for n in 0..4 {
        let name = format!("once{n}");
        let (code, _, stderr) = rill_json(&["start", &file, "--name", &name, "--coordinator-port", &port_text]);
        assert_eq!(code, Some(0), "{stderr}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let finished = |list: &serde_json::Value| {
            list["dataflows"].as_array().into_iter().flatten().any(|d| d["name"] == name && d["status"] == "finished")
        };
        while !finished(&list()) {
            assert!(Instant::now() < deadline, "{name} did not finish\n{}", procs.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while names(&procs).len() > 2 {
        assert!(Instant::now() < deadline, "never pruned: {:?}", names(&procs));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names(&procs), ["once2", "once3"]);
    let (code, _, stderr) = rill_json(&["logs", "once0", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(1), "the pruned dataflow's logs are gone: {stderr}");
    // The store forgot them too.
    procs.kill("coordinator");
    procs.start("coordinator-2", &coordinator);
    wait_status(&procs, port, "coordinator back", Duration::from_secs(15), |_| true);
    assert_eq!(names(&procs), ["once2", "once3"], "{}", procs.logs());
}

#[test]
fn a_second_stop_is_not_a_kill() {
    // Ignores Stop (it never reads it), ends cleanly on SIGTERM.
    let yaml = "nodes:\n  - id: w\n    path: /bin/sh\n    args: ['-c', \"trap 'echo term; exit 0' TERM; echo ready; while :; do sleep 0.05; done\"]\n    deploy: { machine: a }\n";
    let (procs, port, _, _flow) = app_on_a(&[], yaml, "[app/w] ready");
    let port_text = port.to_string();
    for _ in 0..2 {
        let (code, _, stderr) = rill_json(&["stop", "app", "--coordinator-port", &port_text]);
        assert_eq!(code, Some(0), "{stderr}");
    }
    let dataflow = dataflow_when(&procs, port, "stopped", |d| d["status"] == "stopped");
    assert!(procs.log("daemon-a").contains("[app/w] term"), "SIGTERM after the grace, not SIGKILL\n{}", procs.logs());
    assert_eq!(dataflow["reason"], serde_json::Value::Null, "{dataflow}");
}

#[test]
fn a_share_that_ended_while_the_coordinator_was_away_is_not_started_again() {
    let yaml = "nodes:\n  - id: w\n    path: /bin/sh\n    args: ['-c', 'echo started; sleep 1; echo done']\n    deploy: { machine: a }\n";
    let (mut procs, port, coordinator, _flow) = app_on_a(&["--store", "redb:{store}"], yaml, "[app/w] started");
    let coordinator: Vec<&str> = coordinator.iter().map(String::as_str).collect();
    procs.kill("coordinator");
    procs.wait_log("daemon-a", "share ended", Duration::from_secs(20), |l| l.contains("dataflow app ended here"));
    procs.start("coordinator-2", &coordinator);
    let dataflow = dataflow_when(&procs, port, "finished", |d| d["status"] == "finished");
    assert_eq!(dataflow["nodes"]["w"]["state"], "finished", "{dataflow}");
    assert_eq!(procs.log("daemon-a").matches("[app/w] started").count(), 1, "started once\n{}", procs.logs());
}

#[test]
fn a_daemon_reconnecting_while_its_old_connection_is_half_open_takes_its_place() {
    // The daemon's heartbeat is twice as fast as the coordinator's, so it
    // gives up a dead link (after 1.5 s) and registers again well before
    // the coordinator notices (after 3 s): the new registration finds the
    // old connection still in place.
    let (procs, port, _, _flow, relay) =
        app_on_a_through(&[], WAITER, "[app/w] waiting", Some(&[("RILL_HEARTBEAT_MS", "500")]));
    let relay = relay.expect("relayed");
    let pids = waiter_pids(&procs.log("daemon-a"));
    relay.cut();
    procs.wait_log("daemon-a", "a new registration", Duration::from_secs(20), |l| {
        l.matches("registered with").count() == 2
    });
    let dataflow =
        dataflow_when(&procs, port, "running", |d| d["status"] == "running" && d["nodes"]["w"]["state"] == "running");
    assert!(crate::support::alive(procs.pid("daemon-a")), "the daemon lives\n{}", procs.logs());
    assert_eq!(machines(&wait_status(&procs, port, "status", Duration::from_secs(5), |_| true)), ["a"]);
    assert_eq!(waiter_pids(&procs.log("daemon-a")), pids, "the node was not restarted\n{}", procs.logs());
    assert_eq!(dataflow["nodes"]["w"]["pid"].as_u64(), pids.first().map(|p| u64::from(*p)), "{dataflow}");
}

#[test]
fn a_share_that_ended_while_its_daemon_was_cut_off_is_not_started_again() {
    let (procs, port, _, _flow, relay) = app_on_a_through(&[], WAITER, "[app/w] waiting", Some(&[]));
    let relay = relay.expect("relayed");
    let pid = waiter_pids(&procs.log("daemon-a"))[0];
    // The node ends just after the link died, before the daemon can know:
    // its report is written into a connection that will never deliver it.
    relay.partition();
    // SAFETY: kill(2) on the node this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    procs.wait_log("daemon-a", "the share ended", Duration::from_secs(20), |l| l.contains("dataflow app failed here"));
    procs.wait_log("daemon-a", "the daemon cut off", Duration::from_secs(20), |l| l.contains("has been silent"));
    dataflow_when(&procs, port, "the coordinator sees the node lost", |d| d["nodes"]["w"]["state"] == "lost");
    relay.heal();
    let dataflow = dataflow_when(&procs, port, "failed", |d| d["status"] == "failed");
    assert_eq!(dataflow["nodes"]["w"]["state"], "failed", "{dataflow}");
    assert_eq!(waiter_pids(&procs.log("daemon-a")), [pid], "started once\n{}", procs.logs());
}

#[test]
fn a_node_that_survives_sigkill_is_abandoned_and_the_run_ends() {
    let Some(freezer) = Group::new("freezer") else { return };
    let flow = Flow::new("nodes:\n  - id: w\n    path: {node}\n    args: [wait-stop]\n");
    let mut running = flow.spawn(&["--json", "--grace", "1"]);
    running.wait_for("the node started", Duration::from_secs(20), |out| !spawned_pids(out).is_empty());
    let pid = spawned_pids(&running.stdout())[0].1;
    // A frozen process takes no signal, SIGKILL included, until thawed.
    freezer.add(pid);
    freezer.freeze();
    running.signal(libc::SIGINT);
    let finished = running.wait(Duration::from_secs(30));
    crate::check!(finished, finished.stdout.contains(&format!("pid {pid} abandoned")), "the node is abandoned");
    crate::check!(finished, finished.code != Some(0), "and that is a failure");
    drop(freezer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::support::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_rill_cannot_watch_is_killed_and_reported_instead_of_hanging_the_run() {
    let Some(pids) = Group::new("pids") else { return };
    let flow = Flow::new(
        "nodes:\n  - id: once\n    path: /bin/sh\n    args: ['-c', 'exit 3']\n    restart_policy: on-failure\n    max_restarts: 1\n    restart_delay: 3s\n",
    );
    let mut running = flow.spawn(&["--json"]);
    running.wait_for("the first exit", Duration::from_secs(20), |out| out.contains("\"event\":\"restarting\""));
    // Once the first run's threads are gone, allow one more task: the
    // restarted node's process, and no thread to wait for it.
    let threads = || std::fs::read_dir(format!("/proc/{}/task", running.child.id())).map_or(0, Iterator::count);
    let mut last = (threads(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
        let now = threads();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    pids.add(running.child.id());
    pids.write("pids.max", &(last.0 + 1).to_string());
    let finished = running.wait(Duration::from_secs(30));
    crate::check!(finished, finished.stderr.contains("rill: cannot watch node once"), "the reason is printed");
    crate::check!(finished, finished.code != Some(0), "the run failed");
}

/// RSS (KiB), open fds and named memory maps (files and memfds: what a
/// leak of regions or libraries would add; anonymous malloc heaps come and
/// go between arenas and are covered by RSS) of a process.
fn footprint(pid: u32) -> (u64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let maps = named_maps(pid).len();
    (rss, fds, maps)
}

/// The lines of /proc/PID/maps that name a file or memfd.
fn named_maps(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines().filter(|l| l.split_whitespace().nth(5).is_some()).map(str::to_owned).collect()
}

/// The bounded soak of the hardening issue: 50 warm-up start/stop cycles,
/// then 450 more with 400 log lines each (200,000 in all, with the warm-up's
/// 20,000 on top). The coordinator's and the daemon's RSS may grow by at most
/// 10 MiB each, and their fds and maps must return to the warm-up counts.
/// Takes a few minutes: `cargo test -p rill-cli --test it soak -- --ignored --nocapture`.
#[test]
#[ignore = "a soak of several minutes; run it on purpose"]
fn soak_500_start_stop_cycles_and_200k_log_lines_keep_memory_and_fds_flat() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    // Fewer kept records than warm-up cycles: by the end of the warm-up the
    // coordinator holds as much as it ever will.
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory", "--keep-ended", "20"]);
    procs.start("daemon", &["daemon", "--quiet", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "daemon registered", Duration::from_secs(15), |v| {
        v["daemons"].as_array().is_some_and(|d| d.len() == 1)
    });
    let flow = Flow::new("nodes:\n  - id: w\n    path: {node}\n    args: [chatty, '400']\n");
    let file = flow.file.display().to_string();
    let cycle = |n: usize| {
        let name = format!("soak{n}");
        let (code, _, stderr) = rill_json(&["start", &file, "--name", &name, "--coordinator-port", &port_text]);
        assert_eq!(code, Some(0), "cycle {n}: {stderr}\n{}", procs.logs());
        let running = |d: &serde_json::Value| d["nodes"]["w"]["state"] == "running";
        wait_dataflow(&procs, port, &name, "running", running);
        let (code, _, stderr) = rill_json(&["stop", &name, "--coordinator-port", &port_text]);
        assert_eq!(code, Some(0), "cycle {n}: {stderr}");
        wait_dataflow(&procs, port, &name, "stopped", |d| d["status"] == "stopped");
    };
    let pids = [procs.pid("coordinator"), procs.pid("daemon")];
    for n in 0..50 {
        cycle(n);
    }
    let warm = pids.map(footprint);
    let maps_warm = pids.map(named_maps);
    let started = Instant::now();
    for n in 50..500 {
        cycle(n);
    }
    let end = pids.map(footprint);
    for (pid, before) in pids.iter().zip(&maps_warm) {
        let new: Vec<String> = named_maps(*pid).into_iter().filter(|l| !before.contains(l)).collect();
        if !new.is_empty() {
            println!("soak: named maps of {pid} that appeared after the warm-up: {new:#?}");
        }
    }
    for ((name, (rss0, fds0, maps0)), (rss1, fds1, maps1)) in ["coordinator", "daemon"].iter().zip(warm).zip(end) {
        println!(
            "soak {name}: RSS {rss0} -> {rss1} KiB ({:+} KiB), fds {fds0} -> {fds1}, named maps {maps0} -> {maps1}",
            rss1 as i64 - rss0 as i64
        );
        assert!(rss1 <= rss0 + 10 * 1024, "{name} grew by more than 10 MiB");
        assert!(fds1 <= fds0, "{name} kept fds");
        assert!(maps1 <= maps0, "{name} kept memory maps");
    }
    println!("soak: 450 cycles in {:.0?}", started.elapsed());
}

/// Waits (at most 20 s) until dataflow `name` satisfies `pred`.
fn wait_dataflow(procs: &Processes, port: u16, name: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port.to_string()]);
        let found = list["dataflows"].as_array().into_iter().flatten().rev().find(|d| d["name"] == name).cloned();
        if found.as_ref().is_some_and(&pred) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} not {what}: {found:?}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_producer_that_lies_about_shared_memory_cannot_kill_its_receiver() {
    let flow = Flow::new(
        "nodes:\n  - id: liar\n    path: {node}\n    args: [bad-region]\n    outputs: [out]\n  - id: sink\n    path: {node}\n    args: [print, '1']\n    inputs: { in: liar/out }\n",
    );
    let run = flow.run(&[], Duration::from_secs(30));
    crate::check!(run, run.stdout.contains("[liar] lied"), "the liar ran");
    crate::check!(run, run.node_lines("sink").iter().any(|l| l.starts_with("input in len=14")), "the honest message");
    crate::check!(run, run.stdout.contains("[sink] done after 1 inputs"), "the receiver lived on");
    crate::check!(run, run.stderr.matches("refusing a message from liar").count() == 2, "both lies refused");
    crate::check!(run, run.stderr.contains("unknown input \"not-an-input\""), "the made-up input dropped");
    crate::check!(run, run.code == Some(0), "no node failed");
}

#[test]
fn a_producer_that_lies_to_the_bridge_cannot_kill_the_daemon() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    procs.start("daemon-a", &["daemon", "--machine-id", "a", "--coordinator-port", &port_text]);
    procs.start("daemon-b", &["daemon", "--machine-id", "b", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "two daemons", Duration::from_secs(15), |v| machines(v) == ["a", "b"]);
    let flow = Flow::new(
        "nodes:\n  - id: liar\n    path: {node}\n    args: [bad-region]\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs: { in: liar/out }\n    deploy: { machine: b }\n",
    );
    let (code, _, stderr) =
        rill_json(&["start", &flow.file.display().to_string(), "--name", "lies", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(0), "{stderr}");
    procs.wait_log("daemon-b", "the honest message", Duration::from_secs(30), |l| {
        l.contains("[lies/sink] input in len=14")
    });
    assert!(procs.log("daemon-a").contains("refusing a shared region from a local producer"), "{}", procs.logs());
    let status = wait_status(&procs, port, "both daemons alive", Duration::from_secs(5), |v| machines(v).len() == 2);
    assert_eq!(machines(&status), ["a", "b"]);
}

#[test]
fn coordinator_sigterm_exits_0_and_its_daemons_come_back_to_the_next_one() {
    let (mut procs, port, coordinator, _flow) = app_on_a(&["--store", "redb:{store}"], WAITER, "[app/w] waiting");
    let coordinator: Vec<&str> = coordinator.iter().map(String::as_str).collect();
    procs.signal("coordinator", libc::SIGTERM);
    assert_eq!(procs.wait_exit("coordinator", Duration::from_secs(10)), Some(0), "exit 0\n{}", procs.logs());
    assert!(procs.log("coordinator").contains("shutting down"), "{}", procs.logs());
    procs.start("coordinator-2", &coordinator);
    let dataflow = dataflow_when(&procs, port, "running again", |d| d["status"] == "running");
    assert_eq!(dataflow["nodes"]["w"]["state"], "running", "{dataflow}");
    assert_eq!(procs.log("daemon-a").matches("[app/w] waiting").count(), 1, "the node kept running");
}

/// A fake coordinator on `listener`: registers the first daemon, sends it
/// `spawn` (JSON), and returns the daemon's report of that dataflow's end.
async fn fake_coordinator(listener: tokio::net::TcpListener, spawn: String) -> serde_json::Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (tcp, _) = listener.accept().await.expect("the daemon connects");
    let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("websocket");
    let _register = ws.next().await;
    let registered = r#"{"type":"registered","daemon_id":"a-1","peers":[]}"#;
    ws.send(Message::Text(registered.into())).await.expect("send");
    ws.send(Message::Text(spawn.into())).await.expect("send");
    loop {
        let Some(Ok(Message::Text(text))) = ws.next().await else { panic!("the daemon went away") };
        let msg: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match msg["type"].as_str() {
            Some("dataflow_finished") => return msg,
            Some("heartbeat") => ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await.expect("send"),
            _ => {}
        }
    }
}

#[test]
fn a_daemon_refuses_an_absurd_spawn_with_the_reasons_and_lives_on() {
    let mut procs = Processes::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    // Plaintext: the fake coordinator speaks plain WebSocket and takes any
    // join token.
    let ca = "0".repeat(64);
    let token = format!("rill1.a.{}.{ca}", "1".repeat(64));
    let mut daemon = crate::support::rill();
    daemon.args(["daemon", "--machine-id", "a", "--coordinator-port", &port, "--insecure-plaintext"]);
    daemon.env("RILL_JOIN_TOKEN", token).arg("--cache-dir").arg(procs.dir.path().join("cache"));
    procs.start_command("daemon", daemon);
    // A NUL in the node id, a zero timer interval, and an id with `*`, as
    // only a buggy or hostile coordinator would send.
    let node = |id: &str, inputs: &str| {
        format!(
            r#"{{"id":"{id}","path":"/bin/true","args":[],"env":{{}},"build":null,"outputs":["out"],"inputs":{{{inputs}}},
            "restart":{{"policy":"never","max_restarts":null,"restart_delay_ms":500}},
            "deploy":{{"machine":null,"labels":{{}},"distribute":"local","working_dir":null}}}}"#
        )
    };
    let nodes = [
        node("a\\u0000b", ""),
        node("t", r#""tick":{"source":{"timer":{"interval_ns":0}},"queue_size":1}"#),
        node("x*", ""),
    ];
    let spawn = format!(
        r#"{{"type":"spawn","uuid":"00000000-0000-4000-8000-000000000001","name":"evil","descriptor":{{"nodes":[{}]}},"base_dir":"/","nodes":["a\u0000b","t","x*"]}}"#,
        nodes.join(",")
    );
    let spawn = spawn.replace('\u{0}', "\\u0000");
    let report = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), fake_coordinator(listener, spawn)).await })
        .unwrap_or_else(|_| panic!("no report within 30 s\n{}", procs.logs()));
    let summary = report["summary"].as_str().unwrap_or("");
    assert_eq!(report["success"], false, "{report}");
    for expected in ["refused by the daemon", "node id \"a\\0b\" is not valid", "zero interval", "node id \"x*\""] {
        assert!(summary.contains(expected), "{expected}: {summary}");
    }
    assert!(crate::support::alive(procs.pid("daemon")), "the daemon lives on\n{}", procs.logs());
}

#[test]
fn a_daemon_flooding_log_lines_cannot_grow_the_coordinator() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    wait_status(&procs, port, "the coordinator answers", Duration::from_secs(15), |_| true);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // A daemon that never runs anything, only talks.
    let mut ws = runtime.block_on(async {
        let mut ws =
            rill_auth::dial::websocket(&crate::support::admin_dial(port), "/api/daemon").await.expect("connect");
        let register = format!(
            r#"{{"type":"register","protocol":{},"version":"0","machine_id":"x","labels":{{}}}}"#,
            rill_proto::coord::COORD_PROTOCOL_VERSION
        );
        ws.send(Message::Text(register.into())).await.expect("register");
        ws
    });
    wait_status(&procs, port, "the fake daemon registered", Duration::from_secs(15), |v| machines(v) == ["x"]);
    let flow = Flow::new("nodes:\n  - id: n\n    path: /bin/true\n    deploy: { machine: x }\n");
    let (code, started, stderr) = rill_json(&[
        "start",
        &flow.file.display().to_string(),
        "--name",
        "app",
        "--json",
        "--coordinator-port",
        &port_text,
    ]);
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    let uuid = started["uuid"].as_str().expect("a uuid").to_owned();
    let (rss_before, _, _) = footprint(procs.pid("coordinator"));

    let line = |uuid: &str, text: &str| {
        Message::Text(
            serde_json::json!({"type": "log", "uuid": uuid, "node": "n", "stream": "stdout", "line": text})
                .to_string()
                .into(),
        )
    };
    runtime.block_on(async {
        // 50,000 lines of dataflows that do not exist (15 MB)...
        let filler = "x".repeat(300);
        for i in 0..50_000u32 {
            ws.feed(line(&format!("00000000-0000-0000-0000-{i:012}"), &filler)).await.expect("send");
        }
        // ...200 lines of 60 KB of one that does (12 MB), one of 200 KB...
        let long = "y".repeat(60_000);
        for _ in 0..200 {
            ws.feed(line(&uuid, &long)).await.expect("send");
        }
        ws.feed(line(&uuid, &"z".repeat(200_000))).await.expect("send");
        ws.feed(line(&uuid, "the end")).await.expect("send");
        ws.flush().await.expect("flush");
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let logs = loop {
        let out =
            crate::support::rill().args(["logs", "app", "--coordinator-port", &port_text]).output().expect("logs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("the end") {
            break text;
        }
        assert!(Instant::now() < deadline, "the last line never arrived\n{}", procs.logs());
        // The coordinator must hear the fake daemon, or it writes it off.
        let _ = runtime.block_on(ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())));
        std::thread::sleep(Duration::from_millis(200));
    };
    let (rss_after, _, _) = footprint(procs.pid("coordinator"));
    let grown_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    eprintln!(
        "coordinator RSS {rss_before} KiB -> {rss_after} KiB (+{grown_mib:.1} MiB); `rill logs app`: {} bytes",
        logs.len()
    );
    assert!(grown_mib < 8.0, "27 MB of log lines grew the coordinator by {grown_mib:.1} MiB\n{}", procs.logs());
    let kept = rill_proto::coord::MAX_LOG_LINE;
    assert!(logs.len() < 1024 * 1024 + 64 * 1024, "at most 1 MiB kept: {} bytes", logs.len());
    assert!(logs.lines().all(|l| l.len() < kept + 64), "no line beyond 64 KiB");
    let _ = runtime.block_on(ws.next());
}

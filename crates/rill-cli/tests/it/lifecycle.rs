use std::time::Duration;

use crate::check;
use crate::support::{Flow, alive, spawned_pids};

const IGNORE_EVERYTHING: &str = "  - id: stubborn\n    path: /bin/sh\n    args: ['-c', \"trap '' TERM INT; echo ready; while true; do sleep 0.05; done\"]\n";

#[test]
fn ctrl_c_sends_stop_then_sigterm_then_sigkill_to_a_node_that_ignores_them() {
    let flow =
        Flow::new(&format!("nodes:\n  - id: polite\n    path: {{node}}\n    args: [wait-stop]\n{IGNORE_EVERYTHING}"));
    let mut running = flow.spawn(&["--grace", "0.5"]);
    running.wait_for("both nodes running", Duration::from_secs(20), |out| {
        out.contains("[polite] waiting") && out.contains("[stubborn] ready")
    });
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(20));
    check!(run, run.stdout.contains("[polite] got stop"), "polite node saw Stop");
    check!(
        run,
        run.stderr.contains("node `stubborn` is still running after the grace period; sending SIGTERM"),
        "SIGTERM step"
    );
    check!(
        run,
        run.stderr.contains("node `stubborn` is still running after the grace period; sending SIGKILL"),
        "SIGKILL step"
    );
    check!(run, run.stderr.contains("node `stubborn`: killed with SIGKILL"), "summary names the killed node");
    check!(run, !run.stderr.contains("node `polite`:"), "polite node is not a failure");
    check!(run, run.code == Some(1), "a node had to be killed: exit code 1");
}

#[test]
fn ctrl_c_stops_cleanly_and_leaves_no_process_even_after_a_node_was_killed() {
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [flood, '65536']\n    outputs: [out]\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs:\n      in: source/out\n  - id: victim\n    path: {node}\n    args: [print]\n    inputs:\n      in: source/out\n",
    );
    let shm_before = std::fs::read_dir("/dev/shm").map(|d| d.count()).unwrap_or(0);
    let mut running = flow.spawn(&["--json"]);
    running.wait_for("traffic", Duration::from_secs(20), |out| out.contains("sent 10000"));
    let pids = spawned_pids(&running.stdout());
    check!(running, pids.len() == 3, "three nodes spawned: {pids:?}");
    let victim = pids.iter().find(|(n, _)| n == "victim").map(|(_, p)| *p).unwrap_or(0);
    // SAFETY: kill(2) on a node process we started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    running.wait_for("traffic after the kill", Duration::from_secs(20), |out| out.contains("sent 30000"));
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(20));
    check!(run, run.stdout.contains("flood stopped after"), "source saw Stop");
    let summary: serde_json::Value = serde_json::from_str(run.stdout.lines().last().unwrap_or("")).unwrap_or_default();
    check!(run, summary["event"] == "summary", "summary is the last line");
    let failed: Vec<&str> = summary["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["failed"] == true)
        .filter_map(|n| n["node"].as_str())
        .collect();
    check!(run, failed == ["victim"], "only the killed node failed: {failed:?}");
    for (node, pid) in &pids {
        check!(run, !alive(*pid), "node {node} (pid {pid}) still alive");
    }
    let shm_after = std::fs::read_dir("/dev/shm").map(|d| d.count()).unwrap_or(0);
    check!(run, shm_after <= shm_before, "/dev/shm grew from {shm_before} to {shm_after}");
}

#[test]
fn on_failure_restarts_until_the_node_succeeds() {
    let flow = Flow::new(
        "nodes:\n  - id: flaky\n    path: {node}\n    args: [fail-until, count.txt, '3']\n    restart_policy: on-failure\n    max_restarts: 5\n    restart_delay: 10ms\n",
    );
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(0), "third run succeeds");
    check!(run, run.node_lines("flaky") == ["run 1", "run 2", "run 3"], "ran three times");
    check!(run, run.stderr.contains("node `flaky` ended with exit code 1; restart 2"), "restart notice");
    let count = std::fs::read_to_string(flow.dir.path().join("count.txt")).unwrap_or_default();
    check!(run, count == "3", "ran in the dataflow's directory (count {count:?})");
}

#[test]
fn max_restarts_bounds_restarts_and_the_summary_names_the_node() {
    let flow = Flow::new(
        "nodes:\n  - id: hopeless\n    path: {node}\n    args: [fail-until, count.txt, '100']\n    restart_policy: on-failure\n    max_restarts: 2\n    restart_delay: 10ms\n",
    );
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(1), "fails");
    check!(run, run.node_lines("hopeless").len() == 3, "one run plus two restarts");
    check!(run, run.stderr.contains("node `hopeless`: failed with exit code 1 (after 2 restarts)"), "summary");
    check!(run, run.stderr.contains("failing on run 3"), "last stderr lines are shown");
}

#[test]
fn always_restarts_even_clean_exits_and_never_does_not_restart() {
    let flow = Flow::new(
        "nodes:\n  - id: looping\n    path: {node}\n    args: [fail-until, loop.txt, '0']\n    restart_policy: always\n    max_restarts: 2\n    restart_delay: 10ms\n  - id: once\n    path: {node}\n    args: [crash, '3']\n    restart_policy: never\n",
    );
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.node_lines("looping").len() == 3, "always: ran 1 + 2 times");
    check!(run, run.code == Some(1), "the crashing node fails the run");
    check!(run, run.stderr.contains("dataflow failed: 1 of 2 nodes failed"), "summary header");
    check!(run, run.stderr.contains("node `once`: failed with exit code 3"), "summary names the node and status");
    check!(run, run.stderr.contains("something went badly wrong"), "its stderr is shown");
    check!(run, !run.stderr.contains("node `once` ended"), "never: no restart");
}

#[test]
fn missing_executable_is_reported_with_its_path() {
    let flow = Flow::new("nodes:\n  - id: ghost\n    path: ./not-built-yet\n");
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(1), "fails");
    check!(run, run.stderr.contains("node `ghost`: could not start: executable"), "names the node");
    check!(run, run.stderr.contains("not-built-yet does not exist"), "names the path");
}

#[test]
fn a_restarted_consumer_is_wired_again_and_receives() {
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [flood, '8']\n    outputs: [out]\n  - id: sink\n    path: {node}\n    args: [crash-once, runs.txt, '5']\n    restart_policy: on-failure\n    restart_delay: 10ms\n    inputs:\n      in: source/out\n",
    );
    let mut running = flow.spawn(&[]);
    running.wait_for("the restarted sink receiving", Duration::from_secs(20), |out| {
        out.matches("[sink] run 2 got").count() == 5
    });
    running.signal(libc::SIGINT);
    let run = running.wait(Duration::from_secs(20));
    check!(run, run.node_lines("sink").iter().filter(|l| l.starts_with("run 1 got")).count() == 5, "first run got 5");
    check!(run, run.stderr.contains("node `sink` ended with exit code 1; restart 1"), "restart notice");
}

#[test]
fn a_restarted_producer_is_wired_again_and_closes_only_at_the_end() {
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst-once, runs.txt, '3']\n    restart_policy: on-failure\n    restart_delay: 10ms\n    outputs: [out]\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs:\n      in: { source: source/out, queue_size: 100 }\n",
    );
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(0), "second run of the source succeeds");
    let seqs: Vec<String> = run
        .node_lines("sink")
        .iter()
        .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next().map(str::to_owned))
        .collect();
    check!(run, seqs == ["100", "101", "102", "200", "201", "202"], "both runs' messages, in order: {seqs:?}");
    let lines = run.node_lines("sink");
    check!(run, lines.iter().filter(|l| *l == "closed in").count() == 1, "closed once");
    check!(run, lines.iter().position(|l| l == "closed in") == Some(6), "closed after the last message: {lines:?}");
}

#[test]
fn restart_delays_double_from_restart_delay_up_to_max_restart_delay() {
    let flow = Flow::new(
        "nodes:\n  - id: flaky\n    path: {node}\n    args: [fail-until, count.txt, '100']\n    restart_policy: on-failure\n    max_restarts: 4\n    restart_delay: 0.1\n    max_restart_delay: 300ms\n",
    );
    let started = std::time::Instant::now();
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(1), "fails after its restarts");
    let delays: Vec<&str> = run
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("rill: node `flaky` ended with exit code 1; restart ")?.split_once(" in "))
        .map(|(_, delay)| delay)
        .collect();
    check!(run, delays == ["100.0ms", "200.0ms", "300.0ms", "300.0ms"], "doubling, capped: {delays:?}");
    // (The waits are real: at least their sum.)
    check!(run, started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
}

#[test]
fn a_pinned_node_runs_on_its_cores_and_one_naming_a_missing_core_runs_unpinned_with_a_warning() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let all =
        status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim).unwrap_or("0").to_owned();
    // The last core this test may use: pinning to it changes the list on any machine with two.
    let last = all.rsplit([',', '-']).next().unwrap_or("0").to_owned();
    let show = "args: ['-c', 'grep Cpus_allowed_list /proc/$$/status']";
    let flow = Flow::new(&format!(
        "nodes:\n  - id: pinned\n    path: /bin/sh\n    {show}\n    cpu_affinity: [{last}]\n  - id: loose\n    path: /bin/sh\n    {show}\n    cpu_affinity: [{last}, 4000]\n"
    ));
    let run = flow.run(&[], Duration::from_secs(20));
    check!(run, run.code == Some(0), "both run");
    let printed =
        |node: &str, list: &str| run.stdout.lines().any(|l| l == format!("[{node}] Cpus_allowed_list:\t{list}"));
    check!(run, printed("pinned", &last), "pinned to core {last}");
    check!(run, printed("loose", &all), "not pinned: all of {all}");
    check!(
        run,
        run.stderr.contains("[loose] rill: cpu_affinity names core 4000 which this machine does not have"),
        "warned"
    );
}

#[test]
fn a_consumer_of_send_stdout_as_receives_every_printed_line_in_order() {
    // 300 lines on stdout and 300 on stderr, as fast as the shell prints,
    // to a reader that takes 2 ms a line: most wait in the writer's backlog
    // when the talker has ended, and the close must not overtake them.
    let talk = "i=1; while [ $i -le 300 ]; do echo out $i; echo err $i >&2; i=$((i+1)); done";
    let flow = Flow::new(&format!(
        "nodes:\n  - id: talker\n    path: /bin/sh\n    args: ['-c', '{talk}']\n    outputs: [lines]\n    send_stdout_as: lines\n  - id: reader\n    path: {{node}}\n    args: [echo, '2']\n    inputs:\n      lines: {{ source: talker/lines, queue_size: 1000 }}\n"
    ));
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "both end: the reader when the talker's lines are closed");
    let received: Vec<&str> = run.stdout.lines().filter_map(|l| l.strip_prefix("[reader] lines: ")).collect();
    for stream in ["out", "err"] {
        let got: Vec<&str> = received.iter().copied().filter(|l| l.starts_with(stream)).collect();
        let expected: Vec<String> = (1..=300).map(|i| format!("{stream} {i}")).collect();
        check!(run, got == expected, "every {stream} line, in order: {got:?}");
    }
    check!(run, run.stdout.lines().last() == Some("[reader] closed lines"), "closed after the last line");
    check!(run, run.stdout.contains("[talker] out 300") && run.stderr.contains("[talker] err 300"), "still in the log");
}

#[test]
fn send_logs_as_with_min_log_level_warn_delivers_only_warn_and_error_records() {
    let records = [
        r#"{"level":"ERROR","message":"motor stalled","target":"drive"}"#,
        r#"{"level":"info","message":"cruising"}"#,
        r#"{"timestamp":"2026-12-05T10:00:00Z","level":"WARN","fields":{"message":"battery low","pct":9}}"#,
        r#"{"level":"debug","msg":"pid tick"}"#,
        "a plain print",
    ];
    let script: String = records.iter().map(|r| format!("        echo '{r}'\n")).collect();
    let flow = Flow::new(&format!(
        "nodes:\n  - id: robot\n    path: /bin/sh\n    args:\n      - -c\n      - |\n{script}    outputs: [log]\n    send_logs_as: log\n    min_log_level: warn\n  - id: reader\n    path: {{node}}\n    args: [echo]\n    inputs: {{ log: robot/log }}\n"
    ));
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "both end");
    let received: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[reader] log: "))
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let seen: Vec<(&str, &str)> =
        received.iter().map(|r| (r["level"].as_str().unwrap_or(""), r["message"].as_str().unwrap_or(""))).collect();
    check!(run, seen == [("error", "motor stalled"), ("warn", "battery low")], "only warn and error: {seen:?}");
    check!(run, received[0]["target"] == "drive" && received[1]["fields"]["pct"] == 9, "{received:?}");
    check!(run, received.iter().all(|r| r["node"] == "robot"), "{received:?}");
    // The log keeps plain prints and what passes the level; quieter records are gone.
    check!(run, run.stdout.contains("[robot] a plain print"), "plain prints stay in the log");
    check!(run, run.stdout.contains("motor stalled") && !run.stdout.contains("cruising"), "filtered in the log too");
    check!(run, !run.stdout.contains("pid tick"), "filtered in the log too");
}

/// Runs git in `dir` (a test's own repository) and fails the test if it fails.
fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_node_built_from_a_local_git_repository_at_a_tag_runs_in_that_checkout() {
    // A repository whose tag v1 says "one"; main has moved on to "two".
    let repo = tempfile::tempdir().expect("tempdir");
    git(repo.path(), &["init", "--quiet", "--initial-branch=main"]);
    let show = "#!/bin/sh\necho \"version $(cat version.txt)\"\necho \"built $(cat built.txt)\"\necho \"dir $(pwd)\"\n";
    std::fs::write(repo.path().join("show.sh"), show).expect("write");
    std::fs::set_permissions(repo.path().join("show.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::write(repo.path().join("version.txt"), "one").expect("write");
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "--quiet", "-m", "one"]);
    git(repo.path(), &["tag", "v1"]);
    let tagged = git(repo.path(), &["rev-parse", "HEAD"]);
    std::fs::write(repo.path().join("version.txt"), "two").expect("write");
    git(repo.path(), &["commit", "--quiet", "-am", "two"]);

    let flow = Flow::new(&format!(
        "nodes:\n  - id: shown\n    path: ./show.sh\n    git: {}\n    tag: v1\n    build: echo here > built.txt\n",
        repo.path().display()
    ));
    let run = flow.run(&[], Duration::from_secs(60));
    check!(run, run.code == Some(0), "runs");
    check!(run, run.stdout.contains("[shown] version one"), "the tag's content, not main's");
    check!(run, run.stdout.contains("[shown] built here"), "its build ran in the checkout");
    let dir = run.stdout.lines().find_map(|l| l.strip_prefix("[shown] dir ")).unwrap_or("").to_owned();
    let cache = crate::support::xdg_home().join("cache/rill/sources");
    check!(
        run,
        dir.starts_with(&cache.display().to_string()) && dir.ends_with(&tagged),
        "in the cache, by commit: {dir}"
    );
    check!(run, run.stderr.contains("(cloned)"), "cloned the first time");
    check!(run, git(std::path::Path::new(&dir), &["rev-parse", "HEAD"]) == tagged, "checked out at the tag");
    check!(
        run,
        git(std::path::Path::new(&dir), &["status", "--porcelain", "--branch"]).starts_with("## HEAD (no branch)"),
        "detached"
    );

    let again = flow.run(&[], Duration::from_secs(60));
    check!(again, again.code == Some(0) && again.stderr.contains("(already there)"), "the checkout is used again");
    check!(again, again.stdout.contains("[shown] version one"), "the same checkout");
}

#[test]
fn a_module_used_twice_runs_as_two_sets_of_nodes_fed_through_its_port() {
    // The module: one printing node reading the module's input port `in`,
    // told how many inputs to wait for by a param.
    let module = format!(
        "module:\n  name: watcher\n  inputs: [in]\nnodes:\n  - id: show\n    path: {}\n    args: [print, '${{_param.count}}']\n    inputs: {{ in: _mod/in }}\n",
        crate::support::test_node()
    );
    let flow = Flow::new(
        "nodes:\n  - id: src\n    path: {node}\n    args: [burst, '3', '64']\n    outputs: [out]\n  - id: first\n    module: parts/watcher.yml\n    params: { count: 3 }\n    inputs: { in: src/out }\n  - id: second\n    module: parts/watcher.yml\n    params: { count: 3 }\n    inputs: { in: src/out }\n",
    );
    std::fs::create_dir_all(flow.dir.path().join("parts")).expect("mkdir");
    std::fs::write(flow.dir.path().join("parts/watcher.yml"), module).expect("write module");
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "all end");
    for id in ["first.show", "second.show"] {
        let seqs: Vec<&str> = run
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("[{id}] input in len=64 seq="))?.split(' ').next())
            .collect();
        check!(run, seqs == ["0", "1", "2"], "{id} got every message: {seqs:?}");
    }
    let graph = crate::support::rill().arg("graph").arg(&flow.file).output().expect("graph");
    let graph = String::from_utf8_lossy(&graph.stdout);
    assert!(graph.contains("subgraph m0[\"first\"]") && graph.contains("n1[\"first.show\"]"), "{graph}");
}

#[test]
fn printed_outputs_close_when_the_node_ends_even_if_a_process_it_left_holds_its_output() {
    // The talker leaves a sleeper holding its stdout open, and says its pid.
    let flow = Flow::new(
        "nodes:\n  - id: talker\n    path: /bin/sh\n    args: ['-c', 'sleep 30 & echo $! > sleeper.pid; echo hello']\n    outputs: [lines]\n    send_stdout_as: lines\n  - id: reader\n    path: {node}\n    args: [echo]\n    inputs: { lines: talker/lines }\n",
    );
    let run = flow.run(&[], Duration::from_secs(25));
    let sleeper = std::fs::read_to_string(flow.dir.path().join("sleeper.pid")).unwrap_or_default();
    if let Ok(pid) = sleeper.trim().parse::<i32>() {
        // SAFETY: kill(2) on the pid our own test's shell started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    check!(run, run.code == Some(0), "the run ends although the sleeper holds the talker's stdout");
    check!(run, run.stdout.contains("[reader] lines: hello\n[reader] closed lines"), "the line, then the close");
}

#[test]
fn a_slow_consumer_of_printed_lines_loses_the_oldest_but_gets_the_last_line_before_the_close() {
    // 5000 lines at once (more than the socket holds) into a 5-line queue read at 20 ms a line: the
    // oldest are dropped (the queue policy), the newest wait in the
    // writer's backlog, and the close comes behind them.
    let talk = "i=1; while [ $i -le 5000 ]; do echo line $i; i=$((i+1)); done";
    let flow = Flow::new(&format!(
        "nodes:\n  - id: talker\n    path: /bin/sh\n    args: ['-c', '{talk}']\n    outputs: [lines]\n    send_stdout_as: lines\n  - id: reader\n    path: {{node}}\n    args: [echo, '20']\n    inputs:\n      lines: {{ source: talker/lines, queue_size: 5 }}\n"
    ));
    let run = flow.run(&[], Duration::from_secs(30));
    check!(run, run.code == Some(0), "both end");
    let reader: Vec<&str> = run.stdout.lines().filter_map(|l| l.strip_prefix("[reader] ")).collect();
    let numbers: Vec<u32> =
        reader.iter().filter_map(|l| l.strip_prefix("lines: line ")).filter_map(|n| n.parse().ok()).collect();
    check!(run, numbers.windows(2).all(|w| w[0] < w[1]), "in order: {numbers:?}");
    check!(run, numbers.len() < 5000, "a 5-line queue read slowly drops some: {}", numbers.len());
    check!(run, reader.ends_with(&["lines: line 5000", "closed lines"]), "the newest line, then the close: {reader:?}");
}

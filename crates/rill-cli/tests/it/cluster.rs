//! Coordinator and daemons as separate processes on loopback.

use std::time::{Duration, Instant};

use crate::support::{Processes, free_port, machines, rill, rill_json, status, wait_status};

/// A coordinator with daemon `a` and daemon `b` (label gpu=true), registered.
pub(crate) fn two_daemons() -> (Processes, u16) {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    procs.start("daemon-a", &["daemon", "--machine-id", "a", "--coordinator-port", &port_text]);
    procs.start("daemon-b", &["daemon", "--machine-id", "b", "--labels", "gpu=true", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "two daemons registered", Duration::from_secs(15), |v| machines(v).len() == 2);
    (procs, port)
}

/// Starts `flow` as `name` on the coordinator at `port` and returns the
/// `--json` reply; fails the test (with every log) if it did not start.
pub(crate) fn start_flow(procs: &Processes, port: u16, flow: &crate::support::Flow, name: &str) -> serde_json::Value {
    let file = flow.file.display().to_string();
    let (code, started, stderr) =
        rill_json(&["start", &file, "--name", name, "--coordinator-port", &port.to_string(), "--json"]);
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    started
}

#[test]
fn daemons_register_with_labels_and_come_back_after_a_coordinator_restart() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    procs.start("daemon-a", &["daemon", "--machine-id", "a", "--coordinator-port", &port_text]);
    procs.start(
        "daemon-b",
        &["daemon", "--machine-id", "b", "--labels", "gpu=true,zone=lab", "--coordinator-port", &port_text],
    );
    let value =
        wait_status(&procs, port, "two daemons registered", Duration::from_secs(15), |v| machines(v).len() == 2);
    assert_eq!(machines(&value), ["a", "b"], "{}", procs.logs());
    assert_eq!(value["daemons"][1]["labels"]["gpu"], "true", "{}", procs.logs());
    assert_eq!(value["daemons"][1]["labels"]["zone"], "lab", "{}", procs.logs());
    assert!(value["daemons"][0]["last_heartbeat_ms"].as_u64().is_some_and(|ms| ms < 5000), "{}", procs.logs());

    // A second daemon claiming a live machine id is refused for good.
    let dup = rill().args(["daemon", "--machine-id", "a", "--coordinator-port", &port_text]).output().expect("run");
    let stderr = String::from_utf8_lossy(&dup.stderr);
    assert_eq!(dup.status.code(), Some(2), "{stderr}\n{}", procs.logs());
    assert!(stderr.contains("machine id \"a\" is already connected and answered a probe"), "{stderr}");

    // kill -9 the coordinator: the daemons keep retrying and re-register.
    procs.kill("coordinator");
    assert!(status(port).is_none(), "coordinator still answers after kill\n{}", procs.logs());
    procs.start("coordinator-2", &["coordinator", "--port", &port_text, "--store", "memory"]);
    let value =
        wait_status(&procs, port, "daemons back after restart", Duration::from_secs(20), |v| machines(v).len() == 2);
    assert_eq!(machines(&value), ["a", "b"], "{}", procs.logs());
    let log_a = std::fs::read_to_string(procs.log_path("daemon-a")).unwrap_or_default();
    assert!(log_a.contains("reconnecting in"), "daemon a reported its retries:\n{log_a}");
}

#[test]
fn status_without_a_coordinator_says_where_it_looked() {
    let port = free_port().to_string();
    let out = rill().args(["status", "--coordinator-port", &port]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot reach the coordinator at 127.0.0.1:{port}")), "{stderr}");
}

#[test]
fn start_places_nodes_by_machine_and_labels_and_stop_ends_them() {
    let (procs, port) = two_daemons();
    let port_text = port.to_string();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [flood, '8']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: near\n    path: {node}\n    args: [slow, '100']\n    inputs: { in: source/out }\n    deploy: { machine: a }\n  - id: far\n    path: {node}\n    args: [wait-stop]\n    _unstable_deploy: { labels: { gpu: 'true' } }\n",
    );
    let file = flow.file.display().to_string();
    let p = ["--coordinator-port", &port_text, "--json"];

    let (code, plan, stderr) = rill_json(&[&["start", &file, "--dry-run"][..], &p[..]].concat());
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    let where_: Vec<(String, String)> = plan["placement"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| (n["node"].as_str().unwrap_or("").to_owned(), n["machine_id"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(where_, [("source".into(), "a".into()), ("near".into(), "a".into()), ("far".into(), "b".into())]);
    let (_, list, _) = rill_json(&[&["list"][..], &p[..]].concat());
    assert_eq!(list["dataflows"].as_array().map(Vec::len), Some(0), "a dry run starts nothing");

    let (code, started, stderr) = rill_json(&[&["start", &file, "--name", "app"][..], &p[..]].concat());
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    assert_eq!(started["name"], "app");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log_a = || std::fs::read_to_string(procs.log_path("daemon-a")).unwrap_or_default();
    let log_b = || std::fs::read_to_string(procs.log_path("daemon-b")).unwrap_or_default();
    while !(log_a().contains("[app/near] seq") && log_b().contains("[app/far] waiting")) {
        assert!(Instant::now() < deadline, "nodes did not run where placed\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, list, _) = rill_json(&[&["list"][..], &p[..]].concat());
    assert_eq!(list["dataflows"][0]["status"], "running", "{list}");
    let (_, status, _) = rill_json(&[&["status"][..], &p[..]].concat());
    assert_eq!(status["dataflows"][0]["name"], "app", "status lists dataflows too: {status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list, _) = rill_json(&[&["list"][..], &p[..]].concat());
        let nodes = &list["dataflows"][0]["nodes"];
        if ["source", "near", "far"]
            .iter()
            .all(|n| nodes[n]["state"] == "running" && nodes[n]["pid"].as_u64().is_some())
        {
            break;
        }
        assert!(Instant::now() < deadline, "node statuses: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (code, again, _) = rill_json(&[&["start", &file, "--name", "app"][..], &p[..]].concat());
    assert_eq!(code, Some(1), "a second `app` is refused: {again}");

    let (code, stopped, stderr) = rill_json(&[&["stop", "app"][..], &p[..]].concat());
    assert_eq!((code, stopped["status"].as_str()), (Some(0), Some("stopping")), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list, _) = rill_json(&[&["list"][..], &p[..]].concat());
        if list["dataflows"][0]["status"] == "stopped" {
            break;
        }
        assert!(Instant::now() < deadline, "not stopped: {list}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log_b().contains("[app/far] got stop"), "{}", procs.logs());
}

#[test]
fn placement_errors_name_the_node_and_use_the_reference_texts() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    procs.start("coordinator", &["coordinator", "--port", &port_text, "--store", "memory"]);
    procs.start("daemon-x", &["daemon", "--machine-id", "x", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "daemon registered", Duration::from_secs(15), |v| machines(v).len() == 1);
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: cam\n    path: {node}\n    deploy: { machine: robot }\n  - id: ml\n    path: {node}\n    deploy: { labels: { gpu: 'true' } }\n",
    );
    let out = rill()
        .args(["start", &flow.file.display().to_string(), "--dry-run", "--coordinator-port", &port_text])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("node `cam`: no matching daemon for machine id \"robot\""), "{stderr}");
    assert!(stderr.contains("node `ml`: no daemon matches labels {\"gpu\": \"true\"}"), "{stderr}");
    let (code, _, stderr) = rill_json(&["stop", "nothing", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no running dataflow named or with uuid `nothing`"), "{stderr}");
}

#[test]
fn a_sink_on_another_daemon_receives_every_message() {
    let (procs, port) = two_daemons();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst, '500', '8']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: frames\n    path: {node}\n    args: [burst, '20', '1048576']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs:\n      small: { source: source/out, queue_size: 1000 }\n      large: { source: frames/out, queue_size: 100 }\n    _unstable_deploy: { labels: { gpu: 'true' } }\n",
    );
    let started = start_flow(&procs, port, &flow, "cross");
    assert_eq!(started["placement"][2]["machine_id"], "b", "{started}");
    let log_b = || std::fs::read_to_string(procs.log_path("daemon-b")).unwrap_or_default();
    let seqs = |input: &str| -> Vec<u64> {
        log_b()
            .lines()
            .filter(|l| l.starts_with(&format!("[cross/sink] input {input} ")))
            .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next()?.parse().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while seqs("small").len() < 500 || seqs("large").len() < 20 {
        assert!(
            Instant::now() < deadline,
            "sink got {} small, {} large\n{}",
            seqs("small").len(),
            seqs("large").len(),
            procs.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seqs("small"), (0..500).collect::<Vec<_>>(), "every small message, in order\n{}", procs.logs());
    assert_eq!(seqs("large"), (0..20).collect::<Vec<_>>(), "every 1 MiB message, in order\n{}", procs.logs());
    assert!(log_b().contains("input large len=1048576"), "{}", procs.logs());
}

/// Lines daemon `b` printed for `flow`'s sink: (input, seq, len) per
/// message, and "closed INPUT" lines, in order.
fn sink_lines(procs: &Processes, flow: &str) -> Vec<String> {
    let prefix = format!("[{flow}/sink] ");
    std::fs::read_to_string(procs.log_path("daemon-b"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

fn seqs_of(lines: &[String], input: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("input {input} ")))
        .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn a_producer_that_ends_on_another_machine_closes_the_input_after_everything_it_sent() {
    let (procs, port) = two_daemons();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst, '300', '8']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: frames\n    path: {node}\n    args: [burst, '12', '1048576']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs:\n      small: { source: source/out, queue_size: 1000 }\n      large: { source: frames/out, queue_size: 100 }\n    deploy: { machine: b }\n",
    );
    start_flow(&procs, port, &flow, "closing");
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed =
        |lines: &[String]| lines.iter().any(|l| l == "closed small") && lines.iter().any(|l| l == "closed large");
    while !closed(&sink_lines(&procs, "closing")) {
        assert!(Instant::now() < deadline, "the sink's inputs were not closed\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = sink_lines(&procs, "closing");
    assert_eq!(seqs_of(&lines, "small"), (0..300).collect::<Vec<_>>(), "{}", procs.logs());
    assert_eq!(seqs_of(&lines, "large"), (0..12).collect::<Vec<_>>(), "{}", procs.logs());
    for input in ["small", "large"] {
        let close = lines.iter().position(|l| *l == format!("closed {input}")).unwrap_or(0);
        let last = lines.iter().rposition(|l| l.starts_with(&format!("input {input} "))).unwrap_or(usize::MAX);
        assert!(last < close, "InputClosed for {input} came after its last message:\n{}", lines.join("\n"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sink_lines(&procs, "closing").iter().any(|l| l.starts_with("done after 312 inputs")) {
        assert!(Instant::now() < deadline, "the sink did not end once its inputs closed\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_producer_whose_daemon_shuts_down_is_lost_not_ended_for_a_consumer_on_another_machine() {
    let (mut procs, port) = two_daemons();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: count-send\n    inputs: { t: rill/timer/millis/50 }\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs: { in: source/out }\n    deploy: { machine: b }\n",
    );
    start_flow(&procs, port, &flow, "lost");
    let received = |procs: &Processes| seqs_of(&sink_lines(procs, "lost"), "in").len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received(&procs) < 5 {
        assert!(Instant::now() < deadline, "nothing crossed\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    procs.signal("daemon-a", libc::SIGTERM);
    assert_eq!(procs.wait_exit("daemon-a", Duration::from_secs(20)), Some(0), "{}", procs.logs());
    let before = received(&procs);
    procs.start("daemon-a2", &["daemon", "--machine-id", "a", "--coordinator-port", &port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received(&procs) < before + 5 {
        assert!(Instant::now() < deadline, "the source did not come back to the sink\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = sink_lines(&procs, "lost");
    assert!(!lines.iter().any(|l| l.starts_with("closed") || l.starts_with("done")), "{}", lines.join("\n"));
}

#[test]
fn a_burst_of_4_mib_messages_crosses_machines_complete_in_order_with_the_marker_last() {
    let (procs, port) = two_daemons();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst-sleep, '60', '100:4194304,1:1']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs:\n      frames: { source: source/out, queue_size: 128 }\n    deploy: { machine: b }\n",
    );
    start_flow(&procs, port, &flow, "burst");
    let deadline = Instant::now() + Duration::from_secs(60);
    while seqs_of(&sink_lines(&procs, "burst"), "frames").len() < 101 {
        assert!(
            Instant::now() < deadline,
            "{} of 101 arrived\n{}",
            seqs_of(&sink_lines(&procs, "burst"), "frames").len(),
            procs.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = sink_lines(&procs, "burst");
    let frames: Vec<&String> = lines.iter().filter(|l| l.starts_with("input frames ")).collect();
    assert_eq!(frames.len(), 101, "{}", lines.join("\n"));
    assert_eq!(seqs_of(&lines, "frames"), (0..=100).collect::<Vec<_>>(), "complete and in order");
    assert!(frames[..100].iter().all(|l| l.contains("len=4194304")), "every frame whole");
    // Every word of a frame is its seq: no payload was overwritten in flight
    // (the bridge lends a producer's region to Zenoh by reference).
    assert!(!lines.iter().any(|l| l.starts_with("corrupt")), "{}", lines.join("\n"));
    // (The smallest message the test node sends holds its sequence number: 8 bytes.)
    assert!(frames[100].contains("len=8 seq=100"), "the marker last: {}", frames[100]);
}

#[test]
fn restart_needs_no_yaml_and_reports_old_and_new_uuid() {
    let (procs, port) = two_daemons();
    let port_text = port.to_string();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: waiter\n    path: {node}\n    args: [wait-stop]\n    deploy: { machine: b }\n",
    );
    let p = ["--coordinator-port", &port_text, "--json"];
    let (code, started, stderr) =
        rill_json(&[&["start", &flow.file.display().to_string(), "--name", "svc"][..], &p[..]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::remove_file(&flow.file).expect("remove the YAML");
    let (code, restarted, stderr) = rill_json(&[&["restart", "svc"][..], &p[..]].concat());
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    assert_eq!(restarted["old_uuid"], started["uuid"]);
    assert_ne!(restarted["new_uuid"], started["uuid"]);
    assert_eq!(restarted["name"], "svc");
    let text = rill().args(["restart", "svc", "--coordinator-port", &port_text]).output().expect("run");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains(&format!("dataflow restarted: {} -> ", restarted["new_uuid"].as_str().unwrap_or(""))),
        "{stdout}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list, _) = rill_json(&[&["list"][..], &p[..]].concat());
        let statuses: Vec<&str> =
            list["dataflows"].as_array().into_iter().flatten().filter_map(|d| d["status"].as_str()).collect();
        if statuses == ["stopped", "stopped", "running"] {
            break;
        }
        assert!(Instant::now() < deadline, "statuses {statuses:?}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log_b = std::fs::read_to_string(procs.log_path("daemon-b")).unwrap_or_default();
    assert_eq!(log_b.matches("[svc/waiter] got stop").count(), 2, "both old runs got Stop\n{log_b}");
}

#[test]
fn after_a_coordinator_kill_the_redb_store_and_daemons_bring_dataflows_back() {
    let port = free_port();
    let port_text = port.to_string();
    let mut procs = Processes::new();
    let store = format!("redb:{}", procs.dir.path().join("coordinator.redb").display());
    let coordinator = ["coordinator", "--port", &port_text, "--store", &store, "--lost-timeout", "3"];
    procs.start("coordinator", &coordinator);
    procs.start("daemon-a", &["daemon", "--machine-id", "a", "--coordinator-port", &port_text]);
    procs.start("daemon-b", &["daemon", "--machine-id", "b", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "two daemons registered", Duration::from_secs(15), |v| machines(v).len() == 2);
    let flow = |machine: &str| {
        crate::support::Flow::new(&format!(
            "nodes:\n  - id: w\n    path: {{node}}\n    args: [wait-stop]\n    deploy: {{ machine: {machine} }}\n"
        ))
    };
    let (kept, orphan) = (flow("b"), flow("a"));
    let p = ["--coordinator-port", &port_text, "--json"];
    for (file, name) in [(&kept.file, "kept"), (&orphan.file, "orphan")] {
        let (code, _, stderr) =
            rill_json(&[&["start", &file.display().to_string(), "--name", name][..], &p[..]].concat());
        assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    }
    let log_b_path = procs.log_path("daemon-b");
    let log_b = || std::fs::read_to_string(&log_b_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: u32 = loop {
        if let Some(pid) = log_b().lines().find_map(|l| l.strip_prefix("[kept/w] waiting pid=")?.trim().parse().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "node did not start\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    };

    // The coordinator dies (kill -9); so does daemon a with its node.
    procs.kill("coordinator");
    procs.kill("daemon-a");
    procs.start("coordinator-2", &coordinator);
    let value = wait_status(&procs, port, "daemon b back", Duration::from_secs(20), |v| machines(v) == ["b"]);
    assert_eq!(machines(&value), ["b"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let (_, list, _) = rill_json(&[&["list"][..], &p[..]].concat());
        let statuses: Vec<(String, String)> = list["dataflows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| (d["name"].as_str().unwrap_or("").to_owned(), d["status"].as_str().unwrap_or("").to_owned()))
            .collect();
        if statuses == [("kept".into(), "running".into()), ("orphan".into(), "failed".into())] {
            break list;
        }
        assert!(Instant::now() < deadline, "statuses {statuses:?}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        list["dataflows"][1]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("node(s) w lost: machine(s) a did not come back within 3 s"),
        "{list}"
    );
    assert_eq!(list["dataflows"][0]["nodes"]["w"], serde_json::json!({"state": "running", "pid": pid}), "{list}");
    assert!(crate::support::alive(pid), "the node kept running under its pid {pid}\n{}", procs.logs());
    assert_eq!(log_b().matches("[kept/w] waiting").count(), 1, "the node was not started again\n{}", procs.logs());

    // The reclaimed dataflow is fully managed again.
    let (code, _, stderr) = rill_json(&[&["stop", "kept"][..], &p[..]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_b().contains("[kept/w] got stop") {
        assert!(Instant::now() < deadline, "stop did not reach the node\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_daemon_that_comes_back_gets_its_nodes_again() {
    let (mut procs, port) = two_daemons();
    let port_text = port.to_string();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [flood, '8']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [slow, '1']\n    inputs: { in: source/out }\n    deploy: { labels: { gpu: 'true' } }\n",
    );
    let p = ["--coordinator-port", &port_text, "--json"];
    let (code, _, stderr) =
        rill_json(&[&["start", &flow.file.display().to_string(), "--name", "live"][..], &p[..]].concat());
    assert_eq!(code, Some(0), "{stderr}");
    let log_dir = procs.dir.path().to_path_buf();
    let log = |name: &str| std::fs::read_to_string(log_dir.join(format!("{name}.log"))).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log("daemon-b").contains("[live/sink] seq") {
        assert!(Instant::now() < deadline, "sink got nothing\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }

    procs.kill("daemon-b");
    // Its node is lost, the dataflow degraded (not ended) while b is away.
    let status_of = |procs: &Processes, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, list, _) = rill_json(&[&["list"][..], &p[..]].concat());
            if list["dataflows"][0]["status"] == want {
                return list;
            }
            assert!(Instant::now() < deadline, "the dataflow is not {want}\n{list}\n{}", procs.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let list = status_of(&procs, "degraded");
    let sink = &list["dataflows"][0]["nodes"]["sink"];
    assert_eq!(*sink, serde_json::json!({"state": "lost", "reason": "daemon unreachable"}), "{list}");
    assert_eq!(list["dataflows"][0]["nodes"]["source"]["state"], "running", "{list}");
    procs
        .start("daemon-b2", &["daemon", "--machine-id", "b", "--labels", "gpu=true", "--coordinator-port", &port_text]);
    let deadline = Instant::now() + Duration::from_secs(35);
    while !log("daemon-b2").contains("[live/sink] seq") {
        assert!(Instant::now() < deadline, "sink not re-spawned within 35 s\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let list = status_of(&procs, "running");
    assert_eq!(list["dataflows"][0]["nodes"]["sink"]["state"], "running", "{list}");
    assert!(log("coordinator").contains("auto-recovery: re-spawning sink"), "{}", procs.logs());
    assert!(!log("daemon-a").contains("starting source, source"), "only the missing node was re-spawned");
    assert_eq!(log("daemon-a").matches("starting source of dataflow live").count(), 1, "{}", procs.logs());
}

#[test]
fn logs_prints_kept_lines_and_follow_streams_new_ones() {
    let (procs, port) = two_daemons();
    let port_text = port.to_string();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: ticker\n    path: {node}\n    args: [print]\n    inputs: { tick: rill/timer/millis/50 }\n    deploy: { machine: a }\n  - id: quiet\n    path: {node}\n    args: [wait-stop]\n    deploy: { machine: b }\n",
    );
    let p = ["--coordinator-port", &port_text, "--json"];
    let (code, _, stderr) =
        rill_json(&[&["start", &flow.file.display().to_string(), "--name", "talk"][..], &p[..]].concat());
    assert_eq!(code, Some(0), "{stderr}");

    let mut follow = crate::support::Running::start({
        let mut cmd = rill();
        cmd.args(["logs", "talk", "ticker", "--follow", "--json", "--coordinator-port", &port_text]);
        cmd
    });
    follow.wait_for("followed lines", Duration::from_secs(20), |out| out.matches("input tick").count() >= 5);
    let lines: Vec<serde_json::Value> = follow.stdout().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.iter().all(|l| l["node"] == "ticker"), "only the asked node: {lines:?}");
    assert!(lines.iter().all(|l| l["stream"] == "stdout"), "{lines:?}");
    let count = follow.stdout().matches("input tick").count();
    follow.wait_for("more lines while following", Duration::from_secs(20), |out| {
        out.matches("input tick").count() > count + 3
    });
    assert!(follow.child.try_wait().ok().flatten().is_none(), "--follow keeps running");
    drop(follow);

    let out = rill().args(["logs", "talk", "--coordinator-port", &port_text]).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", procs.logs());
    assert!(stdout.contains("[ticker] input tick len=0"), "kept lines, then the command ends:\n{stdout}");
    assert!(stdout.contains("[quiet] waiting pid="), "every node's lines without NODE:\n{stdout}");
    let out = rill().args(["logs", "nothing", "--coordinator-port", &port_text]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dataflow named or with uuid `nothing`"));
}

#[test]
fn up_starts_a_local_coordinator_and_daemon_and_destroy_stops_them() {
    let state = tempfile::tempdir().expect("tempdir");
    let port = free_port().to_string();
    let run = |args: &[&str]| {
        // Its own XDG homes: `up` makes this coordinator the CLI's current one.
        let out = rill()
            .args(args)
            .env("RILL_STATE_DIR", state.path())
            .env("XDG_CONFIG_HOME", state.path().join("config"))
            .env("XDG_DATA_HOME", state.path().join("data"))
            .output()
            .expect("run rill");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["up", "--port", &port, "--store", "memory"]);
    let logs = || {
        std::fs::read_dir(state.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("--- {:?} ---\n{}", e.file_name(), std::fs::read_to_string(e.path()).unwrap_or_default()))
            .collect::<String>()
    };
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", logs());
    assert!(stdout.contains("are up"), "{stdout}");
    let pids: Vec<u32> = std::fs::read_to_string(state.path().join(format!("up-{port}.pids")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{}", logs());
    // Every later command works with no flags: the CLI config has the
    // address, the CA fingerprint and the admin token (0600).
    let config = state.path().join("config/rill/config.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode, 0o600, "{}", config.display());
    let (code, status, stderr) = run(&["status", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    assert_eq!(status["daemons"].as_array().map(Vec::len), Some(1), "{status}");
    assert!(stdout.contains(status["ca_fingerprint"].as_str().unwrap_or("?")), "up names the CA: {stdout}");
    let pipeline = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pipeline/dataflow.yml");
    let (code, started, stderr) = run(&["start", pipeline, "--name", "pipe"]);
    assert_eq!(code, Some(0), "{started}{stderr}\n{}", logs());
    let (code, again, _) = run(&["up", "--port", &port]);
    assert_eq!(code, Some(0));
    assert!(again.contains("already answers"), "{again}");
    let (_, again, _) = run(&["up", "--port", &port, "--json"]);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap_or_default();
    assert_eq!((again["status"].as_str(), again["daemons"].as_u64()), (Some("already_up"), Some(1)), "{again}");

    let (code, stdout, stderr) = run(&["destroy", "--port", &port, "--json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let destroyed: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    assert_eq!(destroyed["status"], "destroyed", "{stdout}");
    for pid in &pids {
        assert!(!crate::support::alive(*pid), "pid {pid} still alive after destroy");
    }
    assert!(!state.path().join(format!("up-{port}.pids")).exists());
    let config = std::fs::read_to_string(&config).unwrap_or_default();
    assert!(!config.contains(&format!(":{port}")), "destroy forgets the coordinator: {config}");
    let (code, stdout, _) = run(&["destroy", "--port", &port]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("nothing to destroy"), "{stdout}");
}

#[test]
fn the_cross_daemon_benchmark_reports_figures_and_its_relay_and_tcp_baselines() {
    let bench = crate::support::bin_dir().join("rill-bench");
    let out = std::process::Command::new(&bench)
        .args(["latency", "--cross", "--quick", "--json", "--sizes", "8,65536"])
        .output()
        .expect("run rill-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for (row, size) in rows.iter().zip([8, 65536]) {
        assert_eq!(row["size"], size);
        assert_eq!(row["mode"], "cross");
        assert_eq!(row["transport"], "tls", "TLS is the default: {row}");
        for key in [
            "p50_us",
            "p99_us",
            "paced_p50_us",
            "paced_p99_us",
            "msgs_per_s",
            "mb_per_s",
            "baseline_p50_us",
            "ratio",
            "tcp_p50_us",
            "tcp_mb_per_s",
        ] {
            assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {row}");
        }
    }
}

#[test]
fn the_fan_out_benchmark_delivers_every_message_to_each_of_4_consumers_on_another_daemon() {
    let bench = crate::support::bin_dir().join("rill-bench");
    let out =
        std::process::Command::new(&bench).args(["fanout", "--quick", "--json"]).output().expect("run rill-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let consumers: Vec<&serde_json::Value> = rows.iter().filter(|r| r["mode"] == "fanout").collect();
    assert_eq!(consumers.len(), 4, "{stdout}");
    for row in consumers {
        assert_eq!(row["size"], 1 << 20, "{row}");
        assert_eq!(row["received"], row["sent"], "{row}");
        assert_eq!(row["lost"], 0, "{row}");
    }
    let summary = rows.iter().find(|r| r["mode"] == "fanout-summary").expect("a summary");
    assert_eq!(summary["every_message_to_every_consumer"], true, "{summary}");
}

#[test]
fn start_attach_prints_output_until_the_end_and_ctrl_c_stops_the_dataflow() {
    let (procs, port) = two_daemons();
    let port_text = port.to_string();
    let finite = crate::support::Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [burst, '3', '8']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [print]\n    inputs: { in: source/out }\n    deploy: { machine: a }\n",
    );
    let mut attached = crate::support::Running::start({
        let mut cmd = rill();
        cmd.args(["start", &finite.file.display().to_string(), "--attach", "--coordinator-port", &port_text]);
        cmd
    });
    let run = attached.wait(Duration::from_secs(30));
    assert_eq!(run.code, Some(0), "{}\n{}", run.logs(), procs.logs());
    assert!(run.stdout.contains("[sink] input in len=8 seq=2"), "{}", run.logs());
    assert!(run.stdout.contains("[sink] closed in"), "{}", run.logs());
    assert!(run.stderr.contains("finished"), "{}", run.logs());

    let endless = crate::support::Flow::new(
        "nodes:\n  - id: w\n    path: {node}\n    args: [wait-stop]\n    deploy: { machine: b }\n",
    );
    let mut attached = crate::support::Running::start({
        let mut cmd = rill();
        cmd.args(["start", &endless.file.display().to_string(), "--attach", "--coordinator-port", &port_text]);
        cmd
    });
    attached.wait_for("the node running", Duration::from_secs(20), |out| out.contains("[w] waiting"));
    attached.signal(libc::SIGINT);
    let run = attached.wait(Duration::from_secs(30));
    assert_eq!(run.code, Some(0), "{}\n{}", run.logs(), procs.logs());
    assert!(run.stdout.contains("[w] got stop"), "{}", run.logs());
    assert!(run.stderr.contains("stopped"), "{}", run.logs());
}

#[test]
fn a_slow_consumer_on_another_daemon_maps_a_bounded_number_of_regions() {
    // 200 × 1 MiB into a consumer that reads one every 30 ms with a queue of
    // 2: its daemon's bridge is under back-pressure throughout, and what the
    // consumer maps must stay bounded (regions are pooled and unmapped).
    let (procs, port) = two_daemons();
    let port_text = port.to_string();
    let flow = crate::support::Flow::new(
        "nodes:\n  - id: frames\n    path: {node}\n    args: [burst, '200', '1048576']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [slow, '30']\n    inputs:\n      large: { source: frames/out, queue_size: 2 }\n    deploy: { machine: b }\n",
    );
    let file = flow.file.display().to_string();
    let (code, _, stderr) = rill_json(&["start", &file, "--name", "slow", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(0), "{stderr}\n{}", procs.logs());
    let sink_pid = || {
        let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port_text]);
        list["dataflows"][0]["nodes"]["sink"]["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = sink_pid() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the sink never ran\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !procs.log("daemon-a").contains("[slow/frames] sent 200") || peak == 0 {
        peak = peak.max(crate::support::shm_maps(pid));
        assert!(Instant::now() < deadline, "the burst did not end within 60 s\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The consumer is still working through what reached it.
    for _ in 0..50 {
        peak = peak.max(crate::support::shm_maps(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = procs.log("daemon-b").matches("[slow/sink] seq ").count();
    eprintln!("the sink mapped at most {peak} regions and received {received} of 200");
    assert!(peak <= 32, "the consumer mapped {peak} regions at once\n{}", procs.logs());
    assert!(received >= 2, "{}", procs.logs());
}

#[test]
fn printed_lines_reach_a_consumer_on_another_machine_then_its_input_closes() {
    let (procs, port) = two_daemons();
    // (It stays 3 s after its lines, so the dataflow still runs when it is tapped.)
    let talk = "i=1; while [ $i -le 50 ]; do echo line $i; i=$((i+1)); done; sleep 3";
    let flow = crate::support::Flow::new(&format!(
        "nodes:\n  - id: talker\n    path: /bin/sh\n    args: ['-c', '{talk}']\n    outputs: [lines]\n    send_stdout_as: lines\n    deploy: {{ machine: a }}\n  - id: reader\n    path: {{node}}\n    args: [echo]\n    inputs:\n      lines: {{ source: talker/lines, queue_size: 100 }}\n    deploy: {{ machine: b }}\n"
    ));
    start_flow(&procs, port, &flow, "printed");
    let echo = rill()
        .args(["topic", "echo", "printed", "talker/lines", "--count", "1", "--coordinator-port", &port.to_string()])
        .output()
        .expect("run");
    let said = String::from_utf8_lossy(&echo.stderr);
    assert!(!echo.status.success() && said.contains("carries what node `talker` prints"), "{said}");
    let logs = || {
        let out = rill().args(["logs", "printed", "--coordinator-port", &port.to_string()]).output().expect("run");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !logs().contains("[reader] closed lines") {
        assert!(std::time::Instant::now() < deadline, "no close on b:\n{}\n{}", logs(), procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = logs();
    let got: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("[reader] lines: ")).collect();
    let expected: Vec<String> = (1..=50).map(|i| format!("line {i}")).collect();
    assert_eq!(got, expected, "every line, in order, across machines:\n{text}\n{}", procs.logs());
}

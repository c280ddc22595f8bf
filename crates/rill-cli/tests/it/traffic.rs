//! Message counters: what each input received and dropped and each output
//! sent, in `rill run`'s summary and in `rill list --json` / `rill status`.
use std::time::{Duration, Instant};

use crate::check;
use crate::support::{Flow, rill_json};

/// A producer that sends 500 messages at once into a consumer that takes
/// 20 ms for each and keeps 5: most are dropped.
const OVERFLOW: &str = "nodes:
  - id: source
    path: {node}
    args: [burst, '500', '64']
    outputs: [out]
    deploy: { machine: a }
  - id: sink
    path: {node}
    args: [slow, '20']
    inputs:
      in: { source: source/out, queue_size: 5 }
    deploy: { machine: a }
";

#[test]
fn rill_run_reports_the_exact_drops_of_an_overflowing_queue() {
    let flow = Flow::new(&OVERFLOW.replace("    deploy: { machine: a }\n", ""));
    let run = flow.run(&["--json"], Duration::from_secs(60));
    check!(run, run.code == Some(0), "the dataflow ends by itself");
    let summary: serde_json::Value = serde_json::from_str(run.stdout.lines().last().unwrap_or("")).unwrap_or_default();
    let nodes = summary["nodes"].as_array().cloned().unwrap_or_default();
    let node = |id: &str| nodes.iter().find(|n| n["node"] == id).cloned().unwrap_or_default();
    let printed = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["event"] == "log" && l["node"] == "sink" && l["line"].as_str().is_some_and(|s| s.starts_with("seq "))
        })
        .count() as u64;
    let sink = node("sink");
    check!(run, printed > 0 && printed < 500, "the sink kept up with only some: {printed}");
    check!(run, sink["inputs"]["in"]["received"] == printed, "received = what the sink handled: {sink}");
    check!(run, sink["inputs"]["in"]["dropped"] == 500 - printed, "dropped = the rest, exactly: {sink}");
    check!(run, sink["received"] == printed && sink["dropped"] == 500 - printed, "node totals: {sink}");
    let source = node("source");
    check!(run, source["outputs"]["out"] == serde_json::json!({"messages": 500, "bytes": 32000}), "{source}");
    check!(run, source["sent"] == 500, "{source}");
}

#[test]
fn rill_run_says_which_input_dropped_messages() {
    let flow = Flow::new(&OVERFLOW.replace("    deploy: { machine: a }\n", ""));
    let run = flow.run(&[], Duration::from_secs(60));
    check!(run, run.code == Some(0), "the dataflow ends by itself");
    let printed = run.node_lines("sink").iter().filter(|l| l.starts_with("seq ")).count() as u64;
    let note = format!(
        "rill: node `sink` input `in`: {} dropped (its queue was full), {printed} received; raise its queue_size or make the node faster",
        500 - printed
    );
    check!(run, run.stderr.contains(&note), "expected {note:?}");
}

#[test]
fn rill_list_shows_the_exact_drops_and_rates_of_a_running_dataflow() {
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], OVERFLOW, "[app/sink] seq");
    let port_text = port.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (sink, source) = loop {
        let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port_text]);
        let dataflow = &list["dataflows"][0];
        let sink = dataflow["traffic"]["sink"].clone();
        let in_all = sink["received"].as_u64().unwrap_or(0) + sink["dropped"].as_u64().unwrap_or(0);
        if dataflow["nodes"]["sink"]["state"] == "finished" && in_all == 500 {
            break (sink, dataflow["traffic"]["source"].clone());
        }
        assert!(Instant::now() < deadline, "counts never added up to 500: {list}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    // The daemon's log may trail the counts by a moment.
    let received = sink["inputs"]["in"]["received"].as_u64().unwrap_or(0);
    let printed = || procs.log("daemon-a").lines().filter(|l| l.starts_with("[app/sink] seq ")).count() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    while printed() != received && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let printed = printed();
    assert!(printed > 0 && printed < 500, "{printed}\n{}", procs.logs());
    assert_eq!(sink["inputs"]["in"], serde_json::json!({"received": printed, "dropped": 500 - printed}), "{sink}");
    assert_eq!((source["sent"].as_u64(), source["bytes_sent"].as_u64()), (Some(500), Some(32000)), "{source}");
    let (code, status, stderr) = rill_json(&["status", "--json", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(status["dataflows"][0]["traffic"]["sink"]["dropped"], 500 - printed, "{status}");
}

/// A ticker at 50 Hz into a printing sink.
pub(crate) const TICKER: &str = "nodes:
  - id: ticker
    path: {node}
    args: [count-send]
    inputs: { tick: rill/timer/millis/20 }
    outputs: [out]
    deploy: { machine: a }
  - id: sink
    path: {node}
    args: [print]
    inputs: { in: ticker/out }
    deploy: { machine: a }
";

#[test]
fn rill_top_once_json_lists_every_node_with_pid_usage_and_rates() {
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], TICKER, "[app/sink] input in");
    let port_text = port.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let (code, top, stderr) = rill_json(&["top", "--once", "--json", "--coordinator-port", &port_text]);
        assert_eq!(code, Some(0), "{stderr}");
        let nodes = top["dataflows"][0]["nodes"].as_array().cloned().unwrap_or_default();
        let complete = |n: &serde_json::Value| {
            n["pid"].as_u64().is_some() && n["cpu_percent"].is_number() && n["rss_bytes"].as_u64().unwrap_or(0) > 0
        };
        if nodes.len() == 2 && nodes.iter().all(complete) && nodes[0]["msgs_out_per_s"].as_f64().unwrap_or(0.0) > 0.0 {
            break nodes;
        }
        assert!(Instant::now() < deadline, "rill top never showed both nodes whole: {top}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(300));
    };
    let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port_text]);
    for node in &nodes {
        let id = node["node"].as_str().unwrap_or("");
        assert_eq!(node["pid"], list["dataflows"][0]["nodes"][id]["pid"], "the running process: {node}");
        assert_eq!(node["machine"], "a", "{node}");
        assert_eq!(node["state"], "running", "{node}");
        assert_eq!(node["restarts"], 0, "{node}");
        assert!(node["cpu_percent"].as_f64().is_some_and(|c| (0.0..=200.0).contains(&c)), "{node}");
    }
    assert_eq!(nodes.iter().map(|n| n["node"].as_str().unwrap_or("")).collect::<Vec<_>>(), ["ticker", "sink"]);
    let (code, _, stderr) = rill_json(&["top", "nothing", "--once", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no dataflow named or with uuid `nothing`"), "{stderr}");
}

/// `rill top` in a pseudo-terminal (script(1)), once it shows the table:
/// the `script` process and what the terminal received so far.
fn top_in_a_terminal(
    procs: &crate::support::Processes,
    port: u16,
) -> (std::process::Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let rill = crate::support::rill();
    // (A pseudo-terminal fed from a pipe has no size: give it one.)
    let command = format!(
        "stty rows 40 cols 200; exec {} top --coordinator-port {port} --interval 0.2",
        rill.get_program().to_string_lossy()
    );
    // script(1) gives it a pseudo-terminal; q on its input quits. The
    // screen is drawn with cursor moves, not lines: read raw bytes.
    let mut top = std::process::Command::new("script");
    top.args(["-q", "-e", "-c", &command, "/dev/null"]);
    top.envs(rill.get_envs().filter_map(|(k, v)| Some((k, v?))));
    top.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = top.spawn().expect("script");
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = child.stdout.take().expect("stdout");
    let seen = screen.clone();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let shown = || screen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(shown().contains("CPU%") && shown().contains("ticker") && shown().contains("sink")) {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no table within 20 s:\n{}\n{}", shown(), procs.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, screen)
}

/// Waits (at most 10 s) for `child` to exit.
fn exit_of(child: &mut std::process::Child, what: &str, screen: &std::sync::Mutex<String>) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rill top did not quit on {what}:\n{}", screen.lock().unwrap_or_else(|e| e.into_inner()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rill_top_draws_its_table_in_a_terminal_and_quits_on_q_or_sigterm_restoring_the_terminal() {
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], TICKER, "[app/sink] input in");
    let (mut child, screen) = top_in_a_terminal(&procs, port);
    use std::io::Write as _;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"q").expect("write q");
    stdin.flush().expect("flush");
    let status = exit_of(&mut child, "q", &screen);
    let shown = || screen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(status.success(), "{status}\n{}", shown());

    // SIGTERM (as `kill` or a closing session sends): the same clean end,
    // the alternate screen left.
    let (mut child, screen) = top_in_a_terminal(&procs, port);
    let children = std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()));
    let top: i32 = children.unwrap_or_default().split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(top > 0, "rill top runs under script");
    // SAFETY: kill(2) on a process this test started (script's child).
    unsafe { libc::kill(top, libc::SIGTERM) };
    let status = exit_of(&mut child, "SIGTERM", &screen);
    let shown = screen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(status.success(), "exits 0, not killed by the signal: {status}\n{shown}");
    assert!(shown.contains("\u{1b}[?1049l"), "the alternate screen is left: {shown:?}");

    let (code, _, stderr) = rill_json(&["top", "--coordinator-port", &port.to_string()]);
    assert_eq!(code, Some(1), "no terminal: {stderr}");
    assert!(stderr.contains("rill top needs a terminal; use `rill top --once`"), "{stderr}");
}

#[test]
fn rates_of_a_timer_driven_node_read_about_its_rate_and_status_shows_them() {
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], TICKER, "[app/sink] input in");
    let port_text = port.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port_text]);
        let t = &list["dataflows"][0]["traffic"];
        let rate = |node: &str, key: &str| t[node][key].as_f64().unwrap_or(0.0);
        // 50 a second, give or take a loaded machine.
        if (25.0..=75.0).contains(&rate("ticker", "msgs_in_per_s"))
            && (25.0..=75.0).contains(&rate("ticker", "msgs_out_per_s"))
            && (25.0..=75.0).contains(&rate("sink", "msgs_in_per_s"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "rates never read about 50/s: {t}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = crate::support::rill().args(["status", "--coordinator-port", &port_text]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DATAFLOW") && text.contains("IN/S") && text.contains("DROPPED"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("app") && l.contains("ticker") && l.contains("running")), "{text}");
}

#[test]
fn topic_list_and_info_show_outputs_consumers_and_counts() {
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], TICKER, "[app/sink] input in");
    let port_text = port.to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let topics = loop {
        let (code, list, stderr) = rill_json(&["topic", "list", "app", "--json", "--coordinator-port", &port_text]);
        assert_eq!(code, Some(0), "{stderr}");
        let (sent, received) = (&list["topics"][0]["messages"], &list["topics"][0]["consumers"][0]["received"]);
        if sent.as_u64().unwrap_or(0) > 0 && received.as_u64().unwrap_or(0) > 0 {
            break list["topics"].clone();
        }
        assert!(Instant::now() < deadline, "no counts: {list}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    let topics = topics.as_array().cloned().unwrap_or_default();
    assert_eq!(topics.len(), 1, "{topics:?}");
    let topic = &topics[0];
    assert_eq!((topic["name"].as_str(), topic["machine"].as_str()), (Some("ticker/out"), Some("a")), "{topic}");
    assert_eq!(topic["bytes"], topic["messages"].as_u64().unwrap_or(0) * 8, "8 bytes each: {topic}");
    let consumer = &topic["consumers"][0];
    assert_eq!((consumer["node"].as_str(), consumer["input"].as_str()), (Some("sink"), Some("in")), "{consumer}");
    assert_eq!(consumer["queue_size"], 10, "the default queue: {consumer}");

    let out = crate::support::rill()
        .args(["topic", "info", "app", "ticker/out", "--coordinator-port", &port_text])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("producer  node ticker on a"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("sink/in") && l.contains(" a ") && l.contains(" 10 ")), "{text}");
    let out = crate::support::rill()
        .args(["topic", "info", "app", "ticker/ot", "--coordinator-port", &port_text])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("dataflow app has no output `ticker/ot`") && err.contains("ticker/out"), "{err}");
    let (code, _, err) = rill_json(&["topic", "list", "nothing", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no dataflow named or with uuid `nothing`"), "{err}");
}

#[test]
fn a_consumer_that_never_reads_shows_what_its_producer_dropped_for_it() {
    // The sink is not a rill node at all: it never reads its input.
    let flow = Flow::new(
        "nodes:
  - id: source
    path: {node}
    args: [burst, '2000', '64']
    outputs: [out]
  - id: sink
    path: /bin/sleep
    args: ['3']
    inputs:
      in: source/out
",
    );
    let run = flow.run(&["--json"], Duration::from_secs(60));
    check!(run, run.code == Some(0), "the dataflow ends by itself");
    let summary: serde_json::Value = serde_json::from_str(run.stdout.lines().last().unwrap_or("")).unwrap_or_default();
    let sink = summary["nodes"].as_array().into_iter().flatten().find(|n| n["node"] == "sink").cloned();
    let sink = sink.unwrap_or_default();
    check!(run, sink["received"] == 0, "{sink}");
    check!(run, sink["inputs"]["in"]["dropped"].as_u64().unwrap_or(0) > 0, "the producer's drops count here: {sink}");
}

#[test]
fn drops_for_a_consumer_on_another_machine_that_never_reads_are_counted() {
    let (procs, port) = crate::cluster::two_daemons();
    let flow = Flow::new(
        "nodes:
  - id: source
    path: {node}
    args: [count-send]
    inputs: { tick: rill/timer/millis/1 }
    outputs: [out]
    deploy: { machine: a }
  - id: sink
    path: /bin/sleep
    args: ['30']
    inputs:
      in: source/out
    deploy: { machine: b }
",
    );
    // A thousand small messages a second: the sending side keeps up, and
    // the drops happen in machine b's bridge, which must say so.
    crate::cluster::start_flow(&procs, port, &flow, "far");
    let port_text = port.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port_text]);
        let t = &list["dataflows"][0]["traffic"];
        // The receiving daemon's bridge drops what the sink's socket and
        // queue cannot hold.
        if t["sink"]["inputs"]["in"]["dropped"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(t["sink"]["received"], 0, "{t}");
            break;
        }
        assert!(Instant::now() < deadline, "no drops counted for the far sink: {t}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
}

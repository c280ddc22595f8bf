//! Taps: `rill topic echo` and `rill topic hz` read what an output sends,
//! on any machine of the cluster, and leave nothing behind when they end.
use std::time::{Duration, Instant};

use crate::support::{Flow, Running, rill, rill_json};

/// A ticker at 100 Hz into a printing sink, on machine a (the traffic
/// tests' 50 Hz ticker, twice as fast).
fn ticker_100() -> String {
    crate::traffic::TICKER.replace("rill/timer/millis/20", "rill/timer/millis/10")
}

/// `rill topic ARGS... --coordinator-port PORT`, running.
fn topic(port: u16, args: &[&str]) -> Running {
    let mut cmd = rill();
    cmd.arg("topic").args(args).args(["--coordinator-port", &port.to_string()]);
    Running::start(cmd)
}

/// Threads of process `pid` that serve taps.
fn tap_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks.filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("tap-"))).count()
}

/// Open file descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Becomes true within `limit`, else fails with `logs`.
fn within(limit: Duration, what: &str, logs: impl Fn() -> String, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON lines of `stdout`.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The sequence number count-send put first in a payload (hex preview).
fn seq(message: &serde_json::Value) -> u64 {
    let hex = message["hex"].as_str().unwrap_or("");
    let bytes: Vec<u8> = hex.split(' ').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(u64::MAX)
}

#[test]
fn topic_echo_prints_what_an_output_sends_and_its_tap_goes_when_the_client_does() {
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], &ticker_100(), "[app/sink] input in");
    let daemon = procs.pid("daemon-a");
    let listed =
        crate::faults::dataflow_when(&procs, port, "the ticker runs", |d| d["nodes"]["ticker"]["pid"].is_u64());
    let ticker = listed["nodes"]["ticker"]["pid"].as_u64().unwrap_or(0) as u32;
    let ticker_fds = fds(ticker);

    let mut echo = topic(port, &["echo", "app", "ticker/out", "--count", "5", "--json"]);
    let done = echo.wait(Duration::from_secs(30));
    assert_eq!(done.code, Some(0), "{}\n{}", done.logs(), procs.logs());
    let messages = json_lines(&done.stdout);
    assert_eq!(messages.len(), 5, "{}", done.logs());
    let first = seq(&messages[0]);
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["topic"], "ticker/out", "{m}");
        assert_eq!(m["size"], 8, "{m}");
        assert_eq!(seq(m), first + i as u64, "consecutive sequence numbers: {}", done.stdout);
        let (sent, read) = (m["timestamp_ns"].as_u64().unwrap_or(0), m["received_ns"].as_u64().unwrap_or(0));
        assert!(sent > 0 && read >= sent && m["latency_us"].as_f64().is_some(), "{m}");
    }

    // Text: the time, topic, size, latency and a hex preview (not UTF-8 text).
    let done = topic(port, &["echo", "app", "ticker/out", "--count", "2"]).wait(Duration::from_secs(30));
    assert_eq!(done.code, Some(0), "{}", done.logs());
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", done.logs());
    assert!(
        lines.iter().all(|l| l.contains(" UTC  ticker/out  8 B  latency ") && l.ends_with(" 00 00 00")),
        "{lines:?}"
    );

    // A client that is killed: its tap thread goes, and the producer
    // closes the tap's edge (back to the fds it had).
    let logs = || procs.logs();
    within(Duration::from_secs(10), "the earlier taps are gone", logs, || {
        tap_threads(daemon) == 0 && fds(ticker) == ticker_fds
    });
    let echo_running = topic(port, &["echo", "app", "ticker/out", "--json"]);
    echo_running.wait_for("messages", Duration::from_secs(20), |out| out.lines().count() >= 3);
    within(Duration::from_secs(10), "the tap is served by the producer's daemon", logs, || tap_threads(daemon) == 1);
    within(Duration::from_secs(10), "the producer has one more edge", logs, || fds(ticker) == ticker_fds + 1);
    echo_running.signal(libc::SIGKILL);
    within(Duration::from_secs(10), "the tap thread ends", logs, || tap_threads(daemon) == 0);
    within(Duration::from_secs(10), "the producer closes the tap's edge", logs, || fds(ticker) == ticker_fds);
    drop(echo);

    // Bad names are refused with what exists; the coordinator still answers.
    let bad = topic(port, &["echo", "app", "ticker/outt"]).wait(Duration::from_secs(20));
    assert_eq!(bad.code, Some(1), "{}", bad.logs());
    assert!(bad.stderr.contains("no output `ticker/outt`") && bad.stderr.contains("ticker/out"), "{}", bad.logs());
    let bad = topic(port, &["hz", "nope", "ticker/out"]).wait(Duration::from_secs(20));
    assert_eq!(bad.code, Some(1), "{}", bad.logs());
    assert!(bad.stderr.contains("no running dataflow named or with uuid `nope`"), "{}", bad.logs());
    let (code, _, stderr) = rill_json(&["list", "--json", "--coordinator-port", &port.to_string()]);
    assert_eq!(code, Some(0), "the coordinator answers after refusing taps: {stderr}\n{}", procs.logs());
}

#[test]
fn topic_echo_reads_an_output_on_a_second_daemon() {
    let (procs, port) = crate::cluster::two_daemons();
    let flow = Flow::new(&ticker_100().replacen("deploy: { machine: a }", "deploy: { machine: b }", 1));
    crate::cluster::start_flow(&procs, port, &flow, "far");
    let done = topic(port, &["echo", "far", "ticker/out", "--count", "5", "--json"]).wait(Duration::from_secs(30));
    assert_eq!(done.code, Some(0), "{}\n{}", done.logs(), procs.logs());
    let messages = json_lines(&done.stdout);
    assert_eq!(messages.len(), 5, "{}\n{}", done.logs(), procs.logs());
    let first = seq(&messages[0]);
    assert!(messages.iter().enumerate().all(|(i, m)| m["topic"] == "ticker/out" && seq(m) == first + i as u64));
    let (info_code, info, _) =
        rill_json(&["topic", "info", "far", "ticker/out", "--json", "--coordinator-port", &port.to_string()]);
    assert_eq!((info_code, &info["machine"]), (Some(0), &serde_json::json!("b")), "the producer runs on b: {info}");
    // Served by b, the producer's daemon, not a; gone with its client.
    let (a, b) = (procs.pid("daemon-a"), procs.pid("daemon-b"));
    let logs = || procs.logs();
    within(Duration::from_secs(10), "the first tap is gone", logs, || tap_threads(b) == 0);
    let echo = topic(port, &["echo", "far", "ticker/out", "--json"]);
    echo.wait_for("messages", Duration::from_secs(20), |out| out.lines().count() >= 3);
    within(Duration::from_secs(10), "b serves the tap", logs, || tap_threads(b) == 1 && tap_threads(a) == 0);
    echo.signal(libc::SIGKILL);
    within(Duration::from_secs(10), "b's tap thread ends", logs, || tap_threads(b) == 0);
}

#[test]
fn topic_hz_reports_a_100_hz_timer_output_at_about_100_hz() {
    let (procs, port, _, _flow) = crate::faults::app_on_a(&[], &ticker_100(), "[app/sink] input in");
    let done = topic(port, &["hz", "app", "ticker/out", "--count", "3", "--json"]).wait(Duration::from_secs(30));
    assert_eq!(done.code, Some(0), "{}\n{}", done.logs(), procs.logs());
    let reports = json_lines(&done.stdout);
    assert_eq!(reports.len(), 3, "{}", done.logs());
    let last = &reports[2];
    let rate = last["rate_hz"].as_f64().unwrap_or(0.0);
    eprintln!("topic hz: {last}");
    assert!((80.0..=120.0).contains(&rate), "rate {rate} Hz: {}", done.logs());
    let (min, max, std_dev) = (
        last["min_s"].as_f64().unwrap_or(-1.0),
        last["max_s"].as_f64().unwrap_or(-1.0),
        last["std_dev_s"].as_f64().unwrap_or(-1.0),
    );
    assert!(0.0 < min && min <= 1.0 / rate && 1.0 / rate <= max && std_dev >= 0.0, "{last}");
    assert!(last["window"].as_u64().unwrap_or(0) >= 100, "about 3 s of intervals: {last}");

    // Text, as ros2 prints it.
    let done = topic(port, &["hz", "app", "ticker/out", "--count", "1"]).wait(Duration::from_secs(30));
    assert!(done.stdout.starts_with("average rate: ") && done.stdout.contains("std dev: "), "{}", done.logs());
}

/// Two tickers (50 and 33 Hz) into one printing sink, on machine a.
const TWO_TICKERS: &str = "nodes:
  - id: ticker
    path: {node}
    args: [count-send]
    inputs: { tick: rill/timer/millis/20 }
    outputs: [out]
    deploy: { machine: a }
  - id: other
    path: {node}
    args: [count-send]
    inputs: { tick: rill/timer/millis/30 }
    outputs: [out]
    deploy: { machine: a }
  - id: sink
    path: {node}
    args: [print]
    inputs: { a: ticker/out, b: other/out }
    deploy: { machine: a }
";

/// The sequence numbers the sink printed for `input`, in order.
fn printed(lines: &str, input: &str) -> Vec<u64> {
    let prefix = format!("[sink] input {input} len=8 seq=");
    lines.lines().filter_map(|l| l.strip_prefix(&prefix)?.split(' ').next()?.parse().ok()).collect()
}

#[test]
fn rill_record_writes_mcap_the_mcap_crate_reads_and_rill_replay_feeds_a_sink_the_same_payloads() {
    let (procs, port, _, flow) = crate::faults::app_on_a(&[], TWO_TICKERS, "[app/sink] input b");
    let file = procs.dir.path().join("rec.mcap");
    let file_text = file.display().to_string();
    let began = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut record = rill();
    record.args([
        "record",
        "app",
        "-o",
        &file_text,
        "--count",
        "30",
        "--json",
        "--coordinator-port",
        &port.to_string(),
    ]);
    let done = Running::start(record).wait(Duration::from_secs(30));
    assert_eq!(done.code, Some(0), "{}\n{}", done.logs(), procs.logs());
    let summary: serde_json::Value = serde_json::from_str(done.stdout.trim()).unwrap_or_default();
    assert_eq!(summary["messages"], 30, "{}", done.logs());

    // Read back with the mcap crate: one channel per output, 30 messages,
    // each channel's payloads consecutive sequence numbers.
    let bytes = std::fs::read(&file).expect("the recording");
    let messages: Vec<mcap::Message> =
        mcap::MessageStream::new(&bytes).expect("MCAP").collect::<Result<_, _>>().expect("readable messages");
    assert_eq!(messages.len(), 30);
    let summary = mcap::Summary::read(&bytes).expect("a summary").expect("present");
    let mut topics: Vec<&str> = summary.channels.values().map(|c| c.topic.as_str()).collect();
    topics.sort();
    assert_eq!(topics, ["other/out", "ticker/out"]);
    let seqs = |topic: &str| -> Vec<u64> {
        messages
            .iter()
            .filter(|m| m.channel.topic == topic)
            .map(|m| m.data.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(u64::MAX))
            .collect()
    };
    let (ticker, other) = (seqs("ticker/out"), seqs("other/out"));
    assert!(!ticker.is_empty() && !other.is_empty(), "both outputs recorded: {ticker:?} {other:?}");
    for s in [&ticker, &other] {
        assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost: {s:?}");
    }
    let times: Vec<u64> = messages.iter().filter(|m| m.channel.topic == "ticker/out").map(|m| m.log_time).collect();
    assert!(times.windows(2).all(|w| w[1] > w[0]), "original send times, increasing: {times:?}");
    // Wall-clock send times of this recording (a 20 ms ticker: at most
    // one was sent before the tap was wired).
    assert!(times[0] + 100_000_000 > began, "{} vs the start {began}", times[0]);
    let span_ns =
        messages.iter().map(|m| m.log_time).max().unwrap_or(0) - messages.iter().map(|m| m.log_time).min().unwrap_or(0);
    let about = summary
        .metadata_indexes
        .iter()
        .find(|m| m.name == "rill")
        .map(|index| mcap::read::metadata(&bytes, index).expect("the rill metadata record").metadata);
    let about = about.expect("a rill metadata record");
    assert_eq!(
        (about.get("dataflow"), about.get("dropped"), about.get("cut")),
        (Some(&"app".to_owned()), Some(&"0".to_owned()), Some(&"0".to_owned())),
        "{about:?}"
    );

    // Replayed into the same dataflow (run here): the sink gets exactly
    // the recorded payloads, in order, and the run ends by itself.
    let mut replay = rill();
    replay.arg("replay").arg(&file).arg(&flow.file).args(["--rate", "2"]);
    let done = Running::start(replay).wait(Duration::from_secs(60));
    assert_eq!(done.code, Some(0), "{}", done.logs());
    // At the recorded pace, twice as fast.
    assert!(done.elapsed.as_nanos() as u64 >= span_ns / 2, "{:?} for {span_ns} ns recorded", done.elapsed);
    assert_eq!(printed(&done.stdout, "a"), ticker, "{}", done.logs());
    assert_eq!(printed(&done.stdout, "b"), other, "{}", done.logs());
    assert!(done.stderr.contains("node `ticker` replays out from "), "{}", done.logs());

    // A recorded output the dataflow lacks, and an existing file: refused.
    let mut bad = rill();
    bad.arg("replay").arg(&file).arg(&flow.file).args(["--outputs", "ticker/outt"]);
    let bad = Running::start(bad).wait(Duration::from_secs(20));
    assert_eq!(bad.code, Some(1), "{}", bad.logs());
    assert!(bad.stderr.contains("no recorded output `ticker/outt`"), "{}", bad.logs());
    let mut again = rill();
    again.args(["record", "app", "-o", &file_text, "--count", "1", "--coordinator-port", &port.to_string()]);
    let again = Running::start(again).wait(Duration::from_secs(20));
    assert!(again.code == Some(1) && again.stderr.contains("exists already"), "{}", again.logs());
}

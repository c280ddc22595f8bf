//! `rill-bench latency`: a two-node dataflow through the real daemon, and a
//! raw Unix-socket ping-pong of the same size in the same run as baseline.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
mod cross;

use rill_bench::{BurstPlan, PythonEnd, common_cells, echo, iterations, median, memcpy_seconds, ping_pong};
use rill_core::Dataflow;
use rill_daemon::{Report, RunOptions, Runtime, Stream};

#[derive(Parser)]
#[command(
    name = "rill-bench",
    about = "rill benchmarks; figures are printed next to a baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One-way latency and throughput between two nodes (one hop, as in production), per payload size.
    Latency {
        /// Finish in well under 30 s (fewer iterations).
        #[arg(long)]
        quick: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Payload sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "8,4096,65536,1048576,4194304")]
        sizes: Vec<usize>,
        /// Ping on one daemon, pong on another (a coordinator and two
        /// daemons in this process, data over the cross-machine bridge on
        /// loopback); baselines: raw TCP and TLS on loopback.
        #[arg(long)]
        cross: bool,
        /// With --cross: the cluster without TLS (control plane and data
        /// links), as `rill coordinator --insecure-plaintext` runs it.
        #[arg(long, requires = "cross")]
        insecure_plaintext: bool,
    },
    /// Bursts of back-to-back messages per size with the producer idle in
    /// between (not calling rill-node): the worst one-way latency within a
    /// burst, and msg/s next to a memcpy ceiling measured in the same run.
    Burst {
        /// 3 rounds with 300 ms idle between bursts (about 10 s).
        #[arg(long)]
        quick: bool,
        /// One JSON object per size.
        #[arg(long)]
        json: bool,
        /// Payload sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "0,8,512,2048,4096,16384,40960,409600,4096000")]
        sizes: Vec<usize>,
        /// Messages per burst.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Rounds over all sizes; figures are the median (msg/s) and the
        /// worst (latency) over rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// How long the producer sleeps after each burst [default: 2000, 300 with --quick].
        #[arg(long)]
        idle_ms: Option<u64>,
        /// The consumer reads every byte of every payload.
        #[arg(long)]
        touch: bool,
        /// Report the producer's RSS this many seconds after its last
        /// burst, next to its RSS before the first (0: don't).
        #[arg(long, default_value_t = 10)]
        rss_after_s: u64,
        /// Producer on one daemon, consumer on another (data over the bridge).
        #[arg(long)]
        cross: bool,
        /// With --cross: no TLS (see `latency --insecure-plaintext`).
        #[arg(long, requires = "cross")]
        insecure_plaintext: bool,
    },
    /// One-way latency with a Python node at one end (Python → Rust and
    /// Rust → Python), next to Rust → Rust in the same run.
    Python {
        /// Finish in well under 30 s (fewer iterations).
        #[arg(long)]
        quick: bool,
        /// One JSON object per size and direction.
        #[arg(long)]
        json: bool,
        /// Payload sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "8,4194304")]
        sizes: Vec<usize>,
        /// The interpreter that has the `rill` package (default: $RILL_PYTHON, else python3).
        #[arg(long)]
        python: Option<String>,
    },
    /// One producer on one daemon, several consumers of its output on
    /// another (the cross-machine bridge): does every consumer get every
    /// message, and at what rate.
    Fanout {
        /// One round of 50 messages (a few seconds).
        #[arg(long)]
        quick: bool,
        /// One JSON object per consumer, then a summary.
        #[arg(long)]
        json: bool,
        /// Consumers, all on the other daemon.
        #[arg(long, default_value_t = 4)]
        consumers: usize,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        /// Messages per burst (each consumer's input keeps 1,000).
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Bursts, 300 ms apart.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// No TLS (see `latency --insecure-plaintext`).
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// A consumer's throughput with a tap on its producer's output (as
    /// `rill topic echo` attaches one), next to the same dataflow without
    /// it, runs alternating; both on one daemon of an in-process cluster.
    Tap {
        /// 2 runs of each kind, smaller bursts (about 30 s).
        #[arg(long)]
        quick: bool,
        /// One JSON object per size.
        #[arg(long)]
        json: bool,
        /// Payload sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "8,4096,65536,1048576")]
        sizes: Vec<usize>,
        /// Messages per burst (the consumer's input keeps 1,000).
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Bursts per size and run (the first of each run is not counted:
        /// the tap is wired while it goes).
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// Runs with a tap (and as many without).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// (internal) echo SIZE-byte messages on stdin back to it, for the
    /// two-process baseline.
    #[command(hide = true)]
    EchoServer { size: usize },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Latency { quick, json, sizes, cross, insecure_plaintext } => {
            latency(quick, json, &sizes, cross.then_some(insecure_plaintext))
        }
        Command::Burst {
            quick,
            json,
            sizes,
            count,
            rounds,
            idle_ms,
            touch,
            rss_after_s,
            cross,
            insecure_plaintext,
        } => {
            let idle_ms = idle_ms.unwrap_or(if quick { 300 } else { 2000 });
            let plan = BurstPlan { sizes, rounds, count, idle_ms, rss_wait_s: rss_after_s };
            burst(&plan, touch, cross.then_some(insecure_plaintext), json)
        }
        Command::Tap { quick, json, sizes, count, rounds, runs } => {
            let (count, rounds, runs) = if quick { (500, 3, 2) } else { (count, rounds, runs) };
            let plan = BurstPlan { sizes, rounds, count, idle_ms: 200, rss_wait_s: 0 };
            tap_overhead(&plan, runs, json)
        }
        Command::Fanout { quick, json, consumers, size, count, rounds, insecure_plaintext } => {
            let (count, rounds) = if quick { (50, 1) } else { (count, rounds) };
            let plan = BurstPlan { sizes: vec![size], rounds, count, idle_ms: 300, rss_wait_s: 0 };
            fan_out(&plan, consumers, insecure_plaintext, json)
        }
        Command::Python { quick, json, sizes, python } => {
            let python = python
                .or_else(|| std::env::var("RILL_PYTHON").ok().filter(|p| !p.is_empty()))
                .unwrap_or_else(|| "python3".into());
            // The nodes run in another directory: a relative path must not be.
            let python = match python.contains('/') {
                // (Not canonicalize: a venv's python is a symlink that must stay one.)
                true => {
                    std::path::absolute(&python).with_context(|| format!("bad path {python}"))?.display().to_string()
                }
                false => python,
            };
            python_latency(quick, json, &sizes, &python)
        }
        Command::EchoServer { size } => {
            // SAFETY: fd 0 is the socket the parent gave us.
            let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(0) };
            echo(stream, size);
            Ok(())
        }
    }
}

/// `cross`: `None` on one daemon; `Some(plaintext)` across two.
fn latency(quick: bool, json: bool, sizes: &[usize], cross: Option<bool>) -> anyhow::Result<()> {
    if let Some(plaintext) = cross {
        return latency_cross(quick, json, sizes, plaintext);
    }
    let (hot, paced, bursts) = if quick { (1000, 150, 20) } else { (10_000, 1000, 200) };
    let yaml = rill_bench::ping_pong_yaml(sizes, hot, paced, bursts, false)?;
    let results = run_dataflow(&yaml, sizes.len())?;
    if !json {
        println!(
            "{:>9} {:>9} {:>9} {:>12} {:>12} {:>11} {:>13} {:>7} {:>12}",
            "size", "p50_us", "p99_us", "paced_p50", "paced_p99", "msgs/s", "baseline_p50", "ratio", "proc_base"
        );
    }
    for (size, mut result) in sizes.iter().zip(results) {
        let iters = iterations(*size, hot);
        let baseline = socket_baseline(*size, iters)?;
        let process_baseline = process_baseline(*size, iters)?;
        result["baseline_p50_us"] = serde_json::json!((baseline * 10.0).round() / 10.0);
        result["process_baseline_p50_us"] = serde_json::json!((process_baseline * 10.0).round() / 10.0);
        if json {
            println!("{result}");
        } else {
            let ratio = result["p50_us"].as_f64().unwrap_or(f64::NAN) / baseline;
            println!("{} {baseline:>13.1} {ratio:>6.2}x {process_baseline:>12.1}", common_cells(*size, &result));
        }
    }
    Ok(())
}

/// Rust → Rust, Python → Rust and Rust → Python, one dataflow each.
fn python_latency(quick: bool, json: bool, sizes: &[usize], python: &str) -> anyhow::Result<()> {
    let imports = std::process::Command::new(python).args(["-c", "import rill"]).output();
    if !imports.is_ok_and(|out| out.status.success()) {
        bail!(
            "`{python}` cannot import rill: install it with `pip install ./apis/python` (docs/python.md), \
             or name another interpreter with --python"
        );
    }
    let (hot, paced, bursts) = if quick { (1000, 150, 20) } else { (10_000, 1000, 200) };
    let rust = run_dataflow(&rill_bench::ping_pong_yaml(sizes, hot, paced, bursts, false)?, sizes.len())?;
    let mut rows = Vec::new();
    for (direction, end) in [("python->rust", PythonEnd::Ping), ("rust->python", PythonEnd::Pong)] {
        let yaml = rill_bench::python_ping_pong_yaml(sizes, hot, paced, bursts, end, python)?;
        rows.push((direction, run_dataflow(&yaml, sizes.len())?));
    }
    rows.insert(0, ("rust->rust", rust.clone()));
    if !json {
        println!("one machine; python: {python}; ratio = p50 / rust->rust p50 of the same size");
        println!(
            "{:>13} {:>9} {:>9} {:>9} {:>12} {:>12} {:>11} {:>7}",
            "direction", "size", "p50_us", "p99_us", "paced_p50", "paced_p99", "msgs/s", "ratio"
        );
    }
    for (direction, results) in rows {
        for ((size, mut result), base) in sizes.iter().zip(results).zip(&rust) {
            let ratio = result["p50_us"].as_f64().unwrap_or(f64::NAN) / base["p50_us"].as_f64().unwrap_or(f64::NAN);
            result["direction"] = serde_json::json!(direction);
            result["rust_p50_us"] = base["p50_us"].clone();
            result["ratio"] = serde_json::json!((ratio * 100.0).round() / 100.0);
            if json {
                println!("{result}");
            } else {
                println!("{direction:>13} {} {ratio:>6.2}x", common_cells(*size, &result));
            }
        }
    }
    Ok(())
}

fn latency_cross(quick: bool, json: bool, sizes: &[usize], plaintext: bool) -> anyhow::Result<()> {
    let (hot, paced, bursts) = if quick { (300, 50, 5) } else { (3000, 300, 50) };
    let yaml = rill_bench::ping_pong_yaml(sizes, hot, paced, bursts, true)?;
    let results = cross::run(&yaml, sizes.len(), plaintext)?;
    let (transport, link) = if plaintext { ("plaintext", cross::Link::Tcp) } else { ("tls", cross::Link::Tls) };
    if !json {
        println!("cross-daemon (bridge over loopback), data links: {transport}");
        println!(
            "baseline: the same three hops with raw relays ({transport}); tcp: one hop of raw TCP (latency and streamed MB/s); of_link: MB/s against one streamed hop of {transport}"
        );
        println!(
            "{:>9} {:>9} {:>9} {:>12} {:>12} {:>11} {:>9} {:>12} {:>7} {:>9} {:>9} {:>7} {:>7}",
            "size",
            "p50_us",
            "p99_us",
            "paced_p50",
            "paced_p99",
            "msgs/s",
            "MB/s",
            "baseline_p50",
            "ratio",
            "tcp_p50",
            "tcp_MB/s",
            "of_tcp",
            "of_link"
        );
    }
    // A raw stream is over in tens of milliseconds and its figure swings by
    // a third between runs: a longer stream, three times, the median.
    let stream_bytes: usize = if quick { 16 << 20 } else { 1 << 30 };
    let stream_runs = if quick { 1 } else { 3 };
    let streamed = |size: usize, count: usize, link: cross::Link| -> anyhow::Result<f64> {
        let runs =
            (0..stream_runs).map(|_| cross::stream_baseline(size, count, link)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(rill_bench::median(runs))
    };
    for (size, mut result) in sizes.iter().zip(results) {
        let iters = iterations(*size, hot);
        let baseline = cross::relay_baseline(*size, iters, link)?;
        let tcp = cross::tcp_baseline(*size, iters)?;
        let tls = cross::tls_baseline(*size, iters)?;
        let stream_count = (stream_bytes / (*size).max(1)).clamp(20, 200_000);
        let tcp_mb_s = streamed(*size, stream_count, cross::Link::Tcp)?;
        // What one TLS connection streams here: the ceiling of a TLS data
        // plane, and what a TLS run is measured against (`of_link`).
        let tls_mb_s = match link {
            cross::Link::Tls => Some(streamed(*size, stream_count, cross::Link::Tls)?),
            cross::Link::Tcp => None,
        };
        let link_mb_s = tls_mb_s.unwrap_or(tcp_mb_s);
        let p50 = result["p50_us"].as_f64().unwrap_or(f64::NAN);
        let mb_s = result["msgs_per_s"].as_f64().unwrap_or(f64::NAN) * *size as f64 / 1e6;
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        result["mode"] = serde_json::json!("cross");
        result["transport"] = serde_json::json!(transport);
        result["mb_per_s"] = serde_json::json!(round1(mb_s));
        result["baseline_p50_us"] = serde_json::json!(round1(baseline));
        result["ratio"] = serde_json::json!((p50 / baseline * 100.0).round() / 100.0);
        result["tcp_p50_us"] = serde_json::json!(round1(tcp));
        result["tls_p50_us"] = serde_json::json!(round1(tls));
        result["tcp_mb_per_s"] = serde_json::json!(round1(tcp_mb_s));
        if let Some(tls_mb_s) = tls_mb_s {
            result["tls_mb_per_s"] = serde_json::json!(round1(tls_mb_s));
        }
        result["of_tcp_mb_per_s"] = serde_json::json!((mb_s / tcp_mb_s * 1000.0).round() / 1000.0);
        result["of_link_mb_per_s"] = serde_json::json!((mb_s / link_mb_s * 1000.0).round() / 1000.0);
        if json {
            println!("{result}");
        } else {
            println!(
                "{} {mb_s:>9.1} {baseline:>12.1} {:>6.2}x {tcp:>9.1} {tcp_mb_s:>9.0} {:>6.1}% {:>6.1}%",
                common_cells(*size, &result),
                p50 / baseline,
                mb_s / tcp_mb_s * 100.0,
                mb_s / link_mb_s * 100.0
            );
        }
    }
    Ok(())
}

fn burst(plan: &BurstPlan, touch: bool, cross: Option<bool>, json: bool) -> anyhow::Result<()> {
    let cross_daemon = cross.is_some();
    if plan.sizes.is_empty() || plan.rounds == 0 || plan.count == 0 {
        bail!("--sizes, --rounds and --count must not be empty or zero");
    }
    let yaml = rill_bench::burst_yaml(plan, touch, cross_daemon)?;
    let expected = plan.sizes.len() * plan.rounds + usize::from(plan.rss_wait_s > 0);
    let results = match cross {
        Some(plaintext) => cross::run(&yaml, expected, plaintext)?,
        None => run_dataflow(&yaml, expected)?,
    };
    if !json {
        println!(
            "{} bursts of {} (consumer {}), {} rounds, producer idle {} ms between bursts",
            if cross_daemon { "cross-daemon" } else { "local" },
            plan.count,
            if touch { "reads every byte" } else { "does not touch the payload" },
            plan.rounds,
            plan.idle_ms
        );
        println!(
            "{:>9} {:>11} {:>10} {:>11} {:>10} {:>13} {:>8}",
            "size", "worst_ms", "lost", "msgs/s", "memcpy_GB/s", "ceiling_msg/s", "of_ceil"
        );
    }
    for &size in &plan.sizes {
        let rows: Vec<&serde_json::Value> = results.iter().filter(|r| r["size"] == size).collect();
        let field = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let worst_us = rows.iter().map(|r| field(r, "worst_latency_us")).fold(0.0, f64::max);
        let lost = rows.iter().map(|r| plan.count as f64 - field(r, "received")).sum::<f64>();
        let msgs_per_s = median(rows.iter().map(|r| field(r, "msgs_per_s")).collect());
        let copy_s = memcpy_seconds(size);
        let (gb_s, ceiling) = if size == 0 { (f64::NAN, f64::NAN) } else { (size as f64 / copy_s / 1e9, 1.0 / copy_s) };
        let of_ceiling = msgs_per_s / ceiling;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "mode": if cross_daemon { "burst-cross" } else { "burst" },
                    "size": size, "count": plan.count, "rounds": plan.rounds, "touch": touch,
                    "worst_latency_us": (worst_us * 10.0).round() / 10.0, "lost": lost,
                    "msgs_per_s": msgs_per_s.round(), "memcpy_gb_per_s": (gb_s * 100.0).round() / 100.0,
                    "ceiling_msgs_per_s": ceiling.round(), "of_ceiling": (of_ceiling * 1000.0).round() / 1000.0,
                })
            );
        } else {
            println!(
                "{size:>9} {:>11.2} {lost:>10} {msgs_per_s:>11.0} {gb_s:>11.1} {ceiling:>13.0} {:>7.1}%",
                worst_us / 1000.0,
                of_ceiling * 100.0
            );
        }
    }
    if let Some(rss) = results.iter().find(|r| r.get("rss_after_kib").is_some()) {
        let (before, after) = (rss["rss_before_kib"].as_u64().unwrap_or(0), rss["rss_after_kib"].as_u64().unwrap_or(0));
        if json {
            println!(
                "{}",
                serde_json::json!({"mode": "burst-rss", "producer_rss_before_kib": before, "producer_rss_after_kib": after, "after_s": plan.rss_wait_s})
            );
        } else {
            println!(
                "producer RSS: {:.1} MiB before the first burst, {:.1} MiB {} s after the last",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                plan.rss_wait_s
            );
        }
    }
    Ok(())
}

/// Runs the burst dataflow (producer and a consumer that reads every
/// byte, one daemon) alternately without and with a tap, and compares the
/// consumer's msg/s per size (median over the counted bursts).
fn tap_overhead(plan: &BurstPlan, runs: usize, json: bool) -> anyhow::Result<()> {
    if plan.sizes.is_empty() || plan.rounds < 2 || plan.count == 0 || runs == 0 {
        bail!("--sizes must not be empty, --rounds at least 2, --count and --runs not zero");
    }
    // Both nodes on machine a: the local path, where a tap costs the most
    // relative to the rest.
    let yaml = rill_bench::burst_yaml(plan, true, true)?.replace("machine: b", "machine: a");
    let expected = plan.sizes.len() * plan.rounds;
    let tapped = ["burst/out".to_owned()];
    let mut rates: [Vec<serde_json::Value>; 2] = Default::default();
    let mut seen = cross::TapSeen::default();
    for run in 0..runs * 2 {
        let with_tap = run % 2 == 1;
        let (results, tap) = cross::run_tapped(&yaml, expected, true, with_tap.then_some(&tapped[..]))?;
        rates[usize::from(with_tap)].extend(results.into_iter().filter(|r| r["round"].as_u64().unwrap_or(0) > 0));
        seen.samples += tap.samples;
        seen.dropped += tap.dropped;
    }
    if !json {
        println!(
            "consumer msg/s, bursts of {} (the consumer reads every byte), {runs} runs each, without and with a tap (64-byte previews)",
            plan.count
        );
        println!("{:>9} {:>12} {:>12} {:>8}", "size", "without", "with_tap", "ratio");
    }
    for &size in &plan.sizes {
        let median_of = |rows: &[serde_json::Value]| {
            median(
                rows.iter()
                    .filter(|r| r["size"] == size)
                    .map(|r| r["msgs_per_s"].as_f64().unwrap_or(f64::NAN))
                    .collect(),
            )
        };
        let (without, with) = (median_of(&rates[0]), median_of(&rates[1]));
        let ratio = with / without;
        match json {
            true => println!(
                "{}",
                serde_json::json!({"mode": "tap", "size": size, "count": plan.count, "runs": runs,
                    "msgs_per_s_without": without.round(), "msgs_per_s_with_tap": with.round(),
                    "ratio": (ratio * 1000.0).round() / 1000.0})
            ),
            false => println!("{size:>9} {without:>12.0} {with:>12.0} {ratio:>8.3}"),
        }
    }
    match json {
        true => {
            println!("{}", serde_json::json!({"mode": "tap-seen", "samples": seen.samples, "dropped": seen.dropped}))
        }
        false => println!("the tap read {} messages and skipped {} (it could not keep up)", seen.samples, seen.dropped),
    }
    Ok(())
}

fn fan_out(plan: &BurstPlan, consumers: usize, plaintext: bool, json: bool) -> anyhow::Result<()> {
    if consumers == 0 || plan.count == 0 || plan.rounds == 0 {
        bail!("--consumers, --count and --rounds must not be zero");
    }
    let size = plan.sizes.first().copied().unwrap_or(0);
    let yaml = rill_bench::fan_out_yaml(plan, consumers)?;
    let results = cross::run(&yaml, consumers * plan.rounds, plaintext)?;
    let transport = if plaintext { "plaintext" } else { "tls" };
    let sent = plan.count * plan.rounds;
    if !json {
        println!(
            "fan-out across daemons ({transport}): 1 producer, {consumers} consumers on the other daemon, \
             {} bursts of {} x {size} B",
            plan.rounds, plan.count
        );
        println!("{:>8} {:>9} {:>6} {:>11} {:>9} {:>10}", "consumer", "received", "lost", "msgs/s", "MB/s", "worst_ms");
    }
    let field = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let mut total_received = 0usize;
    let mut rates = Vec::new();
    for i in 0..consumers {
        let node = format!("drain{i}");
        let rows: Vec<&serde_json::Value> = results.iter().filter(|r| r["node"] == node.as_str()).collect();
        let received = rows.iter().map(|r| r["received"].as_u64().unwrap_or(0) as usize).sum::<usize>();
        let msgs_per_s = median(rows.iter().map(|r| field(r, "msgs_per_s")).collect());
        let worst_us = rows.iter().map(|r| field(r, "worst_latency_us")).fold(0.0, f64::max);
        let mb_s = msgs_per_s * size as f64 / 1e6;
        total_received += received;
        rates.push(mb_s);
        let lost = sent.saturating_sub(received);
        if json {
            println!(
                "{}",
                serde_json::json!({"mode": "fanout", "transport": transport, "consumer": node, "size": size,
                    "sent": sent, "received": received, "lost": lost, "msgs_per_s": msgs_per_s.round(),
                    "mb_per_s": (mb_s * 10.0).round() / 10.0, "worst_latency_us": (worst_us * 10.0).round() / 10.0})
            );
        } else {
            println!("{node:>8} {received:>9} {lost:>6} {msgs_per_s:>11.0} {mb_s:>9.1} {:>10.2}", worst_us / 1000.0);
        }
    }
    let every = total_received == sent * consumers;
    let aggregate: f64 = rates.iter().sum();
    if json {
        println!(
            "{}",
            serde_json::json!({"mode": "fanout-summary", "transport": transport, "consumers": consumers, "size": size,
                "sent": sent, "every_message_to_every_consumer": every, "aggregate_mb_per_s": (aggregate * 10.0).round() / 10.0})
        );
    } else {
        println!(
            "every message to every consumer: {}; aggregate {aggregate:.0} MB/s",
            if every { "yes" } else { "NO" }
        );
    }
    if !every {
        bail!("{} of {} deliveries were lost", sent * consumers - total_received, sent * consumers);
    }
    Ok(())
}

/// Runs `yaml` through the real daemon and collects the `RESULT` lines
/// its nodes print (`expected` of them).
fn run_dataflow(yaml: &str, expected: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let bin_dir = rill_bench::bin_dir()?;
    let dataflow = Dataflow::parse(yaml, "bench.yml".as_ref()).map_err(|d| anyhow::anyhow!("{d}"))?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let collected = lines.clone();
    let reporter = Arc::new(move |report: Report<'_>| match report {
        Report::Log { stream: Stream::Stdout, line, .. } => {
            if let Some(json) = line.strip_prefix("RESULT ")
                && let Ok(mut lines) = collected.lock()
            {
                lines.push(json.to_owned());
            }
        }
        Report::Log { node, line, .. } => eprintln!("[{node}] {line}"),
        _ => {}
    });
    let runtime = Runtime::new(dataflow, bin_dir, RunOptions { skip_build: true, ..Default::default() }, reporter);
    let report = runtime.run()?;
    if !report.success() {
        bail!("benchmark dataflow failed: {:?}", report.nodes);
    }
    let lines = lines.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    if lines.len() != expected {
        bail!("expected {expected} results, got {}", lines.len());
    }
    lines.iter().map(|l| serde_json::from_str(l).context("bad RESULT line")).collect()
}

/// p50 one-way latency (round trip / 2) of a raw Unix stream socket
/// ping-pong between two threads, `size` bytes each way.
fn socket_baseline(size: usize, iters: usize) -> anyhow::Result<f64> {
    let (a, b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || echo(b, size));
    let p50 = ping_pong(a, size, iters)?;
    let _ = echo.join();
    Ok(p50)
}

/// The same ping-pong with the echo side in another process: what one
/// process wake-up costs here, the floor of any multi-process data path.
fn process_baseline(size: usize, iters: usize) -> anyhow::Result<f64> {
    let (a, b) = UnixStream::pair()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["echo-server", &size.to_string()])
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(b)))
        .spawn()?;
    let p50 = ping_pong(a, size, iters);
    let _ = child.wait();
    Ok(p50?)
}

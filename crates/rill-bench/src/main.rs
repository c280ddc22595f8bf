//! `rill-bench latency`: a two-node dataflow through the real daemon, and a
//! raw Unix-socket ping-pong of the same size in the same run as baseline.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
mod cross;

use rill_bench::{common_cells, echo, iterations, ping_pong};
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
    /// One-way latency and throughput node -> daemon -> node, per payload size.
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
        /// loopback); baseline: raw TCP on loopback.
        #[arg(long)]
        cross: bool,
    },
    /// (internal) echo SIZE-byte messages on stdin back to it, for the
    /// two-process baseline.
    #[command(hide = true)]
    EchoServer { size: usize },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Latency { quick, json, sizes, cross } => latency(quick, json, &sizes, cross),
        Command::EchoServer { size } => {
            // SAFETY: fd 0 is the socket the parent gave us.
            let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(0) };
            echo(stream, size);
            Ok(())
        }
    }
}

fn latency(quick: bool, json: bool, sizes: &[usize], cross_daemon: bool) -> anyhow::Result<()> {
    if cross_daemon {
        return latency_cross(quick, json, sizes);
    }
    let (hot, paced, bursts) = if quick { (1000, 150, 20) } else { (10_000, 1000, 200) };
    let results = run_dataflow(sizes, hot, paced, bursts)?;
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

fn latency_cross(quick: bool, json: bool, sizes: &[usize]) -> anyhow::Result<()> {
    let (hot, paced, bursts) = if quick { (300, 50, 5) } else { (3000, 300, 50) };
    let results = cross::run(sizes, hot, paced, bursts)?;
    if !json {
        println!("cross-daemon (bridge over loopback)");
        println!(
            "{:>9} {:>9} {:>9} {:>12} {:>12} {:>11} {:>14}",
            "size", "p50_us", "p99_us", "paced_p50", "paced_p99", "msgs/s", "tcp_base_p50"
        );
    }
    for (size, mut result) in sizes.iter().zip(results) {
        let baseline = cross::tcp_baseline(*size, iterations(*size, hot))?;
        result["mode"] = serde_json::json!("cross");
        result["baseline_p50_us"] = serde_json::json!((baseline * 10.0).round() / 10.0);
        if json {
            println!("{result}");
        } else {
            println!("{} {baseline:>14.1}", common_cells(*size, &result));
        }
    }
    Ok(())
}

/// Runs ping -> pong through the real daemon and collects the ping's results.
fn run_dataflow(sizes: &[usize], hot: usize, paced: usize, bursts: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let bin_dir: PathBuf = std::env::current_exe()?.parent().context("no exe dir")?.to_path_buf();
    let sizes_arg = sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let yaml = format!(
        "nodes:\n  - id: ping\n    path: {ping}\n    args: [\"{sizes_arg}\", \"{hot}\", \"{paced}\", \"{bursts}\"]\n    inputs:\n      pong: pong/pong\n    outputs: [ping]\n  - id: pong\n    path: {pong}\n    inputs:\n      ping: {{ source: ping/ping, queue_size: 1000 }}\n    outputs: [pong]\n",
        ping = bin_dir.join("rill-bench-ping").display(),
        pong = bin_dir.join("rill-bench-pong").display(),
    );
    let dataflow = Dataflow::parse(&yaml, "bench.yml".as_ref()).map_err(|d| anyhow::anyhow!("{d}"))?;
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
    if lines.len() != sizes.len() {
        bail!("expected {} results, got {}", sizes.len(), lines.len());
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

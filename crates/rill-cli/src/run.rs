//! `rill run`: prints node output with a per-node prefix, the lifecycle
//! notices, and a summary that names every failed node.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context;
use rill_daemon::{Notice, Report, Reporter, RunOptions, RunReport, Runtime, Sig, StopHandle, Stream};
use rill_proto::coord::{NodeCounts, NodeTraffic};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The dataflow file.
    file: PathBuf,
    #[command(flatten)]
    flags: RunFlags,
}

/// How a dataflow runs here (`rill run`, `rill replay`).
#[derive(clap::Args)]
pub struct RunFlags {
    /// Seconds a node gets after `Stop` before SIGTERM (and again before SIGKILL).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    grace: f64,
    /// Do not run the nodes' `build` commands.
    #[arg(long)]
    skip_build: bool,
    /// Print node output and the summary as JSON lines.
    #[arg(long)]
    json: bool,
}

impl RunFlags {
    fn options(&self) -> anyhow::Result<RunOptions> {
        let grace =
            Duration::try_from_secs_f64(self.grace).context("--grace must be a non-negative number of seconds")?;
        let source_cache = Some(crate::dirs::cache_dir().join("sources"));
        Ok(RunOptions { grace, term_grace: grace, skip_build: self.skip_build, source_cache })
    }

    /// Runs `dataflow` here with these flags (see [`run_dataflow`]).
    pub fn run(&self, dataflow: rill_core::Dataflow, base_dir: PathBuf) -> anyhow::Result<ExitCode> {
        run_dataflow(dataflow, base_dir, self.options()?, self.json)
    }
}

/// Where node output and JSON events go. When its reader goes away
/// (`rill run | head -1`), the dataflow is stopped once, as on Ctrl-C, and
/// nothing more is written there.
#[derive(Default)]
struct Stdout {
    stop: OnceLock<StopHandle>,
    closed: AtomicBool,
}

impl Stdout {
    fn line(&self, text: impl std::fmt::Display) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{text}").is_err() && !self.closed.swap(true, Ordering::Relaxed) {
            note!("rill: stdout was closed; stopping the dataflow");
            if let Some(stop) = self.stop.get() {
                stop.stop();
            }
        }
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some((dataflow, base_dir)) = crate::output::load_dataflow(&args.file)? else {
        return Ok(ExitCode::FAILURE);
    };
    args.flags.run(dataflow, base_dir)
}

/// Runs a dataflow here until it ends (or Ctrl-C), printing node output
/// and the summary (`json`: as JSON lines).
pub fn run_dataflow(
    dataflow: rill_core::Dataflow,
    base_dir: std::path::PathBuf,
    options: RunOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let stdout = Arc::new(Stdout::default());
    let out = stdout.clone();
    // Each node's last counts, for the summary.
    let counts: Arc<Mutex<BTreeMap<String, NodeCounts>>> = Arc::default();
    let kept = counts.clone();
    let reporter: Reporter = Arc::new(move |report| {
        match &report {
            // From the router thread, which must not wait on stdout: kept
            // for the summary only.
            Report::Counts { node, counts } => {
                kept.lock().unwrap_or_else(PoisonError::into_inner).insert((*node).to_owned(), (*counts).clone());
                return;
            }
            // Once a second per node: for `rill top`, not this output.
            Report::Usage { .. } => return,
            _ => {}
        }
        match json {
            true => out.line(report_json(report)),
            false => report_text(&out, report),
        }
    });
    let runtime = Runtime::new(dataflow, base_dir, options, reporter);
    let stop = runtime.stop_handle();
    let _ = stdout.stop.set(stop.clone());
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
        .context("cannot install the Ctrl-C handler")?;
    let signal_handle = signals.handle();
    std::thread::spawn(move || {
        // First signal: stop in order; second: kill.
        for _ in signals.forever() {
            stop.stop();
        }
    });
    let result = runtime.run();
    signal_handle.close();
    let report = result?;
    let counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
    let traffic = rill_proto::coord::traffic(&counts, std::iter::empty(), &BTreeMap::new());
    if json {
        stdout.line(summary_json(&report, &traffic));
    } else {
        print_summary(&report);
        print_drops(&traffic);
    }
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn report_text(out: &Stdout, report: Report<'_>) {
    match report {
        Report::Log { node, stream: Stream::Stdout, line } => out.line(format_args!("[{node}] {line}")),
        Report::Log { node, stream: Stream::Stderr, line } => note!("[{node}] {line}"),
        Report::Building { node, command } => note!("rill: building {node}: {command}"),
        Report::Spawned { .. } | Report::Ended { .. } => {}
        Report::Notice(Notice::Restarting { node, status, attempt, delay }) => {
            note!("rill: node `{node}` ended with {status}; restart {attempt} in {delay:.1?}");
        }
        Report::Notice(Notice::Escalating { node, signal }) => {
            let name = match signal {
                Sig::Term => "SIGTERM",
                Sig::Kill => "SIGKILL",
            };
            note!("rill: node `{node}` is still running after the grace period; sending {name}");
        }
        Report::Stopping => note!("rill: stopping (press Ctrl-C again to kill)"),
        Report::Counts { .. } | Report::Usage { .. } => {}
    }
}

/// Says which inputs lost messages to a full queue, and what to do.
fn print_drops(traffic: &BTreeMap<String, NodeTraffic>) {
    for (node, t) in traffic {
        for (input, c) in t.inputs.iter().filter(|(_, c)| c.dropped > 0) {
            note!(
                "rill: node `{node}` input `{input}`: {} dropped (its queue was full), {} received; \
                 raise its queue_size or make the node faster",
                c.dropped,
                c.received
            );
        }
    }
}

fn report_json(report: Report<'_>) -> serde_json::Value {
    match report {
        Report::Log { node, stream, line } => serde_json::json!({
            "event": "log", "node": node, "stream": match stream { Stream::Stdout => "stdout", Stream::Stderr => "stderr" }, "line": line,
        }),
        Report::Building { node, command } => serde_json::json!({"event": "build", "node": node, "command": command}),
        Report::Spawned { node, pid } => serde_json::json!({"event": "spawned", "node": node, "pid": pid}),
        Report::Ended { node, outcome } => serde_json::json!({
            "event": "ended", "node": node, "outcome": outcome.to_string(), "failed": outcome.is_failure(),
        }),
        Report::Notice(Notice::Restarting { node, status, attempt, delay }) => serde_json::json!({
            "event": "restarting", "node": node, "status": status.to_string(), "attempt": attempt, "delay_ms": delay.as_millis() as u64,
        }),
        Report::Notice(Notice::Escalating { node, signal }) => serde_json::json!({
            "event": "escalating", "node": node, "signal": match signal { Sig::Term => "SIGTERM", Sig::Kill => "SIGKILL" },
        }),
        Report::Stopping => serde_json::json!({"event": "stopping"}),
        // (Both are handled before: see the reporter in `run`.)
        Report::Counts { .. } | Report::Usage { .. } => serde_json::Value::Null,
    }
}

fn print_summary(report: &RunReport) {
    let failed: Vec<_> = report.nodes.iter().filter(|n| n.outcome.is_failure()).collect();
    if failed.is_empty() {
        let how = if report.stopped { "stopped" } else { "finished" };
        note!("rill: dataflow {how} ({})", crate::output::count(report.nodes.len(), "node"));
        return;
    }
    note!("rill: dataflow failed: {} of {} failed", failed.len(), crate::output::count(report.nodes.len(), "node"));
    for node in failed {
        let restarts = match node.restarts {
            0 => String::new(),
            n => format!(" (after {n} restarts)"),
        };
        note!("  node `{}`: {}{restarts}", node.node, node.outcome);
        if let Some(tail) = report.stderr_tails.get(&node.node) {
            note!("    last stderr lines:");
            for line in tail {
                note!("      {line}");
            }
        }
    }
}

fn summary_json(report: &RunReport, traffic: &BTreeMap<String, NodeTraffic>) -> serde_json::Value {
    let nodes: Vec<_> = report
        .nodes
        .iter()
        .map(|n| {
            let t = traffic.get(&n.node).cloned().unwrap_or_default();
            serde_json::json!({
                "node": n.node, "outcome": n.outcome.to_string(), "failed": n.outcome.is_failure(), "restarts": n.restarts,
                "received": t.received, "dropped": t.dropped, "sent": t.sent, "bytes_sent": t.bytes_sent,
                "inputs": t.inputs, "outputs": t.outputs,
            })
        })
        .collect();
    serde_json::json!({"event": "summary", "success": report.success(), "stopped": report.stopped, "nodes": nodes})
}

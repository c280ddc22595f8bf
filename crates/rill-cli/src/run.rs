//! `rill run`: prints node output with a per-node prefix, the lifecycle
//! notices, and a summary that names every failed node.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rill_daemon::{Notice, Report, Reporter, RunOptions, RunReport, Runtime, Sig, Stream};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The dataflow file.
    file: PathBuf,
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

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some((dataflow, base_dir)) = crate::output::load_dataflow(&args.file)? else {
        return Ok(ExitCode::FAILURE);
    };
    let grace = Duration::try_from_secs_f64(args.grace).context("--grace must be a non-negative number of seconds")?;
    let options = RunOptions { grace, term_grace: grace, skip_build: args.skip_build };
    let reporter: Reporter = if args.json { Arc::new(report_json) } else { Arc::new(report_text) };
    let runtime = Runtime::new(dataflow, base_dir, options, reporter);
    let stop = runtime.stop_handle();
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
    if args.json {
        print_summary_json(&report);
    } else {
        print_summary(&report);
    }
    Ok(if report.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn report_text(report: Report<'_>) {
    match report {
        Report::Log { node, stream: Stream::Stdout, line } => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "[{node}] {line}");
        }
        Report::Log { node, stream: Stream::Stderr, line } => eprintln!("[{node}] {line}"),
        Report::Building { node, command } => eprintln!("rill: building {node}: {command}"),
        Report::Spawned { .. } | Report::Ended { .. } => {}
        Report::Notice(Notice::Restarting { node, status, attempt, delay }) => {
            eprintln!("rill: node `{node}` ended with {status}; restart {attempt} in {delay:.1?}");
        }
        Report::Notice(Notice::Escalating { node, signal }) => {
            let name = match signal {
                Sig::Term => "SIGTERM",
                Sig::Kill => "SIGKILL",
            };
            eprintln!("rill: node `{node}` is still running after the grace period; sending {name}");
        }
        Report::Stopping => eprintln!("rill: stopping (press Ctrl-C again to kill)"),
    }
}

fn report_json(report: Report<'_>) {
    let value = match report {
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
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
}

fn print_summary(report: &RunReport) {
    let failed: Vec<_> = report.nodes.iter().filter(|n| n.outcome.is_failure()).collect();
    if failed.is_empty() {
        let how = if report.stopped { "stopped" } else { "finished" };
        eprintln!("rill: dataflow {how} ({} nodes)", report.nodes.len());
        return;
    }
    eprintln!("rill: dataflow failed: {} of {} nodes failed", failed.len(), report.nodes.len());
    for node in failed {
        let restarts = match node.restarts {
            0 => String::new(),
            n => format!(" (after {n} restarts)"),
        };
        eprintln!("  node `{}`: {}{restarts}", node.node, node.outcome);
        if let Some(tail) = report.stderr_tails.get(&node.node) {
            eprintln!("    last stderr lines:");
            for line in tail {
                eprintln!("      {line}");
            }
        }
    }
}

fn print_summary_json(report: &RunReport) {
    let nodes: Vec<_> = report
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "node": n.node, "outcome": n.outcome.to_string(), "failed": n.outcome.is_failure(), "restarts": n.restarts,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"event": "summary", "success": report.success(), "stopped": report.stopped, "nodes": nodes})
    );
}

//! `rill top [NAME]`: every node of the active dataflows (or of NAME) with
//! its machine, pid, CPU, memory, restarts, message rates and drops,
//! refreshed every second in the terminal; `--once` prints one snapshot
//! (`--json` for scripts).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::Constraint;
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};
use rill_proto::coord::{ControlRequest, ControlResponse, DataflowSummary, TopRow};

use crate::access::ControlAccess;

#[derive(clap::Args)]
pub struct TopArgs {
    /// Only this dataflow (name or uuid) [default: every active one].
    dataflow: Option<String>,
    /// Print one snapshot and exit (no terminal UI).
    #[arg(long)]
    once: bool,
    /// With --once: `{"dataflows": [{"name","uuid","status","nodes": [...]}]}`.
    #[arg(long, requires = "once")]
    json: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    #[command(flatten)]
    coordinator: ControlAccess,
}

pub fn top(args: TopArgs) -> anyhow::Result<ExitCode> {
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        anyhow::bail!("--interval must be at least 0.1 seconds");
    }
    if args.once {
        let dataflows = snapshot(&args)?;
        match args.json {
            true => println!("{}", json(&dataflows)),
            false => print_once(&dataflows),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("rill top needs a terminal; use `rill top --once` (or --once --json) in scripts");
    }
    // SIGTERM, SIGHUP (the terminal went away) and SIGINT end it like `q`,
    // so the terminal is restored.
    let ended = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, ended.clone()).context("cannot handle signals")?;
    }
    let mut source = Source { runtime: crate::remote::runtime()?, client: None };
    let mut terminal = ratatui::init();
    let result = ui(&mut terminal, &args, &mut source, &ended);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

/// One connection to the coordinator for every refresh (made again after
/// a failure).
struct Source {
    runtime: tokio::runtime::Runtime,
    client: Option<rill_coordinator::client::ControlClient>,
}

impl Source {
    fn list(&mut self, args: &TopArgs) -> anyhow::Result<Vec<DataflowSummary>> {
        let client = &mut self.client;
        let reply = self.runtime.block_on(async {
            if client.is_none() {
                *client = Some(args.coordinator.connect().await?);
            }
            let Some(connected) = client.as_mut() else { anyhow::bail!("not connected") };
            let reply = connected.request(&ControlRequest::List).await;
            if reply.is_err() {
                *client = None;
            }
            Ok(reply?)
        })?;
        let ControlResponse::List { dataflows } = reply else { anyhow::bail!("unexpected reply from the coordinator") };
        chosen(args, dataflows)
    }
}

/// The dataflows to show: `NAME`'s, else every active one.
fn snapshot(args: &TopArgs) -> anyhow::Result<Vec<DataflowSummary>> {
    let ControlResponse::List { dataflows } = crate::remote::request(&args.coordinator, ControlRequest::List)? else {
        anyhow::bail!("unexpected reply from the coordinator");
    };
    chosen(args, dataflows)
}

fn chosen(args: &TopArgs, dataflows: Vec<DataflowSummary>) -> anyhow::Result<Vec<DataflowSummary>> {
    Ok(match &args.dataflow {
        Some(wanted) => {
            let found: Vec<DataflowSummary> =
                dataflows.into_iter().filter(|d| d.name == *wanted || d.uuid == *wanted).collect();
            if found.is_empty() {
                anyhow::bail!("no dataflow named or with uuid `{wanted}` (see `rill list`)");
            }
            found
        }
        None => dataflows.into_iter().filter(|d| d.status.is_active()).collect(),
    })
}

fn json(dataflows: &[DataflowSummary]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = dataflows
        .iter()
        .map(|d| serde_json::json!({"name": d.name, "uuid": d.uuid, "status": d.status, "nodes": d.top_rows()}))
        .collect();
    serde_json::json!({"dataflows": list})
}

const HEADER: [&str; 11] =
    ["DATAFLOW", "NODE", "MACHINE", "PID", "STATE", "CPU%", "RSS", "RESTARTS", "IN/S", "OUT/S", "DROPPED"];

fn cells(dataflow: &str, row: &TopRow) -> [String; 11] {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    [
        dataflow.to_owned(),
        row.node.clone(),
        row.machine.clone(),
        opt(row.pid.map(|p| p.to_string())),
        row.state.clone(),
        opt(row.cpu_percent.map(|c| format!("{c:.1}"))),
        opt(row.rss_bytes.map(mib)),
        row.restarts.to_string(),
        format!("{:.0}", row.msgs_in_per_s),
        format!("{:.0}", row.msgs_out_per_s),
        row.dropped.to_string(),
    ]
}

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1 << 20) as f64)
}

fn table_rows(dataflows: &[DataflowSummary]) -> Vec<[String; 11]> {
    dataflows.iter().flat_map(|d| d.top_rows().into_iter().map(move |row| cells(&d.name, &row))).collect()
}

fn print_once(dataflows: &[DataflowSummary]) {
    let rows = table_rows(dataflows);
    match rows.is_empty() {
        true => println!("no active dataflow (see `rill list`)"),
        false => crate::remote::print_table(HEADER, &rows),
    }
}

/// Redraws every `interval` until q, Esc or Ctrl-C.
fn ui(
    terminal: &mut ratatui::DefaultTerminal,
    args: &TopArgs,
    source: &mut Source,
    ended: &AtomicBool,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(args.interval);
    loop {
        if ended.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (rows, title) = match source.list(args) {
            Ok(dataflows) => (table_rows(&dataflows), format!(" rill top: {} ", dataflows.len())),
            Err(e) => (Vec::new(), format!(" rill top: {e:#} ")),
        };
        terminal
            .draw(|frame| {
                let widths = [
                    Constraint::Min(8),
                    Constraint::Min(8),
                    Constraint::Min(8),
                    Constraint::Length(8),
                    Constraint::Length(10),
                    Constraint::Length(6),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(7),
                    Constraint::Length(7),
                    Constraint::Length(8),
                ];
                let header = Row::new(HEADER).style(Style::new().add_modifier(Modifier::BOLD));
                let table = Table::new(rows.iter().map(|r| Row::new(r.clone())), widths)
                    .header(header)
                    .block(Block::bordered().title(title.clone()).title_bottom(Line::from(" q: quit ")));
                frame.render_widget(table, frame.area());
            })
            .context("cannot draw")?;
        let deadline = Instant::now() + interval;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if ended.load(Ordering::Relaxed) {
                return Ok(());
            }
            // (In slices: a signal is noticed within 100 ms.)
            if !event::poll(left.min(Duration::from_millis(100))).context("cannot read the terminal")? {
                continue;
            }
            if let Event::Key(key) = event::read().context("cannot read the terminal")? {
                let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if key.kind == KeyEventKind::Press && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                {
                    return Ok(());
                }
            }
        }
    }
}

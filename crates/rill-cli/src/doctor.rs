//! `rill doctor`: the machine's checks (rill-daemon's `doctor`), then the
//! coordinator, printed with what to fix.

use std::process::ExitCode;

use rill_daemon::doctor::{Check, Level};
use rill_proto::coord::{ControlRequest, ControlResponse};

use crate::access::ControlAccess;

#[derive(clap::Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    coordinator: ControlAccess,
    /// `{"ok": bool, "checks": [{"check","status","detail","fix"}]}` on stdout.
    #[arg(long)]
    json: bool,
}

pub fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks = rill_daemon::doctor::machine_checks();
    checks.push(coordinator(&args.coordinator));
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    if args.json {
        let list: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| serde_json::json!({"check": c.name, "status": c.level.as_str(), "detail": c.detail, "fix": c.fix}))
            .collect();
        println!("{}", serde_json::json!({"ok": !failed, "checks": list}));
    } else {
        for c in &checks {
            println!("{:<5} {:<20} {}", c.level.as_str(), c.name, c.detail);
            if let Some(fix) = c.fix.as_ref().filter(|_| c.level != Level::Ok) {
                println!("{:<26} -> {fix}", "");
            }
        }
        let worst = match failed {
            true => "rill cannot run here until the failed checks are fixed",
            false => "rill can run here",
        };
        println!("{worst}");
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The coordinator answers, with our version. One that was not named and
/// is not at the default address is not a problem: there may be none yet.
fn coordinator(access: &ControlAccess) -> Check {
    let addr = access.at.host_port();
    match crate::remote::request(access, ControlRequest::Status) {
        Ok(ControlResponse::Status { version, daemons, transport, .. }) => {
            let ours = env!("CARGO_PKG_VERSION");
            let detail = format!("{addr} answers: rill {version}, {transport}, {} connected", daemons.len());
            match version.split('+').next() == Some(ours) {
                true => Check::ok("coordinator", detail),
                false => Check::bad(
                    "coordinator",
                    Level::Warn,
                    format!("{detail}; this CLI is rill {ours}"),
                    "run the same rill version on the coordinator and here (`rill cluster upgrade`)",
                ),
            }
        }
        Ok(other) => Check::bad("coordinator", Level::Fail, format!("{addr}: unexpected reply {other:?}"), UP),
        Err(_) if !access.at.is_named() => Check {
            name: "coordinator",
            level: Level::Skip,
            detail: format!("none named, and none at {addr}"),
            fix: Some(UP.into()),
        },
        Err(e) => Check::bad("coordinator", Level::Fail, format!("{addr}: {}", first_line(&e)), UP),
    }
}

const UP: &str = "start one with `rill up` (this machine) or `rill cluster up`, or name it with --coordinator-addr/--coordinator-port";

fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}").lines().next().unwrap_or_default().to_owned()
}

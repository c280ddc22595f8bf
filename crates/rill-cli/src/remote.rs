//! `rill coordinator`, `rill daemon`, `rill status`: argument handling and
//! printing around rill-coordinator and rill-daemon.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use rill_daemon::net::{ConnectionEvent, DaemonConfig};
use rill_proto::coord::{ControlRequest, ControlResponse, DEFAULT_PORT};

/// Where the coordinator is (every client command takes these).
#[derive(clap::Args, Clone)]
pub struct CoordinatorAddr {
    /// Coordinator host name or IP.
    #[arg(long, default_value = "127.0.0.1")]
    coordinator_addr: String,
    /// Coordinator port.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    coordinator_port: u16,
}

impl CoordinatorAddr {
    fn host_port(&self) -> String {
        format!("{}:{}", self.coordinator_addr, self.coordinator_port)
    }
}

#[derive(clap::Args)]
pub struct CoordinatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port for HTTP and WebSocket.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
}

#[derive(clap::Args)]
pub struct DaemonArgs {
    /// This machine's id (used by `deploy.machine`); without it the daemon
    /// takes nodes that have no placement.
    #[arg(long)]
    machine_id: Option<String>,
    /// Labels for placement, `key=value,key2=value2`.
    #[arg(long, default_value = "")]
    labels: String,
    #[command(flatten)]
    coordinator: CoordinatorAddr,
    /// Print only errors.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    coordinator: CoordinatorAddr,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("cannot start the async runtime")
}

pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let bind = SocketAddr::new(args.bind, args.port);
    runtime()?.block_on(async move {
        eprintln!("rill coordinator listening on {bind}");
        rill_coordinator::serve(rill_coordinator::CoordinatorConfig { bind }).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let labels = rill_core::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let config = DaemonConfig { machine_id: args.machine_id, labels, coordinator: args.coordinator.host_port() };
    let quiet = args.quiet;
    let addr = config.coordinator.clone();
    let result = runtime()?.block_on(rill_daemon::net::run(config, move |event| match event {
        ConnectionEvent::Registered { daemon_id } if !quiet => eprintln!("rill daemon: registered with {addr} as {daemon_id}"),
        ConnectionEvent::Lost { reason } if !quiet => eprintln!("rill daemon: {reason}"),
        ConnectionEvent::Retrying { attempt, delay } if !quiet => {
            eprintln!("rill daemon: reconnecting in {delay:.1?} (attempt {attempt})")
        }
        _ => {}
    }));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(rejected) => {
            eprintln!("error: {rejected}");
            Ok(ExitCode::from(2))
        }
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let response = runtime()?.block_on(async {
        let mut client = rill_coordinator::client::ControlClient::connect(&args.coordinator.host_port()).await?;
        client.request(&ControlRequest::Status).await
    })?;
    let ControlResponse::Status { version, uptime_ms, daemons } = response else {
        anyhow::bail!("unexpected reply from the coordinator: {response:?}");
    };
    if args.json {
        println!("{}", serde_json::json!({"version": version, "uptime_ms": uptime_ms, "daemons": daemons}));
        return Ok(ExitCode::SUCCESS);
    }
    println!("coordinator {} (rill {version}, up {}s)", args.coordinator.host_port(), uptime_ms / 1000);
    println!("{:<24} {:<16} {:<30} {:>14}", "DAEMON", "MACHINE", "LABELS", "LAST HEARTBEAT");
    for d in &daemons {
        println!(
            "{:<24} {:<16} {:<30} {:>12.1}s",
            d.daemon_id,
            d.machine_id.as_deref().unwrap_or("-"),
            rill_core::format_labels(&d.labels),
            d.last_heartbeat_ms as f64 / 1000.0
        );
    }
    println!("{} daemon(s) connected", daemons.len());
    Ok(ExitCode::SUCCESS)
}

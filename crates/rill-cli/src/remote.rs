//! `rill coordinator`, `rill daemon`, `rill status`: argument handling and
//! printing around rill-coordinator and rill-daemon.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;
use std::path::PathBuf;

use rill_daemon::local::LocalEvent;
use rill_daemon::net::{ConnectionEvent, DaemonConfig};
use rill_proto::coord::{ControlRequest, ControlResponse, DEFAULT_PORT, DataflowStatus, NodePlacement};

use crate::access::{ControlAccess, CoordinatorAddr};

#[derive(clap::Args)]
pub struct CoordinatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port for HTTP and WebSocket.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Where dataflow records live: `redb` (the file
    /// $XDG_DATA_HOME/rill/coordinator-PORT.redb, by default
    /// ~/.local/share/rill/coordinator-PORT.redb), `redb:PATH`, or `memory`.
    #[arg(long, default_value = "redb")]
    store: String,
    /// Seconds nodes may stay lost (their daemon shut down or is unreachable,
    /// or did not report after this coordinator restarted) before their
    /// dataflow fails.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    lost_timeout: f64,
    /// Ended dataflows kept for `rill list`, `logs` and `restart`; older ones
    /// are removed, with their stored records and kept lines.
    #[arg(long, default_value_t = rill_coordinator::Settings::default().keep_ended, value_name = "N")]
    keep_ended: usize,
    /// Seconds between two auto-recoveries of the same machine's nodes of a
    /// dataflow (so a node that crashes at start does not loop).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    recovery_backoff: f64,
    /// MiB of uploaded node binaries (`distribute: http`) kept in the state
    /// directory's `artifacts/`; the oldest builds no active dataflow uses
    /// are removed first.
    #[arg(long, default_value_t = rill_coordinator::artifacts::DEFAULT_LIMIT >> 20, value_name = "MIB")]
    artifact_store_mib: u64,
    /// Where the cluster CA and the admin token live (0700; files 0600)
    /// [default: $XDG_DATA_HOME/rill/coordinator-PORT, by default
    /// ~/.local/share/rill/coordinator-PORT].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Another name or address clients reach this coordinator by (its
    /// certificate is valid for the bind address, or every interface
    /// address for 0.0.0.0, and localhost); repeatable.
    #[arg(long, value_name = "NAME")]
    tls_name: Vec<String>,
    /// No TLS, for the whole cluster (control plane and daemon data links):
    /// only on a trusted network, or for benchmarks. Credentials are still
    /// required.
    #[arg(long)]
    insecure_plaintext: bool,
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
    /// Port of the data session other daemons connect to (0: any free port).
    #[arg(long, default_value_t = 0)]
    data_port: u16,
    /// Print only errors.
    #[arg(long)]
    quiet: bool,
    /// Do not print the nodes' output (the coordinator keeps it for `rill
    /// logs`): a daemon whose output goes to a file keeps that file small.
    #[arg(long)]
    no_node_output: bool,
    /// File (mode 0600) with the join token `rill token create` printed
    /// [env: RILL_JOIN_TOKEN holds the token itself]. Needed once: the
    /// daemon enrolls its key and connects with its certificate afterwards.
    #[arg(long, value_name = "PATH")]
    join_token_file: Option<PathBuf>,
    /// Where the daemon keeps its key and certificate (0700, files 0600)
    /// [default: $XDG_STATE_HOME/rill/daemon-MACHINE, by default
    /// ~/.local/state/rill/daemon-MACHINE].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    coordinator: ControlAccess,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let bind = SocketAddr::new(args.bind, args.port);
    let store = rill_coordinator::StoreConfig::parse(&args.store, &crate::dirs::default_store(args.port))
        .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let lost_timeout = std::time::Duration::try_from_secs_f64(args.lost_timeout)
        .context("--lost-timeout must be a non-negative number of seconds")?;
    let recovery_backoff = std::time::Duration::try_from_secs_f64(args.recovery_backoff)
        .context("--recovery-backoff must be a non-negative number of seconds")?;
    let state_dir = args.state_dir.unwrap_or_else(|| crate::dirs::coordinator_state(args.port));
    let names = rill_coordinator::server_names(args.bind, &args.tls_name);
    let identity = rill_auth::CoordinatorIdentity::load_or_create(&state_dir, &names)
        .with_context(|| format!("cannot set up the cluster identity in {}", state_dir.display()))?;
    let fingerprint = identity.ca.fingerprint();
    let created = identity.created;
    rill_auth::identity::mark_transport(&state_dir, args.insecure_plaintext)?;
    let security =
        rill_coordinator::Security { identity: std::sync::Arc::new(identity), plaintext: args.insecure_plaintext };
    runtime()?.block_on(async move {
        let shown_store = store.to_string();
        let settings = rill_coordinator::Settings {
            lost_timeout,
            keep_ended: args.keep_ended,
            recovery_backoff,
            artifact_store_limit: args.artifact_store_mib.saturating_mul(1 << 20),
        };
        let config = rill_coordinator::CoordinatorConfig { bind, store, settings, security };
        let listening = rill_coordinator::Listening::bind(config).await?;
        if created {
            note!("rill coordinator: created a cluster CA and an admin token in {}", state_dir.display());
        }
        if args.insecure_plaintext {
            note!(
                "rill coordinator: WARNING: --insecure-plaintext: nothing between this coordinator, its daemons and \
                 clients is encrypted; use it only on a trusted network"
            );
            note!("rill coordinator listening on {bind}, plaintext (store: {shown_store})");
        } else {
            note!("rill coordinator listening on {bind}, TLS (store: {shown_store})");
            note!("rill coordinator: cluster CA fingerprint {fingerprint}");
        }
        // SIGTERM (systemctl stop) or Ctrl-C: store what is queued, exit 0.
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            note!("rill coordinator: shutting down");
        };
        listening.serve_until(shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let labels = rill_core::parse_labels(&args.labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| crate::dirs::daemon_cache(args.machine_id.as_deref()));
    // Shipped node binaries (`distribute: scp|http`); `rill start` pushes
    // to this path, so it is absolute.
    let artifact_dir = std::path::absolute(cache_dir.join("artifacts")).context("the daemon's cache directory")?;
    let config = DaemonConfig {
        machine_id: args.machine_id.clone(),
        labels,
        coordinator: std::sync::Arc::new(args.coordinator.daemon_access(
            args.join_token_file.as_deref(),
            cache_dir.clone(),
            args.machine_id.as_deref(),
        )?),
        data_port: args.data_port,
        version: crate::version::full(),
        artifact_dir: Some(artifact_dir),
        source_dir: Some(cache_dir.join("sources")),
    };
    let (quiet, node_output) = (args.quiet, !args.no_node_output);
    let addr = config.coordinator.addr().to_owned();
    let runtime = runtime()?;
    // SIGTERM (systemctl stop) or Ctrl-C: stop the nodes in order, report,
    // exit 0; a second one kills the nodes.
    let (shutdown_tx, shutdown) = tokio::sync::mpsc::unbounded_channel();
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            note!("rill daemon: cannot install signal handlers");
            return;
        };
        let mut how = rill_daemon::net::Shutdown::Stop;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            note!(
                "rill daemon: shutting down ({})",
                if how == rill_daemon::net::Shutdown::Stop { "stopping nodes; again to kill" } else { "killing nodes" }
            );
            if shutdown_tx.send(how).is_err() {
                return;
            }
            how = rill_daemon::net::Shutdown::Kill;
        }
    });
    let result = runtime.block_on(rill_daemon::net::run(config, shutdown, move |event| match event {
        ConnectionEvent::Registered { daemon_id } if !quiet => {
            note!("rill daemon: registered with {addr} as {daemon_id}")
        }
        ConnectionEvent::Lost { reason } if !quiet => note!("rill daemon: {reason}"),
        ConnectionEvent::Retrying { attempt, delay } if !quiet => {
            note!("rill daemon: reconnecting in {delay:.1?} (attempt {attempt})")
        }
        ConnectionEvent::Local(LocalEvent::Started { name, nodes }) if !quiet => {
            note!("rill daemon: starting {} of dataflow {name}", nodes.join(", "))
        }
        ConnectionEvent::Local(LocalEvent::Log { dataflow, node, stderr, line, .. }) if node_output => {
            if stderr {
                note!("[{dataflow}/{node}] {line}");
            } else {
                // Never panics: a daemon whose stdout went away keeps its nodes.
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "[{dataflow}/{node}] {line}");
            }
        }
        ConnectionEvent::Local(LocalEvent::Ended { name, success, summary }) => match success {
            true if !quiet => note!("rill daemon: dataflow {name} ended here"),
            true => {}
            false => note!("rill daemon: dataflow {name} failed here: {summary}"),
        },
        _ => {}
    }));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(rejected) => {
            note!("error: {rejected}");
            Ok(ExitCode::from(rejected.exit_code()))
        }
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let response = request(&args.coordinator, ControlRequest::Status)?;
    let ControlResponse::Status { version, uptime_ms, ca_fingerprint, transport, daemons, dataflows } = response else {
        anyhow::bail!("unexpected reply from the coordinator: {response:?}");
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"version": version, "uptime_ms": uptime_ms, "ca_fingerprint": ca_fingerprint,
                "transport": transport, "daemons": daemons, "dataflows": dataflows})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("coordinator {} (rill {version}, up {}s)", args.coordinator.host_port(), uptime_ms / 1000);
    match transport.as_str() {
        "plaintext" => println!("transport plaintext (--insecure-plaintext)"),
        _ => println!("transport TLS, cluster CA {ca_fingerprint}"),
    }
    let rows: Vec<[String; 6]> = daemons
        .iter()
        .map(|d| {
            [
                d.daemon_id.clone(),
                d.machine_id.clone().unwrap_or_else(|| "-".into()),
                d.version.clone(),
                d.platform.clone(),
                rill_core::format_labels(&d.labels),
                format!("{:.1}s", d.last_heartbeat_ms as f64 / 1000.0),
            ]
        })
        .collect();
    print_table(["DAEMON", "MACHINE", "VERSION", "PLATFORM", "LABELS", "LAST HEARTBEAT"], &rows);
    println!("{} connected", crate::output::count(daemons.len(), "daemon"));
    let active = dataflows.iter().filter(|d| d.status.is_active()).count();
    println!("{} active, {} known (see `rill list`)", crate::output::count(active, "dataflow"), dataflows.len());
    let rows: Vec<[String; 8]> = dataflows
        .iter()
        .filter(|d| d.status.is_active())
        .flat_map(|d| {
            d.placement.iter().map(move |p| {
                let t = d.traffic.get(&p.node).cloned().unwrap_or_default();
                let state = d.nodes.get(&p.node).map_or("-", rill_proto::coord::NodeStatus::state).to_owned();
                [
                    d.name.clone(),
                    p.node.clone(),
                    state,
                    format!("{:.0}", t.msgs_in_per_s),
                    format!("{:.0}", t.msgs_out_per_s),
                    t.received.to_string(),
                    t.sent.to_string(),
                    t.dropped.to_string(),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        println!();
        print_table(["DATAFLOW", "NODE", "STATE", "IN/S", "OUT/S", "RECEIVED", "SENT", "DROPPED"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct StartArgs {
    /// The dataflow file.
    file: PathBuf,
    /// Name to refer to it by (`rill stop NAME`); default: generated.
    #[arg(long)]
    name: Option<String>,
    /// Print where each node would run, start nothing.
    #[arg(long)]
    dry_run: bool,
    /// Stay attached: print node output until the dataflow ends; Ctrl-C stops it.
    #[arg(long, conflicts_with = "detach")]
    attach: bool,
    /// Return once started (the default).
    #[arg(long)]
    detach: bool,
    /// When some node has no daemon to run on yet, keep the dataflow
    /// `pending` up to this long (e.g. 60s, 10m) and start it as soon as
    /// matching daemons join, instead of failing at once.
    #[arg(long, value_name = "DURATION", value_parser = crate::cluster::parse_duration)]
    wait_for_daemons: Option<std::time::Duration>,
    /// The cluster file whose SSH details `distribute: scp` nodes are pushed
    /// with [default: the one `rill cluster up` recorded for this coordinator].
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    coordinator: ControlAccess,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    coordinator: ControlAccess,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Name or uuid of the dataflow.
    dataflow: String,
    #[command(flatten)]
    coordinator: ControlAccess,
    /// JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// One request to the coordinator; a refusal becomes an error with its text.
pub fn request(coordinator: &ControlAccess, request: ControlRequest) -> anyhow::Result<ControlResponse> {
    runtime()?.block_on(async {
        let mut client = coordinator.connect().await?;
        Ok(client.request(&request).await?)
    })
}

fn print_placement(placement: &[NodePlacement]) {
    let rows: Vec<[String; 3]> = placement
        .iter()
        .map(|p| [p.node.clone(), p.machine_id.clone().unwrap_or_else(|| "-".into()), p.daemon_id.clone()])
        .collect();
    print_table(["NODE", "MACHINE", "DAEMON"], &rows);
}

/// Columns as wide as their widest cell, two spaces apart.
pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header);
    for row in rows {
        line(std::array::from_fn(|i| row[i].as_str()));
    }
}

pub fn start(args: StartArgs) -> anyhow::Result<ExitCode> {
    let Some((mut descriptor, base_dir)) = crate::output::load_dataflow(&args.file)? else {
        return Ok(ExitCode::FAILURE);
    };
    // Nodes with `distribute: scp|http` are built here and shipped first
    // (a dry run only shows the plan).
    if !args.dry_run {
        crate::ship::ship(&mut descriptor, &base_dir, &args.coordinator, args.cluster.as_deref())?;
    }
    let base_dir = base_dir.display().to_string();
    let response = request(
        &args.coordinator,
        ControlRequest::Start {
            descriptor,
            name: args.name,
            base_dir,
            dry_run: args.dry_run,
            wait_ms: args.wait_for_daemons.map(|w| w.as_millis() as u64),
        },
    )?;
    match response {
        ControlResponse::Plan { placement } if args.json => {
            println!("{}", serde_json::json!({"dry_run": true, "placement": placement}));
        }
        ControlResponse::Plan { placement } => {
            print_placement(&placement);
            println!("(dry run: nothing started)");
        }
        ControlResponse::Started { uuid, name, placement } => {
            if args.json {
                println!("{}", serde_json::json!({"uuid": uuid, "name": name, "placement": placement}));
            } else {
                print_placement(&placement);
                println!("started {name} ({uuid})");
            }
            if args.attach {
                return attach(&args.coordinator, &uuid, args.json);
            }
        }
        ControlResponse::Pending { uuid, name, waiting, wait_ms } => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"uuid": uuid, "name": name, "status": "pending", "waiting": waiting, "wait_ms": wait_ms})
                );
            } else {
                println!("pending {name} ({uuid}): waiting up to {:.0}s for daemons:", wait_ms as f64 / 1000.0);
                for problem in &waiting {
                    println!("  {problem}");
                }
            }
            if args.attach {
                return attach(&args.coordinator, &uuid, args.json);
            }
        }
        other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the dataflow's output until it ends; Ctrl-C asks it to stop (a
/// second Ctrl-C leaves it running and detaches). Exit code 1 if it failed.
fn attach(coordinator: &ControlAccess, uuid: &str, json: bool) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let mut logs = coordinator.connect().await?;
        logs.send(&ControlRequest::Logs { dataflow: uuid.to_owned(), node: None, follow: true }).await?;
        let mut control = coordinator.connect().await?;
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(300));
        // Installed once, so no Ctrl-C between two loop turns is missed.
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut interrupts = 0;
        let print = |line: rill_proto::coord::LogLine| {
            if json {
                println!("{}", serde_json::json!(line));
            } else if line.stream == "stderr" {
                eprintln!("[{}] {}", line.node, line.line);
            } else {
                println!("[{}] {}", line.node, line.line);
            }
        };
        loop {
            tokio::select! {
                reply = logs.next() => if let ControlResponse::Log(line) = reply? {
                    print(line);
                },
                _ = poll.tick() => {
                    let ControlResponse::List { dataflows } = control.request(&ControlRequest::List).await? else { continue };
                    let Some(d) = dataflows.into_iter().find(|d| d.uuid == uuid) else { continue };
                    let code = match d.status {
                        DataflowStatus::Finished | DataflowStatus::Stopped => ExitCode::SUCCESS,
                        DataflowStatus::Failed => ExitCode::FAILURE,
                        DataflowStatus::Pending
                        | DataflowStatus::Running
                        | DataflowStatus::Degraded
                        | DataflowStatus::Stopping => continue,
                    };
                    // Its last lines may still be on their way: the coordinator
                    // ends the follow after sending them.
                    let drain = async {
                        while let Ok(ControlResponse::Log(line)) = logs.next().await {
                            print(line);
                        }
                    };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
                    let status = serde_json::to_value(d.status)?;
                    if json {
                        println!("{}", serde_json::json!({"event": "ended", "uuid": d.uuid, "status": status, "reason": d.reason}));
                    } else {
                        eprintln!("dataflow {} {}{}", d.name, status.as_str().unwrap_or(""), d.reason.map(|r| format!(": {r}")).unwrap_or_default());
                    }
                    return Ok(code);
                }
                _ = sigint.recv() => {
                    interrupts += 1;
                    if interrupts > 1 {
                        eprintln!("detached; the dataflow keeps running (rill stop {uuid})");
                        return Ok(ExitCode::SUCCESS);
                    }
                    eprintln!("stopping (Ctrl-C again to detach)");
                    control.request(&ControlRequest::Stop { dataflow: uuid.to_owned() }).await?;
                }
            }
        }
    })
}

pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let ControlResponse::List { dataflows } = request(&args.coordinator, ControlRequest::List)? else {
        anyhow::bail!("unexpected reply from the coordinator");
    };
    if args.json {
        println!("{}", serde_json::json!({"dataflows": dataflows}));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = dataflows
        .iter()
        .map(|d| {
            let status =
                serde_json::to_value(d.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let lost: Vec<String> = d
                .nodes
                .iter()
                .filter_map(|(node, status)| match status {
                    rill_proto::coord::NodeStatus::Lost { reason } => Some(format!("{node} ({reason})")),
                    _ => None,
                })
                .collect();
            let reason = match &d.reason {
                Some(reason) => reason.clone(),
                None if !d.waiting.is_empty() => format!("waiting: {}", d.waiting.join("; ")),
                None if !lost.is_empty() => format!("lost: {}", lost.join(", ")),
                None => String::new(),
            };
            let dropped: u64 = d.traffic.values().map(|t| t.dropped).sum();
            [d.uuid.clone(), d.name.clone(), status, d.placement.len().to_string(), dropped.to_string(), reason]
        })
        .collect();
    print_table(["UUID", "NAME", "STATUS", "NODES", "DROPPED", "REASON"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub fn restart(args: StopArgs) -> anyhow::Result<ExitCode> {
    let response = request(&args.coordinator, ControlRequest::Restart { dataflow: args.dataflow })?;
    let ControlResponse::Restarted { old_uuid, new_uuid, name, placement } = response else {
        anyhow::bail!("unexpected reply from the coordinator: {response:?}");
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"name": name, "old_uuid": old_uuid, "new_uuid": new_uuid, "placement": placement})
        );
    } else {
        println!("restarting dataflow `{name}`");
        println!("dataflow restarted: {old_uuid} -> {new_uuid}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn stop(args: StopArgs) -> anyhow::Result<ExitCode> {
    let ControlResponse::Stopped { uuid, name } =
        request(&args.coordinator, ControlRequest::Stop { dataflow: args.dataflow })?
    else {
        anyhow::bail!("unexpected reply from the coordinator");
    };
    if args.json {
        println!("{}", serde_json::json!({"uuid": uuid, "name": name, "status": "stopping"}));
    } else {
        println!("stopping {name} ({uuid})");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Name or uuid of the dataflow.
    dataflow: String,
    /// Only this node's output.
    node: Option<String>,
    /// Keep printing new lines until the dataflow ends or Ctrl-C.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    coordinator: ControlAccess,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let request = ControlRequest::Logs { dataflow: args.dataflow, node: args.node, follow: args.follow };
    let json = args.json;
    runtime()?.block_on(async move {
        let mut client = args.coordinator.connect().await?;
        client.send(&request).await?;
        loop {
            match client.next().await? {
                ControlResponse::Log(line) if json => println!("{}", serde_json::json!(line)),
                ControlResponse::Log(line) if line.stream == "stderr" => eprintln!("[{}] {}", line.node, line.line),
                ControlResponse::Log(line) => println!("[{}] {}", line.node, line.line),
                ControlResponse::LogEnd => return Ok::<_, anyhow::Error>(()),
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

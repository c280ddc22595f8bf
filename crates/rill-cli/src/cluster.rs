//! `rill cluster check|up|status|down|restart`: a cluster described by a
//! `cluster.yml`, its daemons started over SSH (rill-cluster does the SSH,
//! the preflight and the remote scripts; this sequences and prints).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rill_cluster::remote::{self, DaemonLaunch};
use rill_cluster::{Facts, Gap, Inventory, InventoryMachine, Needs, Ssh, Target};
use rill_core::{ClusterFile, Machine};
use rill_proto::coord::{
    ControlRequest, ControlResponse, DaemonStatus, DataflowStatus, NodeStatus, TokenInfo, TokenState,
};

use crate::access::ControlAccess;

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// Validate a cluster file (every problem with file:line:column); with
    /// --ssh, also check every machine (reachable, Linux, same rill, sudo,
    /// systemd).
    Check {
        file: PathBuf,
        /// Also run the preflight on every machine over SSH.
        #[arg(long)]
        ssh: bool,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Start the coordinator here and a daemon on every machine over SSH;
    /// again on a running cluster, start only what is missing.
    Up {
        file: PathBuf,
        /// How long to wait for every daemon to register, e.g. 30s, 2m.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's machines: connected or not, labels, arch, version, last
    /// heartbeat, nodes running.
    Status {
        /// The cluster file [default: the cluster `rill cluster up` started last].
        file: Option<PathBuf>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Stop the dataflows, every daemon (gracefully) and the coordinator;
    /// revoke the machines' join tokens.
    Down {
        /// The cluster file [default: the cluster `rill cluster up` started last].
        file: Option<PathBuf>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Stop a dataflow and start it again from the stored descriptor.
    Restart(crate::remote::StopArgs),
    /// Install the daemon of every machine as a systemd service
    /// (rill-daemon-ID, enabled and started; needs passwordless sudo).
    Install {
        file: PathBuf,
        /// How long to wait for every daemon to register, e.g. 30s, 2m.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Roll a new rill binary out to the services, one machine at a time:
    /// checked there, swapped in (the old one kept), restarted, and waited
    /// for; a machine that fails is rolled back and the rollout stops.
    Upgrade {
        /// The cluster file [default: the cluster `rill cluster up` started last].
        file: Option<PathBuf>,
        /// The binary to roll out [default: this rill].
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Machines upgraded at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        max_parallel: u16,
        /// Put back the binary each machine had before its last upgrade.
        #[arg(long, conflicts_with = "binary")]
        rollback: bool,
        /// How long each machine's daemon gets to come back, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Stop, disable and remove every machine's service, its token and state.
    Uninstall {
        /// The cluster file [default: the cluster `rill cluster up` started last].
        file: Option<PathBuf>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// A positive duration with a unit (`30s`, `2m`), as `--ttl` takes it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match rill_auth::token::parse_ttl(text) {
        Ok(Some(duration)) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("{text:?}: use a positive whole number with a unit (30s, 2m, 1h)")),
    }
}

pub fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Check { file, ssh, json } => check(&file, ssh, json),
        ClusterCommand::Up { file, timeout, json } => up(&file, timeout, json),
        ClusterCommand::Status { file, json } => status(file.as_deref(), json),
        ClusterCommand::Down { file, json } => down(file.as_deref(), json),
        ClusterCommand::Restart(args) => crate::remote::restart(args),
        ClusterCommand::Install { file, timeout, json } => crate::services::install(&file, timeout, json),
        ClusterCommand::Uninstall { file, json } => crate::services::uninstall(file.as_deref(), json),
        ClusterCommand::Upgrade { file, binary, max_parallel, rollback, timeout, json } => {
            let how =
                crate::services::Upgrade { binary, max_parallel: usize::from(max_parallel), rollback, timeout, json };
            crate::services::upgrade(file.as_deref(), how)
        }
    }
}

/// The local rill's `--version` line, which remote ones must match.
pub(crate) fn local_version() -> String {
    format!("rill {}", crate::version::full())
}

/// Loads a cluster file, printing its problems. `None`: it is invalid.
pub(crate) fn load(file: &Path, json: bool) -> Option<ClusterFile> {
    match ClusterFile::load(file) {
        Ok(cluster) => Some(cluster),
        Err(diagnostics) => {
            if json {
                let errors: Vec<_> = diagnostics
                    .0
                    .iter()
                    .map(|d| serde_json::json!({"line": d.line, "column": d.column, "message": d.message, "hint": d.hint}))
                    .collect();
                println!("{}", serde_json::json!({"file": file, "ok": false, "errors": errors}));
            } else {
                eprintln!("{diagnostics}");
            }
            None
        }
    }
}

/// A machine's problem, for the output.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Failure {
    /// `unreachable`, `no_rill`, `other_version`, ..., `not_registered`.
    pub(crate) kind: String,
    pub(crate) message: String,
    /// The end of the daemon's log, when it was started.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) log: Vec<String>,
}

impl Failure {
    pub(crate) fn new(kind: &str, message: impl Into<String>) -> Self {
        Self { kind: kind.into(), message: message.into(), log: Vec::new() }
    }

    pub(crate) fn of_gaps(gaps: &[Gap]) -> Self {
        let message = gaps.iter().map(Gap::to_string).collect::<Vec<_>>().join("; ");
        Self::new(gaps.first().map_or("preflight", Gap::kind), message)
    }

    pub(crate) fn of_ssh(e: &rill_cluster::SshError) -> Self {
        let kind = match e {
            rill_cluster::SshError::Unreachable { .. } => "unreachable",
            rill_cluster::SshError::Timeout { .. } => "timeout",
            _ => "ssh",
        };
        Self::new(kind, e.to_string())
    }
}

/// How long one remote command may take (ssh's own connect timeout is 10 s).
pub(crate) const REMOTE_LIMIT: Duration = Duration::from_secs(30);
/// How long a remote command that stops or restarts a service may take: the
/// unit lets its daemon stop for up to 30 s (`TimeoutStopSec`) before the
/// kill, and the command must outlast that.
pub(crate) const SERVICE_LIMIT: Duration = Duration::from_secs(60);

/// The preflight of one machine.
pub(crate) fn preflight(ssh: &Ssh, machine: &Machine) -> Result<Facts, Failure> {
    let output = ssh
        .run(&Target::of(machine), rill_cluster::preflight::SCRIPT, b"", REMOTE_LIMIT)
        .map_err(|e| Failure::of_ssh(&e))?;
    Ok(Facts::parse(&output.stdout))
}

/// Runs `work` for every machine at once; results in the machines' order.
pub(crate) fn each_machine<'m, T: Send>(machines: &'m [Machine], work: impl Fn(&'m Machine) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = machines.iter().map(|m| scope.spawn(|| work(m))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

fn check(file: &Path, ssh: bool, json: bool) -> anyhow::Result<ExitCode> {
    let Some(cluster) = load(file, json) else { return Ok(ExitCode::FAILURE) };
    if !ssh {
        if json {
            println!("{}", serde_json::json!({"file": file, "ok": true, "machines": cluster.machines.len()}));
        } else {
            println!("ok: {} ({})", file.display(), crate::output::count(cluster.machines.len(), "machine"));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ssh = Ssh::new()?;
    let local = local_version();
    let results = each_machine(&cluster.machines, |m| {
        preflight(&ssh, m).map(|facts| {
            let gaps = facts.gaps(Needs::ALL, &local);
            (facts, gaps)
        })
    });
    let mut ok = true;
    let mut rows = Vec::new();
    for (machine, result) in cluster.machines.iter().zip(&results) {
        let failures: Vec<Failure> = match result {
            Err(failure) => vec![failure.clone()],
            Ok((_, gaps)) => gaps
                .iter()
                .map(|gap| {
                    let mut failure = Failure::of_gaps(std::slice::from_ref(gap));
                    if let Some(needed_by) = gap.needed_by() {
                        failure.message += &format!(" (needed for {needed_by})");
                    }
                    failure
                })
                .collect(),
        };
        ok &= failures.is_empty();
        if json {
            let facts = result.as_ref().ok().map(|(f, _)| f);
            rows.push(
                serde_json::json!({"id": machine.id, "destination": machine.destination(), "ok": failures.is_empty(),
                "facts": facts, "problems": failures}),
            );
            continue;
        }
        match result {
            Ok((facts, _)) => println!(
                "{} ({}): {} {}, {}, sudo {}, systemd {}",
                machine.id,
                machine.destination(),
                facts.os,
                facts.arch,
                match (&facts.rill, &facts.version) {
                    (Some(path), Some(version)) => format!("{version} at {path}"),
                    _ => "no rill".to_owned(),
                },
                match &facts.sudo {
                    rill_cluster::preflight::Sudo::Ok => "ok",
                    rill_cluster::preflight::Sudo::Missing => "missing",
                    rill_cluster::preflight::Sudo::Refused(_) => "refused",
                },
                if facts.systemd { "yes" } else { "no" },
            ),
            Err(_) => println!("{} ({}): not checked", machine.id, machine.destination()),
        }
        for failure in &failures {
            eprintln!("error: machine {} ({}): {}", machine.id, machine.destination(), failure.message);
        }
    }
    if json {
        println!("{}", serde_json::json!({"file": file, "ok": ok, "machines": rows}));
    } else if ok {
        println!("ok: every machine is ready (rill {} everywhere)", crate::version::full());
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The record of the cluster on `port`.
pub(crate) fn inventory_path(port: u16) -> PathBuf {
    Inventory::path(&crate::dirs::state_dir(), port)
}

pub(crate) fn addr_port(inventory_addr: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(inventory_addr, port).to_string()
}

/// How long one request to the coordinator may take.
const CONTROL_LIMIT: Duration = Duration::from_secs(30);

/// A control connection to the coordinator at `addr:port`, with what the
/// CLI config holds for it.
pub(crate) struct Control {
    runtime: tokio::runtime::Runtime,
    client: rill_coordinator::client::ControlClient,
}

impl Control {
    pub(crate) fn connect(access: &ControlAccess) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = runtime.block_on(access.connect())?;
        Ok(Self { runtime, client })
    }

    pub(crate) fn call(&mut self, request: ControlRequest) -> anyhow::Result<ControlResponse> {
        let client = &mut self.client;
        // (The timer is made inside the runtime: it needs its reactor.)
        let reply =
            self.runtime.block_on(async { tokio::time::timeout(CONTROL_LIMIT, client.request(&request)).await });
        Ok(reply.map_err(|_| anyhow::anyhow!("the coordinator did not answer within {CONTROL_LIMIT:?}"))??)
    }

    pub(crate) fn daemons(&mut self) -> anyhow::Result<Vec<DaemonStatus>> {
        match self.call(ControlRequest::Status)? {
            ControlResponse::Status { daemons, .. } => Ok(daemons),
            other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
        }
    }
}

/// The access for `addr:port` (the CLI config entry `up` wrote).
pub(crate) fn access_for(addr: std::net::IpAddr, port: u16) -> ControlAccess {
    ControlAccess::at(&addr.to_string(), port)
}

/// How long the coordinator gets to answer after it was started.
const COORDINATOR_START: Duration = Duration::from_secs(20);

/// Starts the coordinator (unless the one `up` started earlier still runs)
/// and makes it the CLI's current one. Returns its pid.
pub(crate) fn ensure_coordinator(
    cluster: &ClusterFile,
    earlier: Option<&Inventory>,
    json: bool,
) -> anyhow::Result<u32> {
    let at = addr_port(cluster.addr, cluster.port);
    if let Some(pid) = earlier.and_then(|e| e.coordinator_pid).filter(|pid| is_coordinator(*pid)) {
        Control::connect(&access_for(cluster.addr, cluster.port))
            .with_context(|| format!("the coordinator `cluster up` started (pid {pid}) does not answer on {at}"))?;
        if !json {
            println!("Coordinator on {at} is up (pid {pid})");
        }
        return Ok(pid);
    }
    if !json {
        println!("Starting coordinator on {at}...");
    }
    let dir = crate::dirs::state_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = dir.join(format!("coordinator-{}.log", cluster.port));
    let (bind, port) = (cluster.addr.to_string(), cluster.port.to_string());
    let mut args =
        vec!["coordinator".to_owned(), "--bind".into(), bind, "--port".into(), port, "--store".into(), "redb".into()];
    for (flag, wait) in [("--lost-timeout", cluster.lost_timeout), ("--recovery-backoff", cluster.recovery_backoff)] {
        if let Some(wait) = wait {
            args.extend([flag.to_owned(), wait.as_secs_f64().to_string()]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = crate::updown::spawn_background(&args, &log)?;
    let state = crate::dirs::coordinator_state(cluster.port);
    let deadline = Instant::now() + COORDINATOR_START;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            anyhow::bail!(
                "the coordinator exited at once; the end of {}:\n{}",
                log.display(),
                crate::updown::log_tail(&log)
            );
        }
        // Its CA and admin token exist once it started; then the CLI config
        // gets them and the coordinator must answer with them.
        let ready =
            state.join(rill_auth::identity::ADMIN_TOKEN).exists() && state.join(rill_auth::ca::CA_CERT).exists();
        if ready {
            let fingerprint = rill_auth::ClusterCa::fingerprint_in(&state)?;
            let admin = rill_auth::identity::read_admin(&state.join(rill_auth::identity::ADMIN_TOKEN))?;
            crate::access::remember(&at, Some(fingerprint), &admin)?;
            if Control::connect(&access_for(cluster.addr, cluster.port)).is_ok() {
                return Ok(child.id());
            }
        }
        if Instant::now() > deadline {
            crate::updown::stop_child(&mut child);
            anyhow::bail!(
                "the coordinator did not answer on {at} within {COORDINATOR_START:?}; the end of {}:\n{}",
                log.display(),
                crate::updown::log_tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Is `pid` a running `rill coordinator` (of any rill binary: `down` may
/// run from another build than `up`)?
pub(crate) fn is_coordinator(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let program = args.next().unwrap_or_default();
    let name = program.rsplit('/').next().unwrap_or_default().to_owned();
    name.starts_with("rill") && args.next().as_deref() == Some("coordinator")
}

/// The join token for `machine`: the recorded one while the coordinator
/// holds it live, else a new one (no expiry, the machine's labels).
/// A token whose labels are not the machine's (the file changed) is
/// revoked and minted again: its daemon could not claim the new ones.
pub(crate) fn join_token(
    control: &mut Control,
    machine: &InventoryMachine,
    live: &BTreeMap<String, TokenInfo>,
) -> Result<String, Failure> {
    let name = rill_core::token_name(&machine.id);
    let info = live.get(&name).filter(|t| matches!(t.state, TokenState::Unused | TokenState::Enrolled));
    let same_labels = info.is_some_and(|t| t.labels.as_ref() == Some(&machine.labels));
    if let (Some(token), Some(_), true) = (&machine.token, info, same_labels) {
        return Ok(token.clone());
    }
    if info.is_some() && machine.token.is_some() {
        if let Err(e) = control.call(ControlRequest::TokenRevoke { name: name.clone() }) {
            return Err(Failure::new("token", format!("cannot revoke the token with the old labels: {e:#}")));
        }
    } else if info.is_some() {
        return Err(Failure::new(
            "token_in_use",
            format!(
                "a live join token named {name} exists that this cluster's record does not hold; revoke it \
                 (`rill token revoke {name}`) and run `rill cluster up` again"
            ),
        ));
    }
    let request = ControlRequest::TokenCreate { name, ttl_ms: None, labels: Some(machine.labels.clone()) };
    match control.call(request) {
        Ok(ControlResponse::TokenCreated { token, .. }) => Ok(token),
        Ok(other) => Err(Failure::new("token", format!("unexpected reply from the coordinator: {other:?}"))),
        Err(e) => Err(Failure::new("token", format!("cannot mint a join token: {e:#}"))),
    }
}

/// What happened to one machine in `up`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
enum Outcome {
    /// Its daemon was connected before.
    AlreadyConnected,
    /// Started now (or found running) and registered.
    Connected {
        pid: Option<u32>,
        seconds: f64,
    },
    Failed(Failure),
}

fn up(file: &Path, timeout: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let Some(cluster) = load(file, json) else { return Ok(ExitCode::FAILURE) };
    let path = inventory_path(cluster.port);
    let earlier = Inventory::load(&path)?;
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let mut inventory = Inventory::from_file(&cluster, absolute, earlier.as_ref());
    let started = Instant::now();
    let pid = ensure_coordinator(&cluster, earlier.as_ref(), json)?;
    inventory.coordinator_pid = Some(pid);
    inventory.save(&path)?;
    let mut control = Control::connect(&access_for(cluster.addr, cluster.port))?;
    // Connected with the labels the file gives it; a daemon whose labels
    // changed in the file is started again (with a token granting them).
    let connected: BTreeSet<String> = control
        .daemons()?
        .into_iter()
        .filter(|d| d.machine_id.as_deref().and_then(|id| cluster.machine(id)).is_some_and(|m| m.labels == d.labels))
        .filter_map(|d| d.machine_id)
        .collect();
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let missing: Vec<Machine> = cluster.machines.iter().filter(|m| !connected.contains(&m.id)).cloned().collect();
    for machine in cluster.machines.iter().filter(|m| connected.contains(&m.id)) {
        report(json, machine, "already connected");
        outcomes.insert(machine.id.clone(), Outcome::AlreadyConnected);
    }
    // 1. Preflight, every machine at once.
    let ssh = Ssh::new()?;
    let local = local_version();
    let facts = each_machine(&missing, |m| {
        preflight(&ssh, m).and_then(|facts| match facts.gaps(Needs::UP, &local) {
            gaps if gaps.is_empty() => Ok(facts),
            gaps => Err(Failure::of_gaps(&gaps)),
        })
    });
    // 2. Tokens, recorded before they are used (nothing minted is lost).
    let live: BTreeMap<String, TokenInfo> = match control.call(ControlRequest::TokenList)? {
        ControlResponse::Tokens { tokens } => tokens.into_iter().map(|t| (t.name.clone(), t)).collect(),
        other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
    };
    let mut ready: Vec<(Machine, String, String)> = Vec::new();
    for (machine, facts) in missing.iter().zip(facts) {
        let prepared = facts.and_then(|facts| {
            let record =
                inventory.machine(&machine.id).cloned().ok_or_else(|| Failure::new("internal", "not recorded"))?;
            if record.installed {
                // Its service holds its own token.
                return Ok((facts.rill.unwrap_or_else(|| "rill".into()), String::new()));
            }
            let token = join_token(&mut control, &record, &live)?;
            if let Some(m) = inventory.machine_mut(&machine.id) {
                m.token = Some(token.clone());
            }
            Ok((facts.rill.unwrap_or_else(|| "rill".into()), token))
        });
        match prepared {
            Ok((rill, token)) => ready.push((machine.clone(), rill, token)),
            Err(failure) => {
                report(json, machine, &format!("FAILED: {}", failure.message));
                outcomes.insert(machine.id.clone(), Outcome::Failed(failure));
            }
        }
    }
    inventory.save(&path)?;
    // 3. Start the daemons, every machine at once.
    // `--labels key=value,...` (cluster.yml allows no commas in values).
    let labels: BTreeMap<&str, String> = ready
        .iter()
        .map(|(m, ..)| (m.id.as_str(), m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")))
        .collect();
    let machines: Vec<Machine> = ready.iter().map(|(m, ..)| m.clone()).collect();
    // Machines whose daemon is a systemd service (`cluster install`): started with systemctl.
    let installed: BTreeSet<String> = inventory.machines.iter().filter(|m| m.installed).map(|m| m.id.clone()).collect();
    let launches = each_machine(&machines, |machine| {
        let (_, rill, token) = ready.iter().find(|(m, ..)| m.id == machine.id).expect("every started machine is ready");
        let launch = DaemonLaunch {
            rill,
            machine_id: &machine.id,
            coordinator: cluster.addr,
            port: cluster.port,
            labels: labels.get(machine.id.as_str()).map_or("", String::as_str),
        };
        let (script, stdin) = match installed.contains(&machine.id) {
            true => (rill_cluster::service::start_script(&machine.id), String::new()),
            false => (remote::start_script(&launch), format!("{token}\n")),
        };
        let output = ssh.run(&Target::of(machine), &script, stdin.as_bytes(), REMOTE_LIMIT);
        match output {
            Err(e) => Err(Failure::of_ssh(&e)),
            Ok(out) if out.code != 0 => Err(Failure::new(
                "start",
                format!("the start script failed (exit {}): {}", out.code, out.stderr.trim()),
            )),
            Ok(out) => Ok(remote::field(&out.stdout, "started")
                .or(remote::field(&out.stdout, "running"))
                .and_then(|p| p.parse::<u32>().ok())),
        }
    });
    // 4. Wait until each registers (or its process is gone).
    let mut waiting: BTreeMap<String, (Machine, Option<u32>)> = BTreeMap::new();
    for (machine, launch) in machines.iter().zip(launches) {
        match launch {
            Ok(pid) => {
                waiting.insert(machine.id.clone(), (machine.clone(), pid));
            }
            Err(failure) => {
                report(json, machine, &format!("FAILED: {}", failure.message));
                outcomes.insert(machine.id.clone(), Outcome::Failed(failure));
            }
        }
    }
    let deadline = Instant::now() + timeout;
    let mut last_probe = Instant::now();
    while !waiting.is_empty() {
        let now_connected: BTreeSet<String> = control.daemons()?.into_iter().filter_map(|d| d.machine_id).collect();
        for id in waiting.keys().filter(|id| now_connected.contains(*id)).cloned().collect::<Vec<_>>() {
            let Some((machine, pid)) = waiting.remove(&id) else { continue };
            report(json, &machine, "OK");
            outcomes.insert(id, Outcome::Connected { pid, seconds: started.elapsed().as_secs_f64() });
        }
        let expired = Instant::now() > deadline;
        // Every 2 s (and at the deadline): a daemon that exited will never register.
        if !waiting.is_empty() && (expired || last_probe.elapsed() > Duration::from_secs(2)) {
            last_probe = Instant::now();
            // (A service is not probed: systemd restarts its daemon; it has until the deadline.)
            let pending: Vec<Machine> =
                waiting.values().map(|(m, _)| m.clone()).filter(|m| expired || !installed.contains(&m.id)).collect();
            let probes = each_machine(&pending, |m| {
                ssh.run(&Target::of(m), &remote::probe_script(cluster.port, &m.id), b"", REMOTE_LIMIT)
            });
            for (machine, probe) in pending.iter().zip(probes) {
                let (alive, log) = match probe {
                    Ok(out) => (
                        Some(remote::field(&out.stdout, "alive") == Some("yes")),
                        out.stdout.lines().skip(1).map(str::to_owned).collect::<Vec<_>>(),
                    ),
                    // Not an answer about the daemon: asked again later.
                    Err(e) => (None, vec![e.to_string()]),
                };
                if alive != Some(false) && !expired {
                    continue;
                }
                let message = match alive {
                    Some(false) => "its daemon exited without registering".to_owned(),
                    _ => format!("its daemon did not register within {timeout:?}"),
                };
                waiting.remove(&machine.id);
                report(json, machine, &format!("FAILED: {message}"));
                if !json {
                    for line in &log {
                        eprintln!("    {line}");
                    }
                }
                outcomes.insert(
                    machine.id.clone(),
                    Outcome::Failed(Failure { kind: "not_registered".into(), message, log }),
                );
            }
        }
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let failed: Vec<&String> =
        outcomes.iter().filter(|(_, o)| matches!(o, Outcome::Failed(_))).map(|(id, _)| id).collect();
    let total = cluster.machines.len();
    let up = total - failed.len();
    if json {
        let machines: Vec<_> = cluster
            .machines
            .iter()
            .map(|m| serde_json::json!({"id": m.id, "destination": m.destination(), "outcome": outcomes.get(&m.id)}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"coordinator": addr_port(cluster.addr, cluster.port), "coordinator_pid": pid,
                "connected": up, "expected": total, "seconds": started.elapsed().as_secs_f64(), "machines": machines})
        );
    } else if failed.is_empty() {
        println!("All {} connected ({:.1}s).", crate::output::count(total, "daemon"), started.elapsed().as_secs_f64());
    } else {
        let names: Vec<&str> = failed.iter().map(|s| s.as_str()).collect();
        eprintln!("error: {up} of {total} daemons connected; failed: {} (the others stay up)", names.join(", "));
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One progress line per machine, as the reference prints it.
fn report(json: bool, machine: &Machine, what: &str) {
    if json {
        return;
    }
    let line = format!("Starting daemon on {} ({})... {what}", machine.id, machine.destination());
    if what.starts_with("FAILED") { eprintln!("{line}") } else { println!("{line}") }
}

/// The record of the cluster in `file`, or of the current coordinator's.
pub(crate) fn find_inventory(file: Option<&Path>) -> anyhow::Result<(Inventory, PathBuf)> {
    let port = match file {
        Some(file) => match ClusterFile::load(file) {
            Ok(cluster) => cluster.port,
            Err(diagnostics) => anyhow::bail!("{diagnostics}"),
        },
        None => {
            let config = rill_auth::config::CliConfig::load(&crate::access::config_path())?;
            let current = config.current.context("no cluster is current: pass the cluster file")?;
            current.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).context("the current coordinator has no port")?
        }
    };
    let path = inventory_path(port);
    match Inventory::load(&path)? {
        Some(inventory) => Ok((inventory, path)),
        None => anyhow::bail!(
            "no cluster record for port {port} ({} does not exist): `rill cluster up cluster.yml` starts one",
            path.display()
        ),
    }
}

fn status(file: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let (inventory, _) = find_inventory(file)?;
    let mut control = Control::connect(&access_for(inventory.addr, inventory.port))?;
    let ControlResponse::Status { version, daemons, dataflows, .. } = control.call(ControlRequest::Status)? else {
        anyhow::bail!("unexpected reply from the coordinator");
    };
    // Nodes running per machine, from the dataflows' placement.
    let mut running: BTreeMap<String, usize> = BTreeMap::new();
    for dataflow in dataflows.iter().filter(|d| d.status.is_active()) {
        for placed in &dataflow.placement {
            if matches!(dataflow.nodes.get(&placed.node), Some(NodeStatus::Running { .. })) {
                *running.entry(placed.daemon_id.clone()).or_default() += 1;
            }
        }
    }
    let mut rows = Vec::new();
    let mut listed = BTreeSet::new();
    for machine in &inventory.machines {
        let daemon = daemons.iter().find(|d| d.machine_id.as_deref() == Some(machine.id.as_str()));
        listed.extend(daemon.map(|d| d.daemon_id.clone()));
        rows.push(machine_row(Some(machine), daemon, &running));
    }
    for daemon in daemons.iter().filter(|d| !listed.contains(&d.daemon_id)) {
        rows.push(machine_row(None, Some(daemon), &running));
    }
    let active = dataflows.iter().filter(|d| d.status.is_active()).count();
    let connected = rows.iter().filter(|r| r["connected"] == true).count();
    if json {
        println!(
            "{}",
            serde_json::json!({"coordinator": addr_port(inventory.addr, inventory.port), "version": version,
                "file": inventory.file, "machines": rows, "connected": connected, "active_dataflows": active})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                text(&r["id"]),
                text(&r["host"]),
                text(&r["labels_text"]),
                text(&r["arch"]),
                text(&r["version"]),
                match r["last_heartbeat_ms"].as_u64() {
                    Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
                    None => "not connected".into(),
                },
                text(&r["nodes_running"]),
                text(&r["daemon_id"]),
            ]
        })
        .collect();
    crate::remote::print_table(
        ["MACHINE", "HOST", "LABELS", "ARCH", "VERSION", "LAST HEARTBEAT", "NODES", "DAEMON"],
        &table,
    );
    println!(
        "{} of {} connected; {} (coordinator {} on {})",
        connected,
        crate::output::count(rows.len(), "machine"),
        crate::output::count(active, "active dataflow"),
        version,
        addr_port(inventory.addr, inventory.port)
    );
    Ok(ExitCode::SUCCESS)
}

/// One machine of `cluster status`, as JSON (the table is made from it).
fn machine_row(
    machine: Option<&InventoryMachine>,
    daemon: Option<&DaemonStatus>,
    running: &BTreeMap<String, usize>,
) -> serde_json::Value {
    // What the daemon registered with is what placement uses.
    let labels = daemon.map(|d| d.labels.clone()).or(machine.map(|m| m.labels.clone())).unwrap_or_default();
    let arch = daemon.and_then(|d| d.platform.split_once('/').map(|(_, arch)| arch.to_owned()));
    serde_json::json!({
        "id": machine.map(|m| m.id.clone()).or(daemon.and_then(|d| d.machine_id.clone())),
        "host": machine.map(|m| m.host.clone()),
        "in_cluster_file": machine.is_some(),
        "connected": daemon.is_some(),
        "labels": labels,
        "labels_text": rill_core::format_labels(&labels),
        "platform": daemon.map(|d| d.platform.clone()),
        "arch": arch,
        "version": daemon.map(|d| d.version.clone()),
        "last_heartbeat_ms": daemon.map(|d| d.last_heartbeat_ms),
        "nodes_running": daemon.map(|d| running.get(&d.daemon_id).copied().unwrap_or(0)),
        "daemon_id": daemon.map(|d| d.daemon_id.clone()),
    })
}

/// How long `down` waits for the dataflows it stopped to end.
const DATAFLOWS_STOP: Duration = Duration::from_secs(30);

fn down(file: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let (mut inventory, path) = find_inventory(file)?;
    let at = addr_port(inventory.addr, inventory.port);
    // The coordinator is there if it answers (whichever rill binary runs it).
    let mut control = Control::connect(&access_for(inventory.addr, inventory.port)).ok();
    // 1. Dataflows: stopped, so their nodes end in order.
    let mut stopped_dataflows = Vec::new();
    if let Some(control) = control.as_mut() {
        let ControlResponse::List { dataflows } = control.call(ControlRequest::List)? else {
            anyhow::bail!("unexpected reply from the coordinator");
        };
        // (One already stopping is only waited for.)
        for d in dataflows.iter().filter(|d| d.status.is_active() && d.status != DataflowStatus::Stopping) {
            control.call(ControlRequest::Stop { dataflow: d.uuid.clone() })?;
            stopped_dataflows.push(d.name.clone());
        }
        let deadline = Instant::now() + DATAFLOWS_STOP;
        while Instant::now() < deadline {
            let ControlResponse::List { dataflows } = control.call(ControlRequest::List)? else { break };
            if !dataflows.iter().any(|d| d.status.is_active()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !json && !stopped_dataflows.is_empty() {
            println!(
                "Stopped {}: {}",
                crate::output::count(stopped_dataflows.len(), "dataflow"),
                stopped_dataflows.join(", ")
            );
        }
    }
    // 2. Daemons, every machine at once; their tokens and identities stay
    // until the tokens are revoked.
    let ssh = Ssh::new()?;
    let port = inventory.port;
    let machines: Vec<Machine> = inventory.machines.iter().map(InventoryMachine::machine).collect();
    let installed: BTreeSet<String> = inventory.machines.iter().filter(|m| m.installed).map(|m| m.id.clone()).collect();
    let results = each_machine(&machines, |m| {
        let script = match installed.contains(&m.id) {
            // Stopped, still installed (and enabled): its token stays for the next `up`.
            true => rill_cluster::service::stop_script(&m.id),
            false => remote::stop_script(port, &m.id),
        };
        ssh.run(&Target::of(m), &script, b"", SERVICE_LIMIT)
    });
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for (machine, result) in machines.iter().zip(results) {
        let (status, detail) = match &result {
            Ok(out) if remote::field(&out.stdout, "stopped").is_some() => ("stopped", String::from("OK")),
            Ok(out) if remote::field(&out.stdout, "killed").is_some() => {
                let grace = match installed.contains(&machine.id) {
                    true => rill_cluster::service::STOP_TIMEOUT_SECS,
                    false => remote::STOP_GRACE_SECS,
                };
                ("killed", format!("OK (killed: it did not stop within {grace} s)"))
            }
            Ok(out) if out.stdout.contains("not_running") => ("not_running", "OK (was not running)".into()),
            Ok(out) if out.stdout.contains("step=stop ok") => ("stopped", "OK (service stopped)".into()),
            Ok(out) => ("failed", format!("FAILED (exit {}): {}", out.code, out.stderr.trim())),
            Err(e) => ("failed", format!("FAILED: {e}")),
        };
        if status == "failed" {
            failed.push(machine.id.clone());
        }
        if json {
            rows.push(serde_json::json!({"id": machine.id, "destination": machine.destination(), "status": status, "detail": detail}));
        } else {
            let line = format!("Stopping daemon on {} ({})... {detail}", machine.id, machine.destination());
            if status == "failed" { eprintln!("{line}") } else { println!("{line}") }
        }
    }
    // 3. Tokens: revoked, then the machine's directory (token, identity)
    // goes. A token that cannot be revoked stays recorded, and its machine
    // keeps its identity, so the next `up` reuses both.
    let mut revoked = Vec::new();
    match control.as_mut() {
        Some(control) => {
            for machine in inventory.machines.iter().filter(|m| !m.installed) {
                let name = rill_core::token_name(&machine.id);
                match control.call(ControlRequest::TokenRevoke { name: name.clone() }) {
                    Ok(_) => revoked.push(machine.id.clone()),
                    Err(e) if e.to_string().contains("no token named") => revoked.push(machine.id.clone()),
                    Err(e) => eprintln!("error: cannot revoke the join token {name}: {e:#}; it stays recorded"),
                }
            }
        }
        None if !json => {
            println!(
                "The coordinator is not running: the machines' join tokens stay valid; `rill cluster up` reuses them"
            )
        }
        None => {}
    }
    let purge: Vec<Machine> =
        machines.iter().filter(|m| revoked.contains(&m.id) && !failed.contains(&m.id)).cloned().collect();
    let purged =
        each_machine(&purge, |m| ssh.run(&Target::of(m), &remote::purge_script(port, &m.id), b"", REMOTE_LIMIT));
    for (machine, result) in purge.iter().zip(purged) {
        if let Err(e) = result {
            eprintln!("error: cannot remove rill's directory on {}: {e}", machine.id);
        }
    }
    for machine in inventory.machines.iter_mut().filter(|m| revoked.contains(&m.id)) {
        machine.token = None;
    }
    // 4. The coordinator.
    let coordinator = match inventory.coordinator_pid.filter(|pid| control.is_some() && is_coordinator(*pid)) {
        Some(pid) => {
            drop(control);
            crate::updown::terminate(pid);
            if !json {
                println!("Stopped the coordinator on {at} (pid {pid})");
            }
            "stopped"
        }
        None => "not_running",
    };
    inventory.coordinator_pid = None;
    let tokens_kept = inventory.machines.iter().any(|m| m.token.is_some());
    if failed.is_empty() && !tokens_kept {
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        crate::access::forget(&at)?;
    } else {
        // Kept, so `down` can be run again for the machines not reached,
        // or `up` finds the tokens that were not revoked.
        inventory.save(&path)?;
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"coordinator": at, "coordinator_status": coordinator, "dataflows_stopped": stopped_dataflows,
                "machines": rows, "failed": failed})
        );
    } else if failed.is_empty() {
        println!("Cluster down: nothing of it runs any more.");
    } else {
        eprintln!("error: could not stop {}; run `rill cluster down` again once they are reachable", failed.join(", "));
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

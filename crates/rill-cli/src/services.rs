//! `rill cluster install|uninstall`: every machine's daemon as a systemd
//! service (rill-cluster's `service.rs` writes the unit and the scripts;
//! this sequences them and prints).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rill_cluster::service::{self, ServiceSpec};
use rill_cluster::{Inventory, InventoryMachine, Needs, Ssh, Target, remote};
use rill_core::Machine;
use rill_proto::coord::{ControlRequest, ControlResponse, TokenState};

use crate::cluster::{Control, Failure, REMOTE_LIMIT, SERVICE_LIMIT, access_for, each_machine, load, preflight};

/// A new token for `machine`'s service (no expiry, its labels), after
/// revoking the one of that name (a `cluster up` daemon's, or an earlier
/// install's): the service has its own identity.
fn service_token(control: &mut Control, machine: &Machine, live: bool) -> Result<String, Failure> {
    let name = rill_core::token_name(&machine.id);
    if live && let Err(e) = control.call(ControlRequest::TokenRevoke { name: name.clone() }) {
        return Err(Failure::new("token", format!("cannot revoke the earlier token {name}: {e:#}")));
    }
    match control.call(ControlRequest::TokenCreate { name, ttl_ms: None, labels: Some(machine.labels.clone()) }) {
        Ok(ControlResponse::TokenCreated { token, .. }) => Ok(token),
        Ok(other) => Err(Failure::new("token", format!("unexpected reply from the coordinator: {other:?}"))),
        Err(e) => Err(Failure::new("token", format!("cannot mint a join token: {e:#}"))),
    }
}

/// The `step=` lines of a script as `name: failed` text, or `None` if all passed.
fn failed_steps(stdout: &str) -> Option<String> {
    let failed: Vec<String> = service::steps(stdout).into_iter().filter(|(_, ok)| !ok).map(|(name, _)| name).collect();
    (!failed.is_empty()).then(|| format!("failed step(s): {}", failed.join(", ")))
}

fn line(json: bool, verb: &str, machine: &Machine, what: &str) {
    if json {
        return;
    }
    let text = format!("{verb} {} on {}... {what}", service::unit_name(&machine.id), machine.destination());
    if what.starts_with("FAILED") { eprintln!("{text}") } else { println!("{text}") }
}

pub fn install(file: &Path, timeout: Duration, json: bool) -> anyhow::Result<ExitCode> {
    let Some(cluster) = load(file, json) else { return Ok(ExitCode::FAILURE) };
    let path = crate::cluster::inventory_path(cluster.port);
    let earlier = Inventory::load(&path)?;
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let mut inventory = Inventory::from_file(&cluster, absolute, earlier.as_ref());
    let started = Instant::now();
    let pid = crate::cluster::ensure_coordinator(&cluster, earlier.as_ref(), json)?;
    inventory.coordinator_pid = Some(pid);
    inventory.save(&path)?;
    let mut control = Control::connect(&access_for(cluster.addr, cluster.port))?;
    let ssh = Ssh::new()?;
    let local = crate::cluster::local_version();
    // 1. Preflight: the same rill, passwordless sudo, systemd.
    let facts = each_machine(&cluster.machines, |m| {
        preflight(&ssh, m).and_then(|facts| match facts.gaps(Needs::ALL, &local) {
            gaps if gaps.is_empty() => Ok(facts),
            gaps => Err(Failure::of_gaps(&gaps)),
        })
    });
    // 2. A service token per machine, recorded before use.
    let live: BTreeMap<String, TokenState> = match control.call(ControlRequest::TokenList)? {
        ControlResponse::Tokens { tokens } => tokens.into_iter().map(|t| (t.name, t.state)).collect(),
        other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
    };
    let mut outcomes: BTreeMap<String, Result<(), Failure>> = BTreeMap::new();
    let mut ready: Vec<(Machine, String, String)> = Vec::new();
    for (machine, facts) in cluster.machines.iter().zip(facts) {
        let name = rill_core::token_name(&machine.id);
        let is_live = matches!(live.get(&name), Some(TokenState::Unused | TokenState::Enrolled));
        let prepared = facts.and_then(|facts| {
            let token = service_token(&mut control, machine, is_live)?;
            if let Some(m) = inventory.machine_mut(&machine.id) {
                m.token = Some(token.clone());
                m.installed = true;
            }
            Ok((facts.rill.unwrap_or_else(|| "rill".into()), token))
        });
        match prepared {
            Ok((rill, token)) => ready.push((machine.clone(), rill, token)),
            Err(failure) => {
                line(json, "Installing", machine, &format!("FAILED: {}", failure.message));
                outcomes.insert(machine.id.clone(), Err(failure));
            }
        }
    }
    inventory.save(&path)?;
    // 3. Every machine at once: a `cluster up` daemon there stops (its token
    // is revoked now), its directory goes; the service is written and started.
    let machines: Vec<Machine> = ready.iter().map(|(m, ..)| m.clone()).collect();
    let installs = each_machine(&machines, |machine| {
        let (_, rill, token) =
            ready.iter().find(|(m, ..)| m.id == machine.id).expect("every installed machine is ready");
        let target = Target::of(machine);
        let _ = ssh.run(&target, &remote::stop_script(cluster.port, &machine.id), b"", REMOTE_LIMIT);
        let _ = ssh.run(&target, &remote::purge_script(cluster.port, &machine.id), b"", REMOTE_LIMIT);
        let labels: Vec<String> = machine.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = labels.join(",");
        let user = machine.service_user.clone().or(machine.user.clone()).unwrap_or_else(|| "root".into());
        let spec = ServiceSpec {
            rill,
            machine_id: &machine.id,
            coordinator: cluster.addr,
            port: cluster.port,
            labels: &labels,
            user: &user,
        };
        match ssh.run(&target, &service::install_script(&spec), format!("{token}\n").as_bytes(), SERVICE_LIMIT) {
            Err(e) => Err(Failure::of_ssh(&e)),
            Ok(out) => match failed_steps(&out.stdout) {
                Some(failed) => Err(Failure::new("install", format!("{failed}: {}", out.stderr.trim()))),
                None if out.code != 0 => Err(Failure::new(
                    "install",
                    format!("the install script failed (exit {}): {}", out.code, out.stderr.trim()),
                )),
                None => Ok(()),
            },
        }
    });
    // 4. Wait until each service's daemon registered.
    let mut waiting: Vec<Machine> = Vec::new();
    for (machine, result) in machines.iter().zip(installs) {
        match result {
            Ok(()) => waiting.push(machine.clone()),
            Err(failure) => {
                line(json, "Installing", machine, &format!("FAILED: {}", failure.message));
                outcomes.insert(machine.id.clone(), Err(failure));
            }
        }
    }
    let deadline = Instant::now() + timeout;
    while !waiting.is_empty() {
        let connected: Vec<String> = control.daemons()?.into_iter().filter_map(|d| d.machine_id).collect();
        let expired = Instant::now() > deadline;
        let mut still = Vec::new();
        for machine in waiting {
            if connected.contains(&machine.id) {
                line(json, "Installing", &machine, "OK");
                outcomes.insert(machine.id.clone(), Ok(()));
            } else if expired {
                let journal = format!(
                    "if [ \"$(id -u)\" = 0 ]; then S=; else S='sudo -n'; fi; $S journalctl -u {} -n 15 --no-pager -q",
                    service::unit_name(&machine.id)
                );
                let log = ssh
                    .run(&Target::of(&machine), &journal, b"", REMOTE_LIMIT)
                    .map(|o| o.stdout.lines().map(str::to_owned).collect())
                    .unwrap_or_default();
                let message = format!("its service's daemon did not register within {timeout:?}");
                line(json, "Installing", &machine, &format!("FAILED: {message}"));
                if !json {
                    for l in &log {
                        eprintln!("    {l}");
                    }
                }
                outcomes.insert(machine.id.clone(), Err(Failure { kind: "not_registered".into(), message, log }));
            } else {
                still.push(machine);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let total = cluster.machines.len();
    let ok = outcomes.values().filter(|o| o.is_ok()).count();
    summary(json, "installed", &cluster.machines, &outcomes, started);
    if !json {
        println!("{ok}/{total} succeeded.");
    }
    Ok(if ok == total { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn summary(
    json: bool,
    done: &str,
    machines: &[Machine],
    outcomes: &BTreeMap<String, Result<(), Failure>>,
    started: Instant,
) {
    if !json {
        return;
    }
    let rows: Vec<_> = machines
        .iter()
        .map(|m| {
            let outcome = outcomes.get(&m.id);
            serde_json::json!({"id": m.id, "destination": m.destination(), "unit": service::unit_name(&m.id),
                "status": if matches!(outcome, Some(Ok(()))) { done } else { "failed" },
                "error": outcome.and_then(|o| o.as_ref().err())})
        })
        .collect();
    let ok = outcomes.values().filter(|o| o.is_ok()).count();
    println!(
        "{}",
        serde_json::json!({"succeeded": ok, "total": machines.len(), "seconds": started.elapsed().as_secs_f64(), "machines": rows})
    );
}

pub fn uninstall(file: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let (mut inventory, path) = crate::cluster::find_inventory(file)?;
    let started = Instant::now();
    let mut control = Control::connect(&access_for(inventory.addr, inventory.port)).ok();
    let ssh = Ssh::new()?;
    let machines: Vec<Machine> = inventory.machines.iter().map(InventoryMachine::machine).collect();
    let results =
        each_machine(&machines, |m| ssh.run(&Target::of(m), &service::uninstall_script(&m.id), b"", SERVICE_LIMIT));
    let mut outcomes: BTreeMap<String, Result<(), Failure>> = BTreeMap::new();
    for (machine, result) in machines.iter().zip(results) {
        let killed = result.as_ref().is_ok_and(|out| remote::field(&out.stdout, "killed").is_some());
        let outcome = match result {
            Err(e) => Err(Failure::of_ssh(&e)),
            Ok(out) => match failed_steps(&out.stdout) {
                Some(failed) => Err(Failure::new("uninstall", format!("{failed}: {}", out.stderr.trim()))),
                None if out.code != 0 => {
                    Err(Failure::new("uninstall", format!("exit {}: {}", out.code, out.stderr.trim())))
                }
                None => Ok(()),
            },
        };
        match &outcome {
            Ok(()) if killed => line(
                json,
                "Uninstalling",
                machine,
                &format!("OK (the daemon did not stop within {} s; systemd killed it)", service::STOP_TIMEOUT_SECS),
            ),
            Ok(()) => line(json, "Uninstalling", machine, "OK"),
            Err(failure) => line(json, "Uninstalling", machine, &format!("FAILED: {}", failure.message)),
        }
        if outcome.is_ok()
            && let Some(m) = inventory.machine_mut(&machine.id)
        {
            m.installed = false;
        }
        outcomes.insert(machine.id.clone(), outcome);
    }
    // The services' tokens: revoked (nothing holds them any more).
    if let Some(control) = control.as_mut() {
        for machine in inventory.machines.iter_mut().filter(|m| !m.installed) {
            let name = rill_core::token_name(&machine.id);
            match control.call(ControlRequest::TokenRevoke { name: name.clone() }) {
                Ok(_) => machine.token = None,
                Err(e) if e.to_string().contains("no token named") => machine.token = None,
                Err(e) => eprintln!("error: cannot revoke the join token {name}: {e:#}"),
            }
        }
    }
    inventory.save(&path)?;
    summary(json, "uninstalled", &machines, &outcomes, started);
    let ok = outcomes.values().filter(|o| o.is_ok()).count();
    if !json {
        println!("{ok}/{} succeeded.", machines.len());
    }
    Ok(if ok == machines.len() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How `rill cluster upgrade` runs.
pub struct Upgrade {
    pub binary: Option<std::path::PathBuf>,
    pub max_parallel: usize,
    pub rollback: bool,
    pub timeout: Duration,
    pub json: bool,
}

/// One machine's upgrade: each step with its time, and how it ended.
#[derive(Debug, Clone, serde::Serialize)]
struct Rollout {
    id: String,
    destination: String,
    steps: Vec<(String, String, f64)>,
    /// `upgraded`, `rolled_back`, `failed`, `restored`, `nothing_to_restore`.
    status: String,
    version: Option<String>,
    error: Option<String>,
}

impl Rollout {
    fn new(machine: &Machine) -> Self {
        Self {
            id: machine.id.clone(),
            destination: machine.destination(),
            steps: Vec::new(),
            status: "failed".into(),
            version: None,
            error: None,
        }
    }

    /// Records a step's result and time.
    fn step<T>(
        &mut self,
        name: &str,
        started: Instant,
        result: Result<T, String>,
        ok: impl Fn(&T) -> String,
    ) -> Option<T> {
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(value) => {
                self.steps.push((name.to_owned(), ok(&value), seconds));
                Some(value)
            }
            Err(e) => {
                self.steps.push((name.to_owned(), format!("FAILED: {e}"), seconds));
                self.error = Some(format!("{name}: {e}"));
                None
            }
        }
    }

    fn print(&self, json: bool) {
        if json {
            return;
        }
        println!("Upgrading {} ({})...", self.id, self.destination);
        for (name, result, seconds) in &self.steps {
            println!("  {name}... {result} ({seconds:.1}s)");
        }
    }
}

/// Runs a service script; `Err` names the failed steps (or the SSH problem).
fn run_steps(ssh: &Ssh, machine: &Machine, script: &str) -> Result<String, String> {
    let out = ssh.run(&Target::of(machine), script, b"", SERVICE_LIMIT).map_err(|e| e.to_string())?;
    match failed_steps(&out.stdout) {
        Some(failed) => Err(format!("{failed}: {}", out.stderr.trim())),
        None if out.code != 0 => Err(format!("exit {}: {}", out.code, out.stderr.trim())),
        None => Ok(out.stdout),
    }
}

/// Waits until `machine`'s daemon is connected reporting `version` (any, if
/// `None`) and no node of an active dataflow placed on it is lost.
fn wait_back(control: &mut Control, machine: &str, version: Option<&str>, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = control.call(ControlRequest::Status).map_err(|e| e.to_string())?;
        let ControlResponse::Status { daemons, dataflows, .. } = status else { return Err("unexpected reply".into()) };
        let daemon = daemons.iter().find(|d| d.machine_id.as_deref() == Some(machine));
        let lost = dataflows.iter().filter(|d| d.status.is_active()).any(|d| {
            d.placement.iter().any(|p| {
                p.machine_id.as_deref() == Some(machine)
                    && matches!(d.nodes.get(&p.node), Some(rill_proto::coord::NodeStatus::Lost { .. }))
            })
        });
        if let Some(daemon) = daemon
            && version.is_none_or(|v| daemon.version == v)
            && !lost
        {
            return Ok(daemon.version.clone());
        }
        if Instant::now() > deadline {
            return Err(match daemon {
                Some(d) if version.is_some_and(|v| d.version != v) => {
                    format!("it came back as {} within {timeout:?}, not the new version", d.version)
                }
                Some(_) => format!("its dataflows' nodes did not run again within {timeout:?}"),
                None => format!("its daemon did not reconnect within {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Checks, swaps, restarts and waits for one machine; rolls it back if a
/// step after the swap fails.
fn upgrade_one(ssh: &Ssh, control: &mut Control, machine: &Machine, binary: &[u8], timeout: Duration) -> Rollout {
    let mut rollout = Rollout::new(machine);
    let started = Instant::now();
    let upload = ssh
        .run(&Target::of(machine), &service::upload_script(&machine.id), binary, REMOTE_LIMIT)
        .map_err(|e| e.to_string())
        .and_then(|out| {
            let path = remote::field(&out.stdout, "path").unwrap_or_default().to_owned();
            let tmp = remote::field(&out.stdout, "upload").unwrap_or_default().to_owned();
            match (path.is_empty(), tmp.is_empty()) {
                (true, _) => Err(format!(
                    "{} is not installed: run `rill cluster install` first",
                    service::unit_name(&machine.id)
                )),
                (_, true) => Err(format!("the upload failed: {}", out.stderr.trim())),
                _ => Ok((path, tmp, out.stdout)),
            }
        });
    let Some((path, tmp, stdout)) = rollout.step("Upload binary", started, upload, |_| "OK".into()) else {
        return rollout;
    };
    let started = Instant::now();
    let protocol = rill_proto::coord::COORD_PROTOCOL_VERSION;
    let check = match (remote::field(&stdout, "check"), remote::field(&stdout, "check_failed")) {
        (Some(json), _) => serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| format!("`version --json` printed no version ({e})"))
            .and_then(|v| match (v["version"].as_str(), v["protocol"].as_u64()) {
                (Some(version), Some(p)) if p == u64::from(protocol) => Ok(version.to_owned()),
                (Some(version), Some(p)) => Err(format!(
                    "rill {version} speaks protocol {p}, the coordinator {protocol}: upgrade the coordinator first"
                )),
                _ => Err(format!("`version --json` printed {json}")),
            }),
        (_, Some(why)) => Err(format!("the new binary does not run there: {why}")),
        _ => Err("the new binary was not checked".into()),
    };
    let Some(version) = rollout.step("Check binary", started, check, |v| format!("OK (rill {v}, protocol {protocol})"))
    else {
        let _ = ssh.run(&Target::of(machine), &format!("rm -f {}", rill_cluster::ssh::quote(&tmp)), b"", REMOTE_LIMIT);
        return rollout;
    };
    let started = Instant::now();
    let swapped = run_steps(ssh, machine, &service::swap_script(&machine.id, &path, &tmp));
    if rollout.step("Swap binary and restart", started, swapped, |_| "OK".into()).is_some() {
        let started = Instant::now();
        let back = wait_back(control, &machine.id, Some(&version), timeout);
        if rollout.step("Waiting for reconnect", started, back, |_| "OK".into()).is_some() {
            rollout.status = "upgraded".into();
            rollout.version = Some(version);
            return rollout;
        }
    }
    // At once: the previous binary, and the daemon back with it.
    let started = Instant::now();
    let restored = run_steps(ssh, machine, &service::restore_script(&machine.id))
        .and_then(|_| wait_back(control, &machine.id, None, timeout));
    if let Some(v) = rollout.step("Roll back", started, restored, |v| format!("OK (back to {v})")) {
        rollout.status = "rolled_back".into();
        rollout.version = Some(v);
    }
    rollout
}

pub fn upgrade(file: Option<&Path>, how: Upgrade) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let (inventory, _) = crate::cluster::find_inventory(file)?;
    let mut control = Control::connect(&access_for(inventory.addr, inventory.port))?;
    let ssh = Ssh::new()?;
    let machines: Vec<Machine> = inventory.machines.iter().map(InventoryMachine::machine).collect();
    let not_installed: Vec<&str> = inventory.machines.iter().filter(|m| !m.installed).map(|m| m.id.as_str()).collect();
    if !not_installed.is_empty() {
        anyhow::bail!(
            "{} not installed as a service: `rill cluster upgrade` replaces the binary of systemd services \
             (run `rill cluster install` first)",
            not_installed.join(", ")
        );
    }
    let mut rollouts = Vec::new();
    if how.rollback {
        for machine in &machines {
            let mut rollout = Rollout::new(machine);
            let started = Instant::now();
            let out = run_steps(&ssh, machine, &service::restore_script(&machine.id));
            match out {
                Ok(stdout) if stdout.contains("no_previous") => rollout.status = "nothing_to_restore".into(),
                out => {
                    let back = out.and_then(|_| wait_back(&mut control, &machine.id, None, how.timeout));
                    if let Some(v) =
                        rollout.step("Restore previous binary", started, back, |v| format!("OK (rill {v})"))
                    {
                        rollout.status = "restored".into();
                        rollout.version = Some(v);
                    }
                }
            }
            rollout.print(how.json);
            rollouts.push(rollout);
        }
    } else {
        let path = match &how.binary {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("cannot find this rill executable")?,
        };
        let binary = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        'rollout: for batch in machines.chunks(how.max_parallel) {
            // (One control connection per machine of a batch: each waits on its own.)
            let results = each_machine(batch, |machine| {
                let mut control = match Control::connect(&access_for(inventory.addr, inventory.port)) {
                    Ok(control) => control,
                    Err(e) => {
                        let mut r = Rollout::new(machine);
                        r.error = Some(format!("cannot reach the coordinator: {e:#}"));
                        return r;
                    }
                };
                upgrade_one(&ssh, &mut control, machine, &binary, how.timeout)
            });
            for rollout in results {
                rollout.print(how.json);
                let failed = rollout.status != "upgraded";
                rollouts.push(rollout);
                if failed {
                    break 'rollout;
                }
            }
        }
    }
    let done =
        rollouts.iter().filter(|r| matches!(r.status.as_str(), "upgraded" | "restored" | "nothing_to_restore")).count();
    let ok = done == machines.len();
    if how.json {
        println!("{}", serde_json::json!({"succeeded": done, "total": machines.len(), "machines": rollouts}));
    } else {
        let verb = if how.rollback { "restored" } else { "upgraded" };
        println!("{done}/{} {verb}.", machines.len());
        if let Some(failed) =
            rollouts.iter().find(|r| !matches!(r.status.as_str(), "upgraded" | "restored" | "nothing_to_restore"))
        {
            let what = if failed.status == "rolled_back" { "was rolled back to its previous binary" } else { "failed" };
            eprintln!(
                "error: {} {what} ({}); the rollout stopped: the machines after it were not touched",
                failed.id,
                failed.error.as_deref().unwrap_or("see above")
            );
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

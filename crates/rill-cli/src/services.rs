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

use crate::cluster::{Control, Failure, REMOTE_LIMIT, access_for, each_machine, load, preflight};

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
    let failed: Vec<String> =
        service::steps(stdout).into_iter().filter(|(_, ok)| !ok).map(|(name, _)| name).collect();
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
        let (_, rill, token) = ready.iter().find(|(m, ..)| m.id == machine.id).expect("every installed machine is ready");
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
        match ssh.run(&target, &service::install_script(&spec), format!("{token}\n").as_bytes(), REMOTE_LIMIT) {
            Err(e) => Err(Failure::of_ssh(&e)),
            Ok(out) => match failed_steps(&out.stdout) {
                Some(failed) => Err(Failure::new("install", format!("{failed}: {}", out.stderr.trim()))),
                None if out.code != 0 => {
                    Err(Failure::new("install", format!("the install script failed (exit {}): {}", out.code, out.stderr.trim())))
                }
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

fn summary(json: bool, done: &str, machines: &[Machine], outcomes: &BTreeMap<String, Result<(), Failure>>, started: Instant) {
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
    let results = each_machine(&machines, |m| ssh.run(&Target::of(m), &service::uninstall_script(&m.id), b"", REMOTE_LIMIT));
    let mut outcomes: BTreeMap<String, Result<(), Failure>> = BTreeMap::new();
    for (machine, result) in machines.iter().zip(results) {
        let outcome = match result {
            Err(e) => Err(Failure::of_ssh(&e)),
            Ok(out) => match failed_steps(&out.stdout) {
                Some(failed) => Err(Failure::new("uninstall", format!("{failed}: {}", out.stderr.trim()))),
                None if out.code != 0 => Err(Failure::new("uninstall", format!("exit {}: {}", out.code, out.stderr.trim()))),
                None => Ok(()),
            },
        };
        match &outcome {
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

//! `rill start` for nodes with `distribute: scp|http`: build them here, hash
//! the binaries, ship them (pushed over SSH into each machine's artifact
//! directory, or uploaded to the coordinator for daemons to fetch), and
//! record each one's hash in the node's `deploy.artifact` so daemons run
//! nothing else. Progress goes to stderr (stdout may be `--json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rill_core::{Artifact, Dataflow, Distribute, MAX_ARTIFACT_SIZE, Machine};
use rill_proto::coord::{ControlRequest, ControlResponse};

use crate::access::ControlAccess;

/// Longest a push of one binary to one machine may take.
const PUSH_LIMIT: Duration = Duration::from_secs(300);

/// A node's binary, built and hashed here.
struct Built {
    node: String,
    distribute: Distribute,
    file: PathBuf,
    artifact: Artifact,
}

/// Builds and ships every node whose binary is distributed by rill, and
/// sets its `deploy.artifact`. `cluster`: the cluster file for SSH details
/// (else the one `rill cluster up` recorded for this coordinator).
pub fn ship(
    descriptor: &mut Dataflow,
    base_dir: &Path,
    coordinator: &ControlAccess,
    cluster: Option<&Path>,
) -> anyhow::Result<()> {
    let shipped: Vec<usize> =
        (0..descriptor.nodes.len()).filter(|&i| descriptor.nodes[i].deploy.distribute != Distribute::Local).collect();
    if shipped.is_empty() {
        return Ok(());
    }
    build(descriptor, &shipped, base_dir)?;
    let build_id = build_id();
    let mut built = Vec::new();
    for &i in &shipped {
        let node = &descriptor.nodes[i];
        let file = binary_of(&node.id, &node.path, base_dir)?;
        let (sha256, size) = hash_file(&file)?;
        let artifact = Artifact { build_id: build_id.clone(), sha256, size };
        built.push(Built { node: node.id.clone(), distribute: node.deploy.distribute, file, artifact });
    }
    let http: Vec<&Built> = built.iter().filter(|b| b.distribute == Distribute::Http).collect();
    if !http.is_empty() {
        upload(coordinator, &http)?;
    }
    let scp: Vec<&Built> = built.iter().filter(|b| b.distribute == Distribute::Scp).collect();
    if !scp.is_empty() {
        push(descriptor, coordinator, cluster, &scp)?;
    }
    for b in built {
        if let Some(node) = descriptor.nodes.iter_mut().find(|n| n.id == b.node) {
            node.deploy.artifact = Some(b.artifact);
        }
    }
    Ok(())
}

/// Runs the distinct `build` commands of the shipped nodes here, in file
/// order, output to stderr.
fn build(descriptor: &Dataflow, shipped: &[usize], base_dir: &Path) -> anyhow::Result<()> {
    let mut done: Vec<&str> = Vec::new();
    for &i in shipped {
        let node = &descriptor.nodes[i];
        let Some(command) = node.build.as_deref() else { continue };
        if done.contains(&command) {
            continue;
        }
        eprintln!("Building node `{}` here: {command}", node.id);
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .current_dir(base_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .with_context(|| format!("cannot run the build of node `{}`", node.id))?;
        if !status.success() {
            bail!("the build of node `{}` failed: `{command}` exited with {status}", node.id);
        }
        done.push(command);
    }
    Ok(())
}

/// A build id no other `rill start` uses: the time and this process.
fn build_id() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("b{}-{}", now.as_millis(), std::process::id())
}

/// The file a shipped node runs: its `path`, relative to the dataflow's
/// directory. A bare command name is looked up on each machine, so it
/// cannot be shipped (a `.py` script is always a file).
fn binary_of(node: &str, path: &str, base_dir: &Path) -> anyhow::Result<PathBuf> {
    if !path.contains('/') && !rill_daemon::spawn::is_python(Path::new(path)) {
        bail!(
            "node `{node}`: `path: {path}` is a command found on each machine's PATH, so there is nothing to ship; \
             use `distribute: local`, or a path such as ./{path}"
        );
    }
    let file = base_dir.join(path);
    let meta = std::fs::metadata(&file).with_context(|| {
        format!("node `{node}` is shipped from {}, which is not here (did its `build` make it?)", file.display())
    })?;
    if !meta.is_file() {
        bail!("node `{node}`: {} is not a file", file.display());
    }
    if meta.len() > MAX_ARTIFACT_SIZE {
        bail!(
            "node `{node}`: {} is {} bytes, more than the {MAX_ARTIFACT_SIZE} that may be shipped",
            file.display(),
            meta.len()
        );
    }
    Ok(file)
}

fn hash_file(file: &Path) -> anyhow::Result<(String, u64)> {
    let sha = rill_auth::digest::sha256_file(file).with_context(|| format!("cannot read {}", file.display()))?;
    let size = std::fs::metadata(file)?.len();
    Ok((sha, size))
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `distribute: http`: uploads each binary to the coordinator, which
/// answers the hash of what it stored.
fn upload(coordinator: &ControlAccess, built: &[&Built]) -> anyhow::Result<()> {
    let dial = coordinator.admin_dial()?;
    crate::remote::runtime()?.block_on(async {
        for b in built {
            let started = Instant::now();
            let path = format!("/api/artifacts/{}/{}", b.artifact.build_id, b.node);
            let mut file =
                tokio::fs::File::open(&b.file).await.with_context(|| format!("cannot read {}", b.file.display()))?;
            let answer = rill_auth::dial::http_put(&dial, &path, b.artifact.size, &mut file)
                .await
                .with_context(|| format!("cannot upload node `{}`'s binary", b.node))?;
            let stored: serde_json::Value = serde_json::from_str(&answer)
                .with_context(|| format!("the coordinator's answer to the upload is not JSON: {answer}"))?;
            if stored["sha256"] != b.artifact.sha256.as_str() {
                bail!("node `{}`'s binary arrived at the coordinator damaged (sha256 {})", b.node, stored["sha256"]);
            }
            eprintln!(
                "Uploaded node `{}` ({}, sha256 {}) to the coordinator in {:.1}s",
                b.node,
                megabytes(b.artifact.size),
                &b.artifact.sha256[..12],
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })
}

/// The machines and their SSH details: from `--cluster FILE`, else from
/// what `rill cluster up` recorded for this coordinator's port.
fn machines(coordinator: &ControlAccess, cluster: Option<&Path>) -> anyhow::Result<Vec<Machine>> {
    if let Some(file) = cluster {
        return match rill_core::ClusterFile::load(file) {
            Ok(cluster) => Ok(cluster.machines),
            Err(diagnostics) => bail!("{diagnostics}"),
        };
    }
    let host_port = coordinator.host_port();
    let port =
        host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).context("the coordinator address has no port")?;
    let path = crate::cluster::inventory_path(port);
    match rill_cluster::Inventory::load(&path)? {
        Some(inventory) => Ok(inventory.machines.iter().map(|m| m.machine()).collect()),
        None => bail!(
            "`distribute: scp` pushes binaries over SSH, and no cluster file is known for {host_port}: \
             pass `--cluster cluster.yml`, or start the cluster with `rill cluster up cluster.yml`"
        ),
    }
}

/// `distribute: scp`: pushes each binary to every connected machine the
/// node may be placed on, in parallel per machine.
fn push(
    descriptor: &Dataflow,
    coordinator: &ControlAccess,
    cluster: Option<&Path>,
    built: &[&Built],
) -> anyhow::Result<()> {
    let machines = machines(coordinator, cluster)?;
    let ControlResponse::Status { daemons, .. } = crate::remote::request(coordinator, ControlRequest::Status)? else {
        bail!("unexpected reply from the coordinator to a status request");
    };
    let dirs: BTreeMap<String, String> =
        daemons.into_iter().filter_map(|d| Some((d.machine_id?, d.artifact_dir?))).collect();
    // Machine id -> what to push there.
    let mut plan: BTreeMap<String, (Machine, String, Vec<&Built>)> = BTreeMap::new();
    for b in built {
        let Some(node) = descriptor.node(&b.node) else { continue };
        let candidates = rill_cluster::push::candidates(&machines, &node.deploy);
        if candidates.is_empty() {
            bail!("node `{}` is pushed over SSH, but no machine of the cluster file matches its `deploy`", b.node);
        }
        for machine in candidates {
            match dirs.get(&machine.id) {
                Some(dir) => {
                    let entry =
                        plan.entry(machine.id.clone()).or_insert_with(|| (machine.clone(), dir.clone(), Vec::new()));
                    entry.2.push(b);
                }
                None => eprintln!(
                    "warning: machine {} is not connected: node `{}`'s binary is not pushed there (it cannot run there)",
                    machine.id, b.node
                ),
            }
        }
    }
    if plan.is_empty() {
        bail!("no machine that may run the pushed nodes is connected to the coordinator");
    }
    // Each binary read once, whatever the number of machines.
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for b in built {
        let bytes = std::fs::read(&b.file).with_context(|| format!("cannot read {}", b.file.display()))?;
        contents.insert(b.node.clone(), bytes);
    }
    let ssh = rill_cluster::Ssh::new()?;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = plan
            .values()
            .map(|(machine, dir, files)| {
                let (ssh, contents) = (&ssh, &contents);
                scope.spawn(move || push_to(ssh, machine, dir, files, contents))
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|_| vec!["a push thread panicked".into()])).collect()
    });
    if !failures.is_empty() {
        bail!("{} push(es) failed:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(())
}

/// Pushes `files` to one machine (each only if it is not there yet);
/// returns what failed.
fn push_to(
    ssh: &rill_cluster::Ssh,
    machine: &Machine,
    dir: &str,
    files: &[&Built],
    contents: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    use rill_cluster::push::{Pushed, check_script, push_result, push_script};
    let target = rill_cluster::Target::of(machine);
    let mut failures = Vec::new();
    for b in files {
        let started = Instant::now();
        let result = (|| -> Result<Pushed, String> {
            let check = ssh
                .run(&target, &check_script(dir, &b.artifact.sha256)?, b"", crate::cluster::REMOTE_LIMIT)
                .map_err(|e| e.to_string())?;
            if push_result(&check.stdout, &check.stderr)? == Pushed::Cached {
                return Ok(Pushed::Cached);
            }
            let bytes = contents.get(&b.node).map(Vec::as_slice).unwrap_or_default();
            let out = ssh
                .run(&target, &push_script(dir, &b.artifact.sha256)?, bytes, PUSH_LIMIT)
                .map_err(|e| e.to_string())?;
            push_result(&out.stdout, &out.stderr)
        })();
        match result {
            Ok(how) => eprintln!(
                "Pushed node `{}` to {} ({}){} in {:.1}s",
                b.node,
                machine.id,
                megabytes(b.artifact.size),
                if how == Pushed::Cached { ", already there" } else { "" },
                started.elapsed().as_secs_f64()
            ),
            Err(why) => failures.push(format!("node `{}` to {} ({}): {why}", b.node, machine.id, target.destination())),
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_on_path_or_a_missing_file_cannot_be_shipped_and_the_error_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let bare = binary_of("cam", "python3", dir.path()).unwrap_err().to_string();
        assert!(bare.contains("distribute: local") && bare.contains("./python3"), "{bare}");
        let missing = binary_of("cam", "./target/cam", dir.path()).unwrap_err().to_string();
        assert!(missing.contains("did its `build` make it?"), "{missing}");
        std::fs::write(dir.path().join("cam"), b"x").unwrap();
        assert_eq!(binary_of("cam", "./cam", dir.path()).unwrap(), dir.path().join("./cam"));
        assert!(rill_core::artifact_id_problem(&build_id()).is_none());
    }
}

//! What `rill cluster up` records on this machine for later commands
//! (`status`, `down`, `up` again): the cluster file, the coordinator, and
//! per machine how to reach it and its join token. One JSON file per
//! coordinator port, 0600 (it holds join tokens, as the CLI config holds
//! the admin token).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rill_core::{ClusterFile, Machine};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    /// The cluster file, as an absolute path.
    pub file: PathBuf,
    pub addr: IpAddr,
    pub port: u16,
    /// The coordinator `cluster up` started, if it did.
    pub coordinator_pid: Option<u32>,
    pub machines: Vec<InventoryMachine>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InventoryMachine {
    pub id: String,
    pub host: String,
    pub user: Option<String>,
    pub ssh_port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    /// The join token minted for it (`rill1.…`), reused while it is live.
    pub token: Option<String>,
    #[serde(default)]
    pub service_user: Option<String>,
    /// Its daemon runs as the systemd service `rill cluster install` made.
    #[serde(default)]
    pub installed: bool,
}

impl InventoryMachine {
    pub fn machine(&self) -> Machine {
        Machine {
            id: self.id.clone(),
            host: self.host.clone(),
            user: self.user.clone(),
            ssh_port: self.ssh_port,
            identity_file: self.identity_file.clone(),
            labels: self.labels.clone(),
            service_user: self.service_user.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    File(#[from] rill_auth::AuthError),
    #[error("{path}: not a cluster record ({source}); remove it and run `rill cluster up` again")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

impl Inventory {
    /// Where the record of the cluster whose coordinator listens on `port` lives.
    pub fn path(state_dir: &Path, port: u16) -> PathBuf {
        state_dir.join(format!("cluster-{port}.json"))
    }

    /// The record for `cluster` (at `file`), keeping the tokens an earlier
    /// record holds for machines of the same id. A machine no longer in the
    /// file whose token is still recorded stays (after the file's), so
    /// `down` still stops it and revokes its token.
    pub fn from_file(cluster: &ClusterFile, file: PathBuf, earlier: Option<&Inventory>) -> Inventory {
        let mut machines: Vec<InventoryMachine> = cluster
            .machines
            .iter()
            .map(|m| InventoryMachine {
                id: m.id.clone(),
                host: m.host.clone(),
                user: m.user.clone(),
                ssh_port: m.ssh_port,
                identity_file: m.identity_file.clone(),
                labels: m.labels.clone(),
                token: earlier.and_then(|e| e.machine(&m.id)).and_then(|e| e.token.clone()),
                service_user: m.service_user.clone(),
                installed: earlier.and_then(|e| e.machine(&m.id)).is_some_and(|e| e.installed),
            })
            .collect();
        let removed = earlier
            .into_iter()
            .flat_map(|e| &e.machines)
            .filter(|m| (m.token.is_some() || m.installed) && cluster.machine(&m.id).is_none())
            .cloned()
            .collect::<Vec<_>>();
        machines.extend(removed);
        Inventory {
            file,
            addr: cluster.addr,
            port: cluster.port,
            coordinator_pid: earlier.and_then(|e| e.coordinator_pid),
            machines,
        }
    }

    pub fn machine(&self, id: &str) -> Option<&InventoryMachine> {
        self.machines.iter().find(|m| m.id == id)
    }

    pub fn machine_mut(&mut self, id: &str) -> Option<&mut InventoryMachine> {
        self.machines.iter_mut().find(|m| m.id == id)
    }

    /// The record at `path`, if there is one.
    pub fn load(path: &Path) -> Result<Option<Inventory>, InventoryError> {
        if !path.exists() {
            return Ok(None);
        }
        let text = rill_auth::files::read_private(path)?;
        serde_json::from_str(&text).map(Some).map_err(|source| InventoryError::Corrupt { path: path.into(), source })
    }

    pub fn save(&self, path: &Path) -> Result<(), InventoryError> {
        if let Some(dir) = path.parent() {
            rill_auth::files::private_dir(dir)?;
        }
        let text = serde_json::to_string_pretty(self)
            .map_err(|source| InventoryError::Corrupt { path: path.into(), source })?;
        Ok(rill_auth::files::write_private(path, text.as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_privately_and_keeps_tokens_of_machines_still_listed() {
        let text = "coordinator:\n  addr: 10.0.0.1\nmachines:\n  - id: a\n    host: h1\n  - id: b\n    host: h2\n";
        let cluster = ClusterFile::parse(text, Path::new("c.yml")).unwrap();
        let mut first = Inventory::from_file(&cluster, "/x/c.yml".into(), None);
        first.machine_mut("a").unwrap().token = Some("rill1.a.s.f".into());
        first.coordinator_pid = Some(42);
        let dir = tempfile::tempdir().unwrap();
        let path = Inventory::path(&dir.path().join("state"), 6013);
        first.save(&path).unwrap();
        assert_eq!(Inventory::load(&path).unwrap().as_ref(), Some(&first));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = "coordinator:\n  addr: 10.0.0.1\nmachines:\n  - id: a\n    host: h9\n  - id: c\n    host: h3\n";
        let cluster = ClusterFile::parse(text, Path::new("c.yml")).unwrap();
        let second = Inventory::from_file(&cluster, "/x/c.yml".into(), Some(&first));
        assert_eq!(second.machine("a").unwrap().token.as_deref(), Some("rill1.a.s.f"));
        assert_eq!(second.machine("a").unwrap().host, "h9", "the file is what counts");
        assert!(second.machine("b").is_none() && second.machine("c").unwrap().token.is_none());
        let with_b = {
            let mut e = first.clone();
            e.machine_mut("b").unwrap().token = Some("rill1.b.s.f".into());
            e
        };
        let third = Inventory::from_file(&cluster, "/x/c.yml".into(), Some(&with_b));
        let ids: Vec<&str> = third.machines.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "b"], "b left the file but its token is live: down must still reach it");
        assert_eq!(second.coordinator_pid, Some(42));
        assert!(Inventory::load(&dir.path().join("none.json")).unwrap().is_none());
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(Inventory::load(&path), Err(InventoryError::Corrupt { .. })));
    }
}

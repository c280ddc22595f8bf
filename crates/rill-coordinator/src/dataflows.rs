//! Dataflow records and their lifecycle. Transitions:
//! `Running` --stop--> `Stopping` --every daemon done--> `Stopped`;
//! `Running` --every daemon done--> `Finished` (all nodes succeeded) or
//! `Failed` (a node failed; the reason names it).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use rill_core::{DaemonInfo, Dataflow, place};
use rill_proto::coord::{DataflowStatus, DataflowSummary, NodePlacement, NodeStatus, SpawnDataflow};

/// Why a start was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.join("\n"))]
    Placement(Vec<String>),
    #[error("a dataflow named `{0}` is already running: stop it first or choose another --name")]
    NameInUse(String),
}

/// One dataflow the coordinator started (stored as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataflowRecord {
    pub uuid: String,
    /// Milliseconds since the Unix epoch, for ordering.
    pub started_ms: u64,
    pub name: String,
    pub descriptor: Dataflow,
    pub base_dir: String,
    pub placement: Vec<NodePlacement>,
    pub status: DataflowStatus,
    pub reason: Option<String>,
    /// Daemons that still run some of its nodes.
    running_on: BTreeSet<String>,
    /// Daemons whose share is wired; at all of them, the nodes start.
    ready: BTreeSet<String>,
    /// Last reported status of each node.
    #[serde(default)]
    nodes: std::collections::BTreeMap<String, NodeStatus>,
    /// After a coordinator restart: until when daemons may reclaim it.
    #[serde(skip)]
    reclaim_until: Option<Instant>,
}

impl DataflowRecord {
    pub fn summary(&self) -> DataflowSummary {
        DataflowSummary {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            status: self.status,
            placement: self.placement.clone(),
            reason: self.reason.clone(),
            nodes: self.nodes.clone(),
        }
    }

    fn is_active(&self) -> bool {
        matches!(self.status, DataflowStatus::Running | DataflowStatus::Stopping)
    }
}

/// Every dataflow, in start order.
#[derive(Default)]
pub struct Dataflows {
    records: Vec<DataflowRecord>,
    /// The reclaim window after a restart (for messages).
    reclaim_timeout: Duration,
    /// Last auto-recovery per (machine id, dataflow uuid).
    recovered_at: std::collections::HashMap<(String, String), Instant>,
}

/// At most one auto-recovery per machine and dataflow in this window.
pub const RECOVERY_BACKOFF: Duration = Duration::from_secs(30);

/// How long daemons have to reclaim a dataflow after a coordinator restart.
pub const RECLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// The plan for `descriptor` on `daemons`.
pub fn plan(descriptor: &Dataflow, daemons: &[DaemonInfo]) -> Result<Vec<NodePlacement>, StartError> {
    let placement = place(descriptor, daemons)
        .map_err(|errors| StartError::Placement(errors.iter().map(ToString::to_string).collect()))?;
    Ok(descriptor
        .nodes
        .iter()
        .filter_map(|node| {
            let daemon_id = placement.get(&node.id)?;
            let machine_id = daemons.iter().find(|d| &d.id == daemon_id).and_then(|d| d.machine_id.clone());
            Some(NodePlacement { node: node.id.clone(), daemon_id: daemon_id.clone(), machine_id })
        })
        .collect())
}

impl Dataflows {
    /// Records a new dataflow and returns what each daemon must spawn.
    pub fn start(
        &mut self,
        descriptor: Dataflow,
        name: Option<String>,
        base_dir: String,
        daemons: &[DaemonInfo],
    ) -> Result<(DataflowRecord, Vec<(String, SpawnDataflow)>), StartError> {
        let placement = plan(&descriptor, daemons)?;
        let uuid = uuid::Uuid::new_v4().to_string();
        let name = name.unwrap_or_else(|| format!("dataflow-{}", &uuid[..8]));
        // A stopping namesake is on its way out (that is how restart works).
        if self.records.iter().any(|r| r.name == name && r.status == DataflowStatus::Running) {
            return Err(StartError::NameInUse(name));
        }
        let running_on: BTreeSet<String> = placement.iter().map(|p| p.daemon_id.clone()).collect();
        let spawns = running_on
            .iter()
            .map(|daemon| {
                let nodes = placement.iter().filter(|p| &p.daemon_id == daemon).map(|p| p.node.clone()).collect();
                let spawn = SpawnDataflow {
                    uuid: uuid.clone(),
                    name: name.clone(),
                    descriptor: descriptor.clone(),
                    base_dir: base_dir.clone(),
                    nodes,
                };
                (daemon.clone(), spawn)
            })
            .collect();
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let record = DataflowRecord {
            uuid,
            started_ms,
            name,
            descriptor,
            base_dir,
            placement,
            status: DataflowStatus::Running,
            reason: None,
            running_on,
            ready: BTreeSet::new(),
            nodes: Default::default(),
            reclaim_until: None,
        };
        self.records.push(record.clone());
        Ok((record, spawns))
    }

    /// Records from the store after a restart. Active ones wait for their
    /// daemons to report them until `now + timeout`.
    pub fn restore(records: Vec<DataflowRecord>, now: Instant, timeout: Duration) -> Self {
        let records = records
            .into_iter()
            .map(|mut r| {
                if r.is_active() {
                    r.running_on.clear();
                    r.ready.clear();
                    r.reclaim_until = Some(now + timeout);
                }
                r
            })
            .collect();
        Self { records, reclaim_timeout: timeout, recovered_at: Default::default() }
    }

    /// A (re)connected daemon says it runs `uuid`: it owns that share again.
    /// Returns the record if it changed (to store), and whether the daemon
    /// must be told to stop it (the dataflow is stopping or over).
    pub fn reclaimed(&mut self, uuid: &str, daemon: &str, machine_id: Option<&str>) -> (Option<DataflowRecord>, bool) {
        let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid) else { return (None, true) };
        if !record.is_active() {
            return (None, true);
        }
        record.running_on.insert(daemon.to_owned());
        record.ready.insert(daemon.to_owned());
        // Daemon ids change across restarts; machine ids do not.
        for p in &mut record.placement {
            if machine_id.is_some() && p.machine_id.as_deref() == machine_id {
                p.daemon_id = daemon.to_owned();
            }
        }
        (Some(record.clone()), record.status == DataflowStatus::Stopping)
    }

    /// A daemon (re)connected reporting `reported`: every running dataflow
    /// with nodes placed on its machine that it does not run gets those
    /// nodes spawned again, at most once per [`RECOVERY_BACKOFF`] per machine
    /// and dataflow. Returns the records to store and the spawns to send.
    pub fn recover(
        &mut self,
        daemon: &str,
        machine_id: Option<&str>,
        reported: &[String],
        now: Instant,
    ) -> Vec<(DataflowRecord, SpawnDataflow)> {
        // Only a machine id says which nodes were this daemon's.
        let Some(machine) = machine_id else { return Vec::new() };
        let mut out = Vec::new();
        for record in &mut self.records {
            if record.status != DataflowStatus::Running || reported.contains(&record.uuid) {
                continue;
            }
            let nodes: Vec<String> = record
                .placement
                .iter()
                .filter(|p| p.machine_id.as_deref() == Some(machine))
                .map(|p| p.node.clone())
                .collect();
            if nodes.is_empty() {
                continue;
            }
            let key = (machine.to_owned(), record.uuid.clone());
            if self.recovered_at.get(&key).is_some_and(|at| now.duration_since(*at) < RECOVERY_BACKOFF) {
                continue;
            }
            self.recovered_at.insert(key, now);
            for p in &mut record.placement {
                if p.machine_id.as_deref() == Some(machine) {
                    record.running_on.remove(&p.daemon_id);
                    record.ready.remove(&p.daemon_id);
                    p.daemon_id = daemon.to_owned();
                }
            }
            record.running_on.insert(daemon.to_owned());
            let spawn = SpawnDataflow {
                uuid: record.uuid.clone(),
                name: record.name.clone(),
                descriptor: record.descriptor.clone(),
                base_dir: record.base_dir.clone(),
                nodes,
            };
            out.push((record.clone(), spawn));
        }
        out
    }

    /// The share on `machine` runs again: a later loss may be recovered at once.
    pub fn recovered(&mut self, uuid: &str, machine_id: Option<&str>) {
        if let Some(machine) = machine_id {
            self.recovered_at.remove(&(machine.to_owned(), uuid.to_owned()));
        }
    }

    /// Dataflows nobody reclaimed in time fail. Returns the changed records.
    pub fn expire_reclaims(&mut self, now: Instant) -> Vec<DataflowRecord> {
        let mut changed = Vec::new();
        for record in &mut self.records {
            let Some(until) = record.reclaim_until else { continue };
            if record.running_on.is_empty() && now >= until {
                record.reclaim_until = None;
                record.status = if record.status == DataflowStatus::Stopping {
                    DataflowStatus::Stopped
                } else {
                    DataflowStatus::Failed
                };
                if record.status == DataflowStatus::Failed {
                    record.reason = Some(format!(
                        "no daemon reported it within {} s after the coordinator restarted",
                        self.reclaim_timeout.as_secs()
                    ));
                }
                changed.push(record.clone());
            } else if !record.running_on.is_empty() {
                record.reclaim_until = None;
            }
        }
        changed
    }

    /// The newest dataflow with this name, or the one with this uuid.
    pub fn find(&self, name_or_uuid: &str) -> Option<&DataflowRecord> {
        self.records.iter().rev().find(|r| r.uuid == name_or_uuid || r.name == name_or_uuid)
    }

    /// Marks it stopping; returns the daemons to tell.
    pub fn stop(&mut self, name_or_uuid: &str) -> Option<(DataflowRecord, Vec<String>)> {
        let record = self
            .records
            .iter_mut()
            .rev()
            .find(|r| (r.uuid == name_or_uuid || r.name == name_or_uuid) && r.is_active())?;
        record.status = DataflowStatus::Stopping;
        Some((record.clone(), record.running_on.iter().cloned().collect()))
    }

    /// `daemon`'s share is wired. Returns the daemons to send `Go` to when
    /// this was the last one.
    pub fn daemon_ready(&mut self, uuid: &str, daemon: &str) -> Vec<String> {
        let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid) else { return Vec::new() };
        // A share that already ended counts as ready.
        if !record.ready.insert(daemon.to_owned()) || !record.running_on.is_subset(&record.ready) {
            return Vec::new();
        }
        record.running_on.iter().cloned().collect()
    }

    /// A daemon reports a node's status. Returns the record (to store).
    pub fn node_status(&mut self, uuid: &str, node: &str, status: NodeStatus) -> Option<DataflowRecord> {
        let record = self.records.iter_mut().find(|r| r.uuid == uuid)?;
        record.nodes.insert(node.to_owned(), status);
        Some(record.clone())
    }

    /// `daemon` reports its share ended. Returns the record (to store).
    pub fn daemon_finished(
        &mut self,
        uuid: &str,
        daemon: &str,
        success: bool,
        summary: &str,
    ) -> Option<DataflowRecord> {
        let record = self.records.iter_mut().find(|r| r.uuid == uuid)?;
        record.running_on.remove(daemon);
        if !success && record.reason.is_none() {
            record.reason = Some(summary.to_owned());
        }
        if record.running_on.is_empty() {
            record.status = match record.status {
                DataflowStatus::Stopping => DataflowStatus::Stopped,
                DataflowStatus::Running if record.reason.is_none() => DataflowStatus::Finished,
                DataflowStatus::Running => DataflowStatus::Failed,
                other => other,
            };
        }
        Some(record.clone())
    }

    pub fn list(&self) -> Vec<DataflowSummary> {
        self.records.iter().map(DataflowRecord::summary).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn daemons() -> Vec<DaemonInfo> {
        vec![
            DaemonInfo { id: "a-1".into(), machine_id: Some("a".into()), labels: Default::default() },
            DaemonInfo {
                id: "b-2".into(),
                machine_id: Some("b".into()),
                labels: [("gpu".to_owned(), "true".to_owned())].into(),
            },
        ]
    }

    fn flow() -> Dataflow {
        Dataflow::parse(
            "nodes:\n  - id: src\n    path: x\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: x\n    inputs: { in: src/out }\n    deploy: { labels: { gpu: 'true' } }\n",
            Path::new("t.yml"),
        )
        .expect("valid")
    }

    #[test]
    fn start_splits_nodes_by_daemon_and_names_are_unique_while_active() {
        let mut d = Dataflows::default();
        let (record, spawns) = d.start(flow(), Some("app".into()), "/tmp".into(), &daemons()).unwrap();
        assert_eq!(record.status, DataflowStatus::Running);
        assert_eq!(spawns.len(), 2);
        assert_eq!(spawns[0].1.nodes, ["src"]);
        assert_eq!(spawns[1].1.nodes, ["sink"]);
        assert_eq!(
            d.start(flow(), Some("app".into()), "/tmp".into(), &daemons()).unwrap_err(),
            StartError::NameInUse("app".into())
        );
    }

    #[test]
    fn go_is_sent_once_every_daemon_is_ready() {
        let mut d = Dataflows::default();
        let (record, _) = d.start(flow(), None, "/".into(), &daemons()).unwrap();
        assert_eq!(d.daemon_ready(&record.uuid, "a-1"), Vec::<String>::new());
        assert_eq!(d.daemon_ready(&record.uuid, "b-2"), ["a-1", "b-2"]);
        assert_eq!(d.daemon_ready(&record.uuid, "b-2"), Vec::<String>::new(), "only once");
    }

    #[test]
    fn lifecycle_transitions() {
        let mut d = Dataflows::default();
        let (ok, _) = d.start(flow(), Some("ok".into()), "/".into(), &daemons()).unwrap();
        d.daemon_finished(&ok.uuid, "a-1", true, "");
        assert_eq!(d.find("ok").unwrap().status, DataflowStatus::Running, "b still runs");
        d.daemon_finished(&ok.uuid, "b-2", true, "");
        assert_eq!(d.find("ok").unwrap().status, DataflowStatus::Finished);

        let (bad, _) = d.start(flow(), Some("bad".into()), "/".into(), &daemons()).unwrap();
        d.daemon_finished(&bad.uuid, "a-1", false, "node `src` failed with exit code 3");
        d.daemon_finished(&bad.uuid, "b-2", true, "");
        let bad = d.find("bad").unwrap();
        assert_eq!(
            (bad.status, bad.reason.as_deref()),
            (DataflowStatus::Failed, Some("node `src` failed with exit code 3"))
        );

        let (stopped, _) = d.start(flow(), Some("s".into()), "/".into(), &daemons()).unwrap();
        let (_, tell) = d.stop("s").unwrap();
        assert_eq!(tell, ["a-1", "b-2"]);
        d.daemon_finished(&stopped.uuid, "a-1", true, "");
        d.daemon_finished(&stopped.uuid, "b-2", true, "");
        assert_eq!(d.find("s").unwrap().status, DataflowStatus::Stopped);
        assert!(d.stop("s").is_none(), "not active any more");
    }

    #[test]
    fn a_daemon_that_lost_its_nodes_gets_them_again_with_backoff() {
        let mut d = Dataflows::default();
        let (record, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons()).unwrap();
        let t0 = Instant::now();
        let spawns = d.recover("b-9", Some("b"), &[], t0);
        assert_eq!(spawns.len(), 1);
        assert_eq!(spawns[0].1.nodes, ["sink"], "only the missing machine's nodes");
        assert_eq!(d.find("app").unwrap().placement[1].daemon_id, "b-9");
        assert!(d.recover("b-10", Some("b"), &[], t0 + Duration::from_secs(5)).is_empty(), "backoff");
        assert_eq!(d.recover("b-11", Some("b"), &[], t0 + RECOVERY_BACKOFF).len(), 1, "after the backoff");
        d.recovered(&record.uuid, Some("b"));
        assert_eq!(d.recover("b-12", Some("b"), &[], t0 + RECOVERY_BACKOFF).len(), 1, "cleared once running");
        assert!(
            d.recover("b-13", Some("b"), std::slice::from_ref(&record.uuid), t0 + RECOVERY_BACKOFF * 3).is_empty(),
            "it runs it"
        );
        assert!(d.recover("c-1", Some("c"), &[], t0).is_empty(), "nothing placed there");
    }

    #[test]
    fn after_a_restart_daemons_reclaim_or_the_dataflow_fails() {
        let mut d = Dataflows::default();
        let (kept, _) = d.start(flow(), Some("kept".into()), "/".into(), &daemons()).unwrap();
        let (lost, _) = d.start(flow(), Some("lost".into()), "/".into(), &daemons()).unwrap();
        let stored: Vec<DataflowRecord> = d.records.clone();
        let t0 = Instant::now();
        let mut d = Dataflows::restore(stored, t0, RECLAIM_TIMEOUT);
        let (changed, stop) = d.reclaimed(&kept.uuid, "a-7", Some("a"));
        assert!(changed.is_some() && !stop);
        assert_eq!(d.find("kept").unwrap().placement[0].daemon_id, "a-7", "placement follows the machine id");
        assert_eq!(d.expire_reclaims(t0 + Duration::from_secs(1)).len(), 0);
        let failed = d.expire_reclaims(t0 + RECLAIM_TIMEOUT);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].uuid, lost.uuid);
        assert_eq!(d.find("lost").unwrap().status, DataflowStatus::Failed);
        assert!(d.find("lost").unwrap().reason.as_deref().unwrap_or("").contains("no daemon reported it"));
        assert_eq!(d.find("kept").unwrap().status, DataflowStatus::Running);
        assert_eq!(d.reclaimed("nope", "a-7", None), (None, true), "unknown dataflows are stopped");
    }

    #[test]
    fn placement_errors_use_the_reference_texts() {
        let lonely = [DaemonInfo { id: "x".into(), machine_id: Some("x".into()), labels: Default::default() }];
        let err = plan(&flow(), &lonely).unwrap_err().to_string();
        assert!(err.contains("no matching daemon for machine id \"a\""), "{err}");
        assert!(err.contains("no daemon matches labels {\"gpu\": \"true\"}"), "{err}");
    }
}

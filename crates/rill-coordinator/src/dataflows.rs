//! Dataflow records and their lifecycle. Transitions:
//! `Running` --stop--> `Stopping` --every daemon done--> `Stopped`;
//! `Running` --every daemon done--> `Finished` (all nodes succeeded) or
//! `Failed` (a node failed; the reason names it).

use std::collections::BTreeSet;

use rill_core::{DaemonInfo, Dataflow, place};
use rill_proto::coord::{DataflowStatus, DataflowSummary, NodePlacement, SpawnDataflow};

/// Why a start was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.join("\n"))]
    Placement(Vec<String>),
    #[error("a dataflow named `{0}` is already running: stop it first or choose another --name")]
    NameInUse(String),
}

/// One dataflow the coordinator started.
#[derive(Debug, Clone)]
pub struct DataflowRecord {
    pub uuid: String,
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
}

impl DataflowRecord {
    pub fn summary(&self) -> DataflowSummary {
        DataflowSummary {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            status: self.status,
            placement: self.placement.clone(),
            reason: self.reason.clone(),
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
}

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
        let record = DataflowRecord {
            uuid,
            name,
            descriptor,
            base_dir,
            placement,
            status: DataflowStatus::Running,
            reason: None,
            running_on,
            ready: BTreeSet::new(),
        };
        self.records.push(record.clone());
        Ok((record, spawns))
    }

    /// The newest dataflow with this name, or the one with this uuid.
    pub fn find(&self, name_or_uuid: &str) -> Option<&DataflowRecord> {
        self.records.iter().rev().find(|r| r.uuid == name_or_uuid || r.name == name_or_uuid)
    }

    /// Marks it stopping; returns the daemons to tell.
    pub fn stop(&mut self, name_or_uuid: &str) -> Option<(DataflowRecord, Vec<String>)> {
        let record = self.records.iter_mut().rev().find(|r| (r.uuid == name_or_uuid || r.name == name_or_uuid) && r.is_active())?;
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

    /// `daemon` reports its share ended.
    pub fn daemon_finished(&mut self, uuid: &str, daemon: &str, success: bool, summary: &str) {
        let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid) else { return };
        record.running_on.remove(daemon);
        if !success && record.reason.is_none() {
            record.reason = Some(summary.to_owned());
        }
        if !record.running_on.is_empty() {
            return;
        }
        record.status = match record.status {
            DataflowStatus::Stopping => DataflowStatus::Stopped,
            DataflowStatus::Running if record.reason.is_none() => DataflowStatus::Finished,
            DataflowStatus::Running => DataflowStatus::Failed,
            other => other,
        };
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
            DaemonInfo { id: "b-2".into(), machine_id: Some("b".into()), labels: [("gpu".to_owned(), "true".to_owned())].into() },
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
        assert_eq!(d.start(flow(), Some("app".into()), "/tmp".into(), &daemons()).unwrap_err(), StartError::NameInUse("app".into()));
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
        assert_eq!((bad.status, bad.reason.as_deref()), (DataflowStatus::Failed, Some("node `src` failed with exit code 3")));

        let (stopped, _) = d.start(flow(), Some("s".into()), "/".into(), &daemons()).unwrap();
        let (_, tell) = d.stop("s").unwrap();
        assert_eq!(tell, ["a-1", "b-2"]);
        d.daemon_finished(&stopped.uuid, "a-1", true, "");
        d.daemon_finished(&stopped.uuid, "b-2", true, "");
        assert_eq!(d.find("s").unwrap().status, DataflowStatus::Stopped);
        assert!(d.stop("s").is_none(), "not active any more");
    }

    #[test]
    fn placement_errors_use_the_reference_texts() {
        let lonely = [DaemonInfo { id: "x".into(), machine_id: Some("x".into()), labels: Default::default() }];
        let err = plan(&flow(), &lonely).unwrap_err().to_string();
        assert!(err.contains("no matching daemon for machine id \"a\""), "{err}");
        assert!(err.contains("no daemon matches labels {\"gpu\": \"true\"}"), "{err}");
    }
}

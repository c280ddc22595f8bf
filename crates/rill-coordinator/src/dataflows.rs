//! Dataflow records and their lifecycle. Transitions:
//! `Running` --stop--> `Stopping` --every daemon done--> `Stopped`;
//! `Running` --every daemon done--> `Finished` (all nodes succeeded) or
//! `Failed` (a node failed; the reason names it);
//! `Running` --a daemon shut down or went silent--> `Degraded` (its nodes
//! `lost`) --they run again--> `Running`, or --lost timeout--> `Failed`
//! (the rest is stopped). After a coordinator restart every active
//! dataflow's nodes are lost until their daemons report them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use rill_core::{DaemonInfo, Dataflow, place};
use rill_proto::coord::{
    DataflowStatus, DataflowSummary, NodeCounts, NodePlacement, NodeStatus, NodeTraffic, NodeUsage, SpawnDataflow,
    Topic, TopicConsumer,
};

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
    /// Since when some of its nodes are lost (`None`: none is).
    #[serde(skip)]
    lost_since: Option<Instant>,
    /// While pending: until when it waits for daemons, and for what.
    #[serde(default)]
    pub waiting: Option<Waiting>,
    /// Each node's message counters as last reported, and its rates. Not
    /// stored (they change every second): daemons report them again.
    #[serde(skip)]
    counts: BTreeMap<String, NodeCounts>,
    #[serde(skip)]
    rates: BTreeMap<String, Rate>,
    /// Daemon -> what its bridge dropped for consumers on its machine.
    #[serde(skip)]
    bridge_drops: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// Each running node's last CPU/memory sample, and when it came.
    #[serde(skip)]
    usage: BTreeMap<String, (Instant, NodeUsage)>,
    /// Times each node was restarted.
    #[serde(default)]
    restarts: BTreeMap<String, u32>,
}

/// A node's message rates, from its last two reports.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    at: Instant,
    received: u64,
    sent: u64,
    in_per_s: f64,
    out_per_s: f64,
}

/// Rates older than this read as 0: a node reports only while its counts
/// change (about once a second), so silence means idle.
const RATE_FRESH: Duration = Duration::from_millis(2500);

/// The shortest interval a rate is measured over.
const RATE_SPAN: Duration = Duration::from_millis(900);

/// What a pending dataflow waits for (`rill start --wait-for-daemons`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Wall-clock deadline (ms since the Unix epoch), so it survives a
    /// coordinator restart.
    pub until_ms: u64,
    /// The placement problems, one per node that has no daemon yet.
    pub problems: Vec<String>,
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
            waiting: self.waiting.as_ref().map(|w| w.problems.clone()).unwrap_or_default(),
            traffic: self.traffic(Instant::now()),
            usage: self
                .usage
                .iter()
                .filter(|(node, (at, _))| {
                    at.elapsed() < RATE_FRESH && matches!(self.nodes.get(*node), Some(NodeStatus::Running { .. }))
                })
                .map(|(node, (_, usage))| (node.clone(), *usage))
                .collect(),
            restarts: self.restarts.clone(),
        }
    }

    /// Every output of the dataflow with its consumers and counts.
    /// The daemons that run some of its nodes.
    pub fn daemons(&self) -> Vec<String> {
        self.running_on.iter().cloned().collect()
    }

    pub fn topics(&self) -> Vec<Topic> {
        let traffic = self.traffic(Instant::now());
        let machine = |node: &str| {
            self.placement
                .iter()
                .find(|p| p.node == node)
                .map(|p| p.machine_id.clone().unwrap_or_else(|| p.daemon_id.clone()))
                .unwrap_or_else(|| "-".into())
        };
        let mut topics = Vec::new();
        for node in &self.descriptor.nodes {
            for output in &node.outputs {
                let consumers = self
                    .descriptor
                    .nodes
                    .iter()
                    .flat_map(|c| c.inputs.iter().map(move |(id, input)| (c, id, input)))
                    .filter(|(_, _, input)| {
                        matches!(&input.source, rill_core::InputSource::Node { node: n, output: o } if *n == node.id && o == output)
                    })
                    .map(|(c, id, input)| {
                        let counts = traffic.get(&c.id).and_then(|t| t.inputs.get(id)).copied().unwrap_or_default();
                        TopicConsumer {
                            node: c.id.clone(),
                            input: id.clone(),
                            queue_size: input.queue_size,
                            machine: machine(&c.id),
                            received: counts.received,
                            dropped: counts.dropped,
                        }
                    })
                    .collect();
                let sent = traffic.get(&node.id).and_then(|t| t.outputs.get(output)).copied().unwrap_or_default();
                topics.push(Topic {
                    name: format!("{}/{output}", node.id),
                    node: node.id.clone(),
                    output: output.clone(),
                    machine: machine(&node.id),
                    consumers,
                    messages: sent.messages,
                    bytes: sent.bytes,
                });
            }
        }
        topics
    }

    fn traffic(&self, now: Instant) -> BTreeMap<String, NodeTraffic> {
        let rates = self
            .rates
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.at) < RATE_FRESH)
            .map(|(node, r)| (node.clone(), (r.in_per_s, r.out_per_s)))
            .collect();
        rill_proto::coord::traffic(&self.counts, self.bridge_drops.values(), &rates)
    }

    /// A node's counters: kept for the node's own inputs and outputs and
    /// for consumers that exist (a report names only those), with rates
    /// from the previous report.
    fn set_counts(&mut self, node: &str, mut counts: NodeCounts, now: Instant) {
        let Some(spec) = self.descriptor.node(node) else { return };
        counts.inputs.retain(|input, _| spec.inputs.contains_key(input));
        counts.outputs.retain(|output, _| spec.outputs.contains(output));
        if !counts.backlog_drops.is_empty() {
            let descriptor = &self.descriptor;
            counts.backlog_drops.retain(|consumer, inputs| {
                let Some(consumer) = descriptor.node(consumer) else { return false };
                inputs.retain(|input, _| consumer.inputs.contains_key(input));
                !inputs.is_empty()
            });
        }
        let (received, sent) = (counts.received(), counts.sent());
        // A rate over less than RATE_SPAN says little (two reports close
        // together: a node's and its daemon's dropped ticks, or reports
        // queued while the daemon was disconnected): keep the last one.
        let rate = match self.rates.get(node) {
            Some(last) if now.saturating_duration_since(last.at) >= RATE_SPAN => {
                let seconds = now.duration_since(last.at).as_secs_f64();
                // (To a tenth: more digits say nothing about a rate.)
                let per_s = |new: u64, old: u64| (new.saturating_sub(old) as f64 / seconds * 10.0).round() / 10.0;
                Rate {
                    at: now,
                    received,
                    sent,
                    in_per_s: per_s(received, last.received),
                    out_per_s: per_s(sent, last.sent),
                }
            }
            Some(last) => *last,
            None => Rate { at: now, received, sent, in_per_s: 0.0, out_per_s: 0.0 },
        };
        self.rates.insert(node.to_owned(), rate);
        self.counts.insert(node.to_owned(), counts);
    }

    /// What each daemon spawns of it.
    fn spawns(&self) -> Vec<(String, SpawnDataflow)> {
        self.running_on
            .iter()
            .map(|daemon| {
                let nodes = self.nodes_on(daemon).map(|p| p.node.clone()).collect();
                let spawn = SpawnDataflow {
                    uuid: self.uuid.clone(),
                    name: self.name.clone(),
                    descriptor: self.descriptor.clone(),
                    base_dir: self.base_dir.clone(),
                    nodes,
                };
                (daemon.clone(), spawn)
            })
            .collect()
    }

    /// Placed: it runs on these daemons from now on.
    fn place(&mut self, placement: Vec<NodePlacement>) {
        self.running_on = placement.iter().map(|p| p.daemon_id.clone()).collect();
        self.placement = placement;
        self.status = DataflowStatus::Running;
        self.waiting = None;
    }

    pub fn is_active(&self) -> bool {
        self.status.is_active()
    }

    /// The nodes placed on `daemon`.
    fn nodes_on<'a>(&'a self, daemon: &'a str) -> impl Iterator<Item = &'a NodePlacement> {
        self.placement.iter().filter(move |p| p.daemon_id == daemon)
    }

    fn lost_nodes(&self) -> impl Iterator<Item = (&String, &String)> {
        self.nodes.iter().filter_map(|(node, status)| match status {
            NodeStatus::Lost { reason } => Some((node, reason)),
            _ => None,
        })
    }

    /// Marks the nodes placed on `daemon` that had not ended as lost.
    fn lose_share(&mut self, daemon: &str, reason: &str, now: Instant) {
        self.running_on.remove(daemon);
        self.ready.remove(daemon);
        let on_daemon: Vec<String> = self.nodes_on(daemon).map(|p| p.node.clone()).collect();
        for node in on_daemon {
            let ended = matches!(self.nodes.get(&node), Some(NodeStatus::Finished | NodeStatus::Failed { .. }));
            if !ended {
                self.nodes.insert(node, NodeStatus::Lost { reason: reason.to_owned() });
            }
        }
        self.settle(now);
    }

    /// The status that follows from the shares still running and the nodes lost.
    fn settle(&mut self, now: Instant) {
        let any_lost = self.lost_nodes().next().is_some();
        self.lost_since = if any_lost { Some(self.lost_since.unwrap_or(now)) } else { None };
        self.status = match self.status {
            DataflowStatus::Stopping if self.running_on.is_empty() => DataflowStatus::Stopped,
            DataflowStatus::Running | DataflowStatus::Degraded if any_lost => DataflowStatus::Degraded,
            DataflowStatus::Running | DataflowStatus::Degraded if self.running_on.is_empty() => {
                if self.reason.is_none() { DataflowStatus::Finished } else { DataflowStatus::Failed }
            }
            DataflowStatus::Degraded => DataflowStatus::Running,
            other => other,
        };
    }
}

/// Every dataflow, in start order.
pub struct Dataflows {
    records: Vec<DataflowRecord>,
    /// How long nodes may stay lost before their dataflow fails.
    lost_timeout: Duration,
    /// At most one auto-recovery per machine and dataflow in this window.
    recovery_backoff: Duration,
    /// Last auto-recovery per (machine id, dataflow uuid).
    recovered_at: std::collections::HashMap<(String, String), Instant>,
}

/// How a daemon's share of a dataflow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareOutcome<'a> {
    /// Its nodes ended (`summary` names the failed ones).
    Ended { success: bool, summary: &'a str },
    /// The daemon shut down and stopped them: they are lost, not finished.
    Left,
}

/// Why nodes are lost when their daemon shuts down.
pub const DAEMON_SHUT_DOWN: &str = "daemon shut down";
/// Why nodes are lost when their daemon's connection goes silent or drops.
pub const DAEMON_UNREACHABLE: &str = "daemon unreachable";

/// Ended dataflows kept (for `rill list`, `logs`, `restart`) by default;
/// older ones are pruned, with their stored records and kept lines.
pub const KEEP_ENDED: usize = 100;

/// At most one auto-recovery per machine and dataflow in this window, by default.
pub const RECOVERY_BACKOFF: Duration = Duration::from_secs(30);

/// How long nodes may be lost (their daemon shut down or is unreachable, or
/// has not reported after a coordinator restart) before the dataflow fails.
pub const LOST_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Default for Dataflows {
    fn default() -> Self {
        Dataflows::restore(Vec::new(), Instant::now(), LOST_TIMEOUT, RECOVERY_BACKOFF)
    }
}

impl Dataflows {
    /// Builds whose shipped binaries some active dataflow uses.
    pub fn active_build_ids(&self) -> BTreeSet<String> {
        self.records
            .iter()
            .filter(|r| r.status.is_active())
            .flat_map(|r| r.descriptor.nodes.iter().filter_map(|n| n.deploy.artifact.as_ref()))
            .map(|a| a.build_id.clone())
            .collect()
    }

    /// Records a new dataflow and returns what each daemon must spawn.
    /// With `wait`, a dataflow some node of which has no daemon is recorded
    /// `Pending` (nothing to spawn yet) instead of refused.
    pub fn start(
        &mut self,
        descriptor: Dataflow,
        name: Option<String>,
        base_dir: String,
        daemons: &[DaemonInfo],
        wait: Option<Duration>,
    ) -> Result<(DataflowRecord, Vec<(String, SpawnDataflow)>), StartError> {
        let plan = plan(&descriptor, daemons);
        let uuid = uuid::Uuid::new_v4().to_string();
        let name = name.unwrap_or_else(|| format!("dataflow-{}", &uuid[..8]));
        // A stopping namesake is on its way out (that is how restart works).
        if self.records.iter().any(|r| {
            r.name == name
                && matches!(r.status, DataflowStatus::Pending | DataflowStatus::Running | DataflowStatus::Degraded)
        }) {
            return Err(StartError::NameInUse(name));
        }
        let now_ms = now_ms();
        let (placement, waiting) = match (plan, wait) {
            (Ok(placement), _) => (Some(placement), None),
            (Err(StartError::Placement(problems)), Some(wait)) => {
                (None, Some(Waiting { until_ms: now_ms.saturating_add(wait.as_millis() as u64), problems }))
            }
            (Err(e), _) => return Err(e),
        };
        let mut record = DataflowRecord {
            uuid,
            started_ms: now_ms,
            name,
            descriptor,
            base_dir,
            placement: Vec::new(),
            status: DataflowStatus::Pending,
            reason: None,
            running_on: BTreeSet::new(),
            ready: BTreeSet::new(),
            nodes: Default::default(),
            lost_since: None,
            waiting,
            counts: BTreeMap::new(),
            rates: BTreeMap::new(),
            bridge_drops: BTreeMap::new(),
            usage: BTreeMap::new(),
            restarts: BTreeMap::new(),
        };
        if let Some(placement) = placement {
            record.place(placement);
        }
        let spawns = record.spawns();
        self.records.push(record.clone());
        Ok((record, spawns))
    }

    /// Places the pending dataflows that can be placed now; returns them
    /// with what each daemon must spawn. The others keep waiting, for what
    /// is missing now.
    pub fn place_pending(&mut self, daemons: &[DaemonInfo]) -> Vec<(DataflowRecord, Vec<(String, SpawnDataflow)>)> {
        let mut placed = Vec::new();
        for record in self.records.iter_mut().filter(|r| r.status == DataflowStatus::Pending) {
            match plan(&record.descriptor, daemons) {
                Ok(placement) => {
                    record.place(placement);
                    placed.push((record.clone(), record.spawns()));
                }
                Err(StartError::Placement(problems)) => {
                    if let Some(waiting) = record.waiting.as_mut() {
                        waiting.problems = problems;
                    }
                }
                Err(StartError::NameInUse(_)) => {}
            }
        }
        placed
    }

    /// Pending dataflows whose wait is over fail, with what they waited for.
    pub fn expire_pending(&mut self, now_ms: u64) -> Vec<DataflowRecord> {
        let mut failed = Vec::new();
        for record in self.records.iter_mut().filter(|r| r.status == DataflowStatus::Pending) {
            let Some(waiting) = record.waiting.take_if(|w| w.until_ms <= now_ms) else { continue };
            record.status = DataflowStatus::Failed;
            record.reason = Some(format!("no daemon to run it on in time: {}", waiting.problems.join("; ")));
            failed.push(record.clone());
        }
        failed
    }

    /// Records from the store after a restart. Every node of an active one
    /// is lost until its daemon reports it (within `lost_timeout`).
    pub fn restore(
        records: Vec<DataflowRecord>,
        now: Instant,
        lost_timeout: Duration,
        recovery_backoff: Duration,
    ) -> Self {
        let records = records
            .into_iter()
            .map(|mut r| {
                if r.is_active() {
                    r.running_on.clear();
                    r.ready.clear();
                    let reason = "the coordinator restarted; its daemon has not reported it yet";
                    for p in &r.placement {
                        let ended =
                            matches!(r.nodes.get(&p.node), Some(NodeStatus::Finished | NodeStatus::Failed { .. }));
                        if !ended {
                            r.nodes.insert(p.node.clone(), NodeStatus::Lost { reason: reason.into() });
                        }
                    }
                    r.settle(now);
                }
                r
            })
            .collect();
        Self { records, lost_timeout, recovery_backoff, recovered_at: Default::default() }
    }

    /// Is there a record with this uuid?
    pub fn knows(&self, uuid: &str) -> bool {
        self.records.iter().any(|r| r.uuid == uuid)
    }

    /// Whether `node` of dataflow `uuid` was placed on `daemon`: a daemon
    /// reports only on its own nodes. A machine's daemon owns what was
    /// placed on its machine (its connection id changes across
    /// reconnects); a daemon without a machine id, what was placed on its
    /// connection or on a share it runs.
    pub fn placed_on(&self, uuid: &str, node: &str, daemon: &str, machine: Option<&str>) -> bool {
        let Some(record) = self.records.iter().find(|r| r.uuid == uuid) else { return false };
        record.placement.iter().any(|p| {
            p.node == node
                && match (machine, p.machine_id.as_deref()) {
                    (Some(machine), placed) => placed == Some(machine),
                    (None, Some(_)) => false,
                    (None, None) => p.daemon_id == daemon || record.running_on.contains(daemon),
                }
        })
    }

    /// Drops the oldest ended records beyond `keep`; returns their uuids.
    pub fn prune(&mut self, keep: usize) -> Vec<String> {
        let ended = self.records.iter().filter(|r| !r.is_active()).count();
        let mut excess = ended.saturating_sub(keep);
        let mut pruned = Vec::new();
        self.records.retain(|r| {
            if excess > 0 && !r.is_active() {
                excess -= 1;
                pruned.push(r.uuid.clone());
                return false;
            }
            true
        });
        self.recovered_at.retain(|(_, uuid), _| !pruned.contains(uuid));
        pruned
    }

    /// A dataflow stopped while its start was being stored: its spawns are
    /// not sent, so nothing runs and it is stopped. True if that was so.
    pub fn stopped_before_spawn(&mut self, uuid: &str, now: Instant) -> Option<DataflowRecord> {
        let record = self.records.iter_mut().find(|r| r.uuid == uuid && r.status == DataflowStatus::Stopping)?;
        record.running_on.clear();
        record.ready.clear();
        record.settle(now);
        Some(record.clone())
    }

    /// A pending dataflow placed but whose record could not be stored:
    /// failed, nothing spawned.
    pub fn fail_unstarted(&mut self, uuid: &str, reason: &str) -> Option<DataflowRecord> {
        let record = self.records.iter_mut().find(|r| r.uuid == uuid)?;
        record.running_on.clear();
        record.status = DataflowStatus::Failed;
        record.reason = Some(reason.to_owned());
        Some(record.clone())
    }

    /// A dataflow that was never stored: gone as if never started.
    pub fn forget(&mut self, uuid: &str) {
        self.records.retain(|r| r.uuid != uuid);
    }

    /// `daemon`'s share of `uuid` is lost (e.g. its spawn could not be sent).
    pub fn share_lost(&mut self, uuid: &str, daemon: &str, reason: &str, now: Instant) -> Option<DataflowRecord> {
        let record = self.records.iter_mut().find(|r| r.uuid == uuid && r.is_active())?;
        record.lose_share(daemon, reason, now);
        Some(record.clone())
    }

    /// A daemon's connection ended (`reason`: it shut down, or went silent):
    /// the nodes it ran are lost. Returns the changed records.
    pub fn daemon_gone(&mut self, daemon: &str, reason: &str, now: Instant) -> Vec<DataflowRecord> {
        let mut changed = Vec::new();
        for record in self.records.iter_mut().filter(|r| r.is_active() && r.running_on.contains(daemon)) {
            record.lose_share(daemon, reason, now);
            changed.push(record.clone());
        }
        changed
    }

    /// A (re)connected daemon says it runs `uuid`: it owns that share again.
    /// Returns the record if it changed (to store), and whether the daemon
    /// must be told to stop it (the dataflow is stopping or over).
    pub fn reclaimed(&mut self, uuid: &str, daemon: &str, machine_id: Option<&str>) -> (Option<DataflowRecord>, bool) {
        let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid) else { return (None, true) };
        if !record.is_active() {
            return (None, true);
        }
        // Only a share of its own: a daemon claiming another machine's
        // dataflow is told to stop it, and nothing changes.
        if !record.placement.iter().any(|p| p.machine_id.as_deref() == machine_id) {
            return (None, true);
        }
        // Daemon ids change across reconnects; machine ids do not. The old
        // connection's id goes (it may have been replaced without being
        // written off), so the share is waited for once, under its new id.
        for p in &mut record.placement {
            if machine_id.is_some() && p.machine_id.as_deref() == machine_id {
                record.running_on.remove(&p.daemon_id);
                record.ready.remove(&p.daemon_id);
                p.daemon_id = daemon.to_owned();
            }
        }
        record.running_on.insert(daemon.to_owned());
        record.ready.insert(daemon.to_owned());
        (Some(record.clone()), record.status == DataflowStatus::Stopping)
    }

    /// A daemon (re)connected reporting `reported`: every running dataflow
    /// with nodes placed on its machine that it does not run gets those
    /// nodes spawned again, at most once per recovery backoff per machine
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
            let running = matches!(record.status, DataflowStatus::Running | DataflowStatus::Degraded);
            if !running || reported.contains(&record.uuid) {
                continue;
            }
            // Only what is lost: a node that finished stays finished, and a
            // share its daemon refused is not offered to it again.
            let nodes: Vec<String> = record
                .placement
                .iter()
                .filter(|p| p.machine_id.as_deref() == Some(machine))
                .filter(|p| matches!(record.nodes.get(&p.node), Some(NodeStatus::Lost { .. })))
                .map(|p| p.node.clone())
                .collect();
            if nodes.is_empty() {
                continue;
            }
            let key = (machine.to_owned(), record.uuid.clone());
            if self.recovered_at.get(&key).is_some_and(|at| now.duration_since(*at) < self.recovery_backoff) {
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

    /// `machine`'s daemon is shutting down in order (SIGTERM: `systemctl
    /// stop|restart`, an upgrade): that is no crash, so when it returns its
    /// nodes are spawned again at once, whatever the backoff. The backoff
    /// is for daemons that vanish (killed, crashed, unreachable).
    pub fn left_in_order(&mut self, machine: &str) {
        self.recovered_at.retain(|(m, _), _| m != machine);
    }

    /// Dataflows `daemon` runs a share of (what it would report as running).
    pub fn shares_of(&self, daemon: &str) -> Vec<String> {
        self.records.iter().filter(|r| r.is_active() && r.running_on.contains(daemon)).map(|r| r.uuid.clone()).collect()
    }

    /// Dataflows whose nodes stayed lost for the lost timeout fail (or, if
    /// stopping, are stopped). Returns the changed records, each with the
    /// daemons that still run part of it and must stop it.
    pub fn expire_lost(&mut self, now: Instant) -> Vec<(DataflowRecord, Vec<String>)> {
        let mut changed = Vec::new();
        let timeout = self.lost_timeout;
        for record in self.records.iter_mut().filter(|r| r.is_active()) {
            let Some(since) = record.lost_since else { continue };
            if now.duration_since(since) < timeout {
                continue;
            }
            let lost: Vec<(String, String)> = record.lost_nodes().map(|(n, r)| (n.clone(), r.clone())).collect();
            let mut where_: Vec<String> = Vec::new();
            for (node, reason) in &lost {
                let machine = record
                    .placement
                    .iter()
                    .find(|p| &p.node == node)
                    .map(|p| p.machine_id.clone().unwrap_or_else(|| p.daemon_id.clone()))
                    .unwrap_or_default();
                let why = format!("lost on `{machine}` ({reason}) and not back within {} s", timeout.as_secs());
                record.nodes.insert(node.clone(), NodeStatus::Failed { reason: why });
                if !where_.contains(&machine) {
                    where_.push(machine);
                }
            }
            record.lost_since = None;
            if record.status == DataflowStatus::Stopping {
                record.running_on.clear();
                record.status = DataflowStatus::Stopped;
            } else {
                let nodes: Vec<&str> = lost.iter().map(|(n, _)| n.as_str()).collect();
                record.reason = Some(format!(
                    "node(s) {} lost: machine(s) {} did not come back within {} s",
                    nodes.join(", "),
                    where_.join(", "),
                    timeout.as_secs()
                ));
                record.status = DataflowStatus::Failed;
            }
            let stop: Vec<String> = std::mem::take(&mut record.running_on).into_iter().collect();
            changed.push((record.clone(), stop));
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
        record.waiting = None;
        // Nobody runs it any more (every node lost): nothing to wait for.
        record.settle(Instant::now());
        Some((record.clone(), record.running_on.iter().cloned().collect()))
    }

    /// `daemon`'s share is wired. Returns the daemons to send `Go` to when
    /// this was the last one.
    pub fn daemon_ready(&mut self, uuid: &str, daemon: &str) -> Vec<String> {
        let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid) else { return Vec::new() };
        // Only a share's own daemon says it is ready.
        if !record.running_on.contains(daemon) {
            return Vec::new();
        }
        // A share that already ended counts as ready.
        record.ready.insert(daemon.to_owned());
        if !record.running_on.is_subset(&record.ready) {
            return Vec::new();
        }
        // Every time the barrier holds, to every share: a `Go` lost to a
        // reconnect or a coordinator restart is sent again, and a daemon
        // ignores one it already had.
        record.running_on.iter().cloned().collect()
    }

    /// After a share ended: the daemons to send `Go` to if every share
    /// still running is ready. A share that ended before it was wired (a
    /// node that could not start) never says it is ready; the others must
    /// not wait for it.
    pub fn go_after_end(&self, uuid: &str) -> Vec<String> {
        let Some(record) = self.records.iter().find(|r| r.uuid == uuid) else { return Vec::new() };
        if !record.is_active() || record.running_on.is_empty() || !record.running_on.is_subset(&record.ready) {
            return Vec::new();
        }
        record.running_on.iter().cloned().collect()
    }

    /// A node's message counters (in memory only: see `DataflowRecord::counts`).
    pub fn counts(&mut self, uuid: &str, node: &str, counts: NodeCounts, now: Instant) {
        if let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid) {
            record.set_counts(node, counts, now);
        }
    }

    /// What `daemon` (on `machine`) dropped in its bridge for consumers on
    /// its machine: kept for consumers placed there and their inputs only.
    pub fn bridge_drops(
        &mut self,
        uuid: &str,
        daemon: &str,
        machine: Option<&str>,
        mut drops: BTreeMap<String, BTreeMap<String, u64>>,
    ) {
        drops.retain(|consumer, _| self.placed_on(uuid, consumer, daemon, machine));
        let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid) else { return };
        drops.retain(|consumer, inputs| {
            let Some(spec) = record.descriptor.node(consumer) else { return false };
            inputs.retain(|input, _| spec.inputs.contains_key(input));
            !inputs.is_empty()
        });
        record.bridge_drops.insert(daemon.to_owned(), drops);
    }

    /// A running node's CPU and memory (in memory only).
    pub fn usage(&mut self, uuid: &str, node: &str, usage: NodeUsage, now: Instant) {
        if let Some(record) = self.records.iter_mut().find(|r| r.uuid == uuid)
            && record.descriptor.node(node).is_some()
        {
            record.usage.insert(node.to_owned(), (now, usage));
        }
    }

    /// `daemon` reports a node's status (it runs that node now, also after
    /// a reconnect). Returns the record (to store).
    pub fn node_status(&mut self, uuid: &str, node: &str, status: NodeStatus, daemon: &str) -> Option<DataflowRecord> {
        let record = self.records.iter_mut().find(|r| r.uuid == uuid)?;
        if status == NodeStatus::Restarting && record.nodes.get(node) != Some(&NodeStatus::Restarting) {
            *record.restarts.entry(node.to_owned()).or_default() += 1;
        }
        record.nodes.insert(node.to_owned(), status);
        if let Some(p) = record.placement.iter_mut().find(|p| p.node == node) {
            p.daemon_id = daemon.to_owned();
        }
        if record.is_active() {
            // It runs there (again, after a reconnect); an end says nothing
            // about the share, whose own end may have been reported already.
            if matches!(record.nodes.get(node), Some(NodeStatus::Running { .. } | NodeStatus::Restarting)) {
                record.running_on.insert(daemon.to_owned());
            }
            record.settle(Instant::now());
        }
        Some(record.clone())
    }

    /// `daemon` reports its share ended. A daemon that is shutting down
    /// (`leaving`) did not finish it: its nodes are lost. Returns the record
    /// (to store).
    pub fn daemon_finished(
        &mut self,
        uuid: &str,
        daemon: &str,
        outcome: ShareOutcome<'_>,
        now: Instant,
    ) -> Option<DataflowRecord> {
        let record = self.records.iter_mut().find(|r| r.uuid == uuid)?;
        if !record.running_on.contains(daemon) {
            // A late report from a share that was already written off.
            return None;
        }
        match outcome {
            ShareOutcome::Left => record.lose_share(daemon, DAEMON_SHUT_DOWN, now),
            ShareOutcome::Ended { success, summary } => {
                record.running_on.remove(daemon);
                if !success && record.reason.is_none() {
                    record.reason = Some(summary.to_owned());
                }
                // Its nodes ended with it, even those whose last status was
                // lost with a connection: none of them is lost any more.
                let on_daemon: Vec<String> = record.nodes_on(daemon).map(|p| p.node.clone()).collect();
                for node in on_daemon {
                    if let Some(status @ NodeStatus::Lost { .. }) = record.nodes.get_mut(&node) {
                        *status = if success {
                            NodeStatus::Finished
                        } else {
                            NodeStatus::Failed { reason: summary.to_owned() }
                        };
                    }
                }
                record.settle(now);
            }
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
        let (record, spawns) = d.start(flow(), Some("app".into()), "/tmp".into(), &daemons(), None).unwrap();
        assert_eq!(record.status, DataflowStatus::Running);
        assert_eq!(spawns.len(), 2);
        assert_eq!(spawns[0].1.nodes, ["src"]);
        assert_eq!(spawns[1].1.nodes, ["sink"]);
        assert_eq!(
            d.start(flow(), Some("app".into()), "/tmp".into(), &daemons(), None).unwrap_err(),
            StartError::NameInUse("app".into())
        );
    }

    #[test]
    fn a_pending_dataflow_starts_when_its_daemons_join_or_fails_at_its_deadline() {
        let mut d = Dataflows::default();
        let only_a = &daemons()[..1];
        let wait = Some(Duration::from_secs(60));
        let err = d.start(flow(), Some("now".into()), "/".into(), only_a, None).unwrap_err();
        assert!(matches!(err, StartError::Placement(_)), "without a wait: refused at once");
        let (record, spawns) = d.start(flow(), Some("app".into()), "/".into(), only_a, wait).unwrap();
        assert_eq!((record.status, spawns.len()), (DataflowStatus::Pending, 0));
        assert_eq!(record.summary().waiting, [r#"node `sink`: no daemon matches labels {"gpu": "true"}"#]);
        assert!(record.is_active());
        let again = d.start(flow(), Some("app".into()), "/".into(), only_a, wait).unwrap_err();
        assert_eq!(again, StartError::NameInUse("app".into()), "a pending name is taken");
        assert!(d.place_pending(only_a).is_empty(), "still nothing for sink");
        let placed = d.place_pending(&daemons());
        assert_eq!(placed.len(), 1);
        let (record, spawns) = &placed[0];
        assert_eq!((record.status, spawns.len()), (DataflowStatus::Running, 2));
        assert!(record.waiting.is_none() && record.summary().waiting.is_empty());
        assert!(d.place_pending(&daemons()).is_empty(), "placed once");

        let (late, _) = d.start(flow(), Some("late".into()), "/".into(), &[], wait).unwrap();
        let until = late.waiting.as_ref().unwrap().until_ms;
        assert!(d.expire_pending(until - 1).is_empty());
        let failed = d.expire_pending(until);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].status, DataflowStatus::Failed);
        let reason = failed[0].reason.clone().unwrap();
        assert!(reason.starts_with("no daemon to run it on in time: node `src`: no daemon is connected"), "{reason}");

        let (stopped, _) = d.start(flow(), Some("gone".into()), "/".into(), &[], wait).unwrap();
        let (record, tell) = d.stop(&stopped.uuid).unwrap();
        assert_eq!((record.status, tell.len()), (DataflowStatus::Stopped, 0), "a pending dataflow stops at once");
        assert!(d.place_pending(&daemons()).is_empty(), "and is never placed");
    }

    #[test]
    fn a_daemon_may_report_only_on_nodes_placed_on_its_machine() {
        let mut d = Dataflows::default();
        let (record, _) = d.start(flow(), None, "/".into(), &daemons(), None).unwrap();
        assert!(d.placed_on(&record.uuid, "src", "a-1", Some("a")));
        assert!(d.placed_on(&record.uuid, "src", "a-7", Some("a")), "the same machine after a reconnect");
        assert!(!d.placed_on(&record.uuid, "src", "b-2", Some("b")), "b's claim on a's node");
        assert!(!d.placed_on(&record.uuid, "src", "x-1", None));
        assert!(!d.placed_on(&record.uuid, "nope", "a-1", Some("a")));
        assert!(!d.placed_on("other", "src", "a-1", Some("a")));
        let (changed, stop) = d.reclaimed(&record.uuid, "c-1", Some("c"));
        assert!(changed.is_none() && stop, "a machine with no share of it is told to stop it");
        assert_eq!(d.daemon_ready(&record.uuid, "c-1"), Vec::<String>::new(), "nor can it be ready");
    }

    #[test]
    fn go_is_sent_once_every_daemon_is_ready() {
        let mut d = Dataflows::default();
        let (record, _) = d.start(flow(), None, "/".into(), &daemons(), None).unwrap();
        assert_eq!(d.daemon_ready(&record.uuid, "a-1"), Vec::<String>::new());
        assert_eq!(d.daemon_ready(&record.uuid, "b-2"), ["a-1", "b-2"]);
        assert_eq!(d.daemon_ready(&record.uuid, "b-2"), ["a-1", "b-2"], "a repeated ready: Go again, to all");
    }

    #[test]
    fn a_share_that_ends_before_it_is_wired_does_not_hold_the_others_back() {
        let mut d = Dataflows::default();
        let (record, _) = d.start(flow(), None, "/".into(), &daemons(), None).unwrap();
        assert_eq!(d.daemon_ready(&record.uuid, "b-2"), Vec::<String>::new(), "a-1 is not wired yet");
        assert_eq!(d.go_after_end(&record.uuid), Vec::<String>::new(), "nothing ended: still waiting");
        let failed = ShareOutcome::Ended { success: false, summary: "node `src` failed" };
        d.daemon_finished(&record.uuid, "a-1", failed, Instant::now());
        assert_eq!(d.go_after_end(&record.uuid), ["b-2"], "b-2's nodes start");
    }

    #[test]
    fn lifecycle_transitions() {
        let mut d = Dataflows::default();
        let (ok, _) = d.start(flow(), Some("ok".into()), "/".into(), &daemons(), None).unwrap();
        d.daemon_finished(&ok.uuid, "a-1", ShareOutcome::Ended { success: true, summary: "" }, Instant::now());
        assert_eq!(d.find("ok").unwrap().status, DataflowStatus::Running, "b still runs");
        d.daemon_finished(&ok.uuid, "b-2", ShareOutcome::Ended { success: true, summary: "" }, Instant::now());
        assert_eq!(d.find("ok").unwrap().status, DataflowStatus::Finished);

        let (bad, _) = d.start(flow(), Some("bad".into()), "/".into(), &daemons(), None).unwrap();
        d.daemon_finished(
            &bad.uuid,
            "a-1",
            ShareOutcome::Ended { success: false, summary: "node `src` failed with exit code 3" },
            Instant::now(),
        );
        d.daemon_finished(&bad.uuid, "b-2", ShareOutcome::Ended { success: true, summary: "" }, Instant::now());
        let bad = d.find("bad").unwrap();
        assert_eq!(
            (bad.status, bad.reason.as_deref()),
            (DataflowStatus::Failed, Some("node `src` failed with exit code 3"))
        );

        let (stopped, _) = d.start(flow(), Some("s".into()), "/".into(), &daemons(), None).unwrap();
        let (_, tell) = d.stop("s").unwrap();
        assert_eq!(tell, ["a-1", "b-2"]);
        d.daemon_finished(&stopped.uuid, "a-1", ShareOutcome::Ended { success: true, summary: "" }, Instant::now());
        d.daemon_finished(&stopped.uuid, "b-2", ShareOutcome::Ended { success: true, summary: "" }, Instant::now());
        assert_eq!(d.find("s").unwrap().status, DataflowStatus::Stopped);
        assert!(d.stop("s").is_none(), "not active any more");
    }

    #[test]
    fn a_daemon_that_lost_its_nodes_gets_them_again_with_backoff() {
        let mut d = Dataflows::default();
        let (record, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons(), None).unwrap();
        let t0 = Instant::now();
        assert!(d.recover("b-8", Some("b"), &[], t0).is_empty(), "nothing is lost yet");
        d.daemon_gone("b-2", DAEMON_UNREACHABLE, t0);
        let spawns = d.recover("b-9", Some("b"), &[], t0);
        assert_eq!(spawns.len(), 1);
        assert_eq!(spawns[0].1.nodes, ["sink"], "only the missing machine's nodes");
        assert_eq!(d.find("app").unwrap().placement[1].daemon_id, "b-9");
        assert!(d.recover("b-10", Some("b"), &[], t0 + Duration::from_secs(5)).is_empty(), "backoff");
        assert_eq!(d.recover("b-11", Some("b"), &[], t0 + RECOVERY_BACKOFF).len(), 1, "after the backoff");
        // The recovered share was wired, and its node took its daemon down
        // at once: a crash loop is re-spawned once per backoff, no faster.
        d.daemon_ready(&record.uuid, "b-11");
        d.daemon_gone("b-11", DAEMON_UNREACHABLE, t0 + RECOVERY_BACKOFF);
        let soon = t0 + RECOVERY_BACKOFF + Duration::from_secs(6);
        assert!(d.recover("b-12", Some("b"), &[], soon).is_empty(), "within the backoff, though it had run");
        assert_eq!(d.recover("b-12", Some("b"), &[], t0 + RECOVERY_BACKOFF * 2).len(), 1, "after it");
        // A daemon that shuts down in order (a restart, an upgrade) gets its
        // nodes at once when it returns, within the backoff.
        d.daemon_ready(&record.uuid, "b-12");
        d.left_in_order("b");
        d.daemon_gone("b-12", DAEMON_SHUT_DOWN, t0 + RECOVERY_BACKOFF * 2);
        assert_eq!(d.recover("b-14", Some("b"), &[], t0 + RECOVERY_BACKOFF * 2 + Duration::from_secs(1)).len(), 1);
        assert!(
            d.recover("b-13", Some("b"), std::slice::from_ref(&record.uuid), t0 + RECOVERY_BACKOFF * 3).is_empty(),
            "it runs it"
        );
        assert!(d.recover("c-1", Some("c"), &[], t0).is_empty(), "nothing placed there");
    }

    #[test]
    fn after_a_restart_nodes_are_lost_until_reported_and_fail_after_the_lost_timeout() {
        let mut d = Dataflows::default();
        let (kept, _) = d.start(flow(), Some("kept".into()), "/".into(), &daemons(), None).unwrap();
        let (lost, _) = d.start(flow(), Some("lost".into()), "/".into(), &daemons(), None).unwrap();
        let stored: Vec<DataflowRecord> = d.records.clone();
        let t0 = Instant::now();
        let mut d = Dataflows::restore(stored, t0, LOST_TIMEOUT, RECOVERY_BACKOFF);
        assert_eq!(d.find("kept").unwrap().status, DataflowStatus::Degraded, "nobody reported it yet");
        let (changed, stop) = d.reclaimed(&kept.uuid, "a-7", Some("a"));
        assert!(changed.is_some() && !stop);
        assert_eq!(d.find("kept").unwrap().placement[0].daemon_id, "a-7", "placement follows the machine id");
        d.node_status(&kept.uuid, "src", NodeStatus::Running { pid: 7 }, "a-7");
        assert_eq!(d.find("kept").unwrap().status, DataflowStatus::Degraded, "sink is still lost");
        d.reclaimed(&kept.uuid, "b-8", Some("b"));
        d.node_status(&kept.uuid, "sink", NodeStatus::Running { pid: 8 }, "b-8");
        assert_eq!(d.find("kept").unwrap().status, DataflowStatus::Running);
        assert_eq!(d.expire_lost(t0 + Duration::from_secs(1)).len(), 0);
        let failed = d.expire_lost(t0 + LOST_TIMEOUT);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0.uuid, lost.uuid);
        let lost = d.find("lost").unwrap();
        assert_eq!(lost.status, DataflowStatus::Failed);
        let reason = lost.reason.as_deref().unwrap_or("");
        assert!(reason.contains("node(s) sink, src lost: machine(s) b, a did not come back within 60 s"), "{reason}");
        assert_eq!(d.find("kept").unwrap().status, DataflowStatus::Running);
        assert_eq!(d.reclaimed("nope", "a-7", None), (None, true), "unknown dataflows are stopped");
    }

    #[test]
    fn a_share_whose_end_was_lost_with_a_connection_ends_its_lost_nodes_when_reported_again() {
        let mut d = Dataflows::default();
        let (app, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons(), None).unwrap();
        let t0 = Instant::now();
        d.daemon_gone("b-2", DAEMON_UNREACHABLE, t0);
        // b comes back still owning the share (its end is not confirmed), then reports the end.
        d.reclaimed(&app.uuid, "b-3", Some("b"));
        d.daemon_finished(&app.uuid, "b-3", ShareOutcome::Ended { success: false, summary: "sink failed" }, t0);
        let record = d.find("app").unwrap();
        assert_eq!(record.nodes["sink"], NodeStatus::Failed { reason: "sink failed".into() });
        assert!(d.recover("b-3", Some("b"), &[], t0 + RECOVERY_BACKOFF).is_empty(), "nothing is lost to re-spawn");
    }

    #[test]
    fn a_daemon_that_leaves_makes_its_nodes_lost_until_they_run_again() {
        let mut d = Dataflows::default();
        let (app, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons(), None).unwrap();
        let t0 = Instant::now();
        d.node_status(&app.uuid, "sink", NodeStatus::Running { pid: 1 }, "b-2");
        // Shutting down, b stops its nodes and reports its share: lost, not finished.
        d.daemon_finished(&app.uuid, "b-2", ShareOutcome::Left, t0);
        let record = d.find("app").unwrap();
        assert_eq!(record.status, DataflowStatus::Degraded);
        assert_eq!(record.nodes["sink"], NodeStatus::Lost { reason: DAEMON_SHUT_DOWN.into() });
        assert!(d.daemon_gone("b-2", DAEMON_UNREACHABLE, t0).is_empty(), "already written off");
        // b comes back without it: its nodes are spawned again, and run.
        let spawns = d.recover("b-3", Some("b"), &[], t0);
        assert_eq!(spawns.len(), 1);
        d.node_status(&app.uuid, "sink", NodeStatus::Running { pid: 2 }, "b-3");
        assert_eq!(d.find("app").unwrap().status, DataflowStatus::Running);
        assert!(d.expire_lost(t0 + LOST_TIMEOUT).is_empty(), "nothing is lost any more");

        // a disappears and does not come back: the dataflow fails and b is told to stop.
        d.daemon_gone("a-1", DAEMON_UNREACHABLE, t0);
        assert_eq!(d.find("app").unwrap().status, DataflowStatus::Degraded);
        let expired = d.expire_lost(t0 + LOST_TIMEOUT);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].1, ["b-3"], "the rest is stopped");
        let record = d.find("app").unwrap();
        assert_eq!(record.status, DataflowStatus::Failed);
        assert!(
            matches!(&record.nodes["src"], NodeStatus::Failed { reason } if reason.contains("lost on `a` (daemon unreachable)"))
        );
        // b's late finish report does not change the outcome.
        d.daemon_finished(&app.uuid, "b-3", ShareOutcome::Ended { success: true, summary: "" }, t0);
        assert_eq!(d.find("app").unwrap().status, DataflowStatus::Failed);
    }

    #[test]
    fn a_node_end_reported_after_its_share_ended_does_not_revive_the_share() {
        let mut d = Dataflows::default();
        let (app, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons(), None).unwrap();
        d.stop("app");
        let now = Instant::now();
        d.daemon_finished(&app.uuid, "a-1", ShareOutcome::Ended { success: true, summary: "" }, now);
        d.node_status(&app.uuid, "src", NodeStatus::Finished, "a-1");
        d.daemon_finished(&app.uuid, "b-2", ShareOutcome::Ended { success: true, summary: "" }, now);
        assert_eq!(d.find("app").unwrap().status, DataflowStatus::Stopped);
    }

    #[test]
    fn only_the_newest_ended_records_are_kept() {
        let mut d = Dataflows::default();
        let now = Instant::now();
        let mut uuids = Vec::new();
        for n in 0..5 {
            let (r, _) = d.start(flow(), Some(format!("f{n}")), "/".into(), &daemons(), None).unwrap();
            for daemon in ["a-1", "b-2"] {
                d.daemon_finished(&r.uuid, daemon, ShareOutcome::Ended { success: true, summary: "" }, now);
            }
            uuids.push(r.uuid);
        }
        let (running, _) = d.start(flow(), Some("live".into()), "/".into(), &daemons(), None).unwrap();
        assert_eq!(d.prune(2), uuids[..3].to_vec());
        assert!(d.knows(&uuids[3]) && d.knows(&uuids[4]) && d.knows(&running.uuid), "newest and active stay");
        assert!(d.prune(2).is_empty());
    }

    #[test]
    fn a_replaced_connection_is_not_waited_for_and_finished_nodes_are_not_recovered() {
        let mut d = Dataflows::default();
        let (app, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons(), None).unwrap();
        let now = Instant::now();
        // a-1 was replaced by a-3 without being written off.
        d.reclaimed(&app.uuid, "a-3", Some("a"));
        d.daemon_finished(&app.uuid, "a-3", ShareOutcome::Ended { success: true, summary: "" }, now);
        d.node_status(&app.uuid, "src", NodeStatus::Finished, "a-3");
        d.daemon_finished(&app.uuid, "b-2", ShareOutcome::Ended { success: true, summary: "" }, now);
        assert_eq!(d.find("app").unwrap().status, DataflowStatus::Finished, "a-1 is not waited for");

        let (app, _) = d.start(flow(), Some("app2".into()), "/".into(), &daemons(), None).unwrap();
        d.node_status(&app.uuid, "src", NodeStatus::Finished, "a-1");
        d.daemon_finished(&app.uuid, "a-1", ShareOutcome::Ended { success: true, summary: "" }, now);
        assert!(d.recover("a-4", Some("a"), &[], now).is_empty(), "the finished source is not run again");
        let restored = Dataflows::restore(d.records.clone(), now, LOST_TIMEOUT, RECOVERY_BACKOFF);
        assert_eq!(restored.find("app2").unwrap().nodes["src"], NodeStatus::Finished, "not lost after a restart");
    }

    #[test]
    fn a_connected_daemon_gets_its_lost_nodes_once_the_backoff_has_passed() {
        let mut d = Dataflows::default();
        let (app, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons(), None).unwrap();
        let t0 = Instant::now();
        d.daemon_gone("b-2", DAEMON_UNREACHABLE, t0);
        assert_eq!(d.recover("b-3", Some("b"), &[], t0).len(), 1, "recovered at registration");
        d.daemon_gone("b-3", DAEMON_UNREACHABLE, t0);
        // b-4 registers within the backoff: nothing then...
        assert!(d.recover("b-4", Some("b"), &d.shares_of("b-4"), t0 + Duration::from_secs(1)).is_empty());
        // ...but the periodic check recovers it once the backoff has passed.
        let later = t0 + RECOVERY_BACKOFF;
        assert_eq!(d.recover("b-4", Some("b"), &d.shares_of("b-4"), later).len(), 1);
        // A share it runs is never re-spawned by the periodic check.
        d.node_status(&app.uuid, "sink", NodeStatus::Running { pid: 3 }, "b-4");
        assert_eq!(d.shares_of("b-4"), std::slice::from_ref(&app.uuid));
        assert!(d.recover("b-4", Some("b"), &d.shares_of("b-4"), later + RECOVERY_BACKOFF).is_empty());
    }

    #[test]
    fn a_late_ready_after_a_reclaim_still_gets_its_go() {
        let mut d = Dataflows::default();
        let (app, _) = d.start(flow(), Some("app".into()), "/".into(), &daemons(), None).unwrap();
        let mut d = Dataflows::restore(d.records.clone(), Instant::now(), LOST_TIMEOUT, RECOVERY_BACKOFF);
        d.reclaimed(&app.uuid, "a-7", Some("a"));
        d.reclaimed(&app.uuid, "b-8", Some("b"));
        assert_eq!(d.daemon_ready(&app.uuid, "a-7"), ["a-7", "b-8"]);
    }

    #[test]
    fn placement_errors_use_the_reference_texts() {
        let lonely = [DaemonInfo { id: "x".into(), machine_id: Some("x".into()), labels: Default::default() }];
        let err = plan(&flow(), &lonely).unwrap_err().to_string();
        assert!(err.contains("no matching daemon for machine id \"a\""), "{err}");
        assert!(err.contains("no daemon matches labels {\"gpu\": \"true\"}"), "{err}");
    }
}

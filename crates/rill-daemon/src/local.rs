//! The dataflows this daemon runs for the coordinator: each one's share of
//! nodes runs in a [`Runtime`] on its own thread, independent of the
//! coordinator connection (nodes keep running while it is down).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use rill_proto::coord::SpawnDataflow;
use tokio::sync::mpsc;

use crate::bridge::Bridge;
use crate::{Report, RunOptions, Runtime, Share, StopHandle, Stream};

/// A share of a dataflow ended: `(uuid, success, summary)`.
pub type Finished = (String, bool, String);

/// How long a share waits for its cross-machine edges before it reports
/// ready anyway.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// What a share tells the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum ShareReport {
    /// Wired: its nodes may start once every share is.
    Ready {
        uuid: String,
    },
    Finished(Finished),
}

/// What the daemon's runtimes tell the daemon's owner (the CLI prints it).
#[derive(Debug, Clone, PartialEq)]
pub enum LocalEvent {
    Started { name: String, nodes: Vec<String> },
    Log { uuid: String, dataflow: String, node: String, stderr: bool, line: String },
    Node { uuid: String, node: String, status: rill_proto::coord::NodeStatus },
    Counts { uuid: String, node: String, counts: rill_proto::coord::NodeCounts },
    Usage { uuid: String, node: String, usage: rill_proto::coord::NodeUsage },
    Ended { name: String, success: bool, summary: String },
}

/// Running shares, by dataflow uuid.
#[derive(Default)]
pub struct LocalDataflows {
    running: HashMap<String, StopHandle>,
    /// Shares asked to stop: a repeated request (a second `rill stop`, a
    /// resent message) must not escalate to SIGKILL.
    stopping: BTreeSet<String>,
    /// Where shipped node binaries are kept and fetched from.
    artifacts: Option<crate::artifacts::Artifacts>,
    /// Where node sources from git are cloned.
    source_dir: Option<PathBuf>,
    /// Each running share's nodes and their outputs (what a tap may read).
    outputs: HashMap<String, BTreeMap<String, Vec<String>>>,
    /// Taps open here, by `(uuid, tap)`.
    taps: HashMap<(String, u64), crate::tap::TapReader>,
}

/// What is wrong with a spawn request (empty: nothing).
fn refusal(spawn: &SpawnDataflow) -> Vec<String> {
    let mut problems = rill_core::received_problems(&spawn.descriptor);
    problems.extend(rill_core::name_problem(&spawn.name));
    if uuid_like(&spawn.uuid).is_none() {
        problems.push(format!("dataflow uuid {:?} is not a uuid", spawn.uuid));
    }
    if spawn.nodes.is_empty() {
        problems.push("it names no node to run here".into());
    }
    for node in spawn.nodes.iter().filter(|n| spawn.descriptor.node(n).is_none()) {
        problems.push(format!("node {node:?} is not in the dataflow"));
    }
    problems
}

/// `Some` for 8-4-4-4-12 hexadecimal digits.
fn uuid_like(text: &str) -> Option<()> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths = groups.iter().map(|g| g.len()).collect::<Vec<_>>();
    let hex = groups.iter().all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    (lengths == [8, 4, 4, 4, 12] && hex).then_some(())
}

impl LocalDataflows {
    pub fn new(artifacts: Option<crate::artifacts::Artifacts>, source_dir: Option<PathBuf>) -> Self {
        Self { artifacts, source_dir, ..Self::default() }
    }

    /// Starts this daemon's share; reports to `finished` when it ends.
    pub fn spawn(
        &mut self,
        spawn: SpawnDataflow,
        bridge: Option<Bridge>,
        reports: mpsc::UnboundedSender<ShareReport>,
        on_event: Arc<dyn Fn(LocalEvent) + Send + Sync>,
    ) {
        if self.running.contains_key(&spawn.uuid) {
            return;
        }
        // Anything that deserializes may arrive: check it as `rill check`
        // would, before it reaches a thread name, a process or a key expression.
        let problems = refusal(&spawn);
        if !problems.is_empty() {
            let summary = format!("refused by the daemon: {}", problems.join("; "));
            eprintln!("rill daemon: dataflow {:?} {summary}", spawn.name);
            let _ = reports.send(ShareReport::Finished((spawn.uuid, false, summary)));
            return;
        }
        let nodes: BTreeSet<String> = spawn.nodes.iter().cloned().collect();
        let name = spawn.name.clone();
        let events = on_event.clone();
        let log_name = name.clone();
        let log_uuid = spawn.uuid.clone();
        let reporter: crate::Reporter = Arc::new(move |report: Report<'_>| {
            use rill_proto::coord::NodeStatus;
            let node_status =
                |node: &str, status| LocalEvent::Node { uuid: log_uuid.clone(), node: node.to_owned(), status };
            match report {
                Report::Log { node, stream, line } => events(LocalEvent::Log {
                    uuid: log_uuid.clone(),
                    dataflow: log_name.clone(),
                    node: node.to_owned(),
                    stderr: stream == Stream::Stderr,
                    line: line.to_owned(),
                }),
                Report::Spawned { node, pid } => events(node_status(node, NodeStatus::Running { pid })),
                Report::Notice(crate::Notice::Restarting { node, .. }) => {
                    events(node_status(node, NodeStatus::Restarting))
                }
                Report::Ended { node, outcome } if outcome.is_failure() => {
                    events(node_status(node, NodeStatus::Failed { reason: outcome.to_string() }))
                }
                Report::Ended { node, .. } => events(node_status(node, NodeStatus::Finished)),
                Report::Usage { node, pid, cpu_percent, rss_bytes } => events(LocalEvent::Usage {
                    uuid: log_uuid.clone(),
                    node: node.to_owned(),
                    usage: rill_proto::coord::NodeUsage { pid, cpu_percent, rss_bytes },
                }),
                Report::Counts { node, counts } => {
                    events(LocalEvent::Counts { uuid: log_uuid.clone(), node: node.to_owned(), counts: counts.clone() })
                }
                _ => {}
            }
        });
        // Edges to nodes on other machines end at the bridge. The share is
        // ready when every one of them is connected.
        let expected = crate::routes::Routes::new(&spawn.descriptor)
            .edges()
            .keys()
            .filter(|(p, c)| nodes.contains(crate::printed::node_of(p)) != nodes.contains(c))
            .count();
        let (ends_tx, ends_rx) = std::sync::mpsc::channel::<crate::router::Remote>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let bridge_uuid = spawn.uuid.clone();
        let ended_bridge = bridge.clone();
        let _ = std::thread::Builder::new().name("bridge-ends".into()).spawn(move || {
            for event in ends_rx {
                let end = match (event, &bridge) {
                    (crate::router::Remote::Closed { producer, consumer }, Some(bridge)) => {
                        bridge.close(&bridge_uuid, &producer, &consumer);
                        continue;
                    }
                    (crate::router::Remote::Closed { .. }, None) => continue,
                    (crate::router::Remote::End(end), _) => end,
                };
                match &bridge {
                    Some(bridge) => bridge.serve(&bridge_uuid, end, ready_tx.clone()),
                    None => {
                        eprintln!(
                            "rill daemon: no data session: {} -> {} cannot cross machines",
                            end.producer, end.consumer
                        );
                        let _ = ready_tx.send(());
                    }
                }
            }
        });
        let ready_reports = reports.clone();
        let ready_uuid = spawn.uuid.clone();
        let _ = std::thread::Builder::new().name("share-ready".into()).spawn(move || {
            // Restarts re-wire edges later; only the first wiring counts. A
            // node that cannot start never wires: start the rest anyway.
            let deadline = std::time::Instant::now() + READY_WAIT;
            for _ in 0..expected {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                // (Also when the share ended before it was wired: the
                // daemon drops a Ready that comes after the share's end.)
                if ready_rx.recv_timeout(left).is_err() {
                    break;
                }
            }
            let _ = ready_reports.send(ShareReport::Ready { uuid: ready_uuid });
        });
        // Nodes run from a binary `rill start` shipped (scp, http).
        let shipped: Vec<(String, rill_core::Distribute, Option<rill_core::Artifact>)> = spawn
            .descriptor
            .nodes
            .iter()
            .filter(|n| nodes.contains(&n.id) && n.deploy.distribute != rill_core::Distribute::Local)
            .map(|n| (n.id.clone(), n.deploy.distribute, n.deploy.artifact.clone()))
            .collect();
        let artifacts = self.artifacts.clone();
        let options = RunOptions { source_cache: self.source_dir.clone(), ..RunOptions::default() };
        let mut runtime = Runtime::new(spawn.descriptor.clone(), PathBuf::from(&spawn.base_dir), options, reporter)
            .with_share(Share { local: nodes, remote_ends: ends_tx });
        self.running.insert(spawn.uuid.clone(), runtime.stop_handle());
        let outputs = spawn.descriptor.nodes.iter().filter(|n| spawn.nodes.contains(&n.id));
        let outputs = outputs.map(|n| (n.id.clone(), n.outputs.clone())).collect();
        self.outputs.insert(spawn.uuid.clone(), outputs);
        on_event(LocalEvent::Started { name: name.clone(), nodes: spawn.nodes.clone() });
        let uuid = spawn.uuid;
        let thread = std::thread::Builder::new().name(format!("dataflow-{name}")).spawn(move || {
            // Fetched here, not on the connection's executor: a download may take a while.
            let hashes = shipped.iter().filter_map(|(_, _, a)| a.as_ref().map(|a| a.sha256.clone())).collect();
            let _held = artifacts.as_ref().map(|a| a.hold(hashes));
            for (node, distribute, artifact) in &shipped {
                let program = match (&artifacts, artifact) {
                    (Some(store), Some(artifact)) => store
                        .prepare(node, *distribute, artifact)
                        .map(|path| crate::run::Shipped { path, sha256: artifact.sha256.clone(), fresh: true }),
                    (None, _) => Err(format!("node `{node}` is shipped, but this daemon keeps no artifact directory")),
                    (_, None) => Err(format!(
                        "node `{node}` has `distribute: {}` but no binary was shipped with it",
                        format!("{distribute:?}").to_lowercase()
                    )),
                };
                runtime.ship(node, program);
            }
            let (success, summary) = match runtime.run() {
                Ok(report) => {
                    let failed: Vec<String> = report
                        .nodes
                        .iter()
                        .filter(|n| n.outcome.is_failure())
                        .map(|n| format!("node `{}` {}", n.node, n.outcome))
                        .collect();
                    (failed.is_empty(), failed.join("; "))
                }
                Err(e) => (false, e.to_string()),
            };
            if let Some(bridge) = ended_bridge {
                bridge.forget(&uuid);
            }
            on_event(LocalEvent::Ended { name, success, summary: summary.clone() });
            let _ = reports.send(ShareReport::Finished((uuid, success, summary)));
        });
        if let Err(e) = thread {
            eprintln!("rill daemon: cannot start a dataflow thread: {e}");
        }
    }

    /// Uuids of the dataflows with nodes here.
    pub fn running(&self) -> Vec<String> {
        let mut uuids: Vec<String> = self.running.keys().cloned().collect();
        uuids.sort();
        uuids
    }

    /// Begins the stop sequence of a share (once).
    pub fn stop(&mut self, uuid: &str) {
        if let Some(handle) = self.running.get(uuid)
            && self.stopping.insert(uuid.to_owned())
        {
            handle.stop();
        }
    }

    /// Begins the stop sequence of every share (the daemon shuts down).
    pub fn stop_all(&mut self) {
        // Before the stop: nodes that end now are lost, not ended.
        self.running.values().for_each(StopHandle::leaving);
        let uuids: Vec<String> = self.running.keys().cloned().collect();
        uuids.iter().for_each(|uuid| self.stop(uuid));
    }

    /// Kills every share's nodes now (a second shutdown signal).
    pub fn kill_all(&mut self) {
        self.running.values().for_each(StopHandle::kill);
    }

    /// Every share is ready: start the nodes.
    pub fn go(&mut self, uuid: &str) {
        if let Some(handle) = self.running.get(uuid) {
            handle.go();
        }
    }

    /// A share ended.
    pub fn ended(&mut self, uuid: &str) {
        self.running.remove(uuid);
        self.stopping.remove(uuid);
        self.outputs.remove(uuid);
        self.taps.retain(|(u, _), _| u != uuid);
    }

    /// Opens tap `tap` on those of `outputs` whose nodes run here (a
    /// sample's output is its index in `outputs`); frames go to `sink`.
    /// Anything else is ignored: a tap already open, an unknown share, no
    /// output of it here.
    pub fn tap(
        &mut self,
        uuid: &str,
        tap: u64,
        outputs: &[rill_proto::coord::TapOutput],
        preview: u64,
        every_us: u64,
        sink: crate::tap::FrameSink,
    ) {
        let (Some(handle), Some(local)) = (self.running.get(uuid), self.outputs.get(uuid)) else { return };
        if self.taps.contains_key(&(uuid.to_owned(), tap)) {
            return;
        }
        if self.taps.keys().filter(|(u, _)| u == uuid).count() >= rill_proto::tap::MAX_TAPS {
            eprintln!("rill daemon: refused tap {tap}: dataflow {uuid} has {} taps", rill_proto::tap::MAX_TAPS);
            return;
        }
        let mut index = HashMap::new();
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, o) in outputs.iter().enumerate() {
            if local.get(&o.node).is_some_and(|outs| outs.contains(&o.output)) {
                index.insert((o.node.clone(), o.output.clone()), i as u64);
                by_node.entry(o.node.clone()).or_default().push(o.output.clone());
            }
        }
        if index.is_empty() {
            return;
        }
        // Bounded here too: a coordinator is a peer like any other.
        let (preview, every_us) = (preview.min(rill_proto::tap::MAX_TAP_PREVIEW), every_us.min(1_000_000));
        match crate::tap::TapReader::start(tap, index, preview, sink) {
            Ok((reader, ends_tx)) => {
                for (node, outputs) in &by_node {
                    handle.tap(tap, node, outputs, every_us, ends_tx.clone());
                }
                self.taps.insert((uuid.to_owned(), tap), reader);
            }
            Err(e) => eprintln!("rill daemon: cannot start tap {tap}: {e}"),
        }
    }

    /// Closes tap `tap` of dataflow `uuid`.
    pub fn untap(&mut self, uuid: &str, tap: u64) {
        if self.taps.remove(&(uuid.to_owned(), tap)).is_some()
            && let Some(handle) = self.running.get(uuid)
        {
            handle.untap(tap);
        }
    }

    /// Closes every tap (the coordinator connection is gone; it sends the
    /// taps still open again when it is back).
    pub fn untap_all(&mut self) {
        let open: Vec<(String, u64)> = self.taps.keys().cloned().collect();
        for (uuid, tap) in open {
            self.untap(&uuid, tap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_request(yaml: &str, name: &str, uuid: &str) -> SpawnDataflow {
        let descriptor = rill_core::Dataflow::parse(yaml, std::path::Path::new("t.yml")).expect("valid yaml");
        let nodes = descriptor.nodes.iter().map(|n| n.id.clone()).collect();
        SpawnDataflow { uuid: uuid.into(), name: name.into(), descriptor, base_dir: "/".into(), nodes }
    }

    #[test]
    fn an_absurd_spawn_is_refused_with_its_reasons_and_nothing_starts() {
        let mut spawn = spawn_request(
            "nodes:\n  - id: a\n    path: /bin/true\n    inputs: { t: rill/timer/millis/5 }\n",
            "app",
            "00000000-0000-0000-0000-000000000000",
        );
        spawn.name = "bad\0name".into();
        spawn.descriptor.nodes[0].id = "a*".into();
        spawn.nodes = vec!["a*".into()];
        if let Some(t) = spawn.descriptor.nodes[0].inputs.get_mut("t") {
            t.source = rill_core::InputSource::Timer { interval: std::time::Duration::ZERO };
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut local = LocalDataflows::default();
        local.spawn(spawn, None, tx, Arc::new(|_| {}));
        assert!(local.running().is_empty(), "nothing runs");
        let Ok(ShareReport::Finished((_, success, summary))) = rx.try_recv() else { panic!("no report") };
        assert!(!success);
        for expected in ["refused by the daemon", "node id \"a*\"", "zero interval", "dataflow name \"bad\\0name\""] {
            assert!(summary.contains(expected), "{expected}: {summary}");
        }
    }
}

//! The dataflows this daemon runs for the coordinator: each one's share of
//! nodes runs in a [`Runtime`] on its own thread, independent of the
//! coordinator connection (nodes keep running while it is down).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use rill_core::{Dataflow, InputSource};
use rill_proto::coord::SpawnDataflow;
use tokio::sync::mpsc;

use crate::{Report, RunOptions, Runtime, StopHandle, Stream};

/// A share of a dataflow ended: `(uuid, success, summary)`.
pub type Finished = (String, bool, String);

/// What the daemon's runtimes tell the daemon's owner (the CLI prints it).
#[derive(Debug, Clone, PartialEq)]
pub enum LocalEvent {
    Started { name: String, nodes: Vec<String> },
    Log { dataflow: String, node: String, stderr: bool, line: String },
    Ended { name: String, success: bool, summary: String },
}

/// The part of `descriptor` that runs here: the listed nodes, without
/// inputs from nodes that run elsewhere (cross-machine data comes later).
pub fn local_view(descriptor: &Dataflow, nodes: &BTreeSet<String>) -> Dataflow {
    let mut view = descriptor.clone();
    view.nodes.retain(|n| nodes.contains(&n.id));
    for node in &mut view.nodes {
        node.inputs.retain(|_, input| match &input.source {
            InputSource::Node { node, .. } => nodes.contains(node),
            InputSource::Timer { .. } => true,
        });
    }
    view
}

/// Running shares, by dataflow uuid.
#[derive(Default)]
pub struct LocalDataflows {
    running: HashMap<String, StopHandle>,
}

impl LocalDataflows {
    /// Starts this daemon's share; reports to `finished` when it ends.
    pub fn spawn(
        &mut self,
        spawn: SpawnDataflow,
        finished: mpsc::UnboundedSender<Finished>,
        on_event: Arc<dyn Fn(LocalEvent) + Send + Sync>,
    ) {
        if self.running.contains_key(&spawn.uuid) {
            return;
        }
        let nodes: BTreeSet<String> = spawn.nodes.iter().cloned().collect();
        let view = local_view(&spawn.descriptor, &nodes);
        let name = spawn.name.clone();
        let events = on_event.clone();
        let log_name = name.clone();
        let reporter: crate::Reporter = Arc::new(move |report: Report<'_>| {
            if let Report::Log { node, stream, line } = report {
                events(LocalEvent::Log {
                    dataflow: log_name.clone(),
                    node: node.to_owned(),
                    stderr: stream == Stream::Stderr,
                    line: line.to_owned(),
                });
            }
        });
        let runtime = Runtime::new(view, PathBuf::from(&spawn.base_dir), RunOptions::default(), reporter);
        self.running.insert(spawn.uuid.clone(), runtime.stop_handle());
        on_event(LocalEvent::Started { name: name.clone(), nodes: spawn.nodes.clone() });
        let uuid = spawn.uuid;
        let thread = std::thread::Builder::new().name(format!("dataflow-{name}")).spawn(move || {
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
            on_event(LocalEvent::Ended { name, success, summary: summary.clone() });
            let _ = finished.send((uuid, success, summary));
        });
        if let Err(e) = thread {
            eprintln!("rill daemon: cannot start a dataflow thread: {e}");
        }
    }

    /// Begins the stop sequence of a share.
    pub fn stop(&mut self, uuid: &str) {
        if let Some(handle) = self.running.get(uuid) {
            handle.stop();
        }
    }

    /// A share ended.
    pub fn ended(&mut self, uuid: &str) {
        self.running.remove(uuid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn local_view_keeps_local_nodes_and_their_local_inputs() {
        let flow = Dataflow::parse(
            "nodes:\n  - id: src\n    path: x\n    outputs: [out]\n  - id: mid\n    path: x\n    outputs: [out]\n    inputs: { a: src/out, t: rill/timer/millis/10 }\n  - id: sink\n    path: x\n    inputs: { in: mid/out }\n",
            Path::new("t.yml"),
        )
        .unwrap();
        let view = local_view(&flow, &["mid".to_owned(), "sink".to_owned()].into());
        let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["mid", "sink"]);
        let mid_inputs: Vec<&String> = view.nodes[0].inputs.keys().collect();
        assert_eq!(mid_inputs, ["t"], "the remote input is gone, the timer stays");
        assert_eq!(view.nodes[1].inputs.len(), 1);
    }
}

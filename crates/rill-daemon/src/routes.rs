//! Who receives what: the routing table built once from a dataflow.

use std::collections::HashMap;
use std::time::Duration;

use rill_core::{Dataflow, InputSource};

/// An input of a node: `(node id, input id)`.
pub type InputRef = (String, String);

/// The routing table of one dataflow.
#[derive(Debug, Default, Clone)]
pub struct Routes {
    /// `(node, output)` -> the inputs it feeds.
    pub by_output: HashMap<(String, String), Vec<InputRef>>,
    /// Timer interval -> the inputs it ticks.
    pub timers: Vec<(Duration, Vec<InputRef>)>,
    /// Queue bound of every input.
    pub queue_size: HashMap<InputRef, usize>,
    /// Inputs of each node fed by another node (these can close).
    pub upstream: HashMap<String, Vec<(String, String)>>,
    /// Each node's declared outputs.
    pub outputs: HashMap<String, Vec<String>>,
}

impl Routes {
    pub fn new(dataflow: &Dataflow) -> Self {
        let mut routes = Routes::default();
        for node in &dataflow.nodes {
            // What the node prints is sent by the daemon under an id of its own.
            let (printed, own): (Vec<String>, Vec<String>) =
                node.outputs.iter().cloned().partition(|o| node.printed.outputs().any(|p| p == o));
            routes.outputs.insert(node.id.clone(), own);
            if !printed.is_empty() {
                routes.outputs.insert(crate::printed::producer_id(&node.id), printed);
            }
            for (input_id, input) in &node.inputs {
                let target = (node.id.clone(), input_id.clone());
                routes.queue_size.insert(target.clone(), input.queue_size);
                match &input.source {
                    InputSource::Node { node: source, output } => {
                        let printing = dataflow.node(source).is_some_and(|n| n.printed.outputs().any(|p| p == output));
                        let source = if printing { &crate::printed::producer_id(source) } else { source };
                        routes.by_output.entry((source.clone(), output.clone())).or_default().push(target);
                        routes.upstream.entry(node.id.clone()).or_default().push((source.clone(), input_id.clone()));
                    }
                    InputSource::Timer { interval } => match routes.timers.iter_mut().find(|(i, _)| i == interval) {
                        Some((_, targets)) => targets.push(target),
                        None => routes.timers.push((*interval, vec![target])),
                    },
                }
            }
        }
        routes
    }

    /// Every pair of nodes that exchange data, with what the edge carries.
    pub fn edges(&self) -> std::collections::BTreeMap<(String, String), Vec<rill_proto::Route>> {
        let mut edges: std::collections::BTreeMap<(String, String), Vec<rill_proto::Route>> = Default::default();
        for ((producer, output), targets) in &self.by_output {
            for (consumer, input) in targets {
                let queue_size = self
                    .queue_size
                    .get(&(consumer.clone(), input.clone()))
                    .copied()
                    .unwrap_or(rill_core::DEFAULT_QUEUE_SIZE);
                edges.entry((producer.clone(), consumer.clone())).or_default().push(rill_proto::Route {
                    output: output.clone(),
                    input: input.clone(),
                    queue_size: u32::try_from(queue_size).unwrap_or(u32::MAX),
                });
            }
        }
        for routes in edges.values_mut() {
            routes.sort_by(|a, b| (&a.output, &a.input).cmp(&(&b.output, &b.input)));
        }
        edges
    }

    /// Inputs fed by any output of `node`.
    pub fn fed_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a InputRef> + 'a {
        self.by_output.iter().filter(move |((source, _), _)| source == node).flat_map(|(_, targets)| targets)
    }
}

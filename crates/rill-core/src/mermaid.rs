//! A Mermaid flowchart of a dataflow, for `rill graph` and docs.

use std::fmt::Write;
use std::time::Duration;

use crate::duration;
use crate::model::{Dataflow, InputSource};

impl Dataflow {
    /// Mermaid flowchart text ("flowchart TB", one box per node, an edge per input labelled with
    /// output->input, timers as their own round node).
    pub fn mermaid(&self) -> String {
        // Mermaid ids are positional (`n0`, `t0`): node ids may contain `-` and `.`, or be
        // Mermaid keywords such as `end`. Labels carry the real names.
        let mut text = String::from("flowchart TB\n");
        let mut timers: Vec<Duration> = Vec::new();
        // A module's nodes are next to each other: a subgraph per module
        // node, nested as the modules are.
        let mut open: &[String] = &[];
        let mut subgraphs = 0;
        for (index, node) in self.nodes.iter().enumerate() {
            let shared = open.iter().zip(&node.modules).take_while(|(a, b)| a == b).count();
            for depth in (shared..open.len()).rev() {
                let _ = writeln!(text, "{}end", indent(depth));
            }
            for (depth, module) in node.modules.iter().enumerate().skip(shared) {
                let _ = writeln!(text, "{}subgraph m{subgraphs}[\"{}\"]", indent(depth), escape(module));
                subgraphs += 1;
            }
            open = &node.modules;
            let _ = writeln!(text, "{}n{index}[\"{}\"]", indent(open.len()), escape(&node.id));
        }
        for depth in (0..open.len()).rev() {
            let _ = writeln!(text, "{}end", indent(depth));
        }
        for node in &self.nodes {
            for spec in node.inputs.values() {
                if let InputSource::Timer { interval } = spec.source
                    && !timers.contains(&interval)
                {
                    let _ = writeln!(text, "    t{}((\"timer {}\"))", timers.len(), duration::format(interval));
                    timers.push(interval);
                }
            }
        }
        for (index, node) in self.nodes.iter().enumerate() {
            for (input, spec) in &node.inputs {
                let (from, label) = match &spec.source {
                    InputSource::Node { node: source, output } => {
                        let Some(source_index) = self.nodes.iter().position(|n| &n.id == source) else {
                            continue;
                        };
                        (format!("n{source_index}"), format!("{output}->{input}"))
                    }
                    InputSource::Timer { interval } => {
                        let Some(timer_index) = timers.iter().position(|t| t == interval) else {
                            continue;
                        };
                        (format!("t{timer_index}"), input.clone())
                    }
                };
                let _ = writeln!(text, "    {from} -->|\"{label}\"| n{index}");
            }
        }
        text
    }
}

fn indent(depth: usize) -> String {
    "    ".repeat(depth + 1)
}

/// Validated ids never contain `"`, but a descriptor deserialized from JSON was not validated.
fn escape(label: &str) -> String {
    label.replace('"', "#quot;")
}

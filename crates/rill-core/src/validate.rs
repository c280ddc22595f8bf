//! Checks across nodes: unique ids, and inputs that point at existing nodes and outputs.

use std::collections::BTreeMap;

use crate::diagnostics::Collector;
use crate::model::InputSource;
use crate::parse::ParsedNode;
use crate::suggest;
use crate::yaml::Pos;

/// Reports duplicate node ids and inputs whose node or output does not exist.
pub(crate) fn graph(report: &mut Collector, nodes: &[ParsedNode]) {
    let by_id = unique_ids(report, nodes);
    for node in nodes {
        for (input, spec) in &node.spec.inputs {
            if let InputSource::Node { node: target, output } = &spec.source {
                let pos = node.source_pos.get(input).copied().unwrap_or(Pos::UNKNOWN);
                let name = input_name(node, input);
                check_reference(report, &by_id, (&node.file, pos), &name, target, output);
            }
        }
    }
}

/// Reports an input `name` whose `target/output` does not exist. A node may name itself.
fn check_reference(
    report: &mut Collector,
    by_id: &BTreeMap<&str, &ParsedNode>,
    (file, pos): (&std::path::Path, Pos),
    name: &str,
    target: &str,
    output: &str,
) {
    let Some(source) = by_id.get(target) else {
        let message = format!("input `{name}` refers to node `{target}`, which does not exist");
        report.error_hint_in(file, pos, message, missing_node_hint(target, by_id));
        return;
    };
    // Broken `outputs` were reported already; checking against them would only add noise.
    if source.outputs_complete && !source.spec.outputs.iter().any(|o| o == output) {
        let message = format!("input `{name}` refers to output `{output}` of node `{target}`, which does not exist");
        report.error_hint_in(file, pos, message, missing_output_hint(output, source));
    }
}

/// The first node of each id; later ones are reported as duplicates.
fn unique_ids<'a>(report: &mut Collector, nodes: &'a [ParsedNode]) -> BTreeMap<&'a str, &'a ParsedNode> {
    let mut by_id: BTreeMap<&str, &ParsedNode> = BTreeMap::new();
    for node in nodes {
        let Some(pos) = node.id_pos else { continue };
        match by_id.get(node.spec.id.as_str()) {
            Some(first) => {
                let first_line = first.id_pos.map_or(0, |pos| pos.line);
                let mut hint = format!("the first node with this id is at line {first_line}");
                if first.file != node.file {
                    hint.push_str(&format!(" of {}", first.file.display()));
                }
                report.error_hint_in(&node.file, pos, format!("duplicate node id `{}`", node.spec.id), hint);
            }
            None => {
                by_id.insert(&node.spec.id, node);
            }
        }
    }
    by_id
}

/// `node/input` for messages, or just the input when the node has no id.
fn input_name(node: &ParsedNode, input: &str) -> String {
    if node.id_pos.is_some() { format!("{}/{input}", node.spec.id) } else { input.to_owned() }
}

fn missing_node_hint(target: &str, by_id: &BTreeMap<&str, &ParsedNode>) -> String {
    if by_id.is_empty() {
        return "no node in this dataflow has an id".to_owned();
    }
    let existing = by_id.keys().copied().collect::<Vec<_>>().join(", ");
    match suggest::closest(target, by_id.keys().copied()) {
        Some(close) => format!("did you mean `{close}`? existing nodes: {existing}"),
        None => format!("existing nodes: {existing}"),
    }
}

fn missing_output_hint(output: &str, source: &ParsedNode) -> String {
    let outputs = &source.spec.outputs;
    let id = &source.spec.id;
    if outputs.is_empty() {
        return format!("node `{id}` declares no outputs; add `{output}` to its `outputs`");
    }
    let listed = outputs.join(", ");
    match suggest::closest(output, outputs.iter().map(String::as_str)) {
        Some(close) => format!("did you mean `{close}`? node `{id}` has outputs: {listed}"),
        None => format!("node `{id}` has outputs: {listed}"),
    }
}

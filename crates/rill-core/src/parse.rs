//! From text to a validated [`Dataflow`]: YAML tree, then per-node conversion, then graph checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diagnostics::{Collector, Diagnostic, Diagnostics};
use crate::duration;
use crate::ids::{self, ID_HINT, RESERVED};
use crate::model::{
    DEFAULT_QUEUE_SIZE, Dataflow, Deploy, Distribute, InputSpec, NodeSpec, RestartPolicy,
    RestartSpec,
};
use crate::read::{Fields, Reader};
use crate::yaml::{self, Node, Pos, Value};
use crate::{args, source, validate};

const TOP_FIELDS: &[&str] = &["nodes"];
const NODE_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "path",
    "args",
    "env",
    "build",
    "inputs",
    "outputs",
    "restart_policy",
    "max_restarts",
    "restart_delay",
    "deploy",
    "_unstable_deploy",
];
const INPUT_FIELDS: &[&str] = &["source", "queue_size"];
const DEPLOY_FIELDS: &[&str] = &["machine", "labels", "distribute", "working_dir"];

impl Dataflow {
    /// Parse + validate; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Dataflow, Diagnostics> {
        let root = yaml::parse(text).map_err(|error| {
            let message = format!("invalid YAML: {}", error.message);
            Diagnostics(vec![Diagnostic::at(file, error.pos, message, None)])
        })?;
        let mut reader = Reader {
            source: text,
            report: Collector::new(file),
        };
        let nodes = dataflow(&mut reader, &root);
        validate::graph(&mut reader.report, &nodes);
        let nodes = nodes.into_iter().map(|node| node.spec).collect();
        reader.report.finish(Dataflow { nodes })
    }

    /// Read the file then parse; an I/O error becomes a single Diagnostic naming the file.
    pub fn load(path: &Path) -> Result<Dataflow, Diagnostics> {
        match std::fs::read_to_string(path) {
            Ok(text) => Dataflow::parse(&text, path),
            Err(error) => {
                let message = format!("cannot read dataflow file `{}`: {error}", path.display());
                Err(Diagnostics(vec![Diagnostic::at(
                    path,
                    Pos::UNKNOWN,
                    message,
                    None,
                )]))
            }
        }
    }
}

/// A node converted from YAML, with the positions the graph checks need.
pub(crate) struct ParsedNode {
    /// The node; fields with errors keep their defaults (the caller discards it then).
    pub spec: NodeSpec,
    /// Where the id is written; `None` when the node has no id.
    pub id_pos: Option<Pos>,
    /// False when `outputs` had errors, so references to it are not checked against it.
    pub outputs_complete: bool,
    /// Input id -> position of its source text.
    pub source_pos: BTreeMap<String, Pos>,
}

fn dataflow(r: &mut Reader, root: &Node) -> Vec<ParsedNode> {
    let entries = match &root.value {
        Value::Map(entries) => entries,
        Value::Null => {
            let hint = "a dataflow needs a `nodes:` list".to_owned();
            r.error(root.pos, "the dataflow file is empty", hint);
            return Vec::new();
        }
        _ => {
            return r
                .wrong_type(root, "the dataflow", "a mapping with a `nodes` list")
                .unwrap_or_default();
        }
    };
    let fields = r.fields(entries, TOP_FIELDS, "the dataflow");
    let Some(nodes) = fields.entry("nodes") else {
        r.error_hint(root.pos, "missing field `nodes`", "a dataflow needs a `nodes:` list");
        return Vec::new();
    };
    let Some(items) = r.list(nodes.value, "`nodes`") else {
        return Vec::new();
    };
    if items.is_empty() {
        r.error_hint(nodes.key.pos, "`nodes` is empty", "add at least one node");
    }
    items.iter().filter_map(|item| node(r, item)).collect()
}

fn node(r: &mut Reader, item: &Node) -> Option<ParsedNode> {
    let Value::Map(entries) = &item.value else {
        return r.wrong_type(item, "each entry of `nodes`", "a mapping");
    };
    let label = node_label(r, entries, item.pos);
    let fields = r.fields(entries, NODE_FIELDS, &label);
    let id = node_id(r, &fields, item.pos);
    let (outputs, outputs_complete) = outputs(r, &fields, &label);
    let (inputs, source_pos) = inputs(r, &fields, &label);
    let spec = NodeSpec {
        id: id.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
        path: path(r, &fields, &label, item.pos).unwrap_or_default(),
        args: node_args(r, &fields, &label),
        env: env(r, &fields, &label),
        build: fields
            .get("build")
            .and_then(|node| r.optional_text(node, &format!("`build` of {label}"))),
        inputs,
        outputs,
        restart: restart(r, &fields, &label),
        deploy: deploy(r, &fields, &label),
    };
    Some(ParsedNode {
        spec,
        id_pos: id.map(|(_, pos)| pos),
        outputs_complete,
        source_pos,
    })
}

/// How messages name a node: by id when it has a usable one, by position otherwise.
fn node_label(r: &Reader, entries: &[(Node, Node)], pos: Pos) -> String {
    let id = entries
        .iter()
        .find(|(key, _)| matches!(&key.value, Value::Str(name) if name == "id"))
        .and_then(|(_, value)| value.scalar_text(r.source));
    match id {
        Some(id) => format!("node `{id}`"),
        None => format!("the node at line {}", pos.line),
    }
}

/// The id and where it is written. Bad ids are reported but still returned, so that
/// references to them don't cause a second, misleading error.
fn node_id(r: &mut Reader, fields: &Fields, node_pos: Pos) -> Option<(String, Pos)> {
    let Some(value) = fields.get("id") else {
        r.error_hint(node_pos, "node is missing the required field `id`", "add `id: <unique-name>`");
        return None;
    };
    let id = r.text(value, "`id`")?;
    if !ids::is_valid(&id) {
        r.error_hint(value.pos, format!("invalid node id `{id}`"), ID_HINT);
    } else if RESERVED.contains(&id.as_str()) {
        let hint = "`rill/...` and `dora/...` name built-in sources; choose another id".to_owned();
        r.error(value.pos, format!("node id `{id}` is reserved"), hint);
    }
    Some((id, value.pos))
}

fn path(r: &mut Reader, fields: &Fields, label: &str, node_pos: Pos) -> Option<String> {
    let Some(value) = fields.get("path") else {
        let hint =
            "set `path` to the executable to run, e.g. `path: ./target/debug/my-node`".to_owned();
        r.error(
            node_pos,
            format!("{label} is missing the required field `path`"),
            hint,
        );
        return None;
    };
    let path = r.text(value, &format!("`path` of {label}"))?;
    if path.trim().is_empty() {
        r.error(value.pos, format!("`path` of {label} is empty"));
        return None;
    }
    Some(path)
}

fn node_args(r: &mut Reader, fields: &Fields, label: &str) -> Vec<String> {
    let Some(value) = fields.get("args") else {
        return Vec::new();
    };
    let what = format!("`args` of {label}");
    match &value.value {
        Value::Null => Vec::new(),
        Value::Seq(items) => items
            .iter()
            .filter_map(|item| r.text(item, &format!("each of {what}")))
            .collect(),
        Value::Map(_) => r
            .wrong_type(value, &what, "a string or a list of strings")
            .unwrap_or_default(),
        _ => {
            let text = r.text(value, &what).unwrap_or_default();
            args::split(&text).unwrap_or_else(|problem| {
                r.report.problem(value.pos, problem);
                Vec::new()
            })
        }
    }
}

fn env(r: &mut Reader, fields: &Fields, label: &str) -> BTreeMap<String, String> {
    let Some(value) = fields.get("env") else {
        return BTreeMap::new();
    };
    let Some(entries) = r.map(value, &format!("`env` of {label}")) else {
        return BTreeMap::new();
    };
    let mut env = BTreeMap::new();
    for entry in r.entries(entries, "env variable", label) {
        let what = format!("env variable `{}` of {label}", entry.name);
        if let Some(text) = r.scalar(entry.value, &what) {
            env.insert(entry.name, text);
        }
    }
    env
}

fn outputs(r: &mut Reader, fields: &Fields, label: &str) -> (Vec<String>, bool) {
    let Some(value) = fields.get("outputs") else {
        return (Vec::new(), true);
    };
    let Some(items) = r.list(value, &format!("`outputs` of {label}")) else {
        return (Vec::new(), false);
    };
    let mut outputs: Vec<String> = Vec::new();
    let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
    let mut complete = true;
    for item in items {
        let Some(output) = r.text(item, &format!("each of `outputs` of {label}")) else {
            complete = false;
            continue;
        };
        if !ids::is_valid(&output) {
            r.error_hint(item.pos, format!("invalid output id `{output}` in {label}"), ID_HINT);
            complete = false;
        } else if let Some(line) = first_line.get(&output) {
            let hint = format!("first listed at line {line}");
            r.error(
                item.pos,
                format!("duplicate output `{output}` in {label}"),
                hint,
            );
        } else {
            first_line.insert(output.clone(), item.pos.line);
            outputs.push(output);
        }
    }
    (outputs, complete)
}

fn inputs(
    r: &mut Reader,
    fields: &Fields,
    label: &str,
) -> (BTreeMap<String, InputSpec>, BTreeMap<String, Pos>) {
    let mut inputs = BTreeMap::new();
    let mut source_pos = BTreeMap::new();
    let Some(value) = fields.get("inputs") else {
        return (inputs, source_pos);
    };
    let Some(entries) = r.map(value, &format!("`inputs` of {label}")) else {
        return (inputs, source_pos);
    };
    for entry in r.entries(entries, "input", label) {
        if !ids::is_valid(&entry.name) {
            r.error_hint(entry.key.pos, format!("invalid input id `{}` in {label}", entry.name), ID_HINT);
        }
        let owner = format!("input `{}` of {label}", entry.name);
        if let Some((spec, pos)) = input(r, entry.value, &owner) {
            source_pos.insert(entry.name.clone(), pos);
            inputs.insert(entry.name, spec);
        }
    }
    (inputs, source_pos)
}

/// One input, short (`node/output`) or long (`{source, queue_size}`) form, and the position of
/// its source text.
fn input(r: &mut Reader, value: &Node, owner: &str) -> Option<(InputSpec, Pos)> {
    let (source_node, queue_size) = match &value.value {
        Value::Map(entries) => {
            let fields = r.fields(entries, INPUT_FIELDS, owner);
            let queue_size = fields
                .get("queue_size")
                .and_then(|node| queue_size(r, node, owner));
            let Some(source_node) = fields.get("source") else {
                let hint = "e.g. `{ source: camera/frames, queue_size: 5 }`".to_owned();
                r.error(
                    value.pos,
                    format!("{owner} is missing the required field `source`"),
                    hint,
                );
                return None;
            };
            (source_node, queue_size.unwrap_or(DEFAULT_QUEUE_SIZE))
        }
        Value::Null | Value::Seq(_) => {
            return r.wrong_type(
                value,
                owner,
                "`node/output`, `rill/timer/...` or a mapping with `source`",
            );
        }
        _ => (value, DEFAULT_QUEUE_SIZE),
    };
    let text = r.text(source_node, &format!("`source` of {owner}"))?;
    match source::parse(&text) {
        Ok(source) => Some((InputSpec { source, queue_size }, source_node.pos)),
        Err(problem) => {
            r.report.problem(source_node.pos, problem);
            None
        }
    }
}

fn queue_size(r: &mut Reader, node: &Node, owner: &str) -> Option<usize> {
    let size = r.count(node, &format!("`queue_size` of {owner}"))?;
    if size == 0 {
        let hint = "it is how many messages wait before the oldest is dropped".to_owned();
        r.error(
            node.pos,
            format!("`queue_size` of {owner} must be at least 1"),
            hint,
        );
        return None;
    }
    // Larger than memory anyway; saturate rather than fail on 32-bit targets.
    Some(usize::try_from(size).unwrap_or(usize::MAX))
}

fn restart(r: &mut Reader, fields: &Fields, label: &str) -> RestartSpec {
    let mut spec = RestartSpec::default();
    if let Some(value) = fields.get("restart_policy")
        && let Some(text) = r.optional_text(value, &format!("`restart_policy` of {label}"))
    {
        match text.as_str() {
            "never" => spec.policy = RestartPolicy::Never,
            "on-failure" => spec.policy = RestartPolicy::OnFailure,
            "always" => spec.policy = RestartPolicy::Always,
            _ => {
                let hint = "expected one of: never, on-failure, always".to_owned();
                r.error(
                    value.pos,
                    format!("invalid restart_policy `{text}` in {label}"),
                    hint,
                );
            }
        }
    }
    if let Some(value) = fields.get("max_restarts")
        && !matches!(value.value, Value::Null)
    {
        let what = format!("`max_restarts` of {label}");
        spec.max_restarts = r
            .count(value, &what)
            .and_then(|count| match u32::try_from(count) {
                Ok(count) => Some(count),
                Err(_) => r.wrong_type(value, &what, "at most 4294967295"),
            });
    }
    if let Some(value) = fields.get("restart_delay")
        && let Some(delay) = restart_delay(r, value, label)
    {
        spec.restart_delay = delay;
    }
    spec
}

/// Seconds as a YAML number, or a string with a unit; `None` if unset or reported.
fn restart_delay(r: &mut Reader, value: &Node, label: &str) -> Option<Duration> {
    let spelled = value.scalar_text(r.source).unwrap_or_default();
    let delay = match &value.value {
        Value::Null => return None,
        // Precision loss only beyond 2^53 seconds, which fails as too large anyway.
        Value::Int(secs) => duration::delay_from_number(*secs as f64, &spelled),
        Value::Float(secs) => duration::delay_from_number(*secs, &spelled),
        Value::Str(text) => duration::parse_delay(text),
        _ => {
            let what = format!("`restart_delay` of {label}");
            return r.wrong_type(
                value,
                &what,
                "a number of seconds or a string like \"500ms\"",
            );
        }
    };
    delay
        .map_err(|problem| r.report.problem(value.pos, problem))
        .ok()
}

fn deploy(r: &mut Reader, fields: &Fields, label: &str) -> Deploy {
    let main = fields.entry("deploy");
    let alias = fields.entry("_unstable_deploy");
    if let (Some(main), Some(alias)) = (main, alias) {
        let later = if alias.key.pos > main.key.pos {
            alias
        } else {
            main
        };
        let hint = "`_unstable_deploy` is an alias of `deploy`; keep only one".to_owned();
        r.error(
            later.key.pos,
            format!("{label} has both `deploy` and `_unstable_deploy`"),
            hint,
        );
    }
    // Both are checked so that every mistake is reported; `deploy` wins if both are present.
    let main = main.map(|entry| deploy_section(r, entry.value, &format!("`deploy` of {label}")));
    let alias = alias
        .map(|entry| deploy_section(r, entry.value, &format!("`_unstable_deploy` of {label}")));
    main.or(alias).unwrap_or_default()
}

fn deploy_section(r: &mut Reader, value: &Node, owner: &str) -> Deploy {
    let mut deploy = Deploy::default();
    let Some(entries) = r.map(value, owner) else {
        return deploy;
    };
    let fields = r.fields(entries, DEPLOY_FIELDS, owner);
    deploy.machine = fields
        .get("machine")
        .and_then(|node| r.optional_text(node, &format!("`machine` in {owner}")));
    if let Some(value) = fields.get("labels")
        && let Some(entries) = r.map(value, &format!("`labels` in {owner}"))
    {
        for entry in r.entries(entries, "label", owner) {
            let what = format!("label `{}` in {owner}", entry.name);
            if let Some(text) = r.scalar(entry.value, &what) {
                deploy.labels.insert(entry.name, text);
            }
        }
    }
    if let Some(value) = fields.get("distribute")
        && let Some(text) = r.optional_text(value, &format!("`distribute` in {owner}"))
    {
        match text.as_str() {
            "local" => deploy.distribute = Distribute::Local,
            "scp" => deploy.distribute = Distribute::Scp,
            "http" => deploy.distribute = Distribute::Http,
            _ => {
                let hint = "expected one of: local, scp, http".to_owned();
                r.error(
                    value.pos,
                    format!("invalid distribute `{text}` in {owner}"),
                    hint,
                );
            }
        }
    }
    deploy.working_dir = fields
        .get("working_dir")
        .and_then(|node| r.optional_text(node, &format!("`working_dir` in {owner}")))
        .map(PathBuf::from);
    deploy
}

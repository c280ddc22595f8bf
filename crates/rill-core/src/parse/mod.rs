//! From text to a validated [`Dataflow`]: YAML tree, then per-node conversion, then graph checks.

mod deploy;
mod inputs;
mod module;
mod restart;
mod types;

use std::collections::BTreeMap;
use std::path::Path;

use crate::diagnostics::{Collector, Diagnostic, Diagnostics};
use crate::ids::{self, ID_HINT, RESERVED};
use crate::model::{Dataflow, Distribute, GitRev, GitSource, LogLevel, NodeSpec, Printed};
use crate::read::{Fields, Reader};
use crate::yaml::{self, Node, Pos, Value};
use crate::{args, validate};

pub(crate) const TOP_FIELDS: &[&str] = &[
    "nodes",
    "env",
    "strict_types",
    "deploy",
    "_unstable_deploy",
    "health_check_interval",
    "exit_when_nodes_finish",
    "type_rules",
    "communication",
    "_unstable_debug",
];

/// Top-level fields of the predecessor that rill accepts and ignores, and why.
const IGNORED_TOP_FIELDS: &[(&str, &str)] = &[
    (
        "health_check_interval",
        "daemons and the coordinator check each other with heartbeats every second, and a node's exit is seen at once",
    ),
    ("exit_when_nodes_finish", "a dataflow ends when every node has ended; stop it earlier with `rill stop`"),
    ("type_rules", "types must match by name (or be left open by parameters); see docs/dataflow.md"),
    (
        "communication",
        "rill chooses its transports itself: Unix sockets and shared memory on a machine, Zenoh between machines",
    ),
    ("_unstable_debug", "`rill topic echo` and `rill record` show what a node's outputs send"),
];

/// Node fields of the predecessor that rill accepts and ignores, and why.
const IGNORED_NODE_FIELDS: &[(&str, &str)] = &[
    ("max_log_size", "rill keeps no log files: node output goes to `rill logs` (the last 1,000 lines per dataflow)"),
    (
        "max_rotated_files",
        "rill keeps no log files: node output goes to `rill logs` (the last 1,000 lines per dataflow)",
    ),
    ("restart_window", "`max_restarts` counts every restart of the node's run"),
    ("health_check_timeout", "rill does not stop a node for being quiet; a node that exits is seen at once"),
    ("finish_grace_secs", "the time from Stop to SIGTERM is `rill run --grace` (2 s by default)"),
    (
        "startup_timeout",
        "rill starts nodes without a deadline; `rill start --wait-for-daemons` bounds waiting for machines",
    ),
];
pub(crate) const NODE_FIELDS: &[&str] = &[
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
    "max_restart_delay",
    "cpu_affinity",
    "output_types",
    "input_types",
    "git",
    "branch",
    "tag",
    "rev",
    "send_stdout_as",
    "send_logs_as",
    "min_log_level",
    "deploy",
    "_unstable_deploy",
    "max_log_size",
    "max_rotated_files",
    "restart_window",
    "health_check_timeout",
    "finish_grace_secs",
    "startup_timeout",
    "path_sha256",
];

/// Fields of the predecessor's in-process operators (runtime nodes).
const OPERATOR_FIELDS: &[&str] = &["operators", "operator", "custom"];

/// What to do instead of an in-process operator.
const OPERATOR_HINT: &str = "make each operator a node of its own with `path:` (its program: a binary, or a \
`.py` script that uses `import rill`, see docs/python.md), with the operator's inputs and outputs on the node";

/// Where each node's fields are written, for messages about a valid dataflow
/// (e.g. `rill check` warning that a node's `path` does not exist yet).
#[derive(Debug, Clone, Default)]
pub struct Positions {
    node_path: BTreeMap<String, (std::path::PathBuf, Pos)>,
    /// Valid, but worth saying: fields rill accepts and ignores.
    pub warnings: Vec<crate::Diagnostic>,
}

impl Positions {
    /// The file, line and column (1-based) of node `id`'s `path` value
    /// (a module's node: in the module file).
    pub fn node_path(&self, id: &str) -> Option<(&Path, usize, usize)> {
        self.node_path.get(id).map(|(file, pos)| (file.as_path(), pos.line, pos.column))
    }
}

impl Dataflow {
    /// Parse + validate; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Dataflow, Diagnostics> {
        Self::parse_located(text, file).map(|(dataflow, _)| dataflow)
    }

    /// [`Dataflow::parse`], plus where each node's fields are written.
    pub fn parse_located(text: &str, file: &Path) -> Result<(Dataflow, Positions), Diagnostics> {
        let root = yaml::parse(text).map_err(|error| {
            let message = format!("invalid YAML: {}", error.message);
            Diagnostics(vec![Diagnostic::at(file, error.pos, message, None)])
        })?;
        let mut reader = Reader { source: text, report: Collector::new(file) };
        let (nodes, strict_types) = dataflow(&mut reader, &root, &module::Scope::top(file));
        validate::graph(&mut reader.report, &nodes);
        types::check(&mut reader.report, &nodes, strict_types);
        let mut positions = Positions { warnings: reader.report.take_warnings(), ..Positions::default() };
        for node in &nodes {
            if let Some(pos) = node.path_pos {
                positions.node_path.insert(node.spec.id.clone(), (node.file.clone(), pos));
            }
        }
        let nodes = nodes.into_iter().map(|node| node.spec).collect();
        reader.report.finish((Dataflow { nodes }, positions))
    }

    /// Read the file then parse; an I/O error becomes a single Diagnostic naming the file.
    pub fn load(path: &Path) -> Result<Dataflow, Diagnostics> {
        Self::load_located(path).map(|(dataflow, _)| dataflow)
    }

    /// [`Dataflow::load`], plus where each node's fields are written.
    pub fn load_located(path: &Path) -> Result<(Dataflow, Positions), Diagnostics> {
        match std::fs::read_to_string(path) {
            Ok(text) => Dataflow::parse_located(&text, path),
            Err(error) => {
                let message = format!("cannot read dataflow file `{}`: {error}", path.display());
                Err(Diagnostics(vec![Diagnostic::at(path, Pos::UNKNOWN, message, None)]))
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
    /// Where the `path` value is written.
    pub path_pos: Option<Pos>,
    /// The file the node is written in (a module file for a module's nodes).
    pub file: std::path::PathBuf,
    /// `output_types` and `input_types`: annotations, checked with the graph.
    pub output_types: types::Annotated,
    pub input_types: types::Annotated,
}

/// The nodes, and whether `strict_types` is set.
fn dataflow(r: &mut Reader, root: &Node, scope: &module::Scope) -> (Vec<ParsedNode>, bool) {
    let entries = match &root.value {
        Value::Map(entries) => entries,
        Value::Null => {
            let hint = "a dataflow needs a `nodes:` list";
            r.error_hint(root.pos, "the dataflow file is empty", hint);
            return (Vec::new(), false);
        }
        _ => {
            return (r.wrong_type(root, "the dataflow", "a mapping with a `nodes` list").unwrap_or_default(), false);
        }
    };
    let fields = r.fields(entries, TOP_FIELDS, "the dataflow");
    warn_ignored(r, &fields, IGNORED_TOP_FIELDS, "");
    // Every node gets these; a node's own value wins.
    let shared_env = env(r, &fields, "the dataflow");
    // Every node gets this placement where its own leaves a part unset.
    let shared_deploy = deploy::deploy(r, &fields, "the dataflow");
    let strict_types = fields.get("strict_types").and_then(|value| r.flag(value, "`strict_types`")).unwrap_or(false);
    let Some(nodes) = fields.entry("nodes") else {
        r.error_hint(root.pos, "missing field `nodes`", "a dataflow needs a `nodes:` list");
        return (Vec::new(), strict_types);
    };
    let Some(items) = r.list(nodes.value, "`nodes`") else {
        return (Vec::new(), strict_types);
    };
    if items.is_empty() {
        r.error_hint(nodes.key.pos, "`nodes` is empty", "add at least one node");
    }
    let (mut nodes, _) = level(r, items, scope);
    for node in &mut nodes {
        for (key, value) in &shared_env {
            node.spec.env.entry(key.clone()).or_insert_with(|| value.clone());
        }
        module::fill_deploy(&mut node.spec, &shared_deploy);
    }
    (nodes, strict_types)
}

/// The nodes of one file (the dataflow's, or a module's) read in `scope`,
/// module nodes expanded in place, and what each id of the file names.
fn level(r: &mut Reader, items: &[Node], scope: &module::Scope) -> (Vec<ParsedNode>, BTreeMap<String, module::Target>) {
    enum Item {
        Node(Box<ParsedNode>),
        Module(module::Use),
    }
    let mut parsed = Vec::new();
    let mut targets: BTreeMap<String, module::Target> = BTreeMap::new();
    for item in items {
        if module::is_module_node(item) {
            let Some(used) = module::expand(r, item, scope) else { continue };
            let local = used.id[scope.prefix.len()..].to_owned();
            if targets.contains_key(&local) {
                r.error(used.id_pos, format!("duplicate node id `{local}`"));
                continue;
            }
            targets.insert(local, module::Target::Module(used.outputs.clone()));
            parsed.push(Item::Module(used));
        } else if let Some(mut node) = node(r, item) {
            let local = node.spec.id.clone();
            if let (Some(module::Target::Module(_)), Some(pos)) = (targets.get(&local), node.id_pos) {
                r.error(pos, format!("duplicate node id `{local}`"));
            }
            targets.entry(local).or_insert(module::Target::Node);
            in_scope(r, &mut node, scope);
            parsed.push(Item::Node(Box::new(node)));
        }
    }
    // Sources, now that every module node's output ports are known.
    let mut nodes = Vec::new();
    for item in parsed {
        match item {
            Item::Node(mut node) => {
                let what = format!("node `{}`", node.spec.id);
                resolve_sources(r, &targets, scope, &mut node.spec.inputs, &node.source_pos, &what);
                nodes.push(*node);
            }
            Item::Module(mut used) => {
                let what = format!("module node `{}`", used.id);
                resolve_sources(r, &targets, scope, &mut used.wired, &used.wired_pos, &what);
                module::fill_ports(&mut used);
                nodes.extend(used.nodes);
            }
        }
    }
    (nodes, targets)
}

/// Rewrites each input's `node/output` source to final names (see
/// [`module::resolve`]); an input whose source was refused goes.
fn resolve_sources(
    r: &mut Reader,
    targets: &BTreeMap<String, module::Target>,
    scope: &module::Scope,
    inputs: &mut BTreeMap<String, crate::model::InputSpec>,
    positions: &BTreeMap<String, Pos>,
    owner: &str,
) {
    inputs.retain(|input, spec| {
        let crate::model::InputSource::Node { node, output } = &spec.source else { return true };
        let pos = positions.get(input).copied().unwrap_or(Pos::UNKNOWN);
        let what = format!("input `{input}` of {owner}");
        match module::resolve(r, targets, scope, (pos, &what), node, output) {
            Some((node, output)) => {
                spec.source = crate::model::InputSource::Node { node, output };
                true
            }
            None => false,
        }
    });
}

/// A node of a module file: its final id, its path from the dataflow's
/// directory, its params in `args` and as `PARAM_<KEY>` env.
fn in_scope(r: &mut Reader, node: &mut ParsedNode, scope: &module::Scope) {
    let spec = &mut node.spec;
    spec.id = format!("{}{}", scope.prefix, spec.id);
    let path = Path::new(&spec.path);
    let file_path = spec.path.contains('/') || spec.path.ends_with(".py");
    if !scope.rel_dir.as_os_str().is_empty() && file_path && path.is_relative() && spec.git.is_none() {
        spec.path = scope.rel_dir.join(path).to_string_lossy().into_owned();
    }
    if scope.prefix.is_empty() {
        return;
    }
    let pos = node.id_pos.unwrap_or(Pos::UNKNOWN);
    for arg in &mut spec.args {
        match module::substitute(arg, &scope.params) {
            Ok(text) => *arg = text,
            Err(problem) => r.error(pos, format!("`args` of node `{}`: {problem}", spec.id)),
        }
    }
    for (key, value) in &scope.params {
        spec.env.entry(module::param_env(key)).or_insert_with(|| value.clone());
    }
}

fn node(r: &mut Reader, item: &Node) -> Option<ParsedNode> {
    let Value::Map(entries) = &item.value else {
        return r.wrong_type(item, "each entry of `nodes`", "a mapping");
    };
    let label = node_label(r, entries, item.pos);
    let operator = entries.iter().find_map(|(key, _)| match &key.value {
        Value::Str(name) if OPERATOR_FIELDS.contains(&name.as_str()) => Some((name.clone(), key.pos)),
        _ => None,
    });
    if let Some((field, pos)) = operator {
        let message =
            format!("{label} uses `{field}`: rill runs every node as its own process and has no in-process operators");
        r.error_hint(pos, message, OPERATOR_HINT);
        // (Its other fields, `path` missing, would only repeat the point.)
        return None;
    }
    let fields = r.fields(entries, NODE_FIELDS, &label);
    warn_ignored(r, &fields, IGNORED_NODE_FIELDS, &format!(" of {label}"));
    if let Some(entry) = fields.entry("path_sha256") {
        let hint = "build the node where it runs, or let `rill start` ship it (`deploy: { distribute: scp }` or `http`), checked by SHA-256";
        r.error_hint(
            entry.key.pos,
            format!("{label} uses `path_sha256`: rill does not download node programs from URLs"),
            hint,
        );
    }
    let id = node_id(r, &fields, item.pos);
    let (outputs, outputs_complete) = outputs(r, &fields, &label);
    // (Checked against only when `outputs` could be read.)
    let outputs_listed = outputs_complete.then(|| outputs.clone());
    let (inputs, source_pos) = inputs::inputs(r, &fields, &label);
    let path_pos = fields.get("path").map(|value| value.pos);
    let spec = NodeSpec {
        id: id.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
        path: path(r, &fields, &label, item.pos).unwrap_or_default(),
        args: node_args(r, &fields, &label),
        env: env(r, &fields, &label),
        build: fields.get("build").and_then(|node| r.optional_text(node, &format!("`build` of {label}"))),
        inputs,
        outputs,
        restart: restart::restart(r, &fields, &label),
        deploy: deploy::deploy(r, &fields, &label),
        cpu_affinity: cpu_affinity(r, &fields, &label),
        git: git(r, &fields, &label),
        modules: Vec::new(),
        printed: printed(r, &fields, &label, &outputs_listed),
    };
    if spec.git.is_some() && spec.deploy.distribute != Distribute::Local {
        let pos = fields.get("git").map_or(item.pos, |value| value.pos);
        let hint = "a `git` node is cloned and built on the machine it runs on: use `distribute: local`";
        let distribute = if spec.deploy.distribute == Distribute::Scp { "scp" } else { "http" };
        r.error_hint(pos, format!("{label} has both `git` and `distribute: {distribute}`"), hint);
    }
    Some(ParsedNode {
        spec,
        id_pos: id.map(|(_, pos)| pos),
        outputs_complete,
        source_pos,
        path_pos,
        file: r.report.file().to_path_buf(),
        output_types: types::annotations(r, &fields, "output_types", &label),
        input_types: types::annotations(r, &fields, "input_types", &label),
    })
}

/// A warning at each field of `ignored` present in `fields`, saying why
/// rill ignores it; `of` names the owner (`" of node `a`"`, or nothing).
fn warn_ignored(r: &mut Reader, fields: &Fields, ignored: &[(&str, &str)], of: &str) {
    for (field, why) in ignored {
        if let Some(entry) = fields.entry(field) {
            r.warn_hint(entry.key.pos, format!("rill ignores `{field}`{of}"), format!("{why}; remove the field"));
        }
    }
}

/// `cpu_affinity: [core, ...]`: whole numbers from 0 (each once).
fn cpu_affinity(r: &mut Reader, fields: &Fields, label: &str) -> Vec<u32> {
    let Some(value) = fields.get("cpu_affinity") else { return Vec::new() };
    let what = format!("each core of `cpu_affinity` of {label}");
    let Some(items) = r.list(value, &format!("`cpu_affinity` of {label}")) else { return Vec::new() };
    let mut cores = Vec::new();
    for item in items {
        // (Linux numbers cores well below 2^20.)
        let Some(core) = r.count(item, &what).and_then(|c| u32::try_from(c).ok().filter(|c| *c < 1 << 20)) else {
            continue;
        };
        if !cores.contains(&core) {
            cores.push(core);
        }
    }
    cores
}

/// `git` with exactly one of `branch`, `tag`, `rev`.
fn git(r: &mut Reader, fields: &Fields, label: &str) -> Option<GitSource> {
    let revs: Vec<(&str, &Node)> =
        ["branch", "tag", "rev"].into_iter().filter_map(|field| Some((field, fields.get(field)?))).collect();
    let Some(value) = fields.get("git") else {
        if let Some((field, value)) = revs.first() {
            let hint = "add `git: <repository>` to clone the node's source, or remove it";
            r.error_hint(value.pos, format!("`{field}` of {label} needs `git`"), hint);
        }
        return None;
    };
    let repo = r.text(value, &format!("`git` of {label}"))?;
    if let Some(problem) = crate::model::git_repo_problem(&repo) {
        r.error(value.pos, format!("`git` of {label}: {problem}"));
        return None;
    }
    let [(field, rev_value)] = revs[..] else {
        let hint = "one of `branch: main`, `tag: v1.0` or `rev: <commit id>` says which revision to build";
        let pos = revs.get(1).map_or(value.pos, |(_, v)| v.pos);
        let message = match revs.len() {
            0 => format!("`git` of {label} needs one of `branch`, `tag` or `rev`"),
            _ => format!("{label} gives more than one of `branch`, `tag` and `rev`"),
        };
        r.error_hint(pos, message, hint);
        return None;
    };
    let text = r.text(rev_value, &format!("`{field}` of {label}"))?;
    let rev = match field {
        "branch" => GitRev::Branch(text),
        "tag" => GitRev::Tag(text),
        _ => GitRev::Rev(text),
    };
    if let Some(problem) = rev.problem() {
        r.error(rev_value.pos, format!("`{field}` of {label}: {problem}"));
        return None;
    }
    Some(GitSource { repo, rev })
}

/// `send_stdout_as`, `send_logs_as` (outputs the node declares) and `min_log_level`.
fn printed(r: &mut Reader, fields: &Fields, label: &str, outputs: &Option<Vec<String>>) -> Printed {
    let output = |r: &mut Reader, field: &str| {
        let value = fields.get(field)?;
        let name = r.text(value, &format!("`{field}` of {label}"))?;
        if let Some(outputs) = outputs
            && !outputs.contains(&name)
        {
            let hint = format!("list `{name}` in the node's `outputs`: the daemon sends on it for the node");
            r.error_hint(
                value.pos,
                format!("`{field}` of {label} names `{name}`, which is not one of its outputs"),
                hint,
            );
        }
        Some((name, value.pos))
    };
    let stdout_as = output(r, "send_stdout_as");
    let logs_as = output(r, "send_logs_as");
    if let (Some((a, _)), Some((b, pos))) = (&stdout_as, &logs_as)
        && a == b
    {
        let hint = "each needs an output of its own: one carries every line as text, the other log records as JSON";
        r.error_hint(*pos, format!("`send_stdout_as` and `send_logs_as` of {label} name the same output"), hint);
    }
    let min_log_level = fields.get("min_log_level").and_then(|value| {
        let text = r.text(value, &format!("`min_log_level` of {label}"))?;
        let level = LogLevel::parse(&text);
        if level.is_none() {
            let names: Vec<&str> = LogLevel::ALL.iter().map(|l| l.name()).collect();
            r.error_hint(
                value.pos,
                format!("invalid `min_log_level` `{text}` in {label}"),
                format!("expected one of: {}", names.join(", ")),
            );
        }
        level
    });
    Printed { stdout_as: stdout_as.map(|(name, _)| name), logs_as: logs_as.map(|(name, _)| name), min_log_level }
}

/// How messages name a node: by id when it has a usable one, by position otherwise.
pub(crate) fn node_label(r: &Reader, entries: &[(Node, Node)], pos: Pos) -> String {
    let id = entries
        .iter()
        .find(|(key, _)| matches!(&key.value, Value::Str(name) if name == "id"))
        .and_then(|(_, value)| value.scalar_text(r.source))
        .filter(|id| !id.is_empty());
    match id {
        Some(id) => format!("node `{id}`"),
        None => format!("the node at line {}", pos.line),
    }
}

/// The id and where it is written. Bad ids are reported but still returned, so that
/// references to them don't cause a second, misleading error.
pub(crate) fn node_id(r: &mut Reader, fields: &Fields, node_pos: Pos) -> Option<(String, Pos)> {
    let Some(value) = fields.get("id") else {
        r.error_hint(node_pos, "node is missing the required field `id`", "add `id: <unique-name>`");
        return None;
    };
    let id = r.text(value, "`id`")?;
    if id.is_empty() {
        r.error_hint(value.pos, "node id is empty", "add `id: <unique-name>`");
        return None;
    }
    if !ids::is_valid(&id) {
        r.error_hint(value.pos, format!("invalid node id `{id}`"), ID_HINT);
    } else if RESERVED.contains(&id.as_str()) || id == module::PORT_NODE {
        let hint =
            "`rill/...` and `dora/...` name built-in sources, `_mod/...` a module's input ports; choose another id";
        r.error_hint(value.pos, format!("node id `{id}` is reserved"), hint);
    }
    Some((id, value.pos))
}

fn path(r: &mut Reader, fields: &Fields, label: &str, node_pos: Pos) -> Option<String> {
    let Some(value) = fields.get("path") else {
        let hint = "set `path` to the executable to run, e.g. `path: ./target/debug/my-node`";
        r.error_hint(node_pos, format!("{label} is missing the required field `path`"), hint);
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
        Value::Seq(items) => items.iter().filter_map(|item| r.text(item, &format!("each of {what}"))).collect(),
        Value::Map(_) => r.wrong_type(value, &what, "a string or a list of strings").unwrap_or_default(),
        _ => {
            let text = r.text(value, &what).unwrap_or_default();
            args::split(&text).unwrap_or_else(|problem| {
                r.problem(value.pos, problem);
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
            r.error_hint(item.pos, format!("duplicate output `{output}` in {label}"), hint);
        } else {
            first_line.insert(output.clone(), item.pos.line);
            outputs.push(output);
        }
    }
    (outputs, complete)
}

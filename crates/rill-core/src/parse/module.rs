//! Modules: a node with `module: FILE` stands for the nodes of that file,
//! renamed `<node>.<inner>`. The module file declares its ports
//! (`module: {name, inputs, inputs_optional, outputs}`); its nodes read
//! what the parent wired to a port as `_mod/<port>`, and a consumer of
//! `<node>/<port>` reads the module's producer of that port. Modules nest
//! (at most [`MAX_DEPTH`] deep, never in a cycle) and stay inside the
//! dataflow file's directory. Every problem is reported in the file and at
//! the line it is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diagnostics::Collector;
use crate::model::{InputSource, InputSpec};
use crate::parse::{ParsedNode, node_id};
use crate::read::{Fields, Reader};
use crate::yaml::{self, Node, Pos, Value};

/// How deep modules may nest.
pub(crate) const MAX_DEPTH: usize = 8;

/// How many module uses one dataflow may expand, all files together: a
/// module used many times in a module used many times grows as a power.
pub(crate) const MAX_USES: usize = 1000;

/// The source of a module's input port, in its nodes' inputs.
pub(crate) const PORT_NODE: &str = "_mod";

/// Fields of a node that uses a module.
const MODULE_NODE_FIELDS: &[&str] =
    &["id", "name", "description", "module", "inputs", "outputs", "params", "env", "deploy", "_unstable_deploy"];
const MODULE_FILE_FIELDS: &[&str] = &["module", "nodes"];
const DECLARATION_FIELDS: &[&str] = &["name", "description", "inputs", "inputs_optional", "outputs"];

/// Where a file's nodes are read: the top dataflow file, or a module file.
pub(crate) struct Scope {
    /// Final ids of the file's nodes begin with this (`""` at the top).
    pub prefix: String,
    /// The top dataflow file's directory (canonical); `None` when it has
    /// none on disk (text parsed from memory): modules cannot be used.
    pub root: Option<PathBuf>,
    /// The module files from the top down to this one (canonical).
    pub chain: Vec<PathBuf>,
    /// `params` of the node that uses this module.
    pub params: BTreeMap<String, String>,
    /// In a module file: its input ports (required, optional).
    pub ports: Option<(Vec<String>, Vec<String>)>,
    /// This file's directory relative to `root`: relative node paths are
    /// written from here.
    pub rel_dir: PathBuf,
    /// Module uses expanded so far, in the whole dataflow (see [`MAX_USES`]).
    pub uses: std::rc::Rc<std::cell::Cell<usize>>,
}

impl Scope {
    /// The scope of the top dataflow file `file`.
    pub fn top(file: &Path) -> Scope {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let root = file.exists().then(|| dir.canonicalize().ok()).flatten();
        Scope {
            prefix: String::new(),
            root,
            chain: Vec::new(),
            params: BTreeMap::new(),
            ports: None,
            rel_dir: PathBuf::new(),
            uses: Default::default(),
        }
    }
}

/// What a file's node may name as a source: a node, or a module node's outputs.
pub(crate) enum Target {
    Node,
    /// Port -> its producer's final id and output.
    Module(BTreeMap<String, (String, String)>),
}

/// A node that uses a module, expanded.
pub(crate) struct Use {
    pub id: String,
    pub id_pos: Pos,
    /// What the parent wired to each port (in the parent's names), and where.
    pub wired: BTreeMap<String, InputSpec>,
    pub wired_pos: BTreeMap<String, Pos>,
    /// The module's nodes (final ids; `_mod/<port>` sources still to fill).
    pub nodes: Vec<ParsedNode>,
    /// Port -> its producer's final id and output.
    pub outputs: BTreeMap<String, (String, String)>,
}

/// Whether `item` is a node that uses a module.
pub(crate) fn is_module_node(item: &Node) -> bool {
    matches!(&item.value, Value::Map(entries) if entries.iter().any(|(key, _)| matches!(&key.value, Value::Str(k) if k == "module")))
}

/// Expands the module node `item` of a file read in `scope`.
pub(crate) fn expand(r: &mut Reader, item: &Node, scope: &Scope) -> Option<Use> {
    let Value::Map(entries) = &item.value else { return None };
    let label = super::node_label(r, entries, item.pos);
    let fields = r.fields(entries, MODULE_NODE_FIELDS, &label);
    let (local_id, id_pos) = node_id(r, &fields, item.pos)?;
    let id = format!("{}{local_id}", scope.prefix);
    let (wired, wired_pos) = super::inputs::inputs(r, &fields, &label);
    let params = params(r, &fields, &label, scope);
    let env = super::env(r, &fields, &label);
    let deploy = super::deploy::deploy(r, &fields, &label);
    let module_value = fields.get("module")?;
    let module_text = r.text(module_value, &format!("`module` of {label}"))?;
    let (file, canonical) = locate(r, module_value.pos, &module_text, scope)?;
    let text = match std::fs::read_to_string(&canonical) {
        Ok(text) => text,
        Err(e) => {
            r.error(module_value.pos, format!("cannot read module file `{}`: {e}", file.display()));
            return None;
        }
    };
    let tree = match yaml::parse(&text) {
        Ok(tree) => tree,
        Err(error) => {
            let message = format!("invalid YAML: {}", error.message);
            r.report.error_hint_in(&file, error.pos, message, format!("in the module {label} uses"));
            return None;
        }
    };
    let mut inner = Reader { source: &text, report: Collector::new(&file) };
    let expanded = module_file(&mut inner, &tree, &id, &canonical, params, scope);
    r.report.absorb(inner.report);
    let (mut nodes, outputs, (required, optional)) = expanded?;
    for port in wired.keys() {
        if !required.contains(port) && !optional.contains(port) {
            let pos = wired_pos.get(port).copied().unwrap_or(id_pos);
            let hint =
                format!("the module `{}` has input ports: {}", file.display(), list(required.iter().chain(&optional)));
            r.error_hint(pos, format!("{label} wires `{port}`, which is not an input port of its module"), hint);
        }
    }
    if let Some(value) = fields.get("outputs") {
        for item in r.list(value, &format!("`outputs` of {label}")).unwrap_or_default() {
            let Some(port) = r.text(item, &format!("each of `outputs` of {label}")) else { continue };
            if !outputs.contains_key(&port) {
                let hint = format!("its module's output ports: {}", list(outputs.keys()));
                r.error_hint(item.pos, format!("{label} lists output `{port}`, which its module does not have"), hint);
            }
        }
    }
    for port in required.iter().filter(|p| !wired.contains_key(*p)) {
        let hint = format!("wire it in the node's `inputs`, e.g. `{port}: <node>/<output>`");
        r.error_hint(id_pos, format!("{label} leaves the required input port `{port}` of its module unwired"), hint);
    }
    for node in &mut nodes {
        for (key, value) in &env {
            node.spec.env.entry(key.clone()).or_insert_with(|| value.clone());
        }
        fill_deploy(&mut node.spec, &deploy);
        node.spec.modules.insert(0, id.clone());
    }
    Some(Use { id, id_pos, wired, wired_pos, nodes, outputs })
}

/// The module file named `text` (relative to the file being read): its
/// path for messages and its canonical path. Refuses one outside the
/// dataflow's directory, one already being expanded (a cycle) and one
/// deeper than [`MAX_DEPTH`].
fn locate(r: &mut Reader, pos: Pos, text: &str, scope: &Scope) -> Option<(PathBuf, PathBuf)> {
    let Some(root) = &scope.root else {
        r.error(pos, format!("module `{text}` cannot be read: the dataflow is not a file on disk"));
        return None;
    };
    // (From the canonical directory: the same one `rel_dir` describes.)
    let file = root.join(&scope.rel_dir).join(text);
    if leaves(&scope.rel_dir, Path::new(text)) {
        let hint = format!("modules must be inside the dataflow's directory, {}", root.display());
        r.error_hint(pos, format!("module `{text}` is outside the dataflow's directory"), hint);
        return None;
    }
    let canonical = match file.canonicalize() {
        Ok(path) => path,
        Err(e) => {
            r.error_hint(
                pos,
                format!("cannot read module file `{}`: {e}", file.display()),
                "`module` is relative to the file that names it",
            );
            return None;
        }
    };
    if !canonical.starts_with(root) {
        let hint = format!("modules must be inside the dataflow's directory, {}", root.display());
        r.error_hint(pos, format!("module `{text}` is outside the dataflow's directory"), hint);
        return None;
    }
    if let Some(at) = scope.chain.iter().position(|f| *f == canonical) {
        let cycle: Vec<String> = scope.chain[at..].iter().chain([&canonical]).map(|f| shown(f, root)).collect();
        let hint = "a module may not use itself, directly or through other modules";
        r.error_hint(pos, format!("module cycle: {}", cycle.join(" -> ")), hint);
        return None;
    }
    if scope.chain.len() >= MAX_DEPTH {
        let hint = "flatten some of them: deeper nesting is refused so a mistake cannot grow without end";
        r.error_hint(pos, format!("modules nest deeper than {MAX_DEPTH}"), hint);
        return None;
    }
    scope.uses.set(scope.uses.get() + 1);
    if scope.uses.get() > MAX_USES {
        // (Said once; the uses after it are dropped quietly.)
        if scope.uses.get() == MAX_USES + 1 {
            let hint = "modules used many times inside modules used many times multiply: use fewer";
            r.error_hint(pos, format!("the dataflow expands more than {MAX_USES} module uses"), hint);
        }
        return None;
    }
    Some((file, canonical))
}

/// Whether `path`, written in a file in `dir` (relative to the dataflow's
/// directory), leaves that directory as written (symbolic links are
/// checked on the canonical path).
fn leaves(dir: &Path, path: &Path) -> bool {
    use std::path::Component;
    let mut depth = dir.components().count();
    for component in path.components() {
        match component {
            Component::ParentDir if depth == 0 => return true,
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// A module file path relative to the dataflow's directory.
fn shown(file: &Path, root: &Path) -> String {
    file.strip_prefix(root).unwrap_or(file).display().to_string()
}

type Expanded = (Vec<ParsedNode>, BTreeMap<String, (String, String)>, (Vec<String>, Vec<String>));

/// Reads a module file: its declaration, then its nodes in the module's scope.
fn module_file(
    r: &mut Reader,
    tree: &Node,
    id: &str,
    canonical: &Path,
    params: BTreeMap<String, String>,
    outer: &Scope,
) -> Option<Expanded> {
    let Value::Map(entries) = &tree.value else {
        return r.wrong_type(tree, "a module file", "a mapping with `module` and `nodes`");
    };
    let fields = r.fields(entries, MODULE_FILE_FIELDS, "the module file");
    let Some(declaration) = fields.get("module") else {
        let hint = "a module file declares `module: { name, inputs, inputs_optional, outputs }` and its `nodes`";
        r.error_hint(tree.pos, "missing field `module`", hint);
        return None;
    };
    let declared = declaration_of(r, declaration)?;
    let items = match fields.get("nodes") {
        Some(nodes) => r.list(nodes, "`nodes`")?,
        None => {
            r.error_hint(tree.pos, "missing field `nodes`", "a module file needs a `nodes:` list");
            return None;
        }
    };
    let root = outer.root.clone()?;
    let rel_dir =
        canonical.parent().and_then(|d| d.strip_prefix(&root).ok()).map(Path::to_path_buf).unwrap_or_default();
    let mut chain = outer.chain.clone();
    chain.push(canonical.to_path_buf());
    let ports = (declared.inputs.clone(), declared.optional.clone());
    let scope = Scope {
        prefix: format!("{id}."),
        root: Some(root),
        chain,
        params,
        ports: Some(ports.clone()),
        rel_dir,
        uses: outer.uses.clone(),
    };
    let (nodes, targets) = super::level(r, items, &scope);
    let outputs = outputs(r, &declared, &nodes, &targets, &scope);
    Some((nodes, outputs, ports))
}

/// `module: { name, description, inputs, inputs_optional, outputs }`.
struct Declaration {
    inputs: Vec<String>,
    optional: Vec<String>,
    /// Port -> the inner `node/output` written for it (map form), or none
    /// (list form: the one node with an output of that name), and where.
    outputs: Vec<(String, Option<String>, Pos)>,
}

fn declaration_of(r: &mut Reader, value: &Node) -> Option<Declaration> {
    let entries = r.map(value, "`module`")?;
    let fields = r.fields(entries, DECLARATION_FIELDS, "the module declaration");
    let ports = |r: &mut Reader, field: &str| -> Vec<String> {
        let Some(value) = fields.get(field) else { return Vec::new() };
        let items = r.list(value, &format!("`{field}` of the module")).unwrap_or_default();
        items.iter().filter_map(|item| r.text(item, &format!("each of `{field}` of the module"))).collect()
    };
    let inputs = ports(r, "inputs");
    let optional = ports(r, "inputs_optional");
    let mut outputs = Vec::new();
    if let Some(value) = fields.get("outputs") {
        match &value.value {
            Value::Map(entries) => {
                for entry in r.entries(entries, "output port", "the module") {
                    let source = r.text(entry.value, &format!("output port `{}` of the module", entry.name));
                    outputs.push((entry.name, source, entry.value.pos));
                }
            }
            _ => {
                for item in r.list(value, "`outputs` of the module").unwrap_or_default() {
                    if let Some(port) = r.text(item, "each of `outputs` of the module") {
                        outputs.push((port, None, item.pos));
                    }
                }
            }
        }
    }
    for port in inputs.iter().filter(|p| optional.contains(p)) {
        r.error(value.pos, format!("input port `{port}` is both in `inputs` and in `inputs_optional`"));
    }
    Some(Declaration { inputs, optional, outputs })
}

/// Each output port's producer: named (`port: node/output`), or the one
/// node of the module with an output of the port's name.
fn outputs(
    r: &mut Reader,
    declared: &Declaration,
    nodes: &[ParsedNode],
    targets: &BTreeMap<String, Target>,
    scope: &Scope,
) -> BTreeMap<String, (String, String)> {
    let mut outputs = BTreeMap::new();
    for (port, source, pos) in &declared.outputs {
        let producer = match source {
            Some(text) => match crate::source::parse(text) {
                Ok(InputSource::Node { node, .. }) if node == PORT_NODE => {
                    let hint = "an output port names a node of the module and its output, e.g. `boxes: infer/boxes`";
                    r.error_hint(*pos, format!("output port `{port}` cannot be an input port (`{text}`)"), hint);
                    None
                }
                Ok(InputSource::Node { node, output }) => {
                    let found = resolve(r, targets, scope, (*pos, &format!("output port `{port}`")), &node, &output);
                    // (A nested module's port resolved to its producer, which exists.)
                    let exists = |(id, out): &(String, String)| {
                        matches!(targets.get(node.as_str()), Some(Target::Module(_)))
                            || nodes.iter().any(|n| n.spec.id == *id && n.spec.outputs.contains(out))
                    };
                    match found {
                        Some(producer) if !exists(&producer) => {
                            let hint = "name a node of this module and one of its `outputs`";
                            r.error_hint(
                                *pos,
                                format!("output port `{port}` names `{text}`, which this module does not have"),
                                hint,
                            );
                            None
                        }
                        found => found,
                    }
                }
                Ok(InputSource::Timer { .. }) => {
                    r.error(*pos, format!("output port `{port}` must name a node's output, not a timer"));
                    None
                }
                Err(problem) => {
                    r.problem(*pos, problem);
                    None
                }
            },
            None => {
                // (This file's own nodes have no module chain yet.)
                let mut found: Vec<(String, String)> = nodes
                    .iter()
                    .filter(|n| n.spec.modules.is_empty() && n.spec.outputs.contains(port))
                    .map(|n| (n.spec.id.clone(), port.clone()))
                    .collect();
                found.extend(targets.values().filter_map(|t| match t {
                    Target::Module(ports) => ports.get(port).cloned(),
                    Target::Node => None,
                }));
                match found.len() {
                    1 => found.pop(),
                    0 => {
                        let hint = format!(
                            "give a node of the module the output `{port}`, or write `{port}: <node>/<output>`"
                        );
                        r.error_hint(*pos, format!("no node of the module has an output `{port}`"), hint);
                        None
                    }
                    _ => {
                        let names: Vec<String> = found.iter().map(|(n, o)| format!("{n}/{o}")).collect();
                        let hint = format!("say which: `{port}: <node>/<output>` (found {})", names.join(", "));
                        r.error_hint(*pos, format!("several nodes of the module have an output `{port}`"), hint);
                        None
                    }
                }
            }
        };
        if let Some(producer) = producer {
            outputs.insert(port.clone(), producer);
        }
    }
    outputs
}

/// What source `node/output`, written in a file read in `scope`, means:
/// a node's output (its final id), a module node's output port (its
/// producer), or a module's input port (`_mod/<port>`, kept for the
/// module's user to fill). `None` after reporting at `pos`.
pub(crate) fn resolve(
    r: &mut Reader,
    targets: &BTreeMap<String, Target>,
    scope: &Scope,
    (pos, what): (Pos, &str),
    node: &str,
    output: &str,
) -> Option<(String, String)> {
    if node == PORT_NODE {
        let Some((required, optional)) = &scope.ports else {
            let hint = "`_mod/<port>` is how a module file's nodes read the module's input ports";
            r.error_hint(pos, format!("{what} reads `_mod/{output}`, but this is not a module file"), hint);
            return None;
        };
        if !required.iter().chain(optional).any(|p| p == output) {
            let hint = format!("the module's input ports: {}", list(required.iter().chain(optional)));
            r.error_hint(pos, format!("{what} reads `_mod/{output}`, which the module does not declare"), hint);
            return None;
        }
        return Some((PORT_NODE.to_owned(), output.to_owned()));
    }
    match targets.get(node) {
        Some(Target::Module(ports)) => match ports.get(output) {
            Some(producer) => Some(producer.clone()),
            None => {
                let hint = format!("its output ports: {}", list(ports.keys()));
                r.error_hint(
                    pos,
                    format!("{what} reads `{node}/{output}`, but module node `{node}` has no output port `{output}`"),
                    hint,
                );
                None
            }
        },
        _ => Some((format!("{}{node}", scope.prefix), output.to_owned())),
    }
}

/// Fills the `_mod/<port>` sources of a module's nodes with what its user
/// wired (already in final names); an unwired optional port's inputs go.
pub(crate) fn fill_ports(module: &mut Use) {
    for node in &mut module.nodes {
        let mut unwired = Vec::new();
        for (input, spec) in node.spec.inputs.iter_mut() {
            let InputSource::Node { node: source, output: port } = &spec.source else { continue };
            if source != PORT_NODE {
                continue;
            }
            match module.wired.get(port) {
                Some(wired) => spec.source = wired.source.clone(),
                None => unwired.push(input.clone()),
            }
        }
        for input in unwired {
            node.spec.inputs.remove(&input);
            node.source_pos.remove(&input);
            node.input_types.remove(&input);
        }
    }
}

/// `params: { key: value }`; values may use the enclosing module's params.
fn params(r: &mut Reader, fields: &Fields, label: &str, scope: &Scope) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let Some(value) = fields.get("params") else { return params };
    let Some(entries) = r.map(value, &format!("`params` of {label}")) else { return params };
    for entry in r.entries(entries, "param", label) {
        if !crate::ids::is_valid(&entry.name) {
            r.error_hint(entry.key.pos, format!("invalid param name `{}` in {label}", entry.name), crate::ids::ID_HINT);
            continue;
        }
        if let Some(text) = r.scalar(entry.value, &format!("param `{}` of {label}", entry.name)) {
            match substitute(&text, &scope.params) {
                Ok(text) => {
                    params.insert(entry.name, text);
                }
                Err(missing) => r.error(entry.value.pos, missing),
            }
        }
    }
    params
}

/// `text` with every `${_param.k}` replaced by `params[k]`.
pub(crate) fn substitute(text: &str, params: &BTreeMap<String, String>) -> Result<String, String> {
    const OPEN: &str = "${_param.";
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err(format!("`{text}` has a `${{_param.` without its closing `}}`"));
        };
        let key = &after[..end];
        match params.get(key) {
            Some(value) => out.push_str(value),
            None => {
                let known = if params.is_empty() { "none".to_owned() } else { list(params.keys()) };
                return Err(format!(
                    "`{text}` uses param `{key}`, which the module node does not set (its params: {known})"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The env variable a param is also given as: `PARAM_<KEY>`, upper case,
/// anything but letters and digits as `_`.
pub(crate) fn param_env(key: &str) -> String {
    let key: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("PARAM_{key}")
}

/// The module node's (or the dataflow's) `deploy` fills what a node leaves
/// unset (not `distribute` of a `git` node: it is built where it runs).
pub(crate) fn fill_deploy(node: &mut crate::model::NodeSpec, outer: &crate::model::Deploy) {
    let inner = &mut node.deploy;
    if inner.machine.is_none() {
        inner.machine.clone_from(&outer.machine);
    }
    if inner.labels.is_empty() {
        inner.labels.clone_from(&outer.labels);
    }
    if inner.distribute == crate::model::Distribute::Local && node.git.is_none() {
        inner.distribute = outer.distribute;
    }
    if inner.working_dir.is_none() {
        inner.working_dir.clone_from(&outer.working_dir);
    }
}

fn list<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<&str> = items.into_iter().map(String::as_str).collect();
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Dataflow, Diagnostics, InputSource};

    const DETECTOR: &str = "module:
  name: detector
  inputs: [image]
  inputs_optional: [config]
  outputs: [boxes]
nodes:
  - id: pre
    path: ./pre.sh
    args: --size ${_param.size}
    inputs:
      image: _mod/image
      config: _mod/config
    outputs: [tensor]
  - id: infer
    path: infer
    inputs:
      tensor: pre/tensor
    outputs: [boxes]
";

    /// Writes `files` (path, text) into a new directory and loads `dataflow.yml`.
    fn load(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Dataflow, Diagnostics>) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let loaded = Dataflow::load(&dir.path().join("dataflow.yml"));
        (dir, loaded)
    }

    /// (file name, line, message) of each error.
    fn errors(files: &[(&str, &str)]) -> Vec<(String, usize, String)> {
        match load(files).1 {
            Ok(dataflow) => panic!("expected errors, got {dataflow:?}"),
            Err(found) => found
                .0
                .into_iter()
                .map(|d| (d.file.file_name().unwrap().to_string_lossy().into_owned(), d.line, d.message))
                .collect(),
        }
    }

    fn from(node: &str, output: &str) -> InputSource {
        InputSource::Node { node: node.into(), output: output.into() }
    }

    #[test]
    fn a_module_used_twice_expands_to_distinct_nodes_wired_through_its_ports() {
        let top = "nodes:
  - id: camera
    path: ./camera
    outputs: [image]
  - id: left
    module: modules/detector.yml
    params: { size: 320 }
    inputs: { image: camera/image }
    env: { MODEL: small }
  - id: right
    module: modules/detector.yml
    params: { size: 640 }
    inputs: { image: camera/image, config: camera/image }
    deploy: { machine: gpu }
  - id: sink
    path: ./sink
    inputs: { a: left/boxes, b: right/boxes }
";
        let (_dir, loaded) = load(&[("dataflow.yml", top), ("modules/detector.yml", DETECTOR)]);
        let dataflow = loaded.unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<&str> = dataflow.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["camera", "left.pre", "left.infer", "right.pre", "right.infer", "sink"]);
        let node = |id: &str| dataflow.node(id).unwrap();
        let left = node("left.pre");
        assert_eq!(left.inputs.keys().collect::<Vec<_>>(), ["image"], "an unwired optional port's input goes");
        assert_eq!(left.inputs["image"].source, from("camera", "image"));
        assert_eq!((left.args.join(" "), left.path.as_str()), ("--size 320".to_owned(), "modules/./pre.sh"));
        assert_eq!((left.env["PARAM_SIZE"].as_str(), left.env["MODEL"].as_str()), ("320", "small"));
        assert_eq!(left.modules, ["left"]);
        let right = node("right.pre");
        assert_eq!(right.inputs["config"].source, from("camera", "image"));
        assert_eq!((right.args.join(" "), right.deploy.machine.as_deref()), ("--size 640".to_owned(), Some("gpu")));
        assert_eq!(node("right.infer").inputs["tensor"].source, from("right.pre", "tensor"));
        assert_eq!(node("right.infer").path, "infer", "a command on PATH stays one");
        assert_eq!(node("sink").inputs["a"].source, from("left.infer", "boxes"));
        assert_eq!(node("sink").inputs["b"].source, from("right.infer", "boxes"));
        let graph = dataflow.mermaid();
        assert!(graph.contains("subgraph m0[\"left\"]") && graph.contains("subgraph m1[\"right\"]"), "{graph}");
    }

    #[test]
    fn a_missing_required_port_and_a_cycle_each_have_their_own_error() {
        let unwired = "nodes:\n  - id: det\n    module: modules/detector.yml\n    params: { size: 1 }\n";
        let found = errors(&[("dataflow.yml", unwired), ("modules/detector.yml", DETECTOR)]);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].0.as_str(), found[0].1), ("dataflow.yml", 2));
        assert_eq!(found[0].2, "node `det` leaves the required input port `image` of its module unwired");

        let a = "module: { name: a }\nnodes:\n  - id: inner\n    module: b.yml\n";
        let b = "module: { name: b }\nnodes:\n  - id: back\n    module: a.yml\n";
        let top = "nodes:\n  - id: outer\n    module: a.yml\n";
        let found = errors(&[("dataflow.yml", top), ("a.yml", a), ("b.yml", b)]);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!((found[0].0.as_str(), found[0].1), ("b.yml", 4), "at the `module` that closes the cycle");
        assert_eq!(found[0].2, "module cycle: a.yml -> b.yml -> a.yml");
    }

    #[test]
    fn mistakes_are_reported_in_the_file_they_are_written_in() {
        let module = "module:\n  name: m\n  inputs: [in]\n  outputs: [out]\nnodes:\n  - id: x\n    path: ./x\n    colour: red\n    inputs: { a: _mod/nope, b: y/out }\n    outputs: [out]\n";
        let top = "nodes:\n  - id: src\n    path: ./src\n    outputs: [o]\n  - id: m\n    module: m.yml\n    inputs: { in: src/o, extra: src/o }\n  - id: sink\n    path: ./sink\n    inputs: { a: m/missing }\n  - id: far\n    module: ../outside.yml\n";
        let found = errors(&[("dataflow.yml", top), ("m.yml", module)]);
        let found: Vec<(&str, usize, &str)> = found.iter().map(|(f, l, m)| (f.as_str(), *l, m.as_str())).collect();
        assert_eq!(
            found,
            [
                ("dataflow.yml", 7, "node `m` wires `extra`, which is not an input port of its module"),
                (
                    "dataflow.yml",
                    10,
                    "input `a` of node `sink` reads `m/missing`, but module node `m` has no output port `missing`"
                ),
                ("dataflow.yml", 12, "module `../outside.yml` is outside the dataflow's directory"),
                ("m.yml", 8, "unknown field `colour` in node `x`"),
                ("m.yml", 9, "input `a` of node `m.x` reads `_mod/nope`, which the module does not declare"),
                ("m.yml", 9, "input `m.x/b` refers to node `m.y`, which does not exist"),
            ]
        );
    }

    #[test]
    fn output_ports_must_name_a_producer_of_the_module() {
        let module = "module:\n  name: m\n  inputs: [in]\n  outputs: { out: _mod/in, gone: nosuch/x, ok: a/o }\nnodes:\n  - id: a\n    path: ./a\n    inputs: { i: _mod/in }\n    outputs: [o]\n";
        let top = "nodes:\n  - id: src\n    path: ./s\n    outputs: [o]\n  - id: m\n    module: m.yml\n    inputs: { in: src/o }\n    outputs: [ok, other]\n";
        let found = errors(&[("dataflow.yml", top), ("m.yml", module)]);
        let found: Vec<(&str, usize, &str)> = found.iter().map(|(f, l, m)| (f.as_str(), *l, m.as_str())).collect();
        assert_eq!(
            found,
            [
                ("dataflow.yml", 8, "node `m` lists output `other`, which its module does not have"),
                ("m.yml", 4, "output port `out` cannot be an input port (`_mod/in`)"),
                ("m.yml", 4, "output port `gone` names `nosuch/x`, which this module does not have"),
            ]
        );
    }

    #[test]
    fn an_unwired_optional_port_takes_its_type_along_and_git_nodes_stay_local() {
        let module = "module:\n  name: m\n  inputs_optional: [config]\nnodes:\n  - id: a\n    path: ./a\n    inputs: { config: _mod/config }\n    input_types: { config: std/core/v1/String }\n  - id: g\n    path: ./g\n    git: ../r\n    branch: main\n";
        let top = "strict_types: true\ndeploy: { distribute: scp }\nnodes:\n  - id: m\n    module: m.yml\n";
        let (_dir, loaded) = load(&[("dataflow.yml", top), ("m.yml", module)]);
        let dataflow = loaded.unwrap_or_else(|e| panic!("{e}"));
        assert!(dataflow.node("m.a").unwrap().inputs.is_empty());
        assert_eq!(dataflow.node("m.a").unwrap().deploy.distribute, crate::Distribute::Scp);
        assert_eq!(dataflow.node("m.g").unwrap().deploy.distribute, crate::Distribute::Local, "built where it runs");
    }

    #[test]
    fn modules_nest_at_most_eight_deep_and_ports_pass_through() {
        let mut files = vec![("dataflow.yml".to_owned(), "nodes:\n  - id: src\n    path: ./s\n    outputs: [o]\n  - id: l0\n    module: m0.yml\n    inputs: { in: src/o }\n".to_owned())];
        for depth in 0..9 {
            let inner =
                format!("  - id: l{}\n    module: m{}.yml\n    inputs: {{ in: _mod/in }}\n", depth + 1, depth + 1);
            let leaf = "  - id: leaf\n    path: ./leaf\n    inputs: { in: _mod/in }\n".to_owned();
            let body = if depth < 7 { inner } else { leaf.clone() };
            files
                .push((format!("m{depth}.yml"), format!("module: {{ name: m{depth}, inputs: [in] }}\nnodes:\n{body}")));
        }
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let (_dir, loaded) = load(&refs);
        let dataflow = loaded.unwrap_or_else(|e| panic!("{e}"));
        let leaf = dataflow.nodes.last().unwrap();
        assert_eq!(leaf.id, "l0.l1.l2.l3.l4.l5.l6.l7.leaf");
        assert_eq!(leaf.inputs["in"].source, from("src", "o"), "through eight `_mod/in`s");
        assert_eq!(leaf.modules.len(), 8);
        // One more level is refused.
        files[8].1 =
            "module: { name: m7, inputs: [in] }\nnodes:\n  - id: l8\n    module: m8.yml\n    inputs: { in: _mod/in }\n"
                .into();
        files[9].1 =
            "module: { name: m8, inputs: [in] }\nnodes:\n  - id: leaf\n    path: ./leaf\n    inputs: { in: _mod/in }\n"
                .into();
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let found = errors(&refs);
        assert!(found.iter().any(|(f, _, m)| f == "m7.yml" && m == "modules nest deeper than 8"), "{found:#?}");
        assert!(Dataflow::parse("nodes:\n  - id: a\n    module: m.yml\n", Path::new("nowhere/d.yml")).is_err());
    }

    #[test]
    fn a_module_used_many_times_in_modules_used_many_times_is_bounded() {
        // Ten uses per level, four levels: 11,110 uses if nothing stopped it.
        let uses = |next: &str| -> String { (0..10).map(|i| format!("  - id: u{i}\n    module: {next}\n")).collect() };
        let files = [
            ("dataflow.yml", format!("nodes:\n{}", uses("l1.yml"))),
            ("l1.yml", format!("module: {{ name: l1 }}\nnodes:\n{}", uses("l2.yml"))),
            ("l2.yml", format!("module: {{ name: l2 }}\nnodes:\n{}", uses("l3.yml"))),
            ("l3.yml", format!("module: {{ name: l3 }}\nnodes:\n{}", uses("leaf.yml"))),
            ("leaf.yml", "module: { name: leaf }\nnodes:\n  - id: x\n    path: ./x\n".to_owned()),
        ];
        let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let found = errors(&refs);
        assert_eq!(found.len(), 1, "one error, not one per use: {:?}", &found[..found.len().min(3)]);
        assert_eq!(found[0].2, format!("the dataflow expands more than {} module uses", super::MAX_USES));
    }
}

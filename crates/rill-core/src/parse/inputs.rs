//! `inputs:`: short (`node/output`) and long (`{source, queue_size}`) forms.

use std::collections::BTreeMap;

use crate::ids::{self, ID_HINT};
use crate::model::{DEFAULT_QUEUE_SIZE, InputSpec};
use crate::read::{Fields, Reader};
use crate::source;
use crate::yaml::{Node, Pos, Value};

const INPUT_FIELDS: &[&str] = &["source", "queue_size"];

/// The inputs of a node, and the position of each input's source text.
pub(super) fn inputs(
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
            let queue_size = fields.get("queue_size").and_then(|node| queue_size(r, node, owner));
            let Some(source_node) = fields.get("source") else {
                let hint = "e.g. `{ source: camera/frames, queue_size: 5 }`";
                r.error_hint(value.pos, format!("{owner} is missing the required field `source`"), hint);
                return None;
            };
            (source_node, queue_size.unwrap_or(DEFAULT_QUEUE_SIZE))
        }
        Value::Null | Value::Seq(_) => {
            return r.wrong_type(value, owner, "`node/output`, `rill/timer/...` or a mapping with `source`");
        }
        _ => (value, DEFAULT_QUEUE_SIZE),
    };
    let text = r.text(source_node, &format!("`source` of {owner}"))?;
    match source::parse(&text) {
        Ok(source) => Some((InputSpec { source, queue_size }, source_node.pos)),
        Err(problem) => {
            r.problem(source_node.pos, problem);
            None
        }
    }
}

fn queue_size(r: &mut Reader, node: &Node, owner: &str) -> Option<usize> {
    let size = r.count(node, &format!("`queue_size` of {owner}"))?;
    if size == 0 {
        let hint = "it is how many messages wait before the oldest is dropped";
        r.error_hint(node.pos, format!("`queue_size` of {owner} must be at least 1"), hint);
        return None;
    }
    let max = crate::received::MAX_QUEUE_SIZE;
    if size > max as u64 {
        let hint = "a queue that long would hold more than memory; drop-oldest keeps the newest";
        r.error_hint(node.pos, format!("`queue_size` of {owner} must be at most {max}"), hint);
        return None;
    }
    usize::try_from(size).ok()
}

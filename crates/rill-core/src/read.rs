//! Typed reads from the YAML tree that report a diagnostic instead of failing.
//!
//! Each reader returns `None` after reporting, so callers carry on and find further problems.

use crate::diagnostics::{Collector, Problem};
use crate::suggest;
use crate::yaml::{Node, Pos, Value};

/// Everything a conversion needs besides the tree: the source text and the collector.
pub(crate) struct Reader<'s> {
    pub source: &'s str,
    pub report: Collector,
}

/// One key/value pair of a mapping, with its key as text.
pub(crate) struct Entry<'a> {
    pub name: String,
    pub key: &'a Node,
    pub value: &'a Node,
}

/// The known fields of a mapping, after unknown and duplicate ones were reported.
pub(crate) struct Fields<'a>(Vec<Entry<'a>>);

impl<'a> Fields<'a> {
    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a Node> {
        self.entry(name).map(|entry| entry.value)
    }

    /// The whole entry of field `name`, if present.
    pub fn entry(&self, name: &str) -> Option<&Entry<'a>> {
        self.0.iter().find(|entry| entry.name == name)
    }
}

impl<'s> Reader<'s> {
    /// The entries of a mapping with text keys; duplicates are reported and dropped.
    /// `what` names the mapping's keys in messages, e.g. "env variable".
    pub fn entries<'a>(&mut self, entries: &'a [(Node, Node)], what: &str, owner: &str) -> Vec<Entry<'a>> {
        let mut kept: Vec<Entry<'a>> = Vec::new();
        for (key, value) in entries {
            let Some(name) = key.scalar_text(self.source) else {
                let message = format!("{what} names in {owner} must be text, found {}", key.kind());
                self.report.error(key.pos, message);
                continue;
            };
            if let Some(first) = kept.iter().find(|entry| entry.name == name) {
                let hint = format!("first set at line {}", first.key.pos.line);
                self.report.error_hint(key.pos, format!("duplicate {what} `{name}` in {owner}"), hint);
                continue;
            }
            kept.push(Entry { name, key, value });
        }
        kept
    }

    /// The entries of a mapping whose keys must be among `allowed`.
    pub fn fields<'a>(&mut self, entries: &'a [(Node, Node)], allowed: &[&str], owner: &str) -> Fields<'a> {
        let mut known = Vec::new();
        for entry in self.entries(entries, "field", owner) {
            if allowed.contains(&entry.name.as_str()) {
                known.push(entry);
                continue;
            }
            let valid = format!("valid fields: {}", allowed.join(", "));
            let hint = match suggest::closest(&entry.name, allowed.iter().copied()) {
                Some(close) => format!("did you mean `{close}`? {valid}"),
                None => valid,
            };
            self.report.error_hint(entry.key.pos, format!("unknown field `{}` in {owner}", entry.name), hint);
        }
        Fields(known)
    }

    /// A mapping's entries; null counts as an empty mapping.
    pub fn map<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a [(Node, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            Value::Null => Some(&[]),
            _ => self.wrong_type(node, what, "a mapping"),
        }
    }

    /// A list's items; null counts as an empty list.
    pub fn list<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => self.wrong_type(node, what, "a list"),
        }
    }

    /// A scalar as text; numbers and booleans keep their spelling from the file.
    pub fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.scalar_text(self.source) {
            Some(text) => Some(text),
            None => self.wrong_type(node, what, "a string"),
        }
    }

    /// A string, number or boolean as text (env values, labels).
    pub fn scalar(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.value {
            Value::Null | Value::Seq(_) | Value::Map(_) => self.wrong_type(node, what, "a string, number or boolean"),
            _ => self.text(node, what),
        }
    }

    /// Like [`Reader::text`], but null means "not set".
    pub fn optional_text(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.value {
            Value::Null => None,
            _ => self.text(node, what),
        }
    }

    /// A non-negative whole number.
    pub fn count(&mut self, node: &Node, what: &str) -> Option<u64> {
        match node.value {
            Value::Int(value) => match u64::try_from(value) {
                Ok(value) => Some(value),
                Err(_) => self.wrong_type(node, what, "a non-negative whole number"),
            },
            _ => self.wrong_type(node, what, "a non-negative whole number"),
        }
    }

    /// `true` or `false`.
    pub fn flag(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(value) => Some(value),
            _ => self.wrong_type(node, what, "`true` or `false`"),
        }
    }

    /// Reports that `node` is not what `what` needs.
    pub fn wrong_type<T>(&mut self, node: &Node, what: &str, expected: &str) -> Option<T> {
        let found = match (&node.value, node.scalar_text(self.source)) {
            // A number may be the right type but the wrong value (`-1`, `1.5`): show it.
            (Value::Int(_) | Value::Float(_), Some(text)) => format!("`{text}`"),
            _ => node.kind().to_owned(),
        };
        self.report.error(node.pos, format!("{what} must be {expected}, found {found}"));
        None
    }

    /// Reports a problem at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.report.error(pos, message);
    }

    /// Reports a problem found by a position-unaware helper at `pos`.
    pub fn problem(&mut self, pos: Pos, problem: Problem) {
        self.report.problem(pos, problem);
    }

    /// Reports a problem at `pos`, with a hint on how to fix it.
    pub fn error_hint(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.report.error_hint(pos, message, hint);
    }

    /// Notes something valid but worth saying at `pos`.
    pub fn warn_hint(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.report.warn_hint(pos, message, hint);
    }
}

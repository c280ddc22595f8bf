//! A YAML tree that remembers where each item came from.
//!
//! serde-saphyr parses; a hand-written visitor keeps the tree generic so that conversion
//! can report every problem instead of stopping at the first one, as derived serde would.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DefaultMessageFormatter, DuplicateKeyPolicy, MessageFormatter, NonFiniteFloatPolicy, Spanned};

/// A 1-based position in the source text; orders by line, then column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// Used when the parser cannot tell where a problem is.
    pub const UNKNOWN: Pos = Pos { line: 0, column: 0 };
}

/// A YAML item with its position.
#[derive(Debug)]
pub(crate) struct Node {
    pub value: Value,
    pub pos: Pos,
    /// Byte range of the item in the source, to recover the exact spelling of scalars.
    raw: Option<Range<usize>>,
}

/// The content of a YAML item; plain scalars are typed by the YAML 1.2 core schema.
#[derive(Debug)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicate keys are kept so that they can be reported.
    Map(Vec<(Node, Node)>),
}

/// A syntax error from the YAML parser.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses `text` into a tree.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        // `y`, `no`, `on` ... stay strings, as in YAML 1.2 (an output may well be called `y`).
        strict_booleans: true,
        // Duplicate keys reach our visitor so they are reported along with everything else.
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        // `.inf` / `.nan` arrive as text: fine as an env value, rejected where a number is needed.
        non_finite_float_policy: NonFiniteFloatPolicy::AsString,
    };
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|error| {
        let pos = error.location().map_or(Pos::UNKNOWN, |loc| Pos {
            line: usize::try_from(loc.line()).unwrap_or(0),
            column: usize::try_from(loc.column()).unwrap_or(0),
        });
        let error = error.without_snippet();
        let message = match error {
            // The library's own hint here names its API, which means nothing to our users.
            serde_saphyr::Error::MultipleDocuments { .. } => {
                "the file holds several YAML documents (`---`); a dataflow is a single document".to_owned()
            }
            // The bare message: our diagnostics print the position and no source snippet.
            _ => DefaultMessageFormatter.format_message(error).into_owned(),
        };
        SyntaxError { pos, message }
    })
}

impl Node {
    /// What kind of item this is, for "found ..." in messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar as text, spelled as in the file (`1.50` stays `1.50`); `None` for null and
    /// collections.
    pub fn scalar_text(&self, source: &str) -> Option<String> {
        let formatted = match &self.value {
            Value::Str(text) => return Some(text.clone()),
            Value::Bool(value) => value.to_string(),
            Value::Int(value) => value.to_string(),
            Value::Float(value) => value.to_string(),
            Value::Null | Value::Seq(_) | Value::Map(_) => return None,
        };
        let spelled = self.raw.clone().and_then(|range| source.get(range));
        // An alias (`*name`) spans the alias token, not the value it stands for.
        match spelled {
            Some(text) if !text.is_empty() && !text.starts_with('*') => Some(text.to_owned()),
            _ => Some(formatted),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(deserializer)?;
        let location = spanned.referenced;
        let span = location.span();
        let raw = match (span.byte_offset(), span.byte_len()) {
            (Some(start), Some(len)) => {
                let start = usize::try_from(start).ok();
                let len = usize::try_from(len).ok();
                start.zip(len).map(|(start, len)| start..start.saturating_add(len))
            }
            _ => None,
        };
        Ok(Node {
            value: spanned.value,
            pos: Pos {
                line: usize::try_from(location.line()).unwrap_or(0),
                column: usize::try_from(location.column()).unwrap_or(0),
            },
            raw,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Builds a [`Value`] from whatever the parser finds.
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Int(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Int(value.into()))
    }

    fn visit_i128<E>(self, value: i128) -> Result<Value, E> {
        Ok(Value::Int(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::Str(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::Str(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Node, Node>()? {
            entries.push(entry);
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_and_spelling() {
        let text = "a: 1.50\nb: [x, y]\n";
        let root = parse(text).unwrap();
        let Value::Map(entries) = &root.value else { panic!("not a map: {root:?}") };
        let (key, value) = &entries[0];
        assert_eq!(key.pos, Pos { line: 1, column: 1 });
        assert_eq!(value.scalar_text(text).as_deref(), Some("1.50"));
        let Value::Seq(items) = &entries[1].1.value else { panic!("not a list") };
        // `y` is a string under YAML 1.2, not `true`.
        assert!(matches!(&items[1].value, Value::Str(s) if s == "y"));
        assert_eq!(items[1].pos, Pos { line: 2, column: 8 });
    }

    #[test]
    fn duplicate_keys_reach_the_tree() {
        let root = parse("a: 1\na: 2\n").unwrap();
        let Value::Map(entries) = &root.value else { panic!("not a map") };
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn syntax_error_has_position() {
        let error = parse("a: [1, 2\n").unwrap_err();
        assert_eq!(error.pos, Pos { line: 1, column: 4 });
        assert!(error.message.contains("unclosed bracket"), "{}", error.message);
    }
}

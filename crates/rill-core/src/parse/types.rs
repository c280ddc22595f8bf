//! Type annotations (`output_types`, `input_types`, top-level `strict_types`):
//! checked by `rill check` (and every command that loads a dataflow), never
//! at run time. A mismatch or an unknown name is a warning, an error with
//! `strict_types: true`.

use std::collections::BTreeMap;

use crate::diagnostics::Collector;
use crate::model::InputSource;
use crate::parse::ParsedNode;
use crate::read::{Fields, Reader};
use crate::yaml::Pos;

/// The standard types, by URN without parameters (`std/<area>/v<N>/<Name>`).
/// Names outside `std/` are the user's own and are compared as written.
pub(crate) const STANDARD_TYPES: &[&str] = &[
    "std/core/v1/Bool",
    "std/core/v1/Int8",
    "std/core/v1/Int16",
    "std/core/v1/Int32",
    "std/core/v1/Int64",
    "std/core/v1/UInt8",
    "std/core/v1/UInt16",
    "std/core/v1/UInt32",
    "std/core/v1/UInt64",
    "std/core/v1/Float32",
    "std/core/v1/Float64",
    "std/core/v1/String",
    "std/core/v1/Bytes",
    "std/core/v1/Json",
    "std/media/v1/Image",
    "std/media/v1/CompressedImage",
    "std/media/v1/AudioFrame",
    "std/media/v1/VideoFrame",
    "std/vision/v1/BoundingBox",
    "std/vision/v1/Detection",
    "std/vision/v1/Segmentation",
    "std/vision/v1/Keypoints",
    "std/geometry/v1/Point3",
    "std/geometry/v1/Pose",
    "std/geometry/v1/Transform",
    "std/geometry/v1/PointCloud",
    "std/control/v1/Twist",
    "std/control/v1/JointState",
    "std/sensor/v1/Imu",
    "std/sensor/v1/LaserScan",
    "std/sensor/v1/NavSatFix",
    "std/text/v1/Text",
    "std/log/v1/LogRecord",
];

/// A type annotation as written: `base` plus optional `[key=value,...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeName {
    pub base: String,
    pub params: BTreeMap<String, String>,
    pub text: String,
}

impl TypeName {
    /// Parses `std/media/v1/AudioFrame[sample_type=f32,channels=2]`.
    fn parse(text: &str) -> Result<TypeName, String> {
        let (base, params) = match text.split_once('[') {
            Some((base, rest)) => {
                let inner = rest.strip_suffix(']').ok_or("a `[` without its closing `]`")?;
                let mut params = BTreeMap::new();
                for pair in inner.split(',') {
                    let (key, value) = pair.split_once('=').ok_or(format!("parameter `{pair}` is not `key=value`"))?;
                    let (key, value) = (key.trim(), value.trim());
                    if key.is_empty() || value.is_empty() {
                        return Err(format!("parameter `{pair}` is not `key=value`"));
                    }
                    if params.insert(key.to_owned(), value.to_owned()).is_some() {
                        return Err(format!("parameter `{key}` is given twice"));
                    }
                }
                (base, params)
            }
            None => (text, BTreeMap::new()),
        };
        let parts: Vec<&str> = base.split('/').collect();
        let shaped = parts.len() == 4
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            && parts[2].strip_prefix('v').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !shaped {
            return Err("a type is `<namespace>/<area>/v<N>/<Name>`, e.g. `std/core/v1/Float32`".to_owned());
        }
        Ok(TypeName { base: base.to_owned(), params, text: text.to_owned() })
    }

    /// Same base, and no parameter both sides set differently (a side
    /// without parameters matches any).
    fn compatible(&self, other: &TypeName) -> bool {
        self.base == other.base
            && self.params.iter().all(|(key, value)| other.params.get(key).is_none_or(|theirs| theirs == value))
    }
}

/// A port's annotation and where it is written.
pub(crate) type Annotated = BTreeMap<String, (TypeName, Pos)>;

/// `output_types:` or `input_types:` of a node: port -> type. A malformed
/// name is an error (the file says something rill cannot read); whether the
/// name is known is checked later, with the graph.
pub(crate) fn annotations(r: &mut Reader, fields: &Fields, field: &str, label: &str) -> Annotated {
    let mut annotated = Annotated::new();
    let Some(value) = fields.get(field) else { return annotated };
    let Some(entries) = r.map(value, &format!("`{field}` of {label}")) else { return annotated };
    for entry in r.entries(entries, "port", label) {
        let Some(text) = r.text(entry.value, &format!("the type of `{}` in `{field}` of {label}", entry.name)) else {
            continue;
        };
        match TypeName::parse(text.trim()) {
            Ok(name) => {
                annotated.insert(entry.name, (name, entry.value.pos));
            }
            Err(why) => r.error_hint(entry.value.pos, format!("`{text}` is not a type name"), why),
        }
    }
    annotated
}

/// Checks every annotation against the graph: annotated ports exist, names
/// are known, and what an output carries is what its consumers expect.
pub(crate) fn check(report: &mut Collector, nodes: &[ParsedNode], strict: bool) {
    let by_id: BTreeMap<&str, &ParsedNode> = nodes.iter().map(|n| (n.spec.id.as_str(), n)).collect();
    for node in nodes {
        let mut say = Say { report: &mut *report, strict, file: &node.file };
        let id = &node.spec.id;
        for (output, (name, pos)) in &node.output_types {
            if node.outputs_complete && !node.spec.outputs.contains(output) {
                let message =
                    format!("`output_types` of node `{id}` names output `{output}`, which it does not declare");
                say.say(*pos, message, format!("add `{output}` to the `outputs` of node `{id}`, or remove its type"));
            }
            say.unknown(name, *pos);
        }
        for (input, (name, pos)) in &node.input_types {
            let Some(spec) = node.spec.inputs.get(input) else {
                let message = format!("`input_types` of node `{id}` names input `{input}`, which it does not have");
                say.say(*pos, message, format!("node `{id}` has no input `{input}`; remove the type or add the input"));
                continue;
            };
            say.unknown(name, *pos);
            let InputSource::Node { node: producer, output } = &spec.source else { continue };
            let Some((sent, _)) = by_id.get(producer.as_str()).and_then(|p| p.output_types.get(output)) else {
                continue;
            };
            if !sent.compatible(name) {
                let message = format!(
                    "input `{id}/{input}` expects `{}` but `{producer}/{output}` sends `{}`",
                    name.text, sent.text
                );
                let hint = "types are annotations only, nothing is converted: make them agree (or remove one)";
                say.say(*pos, message, hint.to_owned());
            }
        }
    }
}

/// Reports about one node's file: warnings, or errors under `strict_types`.
struct Say<'a> {
    report: &'a mut Collector,
    strict: bool,
    file: &'a std::path::Path,
}

impl Say<'_> {
    fn say(&mut self, pos: Pos, message: String, hint: String) {
        if self.strict {
            let hint = format!("{hint} (an error because of `strict_types: true`)");
            self.report.error_hint_in(self.file, pos, message, hint);
        } else {
            self.report.warn_hint_in(self.file, pos, message, hint);
        }
    }

    fn unknown(&mut self, name: &TypeName, pos: Pos) {
        if name.base.starts_with("std/") && !STANDARD_TYPES.contains(&name.base.as_str()) {
            let hint = match crate::suggest::closest(&name.base, STANDARD_TYPES.iter().copied()) {
                Some(close) => format!("did you mean `{close}`? docs/dataflow.md lists the standard types"),
                None => "docs/dataflow.md lists the standard types".to_owned(),
            };
            self.say(pos, format!("unknown type `{}`", name.base), hint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TypeName;

    #[test]
    fn parameters_match_when_equal_or_left_open() {
        let t = |text| TypeName::parse(text).unwrap();
        assert!(t("std/media/v1/AudioFrame[sample_type=f32]").compatible(&t("std/media/v1/AudioFrame")));
        assert!(t("std/media/v1/AudioFrame").compatible(&t("std/media/v1/AudioFrame[channels=2]")));
        assert!(
            !t("std/media/v1/AudioFrame[sample_type=f32]").compatible(&t("std/media/v1/AudioFrame[sample_type=i16]"))
        );
        assert!(!t("std/core/v1/Float32").compatible(&t("std/core/v1/Float64")));
        assert!(t("acme/robot/v2/Wheel").compatible(&t("acme/robot/v2/Wheel")));
    }

    #[test]
    fn malformed_names_say_the_shape() {
        for bad in
            ["Float32", "std/core/1/Float32", "std/core/v1/", "std/core/v1/A[x]", "std/core/v1/A[x=1", "a b/c/v1/D"]
        {
            assert!(TypeName::parse(bad).is_err(), "{bad}");
        }
    }
}

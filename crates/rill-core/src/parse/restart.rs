//! `restart_policy`, `max_restarts` and `restart_delay`.

use std::time::Duration;

use crate::duration;
use crate::model::{RestartPolicy, RestartSpec};
use crate::read::{Fields, Reader};
use crate::yaml::{Node, Value};

/// The restart settings of a node; defaults where unset or wrong.
pub(super) fn restart(r: &mut Reader, fields: &Fields, label: &str) -> RestartSpec {
    let mut spec = RestartSpec::default();
    if let Some(value) = fields.get("restart_policy")
        && let Some(text) = r.optional_text(value, &format!("`restart_policy` of {label}"))
    {
        match text.as_str() {
            "never" => spec.policy = RestartPolicy::Never,
            "on-failure" => spec.policy = RestartPolicy::OnFailure,
            "always" => spec.policy = RestartPolicy::Always,
            _ => {
                let hint = "expected one of: never, on-failure, always";
                r.error_hint(value.pos, format!("invalid restart_policy `{text}` in {label}"), hint);
            }
        }
    }
    if let Some(value) = fields.get("max_restarts")
        && !matches!(value.value, Value::Null)
    {
        let what = format!("`max_restarts` of {label}");
        spec.max_restarts = r.count(value, &what).and_then(|count| match u32::try_from(count) {
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
            return r.wrong_type(value, &what, "a number of seconds or a string like \"500ms\"");
        }
    };
    delay.map_err(|problem| r.problem(value.pos, problem)).ok()
}

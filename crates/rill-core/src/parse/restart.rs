//! `restart_policy`, `max_restarts`, `restart_delay` and `max_restart_delay`.

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
        && let Some(delay) = delay(r, value, label, "restart_delay")
    {
        spec.restart_delay = delay;
    }
    // The cap of the doubling wait (the predecessor's 1.0 field).
    if let Some(value) = fields.get("max_restart_delay")
        && let Some(cap) = delay(r, value, label, "max_restart_delay")
    {
        spec.max_restart_delay = cap;
    }
    spec
}

/// Seconds as a YAML number, or a string with a unit; `None` if unset or reported.
fn delay(r: &mut Reader, value: &Node, label: &str, field: &str) -> Option<Duration> {
    let spelled = value.scalar_text(r.source).unwrap_or_default();
    let delay = match &value.value {
        Value::Null => return None,
        // Precision loss only beyond 2^53 seconds, which fails as too large anyway.
        Value::Int(secs) => duration::delay_from_number(*secs as f64, &spelled, field),
        Value::Float(secs) => duration::delay_from_number(*secs, &spelled, field),
        Value::Str(text) => duration::parse_delay(text, field),
        _ => {
            let what = format!("`{field}` of {label}");
            return r.wrong_type(value, &what, "a number of seconds or a string like \"500ms\"");
        }
    };
    delay.map_err(|problem| r.problem(value.pos, problem)).ok()
}

//! Durations: `restart_delay` (and other waits) spellings, display, and serde as whole numbers.

use std::time::Duration;

use crate::diagnostics::Problem;

const DELAY_HINT: &str = "use seconds as a number (`1.5`) or a string with a unit: \"500ms\", \"2s\", \"1.5s\", \"1m\"";

/// Parses a wait (`restart_delay`, ..., named `field` in messages) given as
/// text: a number with an optional unit (`ms`, `s`, `m`; seconds when there
/// is none). Rounded to whole milliseconds, the precision we store.
pub(crate) fn parse_delay(text: &str, field: &str) -> Result<Duration, Problem> {
    let trimmed = text.trim();
    let (number, unit_secs) = if let Some(number) = trimmed.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = trimmed.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = trimmed.strip_suffix('m') {
        (number, 60.0)
    } else {
        (trimmed, 1.0)
    };
    let invalid = || Problem::new(format!("invalid {field} `{text}`"), DELAY_HINT.to_owned());
    let value: f64 = number.trim().parse().map_err(|_| invalid())?;
    delay_from_secs(value * unit_secs).ok_or_else(invalid)
}

/// A wait named `field` given as a YAML number of seconds.
pub(crate) fn delay_from_number(secs: f64, spelled: &str, field: &str) -> Result<Duration, Problem> {
    delay_from_secs(secs).ok_or_else(|| Problem::new(format!("invalid {field} `{spelled}`"), DELAY_HINT.to_owned()))
}

/// `None` for negative, NaN or absurdly large values.
fn delay_from_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    let millis = (secs * 1000.0).round();
    Duration::try_from_secs_f64(millis / 1000.0).ok()
}

/// Short human form for messages and diagrams: `10ms`, `2s`, `33.333ms`.
pub(crate) fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", duration.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.3}ms", duration.as_secs_f64() * 1000.0)
    }
}

/// Serde for a [`Duration`] as whole milliseconds (u64).
pub(crate) mod serde_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Serde for a [`Duration`] as whole nanoseconds (u64).
pub(crate) mod serde_nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_spellings() {
        let parse = |text| parse_delay(text, "restart_delay");
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["", "abc", "-1s", "5 weeks", "NaNs", "1e400s"] {
            let problem = parse(bad).unwrap_err();
            assert_eq!(problem.message, format!("invalid restart_delay `{bad}`"));
        }
        assert_eq!(parse_delay("x", "max_restart_delay").unwrap_err().message, "invalid max_restart_delay `x`");
    }

    #[test]
    fn formats_briefly() {
        assert_eq!(format(Duration::from_millis(10)), "10ms");
        assert_eq!(format(Duration::from_secs(2)), "2s");
        assert_eq!(format(Duration::from_secs_f64(1.0 / 30.0)), "33.333ms");
    }
}

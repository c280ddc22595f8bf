//! Built-in timer sources: `rill/timer/millis/N`, `rill/timer/secs/N`, `rill/timer/hz/F`.

use std::time::Duration;

use crate::diagnostics::Problem;

const TIMER_HINT: &str = "use rill/timer/millis/N, rill/timer/secs/N or rill/timer/hz/F";

/// Parses the part of a built-in source after its `rill/` (or `dora/`) prefix.
/// `full` is the whole source, for messages.
pub(crate) fn parse(full: &str, rest: &str) -> Result<Duration, Problem> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [kind, unit, value] = parts.as_slice() else {
        return Err(not_a_timer(full, parts.first().copied()));
    };
    if *kind != "timer" {
        return Err(not_a_timer(full, Some(kind)));
    }
    let interval = match *unit {
        "millis" => Duration::from_millis(whole_number(full, value)?),
        "secs" => Duration::from_secs(whole_number(full, value)?),
        "hz" => from_hz(full, value)?,
        _ => {
            return Err(Problem::new(format!("unknown timer unit `{unit}` in `{full}`"), TIMER_HINT.to_owned()));
        }
    };
    if interval.is_zero() {
        return Err(Problem::new(
            format!("timer `{full}` has a zero interval"),
            "the interval must be greater than zero".to_owned(),
        ));
    }
    Ok(interval)
}

fn not_a_timer(full: &str, kind: Option<&str>) -> Problem {
    if kind == Some("timer") {
        return Problem::new(format!("invalid timer `{full}`"), TIMER_HINT.to_owned());
    }
    Problem::new(
        format!("unknown built-in source `{full}`"),
        format!("the only built-in sources are timers: {TIMER_HINT}"),
    )
}

fn whole_number(full: &str, value: &str) -> Result<u64, Problem> {
    value.parse().map_err(|_| {
        Problem::new(format!("invalid timer `{full}`: `{value}` is not a whole number"), TIMER_HINT.to_owned())
    })
}

fn from_hz(full: &str, value: &str) -> Result<Duration, Problem> {
    let hz: f64 = value.parse().map_err(|_| {
        Problem::new(format!("invalid timer `{full}`: `{value}` is not a number"), TIMER_HINT.to_owned())
    })?;
    if hz.is_nan() || hz <= 0.0 {
        return Err(Problem::new(format!("invalid timer `{full}`: the frequency must be greater than zero"), None));
    }
    // Too low a frequency overflows Duration; too high a one rounds to zero (reported by the caller).
    Duration::try_from_secs_f64(1.0 / hz)
        .map_err(|_| Problem::new(format!("invalid timer `{full}`: the frequency is too low"), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(full: &str) -> Result<Duration, Problem> {
        let rest = full.split_once('/').map_or("", |(_, rest)| rest);
        parse(full, rest)
    }

    #[test]
    fn units() {
        assert_eq!(timer("rill/timer/millis/10"), Ok(Duration::from_millis(10)));
        assert_eq!(timer("rill/timer/secs/2"), Ok(Duration::from_secs(2)));
        assert_eq!(timer("rill/timer/hz/4"), Ok(Duration::from_millis(250)));
        assert_eq!(timer("rill/timer/hz/0.5"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn errors() {
        let message = |full: &str| timer(full).unwrap_err().message;
        assert_eq!(
            message("rill/timer/millis/abc"),
            "invalid timer `rill/timer/millis/abc`: `abc` is not a whole number"
        );
        assert_eq!(message("rill/timer/weeks/1"), "unknown timer unit `weeks` in `rill/timer/weeks/1`");
        assert_eq!(message("rill/timer/millis/0"), "timer `rill/timer/millis/0` has a zero interval");
        assert_eq!(
            message("rill/timer/hz/0"),
            "invalid timer `rill/timer/hz/0`: the frequency must be greater than zero"
        );
        assert_eq!(
            message("rill/timer/hz/-3"),
            "invalid timer `rill/timer/hz/-3`: the frequency must be greater than zero"
        );
        assert_eq!(message("rill/timer/hz/1e-300"), "invalid timer `rill/timer/hz/1e-300`: the frequency is too low");
        assert_eq!(message("rill/timer/hz/1e300"), "timer `rill/timer/hz/1e300` has a zero interval");
        assert_eq!(message("rill/timer/millis"), "invalid timer `rill/timer/millis`");
        assert_eq!(message("rill/clock/1"), "unknown built-in source `rill/clock/1`");
    }
}

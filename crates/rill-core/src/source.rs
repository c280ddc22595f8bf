//! Input sources: `node/output` or a built-in timer.

use crate::diagnostics::Problem;
use crate::ids::{self, RESERVED};
use crate::model::InputSource;
use crate::timer;

/// Parses the text of an input's source. Whether the node and output exist is checked later,
/// once all nodes are known.
pub(crate) fn parse(text: &str) -> Result<InputSource, Problem> {
    let Some((node, rest)) = text.split_once('/') else {
        return Err(Problem::new(
            format!("invalid input source `{text}`: expected `node/output` or `rill/timer/...`"),
            "e.g. `camera/frames` or `rill/timer/millis/100`".to_owned(),
        ));
    };
    if RESERVED.contains(&node) {
        return timer::parse(text, rest).map(|interval| InputSource::Timer { interval });
    }
    if !ids::is_valid(node) {
        return Err(Problem::new(
            format!("invalid input source `{text}`: `{node}` is not a valid node id"),
            ids::ID_HINT.to_owned(),
        ));
    }
    if !ids::is_valid(rest) {
        return Err(Problem::new(
            format!("invalid input source `{text}`: `{rest}` is not a valid output id"),
            ids::ID_HINT.to_owned(),
        ));
    }
    Ok(InputSource::Node { node: node.to_owned(), output: rest.to_owned() })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn node_output_and_timers() {
        assert_eq!(parse("camera/frames"), Ok(InputSource::Node { node: "camera".into(), output: "frames".into() }));
        let ten_ms = InputSource::Timer { interval: Duration::from_millis(10) };
        assert_eq!(parse("rill/timer/millis/10"), Ok(ten_ms.clone()));
        assert_eq!(parse("dora/timer/millis/10"), Ok(ten_ms));
    }

    #[test]
    fn malformed() {
        let message = |text: &str| parse(text).unwrap_err().message;
        assert_eq!(message("camera"), "invalid input source `camera`: expected `node/output` or `rill/timer/...`");
        assert_eq!(message("camera/"), "invalid input source `camera/`: `` is not a valid output id");
        assert_eq!(message("/frames"), "invalid input source `/frames`: `` is not a valid node id");
        assert_eq!(message("a/b/c"), "invalid input source `a/b/c`: `b/c` is not a valid output id");
        assert_eq!(message("rill/foo"), "unknown built-in source `rill/foo`");
    }
}

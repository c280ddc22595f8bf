//! What a node counts about its messages, for its daemon (`rill list`,
//! `rill top`): per input, messages handed to the node's code and dropped
//! from its queue; per output, messages and bytes sent. Reported at most
//! once per [`REPORT_EVERY`] while something changed, and when the node
//! ends; the counts are cumulative, so a report that is lost costs nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rill_proto::{BacklogDrop, Counts, InputCount, OutputCount};

/// The most often a node reports its counts.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Counters {
    /// Input -> (received, dropped); only declared inputs (so it is bounded).
    inputs: HashMap<String, (u64, u64)>,
    /// Output -> (messages, bytes); only declared outputs.
    outputs: HashMap<String, (u64, u64)>,
    changed: bool,
    next_report: Instant,
}

impl Counters {
    pub(crate) fn new<'a>(inputs: impl Iterator<Item = &'a String>, outputs: impl Iterator<Item = &'a String>) -> Self {
        Self {
            inputs: inputs.map(|i| (i.clone(), (0, 0))).collect(),
            outputs: outputs.map(|o| (o.clone(), (0, 0))).collect(),
            // The first report (all zeros) says this node exists.
            changed: true,
            next_report: Instant::now(),
        }
    }

    pub(crate) fn received(&mut self, input: &str) {
        if let Some((received, _)) = self.inputs.get_mut(input) {
            *received += 1;
            self.changed = true;
        }
    }

    pub(crate) fn dropped(&mut self, input: &str) {
        if let Some((_, dropped)) = self.inputs.get_mut(input) {
            *dropped += 1;
            self.changed = true;
        }
    }

    pub(crate) fn sent(&mut self, output: &str, bytes: usize) {
        if let Some((messages, total)) = self.outputs.get_mut(output) {
            *messages += 1;
            *total += bytes as u64;
            self.changed = true;
        }
    }

    /// Something changed since the last report.
    pub(crate) fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// When the next report is due (`None`: nothing to report).
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.changed.then_some(self.next_report)
    }

    /// The counts to report now, with `backlog_drops` from the sending side.
    pub(crate) fn report(&mut self, backlog_drops: Vec<BacklogDrop>, now: Instant) -> Counts {
        self.changed = false;
        self.next_report = now + REPORT_EVERY;
        let mut inputs: Vec<InputCount> = self
            .inputs
            .iter()
            .map(|(input, (received, dropped))| InputCount {
                input: input.clone(),
                received: *received,
                dropped: *dropped,
            })
            .collect();
        inputs.sort_by(|a, b| a.input.cmp(&b.input));
        let mut outputs: Vec<OutputCount> = self
            .outputs
            .iter()
            .map(|(output, (messages, bytes))| OutputCount {
                output: output.clone(),
                messages: *messages,
                bytes: *bytes,
            })
            .collect();
        outputs.sort_by(|a, b| a.output.cmp(&b.output));
        Counts { inputs, outputs, backlog_drops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_declared_ports_and_reports_once_per_interval_while_changed() {
        let (inputs, outputs) = (vec!["in".to_owned()], vec!["out".to_owned()]);
        let mut c = Counters::new(inputs.iter(), outputs.iter());
        assert!(c.due_at().is_some(), "the first report says the node exists");
        c.received("in");
        c.received("in");
        c.dropped("in");
        c.received("bogus");
        c.sent("out", 100);
        c.sent("bogus", 1);
        let now = Instant::now();
        assert!(c.due_at().is_some_and(|at| at <= now));
        let counts = c.report(Vec::new(), now);
        assert_eq!(counts.inputs, [InputCount { input: "in".into(), received: 2, dropped: 1 }]);
        assert_eq!(counts.outputs, [OutputCount { output: "out".into(), messages: 1, bytes: 100 }]);
        assert_eq!(c.due_at(), None);
        c.received("in");
        assert_eq!(c.due_at(), Some(now + REPORT_EVERY), "not before the interval");
        assert_eq!(c.report(Vec::new(), now + REPORT_EVERY).inputs[0].received, 3, "cumulative");
    }
}

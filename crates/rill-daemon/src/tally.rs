//! Each node's message counters on this daemon, over its restarts: what its
//! runs reported (a run's counts start at 0) plus the timer ticks the
//! router dropped for it. Bounded by the dataflow: one entry per node, and
//! per node only names the dataflow has (its inputs and outputs, and
//! consumers' inputs for backlog drops).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rill_proto::coord::{InputCounts, NodeCounts};

use crate::router::Instance;

/// How often ticks dropped for a node are reported at most.
const TICK_DROPS_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct NodeTally {
    /// Earlier runs, added up.
    before: NodeCounts,
    /// The current run's last report.
    current: NodeCounts,
    run: Option<Instance>,
    /// Input -> timer ticks dropped because the node's queue was full.
    ticks_dropped: BTreeMap<String, u64>,
    /// Ticks were dropped since the last report.
    unreported: bool,
}

#[derive(Default)]
pub struct Tally {
    nodes: HashMap<String, NodeTally>,
    next_tick_report: Option<Instant>,
}

impl Tally {
    /// Run `instance` of `node` reported `counts`; `input(node, input)`
    /// and `output(node, output)` say which names exist (others are
    /// ignored). Returns the node's total.
    pub fn report(
        &mut self,
        node: &str,
        instance: Instance,
        mut counts: NodeCounts,
        input: impl Fn(&str, &str) -> bool,
        output: impl Fn(&str, &str) -> bool,
    ) -> NodeCounts {
        counts.inputs.retain(|name, _| input(node, name));
        counts.outputs.retain(|name, _| output(node, name));
        counts.backlog_drops.retain(|consumer, inputs| {
            inputs.retain(|name, _| input(consumer, name));
            !inputs.is_empty()
        });
        let tally = self.nodes.entry(node.to_owned()).or_default();
        if tally.run != Some(instance) {
            let previous = std::mem::take(&mut tally.current);
            tally.before.add(&previous);
            tally.run = Some(instance);
        }
        tally.current = counts;
        tally.unreported = false;
        total(tally)
    }

    /// The router dropped a tick for `node`'s `input`.
    pub fn tick_dropped(&mut self, node: &str, input: &str) {
        let Some(tally) = self.nodes.get_mut(node) else {
            self.nodes.insert(node.to_owned(), NodeTally::default());
            return self.tick_dropped(node, input);
        };
        match tally.ticks_dropped.get_mut(input) {
            Some(n) => *n += 1,
            None => {
                tally.ticks_dropped.insert(input.to_owned(), 1);
            }
        }
        tally.unreported = true;
    }

    /// Totals of nodes with unreported tick drops, at most once per
    /// [`TICK_DROPS_EVERY`] (`force`: now, at the end).
    pub fn due(&mut self, now: Instant, force: bool) -> Vec<(String, NodeCounts)> {
        if !force && self.next_tick_report.is_some_and(|at| now < at) {
            return Vec::new();
        }
        let due: Vec<(String, NodeCounts)> = self
            .nodes
            .iter_mut()
            .filter(|(_, t)| t.unreported)
            .map(|(node, t)| {
                t.unreported = false;
                (node.clone(), total(t))
            })
            .collect();
        if !due.is_empty() {
            self.next_tick_report = Some(now + TICK_DROPS_EVERY);
        }
        due
    }
}

fn total(tally: &NodeTally) -> NodeCounts {
    let mut total = tally.before.clone();
    total.add(&tally.current);
    for (input, n) in &tally.ticks_dropped {
        let ticks = NodeCounts {
            inputs: BTreeMap::from([(input.clone(), InputCounts { received: 0, dropped: *n })]),
            ..Default::default()
        };
        total.add(&ticks);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_proto::coord::OutputCounts;

    fn counts(received: u64, sent: u64) -> NodeCounts {
        let mut c = NodeCounts::default();
        c.inputs.insert("in".into(), InputCounts { received, dropped: 1 });
        c.inputs.insert("bogus".into(), InputCounts { received: 99, dropped: 99 });
        c.outputs.insert("out".into(), OutputCounts { messages: sent, bytes: sent * 10 });
        c
    }

    #[test]
    fn runs_add_up_unknown_inputs_are_ignored_and_tick_drops_count_once_a_second() {
        let mut tally = Tally::default();
        let known = |_: &str, input: &str| input == "in" || input == "tick";
        let out = |_: &str, output: &str| output == "out";
        assert_eq!(
            tally.report("n", 1, counts(5, 2), known, out).inputs["in"],
            InputCounts { received: 5, dropped: 1 }
        );
        let total = tally.report("n", 1, counts(8, 3), known, out);
        assert_eq!(total.inputs["in"].received, 8, "a run's reports are cumulative, not added");
        assert!(!total.inputs.contains_key("bogus"));
        let total = tally.report("n", 2, counts(4, 1), known, out);
        assert_eq!(total.inputs["in"], InputCounts { received: 12, dropped: 2 }, "a restart adds its counts");
        assert_eq!(total.outputs["out"], OutputCounts { messages: 4, bytes: 40 });

        let now = Instant::now();
        assert!(tally.due(now, false).is_empty());
        tally.tick_dropped("n", "tick");
        tally.tick_dropped("n", "tick");
        let due = tally.due(now, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.inputs["tick"], InputCounts { received: 0, dropped: 2 });
        tally.tick_dropped("n", "tick");
        assert!(tally.due(now + Duration::from_millis(500), false).is_empty(), "not twice a second");
        assert_eq!(tally.due(now + Duration::from_millis(500), true)[0].1.inputs["tick"].dropped, 3, "at the end");
        tally.tick_dropped("n", "tick");
        assert_eq!(tally.due(now + TICK_DROPS_EVERY * 2, false)[0].1.inputs["tick"].dropped, 4);
    }
}

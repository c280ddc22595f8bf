//! Node output the daemons stream in: the last lines of every dataflow,
//! and the `rill logs --follow` subscribers.

use std::collections::{HashMap, VecDeque};

use rill_proto::coord::LogLine;
use tokio::sync::mpsc;

/// Lines kept per dataflow.
const KEEP: usize = 1000;
/// Lines waiting for one `--follow` client; a client this far behind is
/// disconnected (its stream ends) rather than buffered without end.
pub const FOLLOW_QUEUE: usize = 4096;

struct Follower {
    uuid: String,
    node: Option<String>,
    tx: mpsc::Sender<LogLine>,
}

impl Follower {
    fn wants(&self, line: &LogLine) -> bool {
        self.uuid == line.uuid && self.node.as_ref().is_none_or(|n| n == &line.node)
    }
}

/// Kept lines and subscribers.
#[derive(Default)]
pub struct Logs {
    kept: HashMap<String, VecDeque<LogLine>>,
    followers: Vec<Follower>,
}

impl Logs {
    pub fn push(&mut self, line: LogLine) {
        // Subscribers that went away, or fell FOLLOW_QUEUE lines behind, are dropped here.
        self.followers.retain(|f| !f.wants(&line) || f.tx.try_send(line.clone()).is_ok());
        let kept = self.kept.entry(line.uuid.clone()).or_default();
        if kept.len() == KEEP {
            kept.pop_front();
        }
        kept.push_back(line);
    }

    /// A dataflow record was pruned: its lines and followers go too.
    pub fn forget(&mut self, uuid: &str) {
        self.kept.remove(uuid);
        self.followers.retain(|f| f.uuid != uuid);
    }

    /// The kept lines of `uuid` (one node's, if given).
    pub fn kept(&self, uuid: &str, node: Option<&str>) -> Vec<LogLine> {
        self.kept.get(uuid).into_iter().flatten().filter(|l| node.is_none_or(|n| n == l.node)).cloned().collect()
    }

    /// The kept lines, and every later one on the receiver (no gap: both
    /// happen under the same lock).
    pub fn follow(&mut self, uuid: &str, node: Option<&str>) -> (Vec<LogLine>, mpsc::Receiver<LogLine>) {
        // Followers of quiet dataflows that went away are dropped here.
        self.followers.retain(|f| !f.tx.is_closed());
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        self.followers.push(Follower { uuid: uuid.to_owned(), node: node.map(str::to_owned), tx });
        (self.kept(uuid, node), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(uuid: &str, node: &str, text: &str) -> LogLine {
        LogLine { uuid: uuid.into(), node: node.into(), stream: "stdout".into(), line: text.into() }
    }

    #[test]
    fn keeps_the_last_lines_and_feeds_followers_of_that_node() {
        let mut logs = Logs::default();
        logs.push(line("u", "a", "1"));
        logs.push(line("u", "b", "2"));
        let (kept, mut rx) = logs.follow("u", Some("a"));
        assert_eq!(kept, [line("u", "a", "1")]);
        logs.push(line("u", "b", "3"));
        logs.push(line("u", "a", "4"));
        logs.push(line("v", "a", "5"));
        assert_eq!(rx.try_recv().ok(), Some(line("u", "a", "4")));
        assert!(rx.try_recv().is_err());
        for i in 0..KEEP + 5 {
            logs.push(line("u", "a", &i.to_string()));
        }
        assert_eq!(logs.kept("u", None).len(), KEEP);
    }

    #[test]
    fn a_follower_that_falls_behind_is_dropped_and_forget_removes_everything() {
        let mut logs = Logs::default();
        let (_, mut slow) = logs.follow("u", None);
        for i in 0..FOLLOW_QUEUE + 1 {
            logs.push(line("u", "a", &i.to_string()));
        }
        assert!(logs.followers.is_empty(), "dropped when its queue was full");
        let mut received = 0;
        while slow.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, FOLLOW_QUEUE, "what was queued is still delivered, then the stream ends");
        let (_, _rx) = logs.follow("u", None);
        logs.forget("u");
        assert!(logs.kept("u", None).is_empty() && logs.followers.is_empty());
    }
}

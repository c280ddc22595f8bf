//! Node output the daemons stream in: the last lines of every dataflow,
//! and the `rill logs --follow` subscribers.

use std::collections::{HashMap, VecDeque};

use rill_proto::coord::{LogLine, MAX_LOG_LINE};
use tokio::sync::mpsc;

/// Lines kept per dataflow (the last ones)...
const KEEP: usize = 1000;
/// ...and at most this many bytes of them.
pub const KEEP_BYTES: usize = 1024 * 1024;
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

/// The last lines of one dataflow and their size in bytes.
#[derive(Default)]
struct Kept {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

/// Kept lines and subscribers.
#[derive(Default)]
pub struct Logs {
    kept: HashMap<String, Kept>,
    followers: Vec<Follower>,
}

fn size(line: &LogLine) -> usize {
    line.line.len() + line.node.len() + line.stream.len()
}

impl Logs {
    /// A line of a dataflow the caller knows (the uuid comes from a daemon).
    /// A line longer than [`MAX_LOG_LINE`] (only a buggy daemon sends one)
    /// is cut.
    pub fn push(&mut self, mut line: LogLine) {
        if line.line.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !line.line.is_char_boundary(end) {
                end -= 1;
            }
            line.line.truncate(end);
        }
        // Subscribers that went away, or fell FOLLOW_QUEUE lines behind, are dropped here.
        self.followers.retain(|f| !f.wants(&line) || f.tx.try_send(line.clone()).is_ok());
        let kept = self.kept.entry(line.uuid.clone()).or_default();
        kept.bytes += size(&line);
        kept.lines.push_back(line);
        while kept.lines.len() > KEEP || kept.bytes > KEEP_BYTES {
            let Some(old) = kept.lines.pop_front() else { break };
            kept.bytes -= size(&old);
        }
    }

    /// A dataflow record was pruned: its lines and followers go too.
    /// The dataflow `uuid` ended: its followers are let go (they get every
    /// line pushed before this, then the end).
    pub fn ended(&mut self, uuid: &str) {
        self.followers.retain(|f| f.uuid != uuid);
    }

    /// Uuids that have followers.
    pub fn followed(&self) -> Vec<String> {
        self.followers.iter().map(|f| f.uuid.clone()).collect()
    }

    pub fn forget(&mut self, uuid: &str) {
        self.kept.remove(uuid);
        self.followers.retain(|f| f.uuid != uuid);
    }

    /// The kept lines of `uuid` (one node's, if given).
    pub fn kept(&self, uuid: &str, node: Option<&str>) -> Vec<LogLine> {
        self.kept
            .get(uuid)
            .into_iter()
            .flat_map(|k| &k.lines)
            .filter(|l| node.is_none_or(|n| n == l.node))
            .cloned()
            .collect()
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
    fn followers_of_an_ended_dataflow_get_its_lines_then_the_end() {
        let mut logs = Logs::default();
        let (_, mut rx) = logs.follow("u", None);
        logs.push(line("u", "n", "last"));
        assert_eq!(logs.followed(), ["u"]);
        logs.ended("u");
        assert_eq!(rx.try_recv().map(|l| l.line), Ok("last".to_owned()));
        assert!(matches!(rx.try_recv(), Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)));
        assert!(logs.followed().is_empty());
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
    fn kept_lines_are_bounded_in_bytes_and_a_line_too_long_is_cut() {
        let mut logs = Logs::default();
        logs.push(line("u", "a", &"é".repeat(MAX_LOG_LINE)));
        let first = logs.kept("u", None);
        assert!(
            first[0].line.len() <= MAX_LOG_LINE && first[0].line.len() > MAX_LOG_LINE - 2,
            "cut on a char boundary"
        );
        for _ in 0..100 {
            logs.push(line("u", "a", &"x".repeat(60_000)));
        }
        let kept: usize = logs.kept("u", None).iter().map(size).sum();
        assert!(kept <= KEEP_BYTES && kept > KEEP_BYTES - 70_000, "{kept}");
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

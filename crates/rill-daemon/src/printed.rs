//! What nodes print, as outputs: `send_stdout_as` (every line, as UTF-8
//! text) and `send_logs_as` (log records, as JSON), filtered by
//! `min_log_level`. The daemon sends these for the node, from the threads
//! that read its stdout and stderr, under a producer id of their own
//! ([`producer_id`]): the router wires that producer like a node that is
//! always there, and each consumer's end is written with rill-node's
//! [`EdgeWriter`], so lines go through the consumer's queue like any message
//! (a slow consumer loses the oldest; the node never waits).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use rill_core::{Dataflow, LogLevel, Printed};
use rill_node::{EdgeWriter, PoolLimits};
use rill_proto::{Metadata, Route};
use serde_json::{Map, Value};

/// Longest line sent on a `send_stdout_as` output; the rest is cut.
pub const MAX_PRINTED_LINE: usize = 1024 * 1024;

/// The producer id under which the daemon sends what `node` prints. `~`
/// cannot be in a node id, so it names no node.
pub fn producer_id(node: &str) -> String {
    format!("{node}{PRINTED}")
}

const PRINTED: &str = "~printed";

/// The node whose prints `producer` sends (itself for a node).
pub fn node_of(producer: &str) -> &str {
    producer.strip_suffix(PRINTED).unwrap_or(producer)
}

/// A line that is a log record: a JSON object with a `level` and a
/// message (`message`, `msg`, or `fields.message` as `tracing` writes it).
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
    pub target: Option<String>,
    pub timestamp: Option<Value>,
    pub fields: Map<String, Value>,
}

impl LogRecord {
    /// The record in `line`, if it is one.
    pub fn parse(line: &str) -> Option<LogRecord> {
        if !line.trim_start().starts_with('{') {
            return None;
        }
        let Value::Object(mut object) = serde_json::from_str::<Value>(line).ok()? else { return None };
        let level = LogLevel::parse(object.get("level")?.as_str()?)?;
        // (`stdout` names plain prints; a record cannot claim it.)
        if level == LogLevel::Stdout {
            return None;
        }
        let mut fields = match object.remove("fields") {
            Some(Value::Object(fields)) => fields,
            _ => Map::new(),
        };
        let message =
            ["message", "msg"].iter().find_map(|key| object.remove(*key)).or_else(|| fields.remove("message")).map(
                |m| match m {
                    Value::String(text) => text,
                    other => other.to_string(),
                },
            )?;
        let target = object.remove("target").and_then(|t| t.as_str().map(str::to_owned));
        let timestamp = object.remove("timestamp").or_else(|| object.remove("time"));
        object.remove("level");
        // What else the logger wrote (span, thread, ...) is kept among the fields.
        for (key, value) in object {
            fields.entry(key).or_insert(value);
        }
        Some(LogRecord { level, message, target, timestamp, fields })
    }

    /// A plain print, as a record of level `stdout`.
    pub fn plain(line: &str) -> LogRecord {
        LogRecord {
            level: LogLevel::Stdout,
            message: line.to_owned(),
            target: None,
            timestamp: None,
            fields: Map::new(),
        }
    }

    /// The record as it is sent (documented in docs/dataflow.md):
    /// `{"node","level","message","target","timestamp","fields"}`.
    pub fn to_json(&self, node: &str) -> Vec<u8> {
        let record = serde_json::json!({
            "node": node,
            "level": self.level.name(),
            "message": self.message,
            "target": self.target,
            "timestamp": self.timestamp,
            "fields": self.fields,
        });
        record.to_string().into_bytes()
    }
}

/// What to do with one printed line.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    /// Shown in `rill logs` (false only for a record below `min_log_level`).
    pub log: bool,
}

/// One consumer's edge from a node's printed outputs.
struct Consumer {
    name: String,
    routes: Vec<Route>,
    writer: EdgeWriter,
    /// On another machine: its end goes (after a flush) when the producer closes.
    remote: bool,
}

/// Where one node's printed lines go, and whether they still may.
struct Printer {
    consumers: Vec<Consumer>,
    /// stdout and stderr pipes still being read, over its runs.
    open_pipes: usize,
    /// The node ended for good.
    finished: bool,
    /// Its consumers got their close (nothing more is sent).
    closed: bool,
}

/// How long the end of an edge to another machine is flushed after the
/// close, before it is let go (the bridge then publishes the close).
const REMOTE_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// The printed outputs of the nodes that run here.
pub struct Printers {
    /// What each node's prints are for (fixed: read without the lock).
    printed: HashMap<String, Printed>,
    /// By producer id; only nodes with printed outputs. Held only to
    /// attach a writer or to hand a message to the writers (which never block).
    printers: Mutex<HashMap<String, Printer>>,
    limits: PoolLimits,
}

impl Printers {
    /// For the nodes of `dataflow` that `runs_here`.
    pub fn new(dataflow: &Dataflow, runs_here: impl Fn(&str) -> bool) -> Printers {
        let local = dataflow.nodes.iter().filter(|n| runs_here(&n.id));
        let printed: HashMap<String, Printed> = local.map(|n| (n.id.clone(), n.printed.clone())).collect();
        let printers = printed
            .iter()
            .filter(|(_, p)| p.outputs().next().is_some())
            .map(|(node, _)| {
                let printer = Printer { consumers: Vec::new(), open_pipes: 0, finished: false, closed: false };
                (producer_id(node), printer)
            })
            .collect();
        Printers { printed, printers: Mutex::new(printers), limits: PoolLimits::from_env() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Printer>) -> T) -> Option<T> {
        self.printers.lock().ok().map(|mut printers| f(&mut printers))
    }

    /// Whether `producer` is a printed-output producer of a node running here.
    pub fn produces(&self, producer: &str) -> bool {
        self.printed.get(node_of(producer)).is_some_and(|p| p.outputs().next().is_some())
            && producer != node_of(producer)
    }

    /// The producer's end of an edge to `consumer` (a restarted consumer's
    /// new end replaces the old one). After the producer closed, the
    /// consumer gets the close on it at once.
    pub fn attach(&self, producer: &str, consumer: &str, routes: Vec<Route>, fd: OwnedFd, remote: bool) {
        let inputs: Vec<(String, usize)> =
            routes.iter().map(|r| (r.input.clone(), usize::try_from(r.queue_size).unwrap_or(usize::MAX))).collect();
        let writer = match EdgeWriter::new(consumer, fd, &inputs, self.limits) {
            Ok(writer) => writer,
            Err(e) => return eprintln!("rill: cannot send what {} prints to {consumer}: {e}", node_of(producer)),
        };
        let consumer = Consumer { name: consumer.to_owned(), routes, writer, remote };
        // (A replaced writer is dropped after the lock: dropping stops its flusher.)
        let replaced = self.with(|printers| {
            let printer = printers.get_mut(producer)?;
            if printer.closed {
                consumer.writer.close();
            }
            let old =
                printer.consumers.iter().position(|c| c.name == consumer.name).map(|i| printer.consumers.remove(i));
            printer.consumers.push(consumer);
            old
        });
        drop(replaced);
    }

    /// The longest line worth reading from `node` (its stdout output may
    /// carry more than a log line).
    pub fn max_line(&self, node: &str) -> usize {
        let sends_lines = self.printed.get(node).is_some_and(|p| p.stdout_as.is_some());
        if sends_lines { MAX_PRINTED_LINE } else { crate::lines::MAX_LINE }
    }

    /// A pipe of `node`'s began to be read.
    pub fn pipe_opened(&self, node: &str) {
        self.with(|p| p.get_mut(&producer_id(node)).map(|p| p.open_pipes += 1));
    }

    /// Sends `line` on `node`'s printed outputs, and says whether it belongs
    /// in the log.
    pub fn line(&self, node: &str, line: &str) -> Verdict {
        let Some(printed) = self.printed.get(node) else { return Verdict { log: true } };
        // (Read and written outside the lock.)
        let wants_records = printed.logs_as.is_some() || printed.min_log_level.is_some();
        let record = wants_records.then(|| LogRecord::parse(line)).flatten();
        let min = printed.min_log_level.unwrap_or(LogLevel::Stdout);
        let passes = record.as_ref().is_none_or(|r| r.level <= min);
        let json = printed.logs_as.as_ref().and_then(|_| match &record {
            Some(record) if passes => Some(record.to_json(node)),
            // A plain print is a record of level `stdout`, the least.
            None if min == LogLevel::Stdout => Some(LogRecord::plain(line).to_json(node)),
            _ => None,
        });
        if printed.stdout_as.is_none() && json.is_none() {
            return Verdict { log: passes };
        }
        let metadata = Metadata { timestamp_ns: rill_proto::now_ns() };
        self.with(|printers| {
            let Some(printer) = printers.get(&producer_id(node)).filter(|p| !p.closed) else { return };
            if let Some(output) = &printed.stdout_as {
                send(printer, output, metadata, line.as_bytes());
            }
            if let (Some(output), Some(json)) = (&printed.logs_as, &json) {
                send(printer, output, metadata, json);
            }
        });
        Verdict { log: passes }
    }

    /// A pipe of `node`'s reached its end. True when this closed its
    /// printed outputs (the node had ended for good): the caller tells the
    /// router, for consumers on other machines.
    pub fn pipe_ended(&self, node: &str) -> bool {
        self.close_when(node, |p| {
            p.open_pipes = p.open_pipes.saturating_sub(1);
            p.finished && p.open_pipes == 0
        })
    }

    /// `node` ended for good; like [`Printers::pipe_ended`].
    pub fn finished(&self, node: &str) -> bool {
        self.close_when(node, |p| {
            p.finished = true;
            p.open_pipes == 0
        })
    }

    /// Closes `node`'s printed outputs although a pipe is still open (a
    /// process it left behind holds it); like [`Printers::pipe_ended`].
    pub fn force_close(&self, node: &str) -> bool {
        self.close_when(node, |p| p.finished)
    }

    /// Closes `node`'s printed outputs if `due` says so (and they are open):
    /// each consumer gets its close behind the last line, in band. Ends to
    /// other machines are flushed, then let go, on a thread of their own.
    fn close_when(&self, node: &str, due: impl FnOnce(&mut Printer) -> bool) -> bool {
        let closed = self.with(|printers| {
            let printer = printers.get_mut(&producer_id(node))?;
            if !due(printer) || printer.closed {
                return None;
            }
            printer.closed = true;
            for consumer in &printer.consumers {
                consumer.writer.close();
            }
            // Local consumers' writers stay until the run ends, so their
            // backlogs are still delivered.
            let (remote, local): (Vec<Consumer>, Vec<Consumer>) =
                std::mem::take(&mut printer.consumers).into_iter().partition(|c| c.remote);
            printer.consumers = local;
            Some(remote)
        });
        let Some(remote) = closed.flatten() else { return false };
        if !remote.is_empty() {
            let flushing = std::thread::Builder::new().name(format!("printed-{node}")).spawn(move || {
                for consumer in &remote {
                    consumer.writer.flush_for(REMOTE_FLUSH);
                }
            });
            if let Err(e) = flushing {
                eprintln!("rill: cannot flush what {node} printed to other machines: {e}");
            }
        }
        true
    }
}

fn send(printer: &Printer, output: &str, metadata: Metadata, payload: &[u8]) {
    for consumer in &printer.consumers {
        for route in consumer.routes.iter().filter(|r| r.output == output) {
            // A full pool drops the line, as it would a node's message.
            let _ = consumer.writer.send(&route.input, metadata, payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_common_loggers_are_read_and_plain_lines_are_not() {
        let tracing = r#"{"timestamp":"2026-12-05T10:00:00Z","level":"WARN","fields":{"message":"low battery","pct":9},"target":"robot::power"}"#;
        let record = LogRecord::parse(tracing).expect("a tracing-subscriber JSON line");
        assert_eq!((record.level, record.message.as_str()), (LogLevel::Warn, "low battery"));
        assert_eq!(record.target.as_deref(), Some("robot::power"));
        assert_eq!(record.fields.get("pct"), Some(&serde_json::json!(9)));
        let python = r#"{"level": "error", "msg": "lost camera", "thread": "main"}"#;
        let record = LogRecord::parse(python).expect("msg is a message too");
        assert_eq!((record.level, record.message.as_str()), (LogLevel::Error, "lost camera"));
        assert_eq!(record.fields.get("thread"), Some(&serde_json::json!("main")), "other keys are kept as fields");
        for plain in [
            "hello",
            "{not json",
            r#"{"level":"info"}"#,
            r#"{"level":"loud","message":"x"}"#,
            r#"{"level":"stdout","message":"x"}"#,
            "[1]",
        ] {
            assert_eq!(LogRecord::parse(plain), None, "{plain}");
        }
        let json: Value = serde_json::from_slice(&LogRecord::plain("hi").to_json("cam")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"node":"cam","level":"stdout","message":"hi","target":null,"timestamp":null,"fields":{}})
        );
    }

    #[test]
    fn min_log_level_drops_quieter_records_from_the_log_but_never_plain_prints() {
        let flow = Dataflow::parse(
            "nodes:\n  - id: a\n    path: ./a\n    min_log_level: warn\n",
            std::path::Path::new("t.yml"),
        )
        .unwrap();
        let printers = Printers::new(&flow, |_| true);
        assert_eq!(printers.line("a", r#"{"level":"info","message":"x"}"#), Verdict { log: false });
        assert_eq!(printers.line("a", r#"{"level":"warn","message":"x"}"#), Verdict { log: true });
        assert_eq!(printers.line("a", "plain"), Verdict { log: true });
        assert!(!printers.produces(&producer_id("a")), "no printed outputs");
        assert!(!printers.finished("a"), "nothing to close");
    }
}

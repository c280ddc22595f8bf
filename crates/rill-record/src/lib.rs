//! Recordings of what a dataflow's outputs sent, in MCAP (the robotics
//! log format Foxglove and the ROS 2 tooling open). `rill record` writes
//! one channel per output (topic `node/output`, metadata `node`, `output`,
//! `machine`), each message with its original send time as `log_time` and
//! `publish_time`, and a `rill` metadata record with what was lost.
//! `rill replay` reads them back ([`recorded`], [`Messages`]) and runs a
//! dataflow with recorded outputs replacing their producers
//! ([`replace_producers`]).
//!
//! Payloads are raw bytes (`message_encoding` [`MESSAGE_ENCODING`], no
//! schema): rill does not know what nodes put in them. Files are written
//! uncompressed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use mcap::records::MessageHeader;
use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader, LinearReaderOptions};
use rill_core::{Dataflow, RestartPolicy};
use rill_proto::coord::TapOutput;
use rill_proto::tap::TapFrame;

/// The message encoding of every channel: bytes as the node sent them.
pub const MESSAGE_ENCODING: &str = "application/octet-stream";
/// The name of the metadata record rill writes.
pub const METADATA_NAME: &str = "rill";
/// The largest record a reader accepts (a message is at most
/// [`rill_proto::tap::MAX_TAP_PREVIEW`]; chunks hold several).
const RECORD_LIMIT: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} exists already: choose another file with -o, or remove it")]
    Exists { path: PathBuf },
    #[error("{path}: not a readable MCAP recording: {reason}")]
    Mcap { path: PathBuf, reason: String },
    #[error("{path} has no recorded output `{topic}`{hint}")]
    NotRecorded { path: PathBuf, topic: String, hint: String },
    #[error("the dataflow has no output `{topic}` (recorded in {path}){hint}")]
    NotInDataflow { path: PathBuf, topic: String, hint: String },
    #[error("nothing to replay: no output recorded in {path} is an output of this dataflow")]
    NothingToReplay { path: PathBuf },
}

/// What a recording holds or a recorder wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages: u64,
    pub bytes: u64,
    /// Messages the tap skipped (it could not keep up).
    pub dropped: u64,
    /// Messages longer than a tap carries, recorded cut.
    pub cut: u64,
    /// Messages per topic.
    pub per_topic: BTreeMap<String, u64>,
}

/// Writes tap frames into an MCAP file.
pub struct Recorder {
    path: PathBuf,
    writer: mcap::Writer<BufWriter<File>>,
    /// Per tap output: its channel id, topic and next sequence number.
    channels: Vec<(u16, String, u32)>,
    stats: Stats,
    about: BTreeMap<String, String>,
}

fn mcap_error(path: &Path, e: impl std::fmt::Display) -> RecordError {
    RecordError::Mcap { path: path.to_owned(), reason: e.to_string() }
}

impl Recorder {
    /// Creates `path` (never over an existing file) with a channel per
    /// output. `about` goes into the `rill` metadata record (dataflow name,
    /// uuid, ...).
    pub fn create(path: &Path, outputs: &[TapOutput], about: BTreeMap<String, String>) -> Result<Self, RecordError> {
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => RecordError::Exists { path: path.to_owned() },
            _ => RecordError::Io { path: path.to_owned(), source: e },
        })?;
        let mut writer = mcap::WriteOptions::new()
            .compression(None)
            .profile("")
            .library(format!("rill {}", env!("CARGO_PKG_VERSION")))
            .create(BufWriter::new(file))
            .map_err(|e| mcap_error(path, e))?;
        let mut channels = Vec::new();
        for o in outputs {
            let topic = format!("{}/{}", o.node, o.output);
            let metadata = BTreeMap::from([
                ("node".to_owned(), o.node.clone()),
                ("output".to_owned(), o.output.clone()),
                ("machine".to_owned(), o.machine.clone()),
            ]);
            let id = writer.add_channel(0, &topic, MESSAGE_ENCODING, &metadata).map_err(|e| mcap_error(path, e))?;
            channels.push((id, topic, 0));
        }
        Ok(Self { path: path.to_owned(), writer, channels, stats: Stats::default(), about })
    }

    /// Writes every sample of a frame (decoded and checked by the caller).
    pub fn write(&mut self, frame: &TapFrame) -> Result<(), RecordError> {
        self.stats.dropped = self.stats.dropped.saturating_add(frame.dropped);
        for sample in &frame.samples {
            let Some((channel_id, topic, sequence)) = self.channels.get_mut(sample.output as usize) else { continue };
            let header = MessageHeader {
                channel_id: *channel_id,
                sequence: *sequence,
                log_time: sample.timestamp_ns,
                publish_time: sample.timestamp_ns,
            };
            *sequence = sequence.wrapping_add(1);
            // A recording's tap takes every message: one skipped was lost.
            self.stats.dropped = self.stats.dropped.saturating_add(sample.skipped);
            self.writer.write_to_known_channel(&header, &sample.data).map_err(|e| mcap_error(&self.path, e))?;
            self.stats.messages += 1;
            self.stats.bytes += sample.data.len() as u64;
            if (sample.data.len() as u64) < sample.size {
                self.stats.cut += 1;
            }
            *self.stats.per_topic.entry(topic.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// Writes the `rill` metadata record, the summary and the footer.
    pub fn finish(mut self) -> Result<Stats, RecordError> {
        let mut metadata = self.about.clone();
        metadata.insert("dropped".into(), self.stats.dropped.to_string());
        metadata.insert("cut".into(), self.stats.cut.to_string());
        let record = mcap::records::Metadata { name: METADATA_NAME.into(), metadata };
        self.writer.write_metadata(&record).map_err(|e| mcap_error(&self.path, e))?;
        self.writer.finish().map_err(|e| mcap_error(&self.path, e))?;
        let mut inner = self.writer.into_inner();
        std::io::Write::flush(&mut inner).map_err(|e| RecordError::Io { path: self.path.clone(), source: e })?;
        inner.get_ref().sync_all().map_err(|e| RecordError::Io { path: self.path.clone(), source: e })?;
        Ok(self.stats)
    }
}

/// A recorded output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `node/output`.
    pub topic: String,
    pub node: String,
    pub output: String,
    pub messages: u64,
    /// The first message's `log_time` (ns since the Unix epoch).
    pub first_ns: Option<u64>,
}

/// One record of an MCAP file at a time, read with bounded memory.
struct Records {
    path: PathBuf,
    file: File,
    reader: LinearReader,
}

/// What [`Records::next`] yields.
enum Item {
    Channel { id: u16, topic: String, node: Option<String>, output: Option<String> },
    Message { channel: u16, log_time: u64, data: Vec<u8> },
    Other,
}

impl Records {
    fn open(path: &Path) -> Result<Self, RecordError> {
        let file = File::open(path).map_err(|e| RecordError::Io { path: path.to_owned(), source: e })?;
        let options = LinearReaderOptions::default().with_record_length_limit(RECORD_LIMIT);
        Ok(Self { path: path.to_owned(), file, reader: LinearReader::new_with_options(options) })
    }

    fn next(&mut self) -> Option<Result<Item, RecordError>> {
        loop {
            let event = match self.reader.next_event()? {
                Ok(event) => event,
                Err(e) => return Some(Err(mcap_error(&self.path, e))),
            };
            match event {
                LinearReadEvent::ReadRequest(need) => match self.file.read(self.reader.insert(need)) {
                    Ok(n) => self.reader.notify_read(n),
                    Err(e) => return Some(Err(RecordError::Io { path: self.path.clone(), source: e })),
                },
                LinearReadEvent::Record { opcode, data } => {
                    let item = match mcap::parse_record(opcode, data) {
                        Ok(mcap::records::Record::Channel(c)) => Item::Channel {
                            id: c.id,
                            node: c.metadata.get("node").cloned(),
                            output: c.metadata.get("output").cloned(),
                            topic: c.topic,
                        },
                        Ok(mcap::records::Record::Message { header, data }) => Item::Message {
                            channel: header.channel_id,
                            log_time: header.log_time,
                            data: data.into_owned(),
                        },
                        Ok(_) => Item::Other,
                        Err(e) => return Some(Err(mcap_error(&self.path, e))),
                    };
                    return Some(Ok(item));
                }
            }
        }
    }
}

/// The outputs recorded in `path`, in the order their channels appear.
pub fn recorded(path: &Path) -> Result<Vec<Recorded>, RecordError> {
    let mut records = Records::open(path)?;
    let mut channels: Vec<Recorded> = Vec::new();
    let mut ids: HashMap<u16, usize> = HashMap::new();
    while let Some(item) = records.next() {
        match item? {
            Item::Channel { id, topic, node, output } if !ids.contains_key(&id) => {
                // A channel written by another tool: `node/output` from its topic.
                let (n, o) = match (node, output) {
                    (Some(n), Some(o)) => (n, o),
                    _ => topic.split_once('/').map(|(n, o)| (n.to_owned(), o.to_owned())).unwrap_or_default(),
                };
                ids.insert(id, channels.len());
                channels.push(Recorded { topic, node: n, output: o, messages: 0, first_ns: None });
            }
            Item::Message { channel, log_time, .. } => {
                if let Some(c) = ids.get(&channel).and_then(|i| channels.get_mut(*i)) {
                    c.messages += 1;
                    c.first_ns = Some(c.first_ns.map_or(log_time, |f| f.min(log_time)));
                }
            }
            Item::Channel { .. } | Item::Other => {}
        }
    }
    Ok(channels)
}

/// The messages of some topics of a recording, in file order (each
/// topic's in the order they were sent).
pub struct Messages {
    records: Records,
    topics: Vec<String>,
    channels: HashMap<u16, String>,
}

/// One recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub log_time: u64,
    pub data: Vec<u8>,
}

impl Messages {
    /// The messages of `topics` (`node/output`) in `path`.
    pub fn open(path: &Path, topics: &[String]) -> Result<Self, RecordError> {
        Ok(Self { records: Records::open(path)?, topics: topics.to_vec(), channels: HashMap::new() })
    }
}

impl Iterator for Messages {
    type Item = Result<Message, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.records.next()? {
                Err(e) => return Some(Err(e)),
                Ok(Item::Channel { id, topic, .. }) => {
                    if self.topics.contains(&topic) {
                        self.channels.insert(id, topic);
                    }
                }
                Ok(Item::Message { channel, log_time, data }) => {
                    if let Some(topic) = self.channels.get(&channel) {
                        return Some(Ok(Message { topic: topic.clone(), log_time, data }));
                    }
                }
                Ok(Item::Other) => {}
            }
        }
    }
}

/// What [`replace_producers`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Replaced node -> the recorded outputs it replays.
    pub nodes: BTreeMap<String, Vec<String>>,
    /// Recorded topics the dataflow has no output for (skipped).
    pub skipped: Vec<String>,
    /// The earliest send time among the replayed messages: every replay
    /// node's time zero, so timing between nodes is kept too.
    pub start_ns: u64,
}

/// Replaces, in `dataflow`, each node that produces one of the recorded
/// outputs (`wanted`, or every recorded output the dataflow has) by a
/// replay node: `program(node, outputs, start_ns)` gives its path and
/// arguments. A replay node keeps its id and outputs, loses its inputs and
/// build, and is never restarted. An output it does not replay stays
/// silent.
pub fn replace_producers(
    dataflow: &mut Dataflow,
    path: &Path,
    recorded: &[Recorded],
    wanted: Option<&[String]>,
    program: impl Fn(&str, &[String], u64) -> (String, Vec<String>),
) -> Result<Replacement, RecordError> {
    let outputs: Vec<String> =
        dataflow.nodes.iter().flat_map(|n| n.outputs.iter().map(move |o| format!("{}/{o}", n.id))).collect();
    let recorded_topics: Vec<&str> = recorded.iter().map(|r| r.topic.as_str()).collect();
    let mut chosen: Vec<&Recorded> = Vec::new();
    let mut skipped = Vec::new();
    match wanted {
        Some(wanted) => {
            for topic in wanted {
                let Some(r) = recorded.iter().find(|r| &r.topic == topic) else {
                    let hint = rill_core::did_you_mean(topic, recorded_topics.iter().copied(), "recorded outputs");
                    return Err(RecordError::NotRecorded { path: path.to_owned(), topic: topic.clone(), hint });
                };
                if !outputs.contains(topic) {
                    let hint = rill_core::did_you_mean(topic, outputs.iter().map(String::as_str), "its outputs");
                    return Err(RecordError::NotInDataflow { path: path.to_owned(), topic: topic.clone(), hint });
                }
                chosen.push(r);
            }
        }
        None => {
            for r in recorded {
                match outputs.contains(&r.topic) {
                    true => chosen.push(r),
                    false => skipped.push(r.topic.clone()),
                }
            }
        }
    }
    if chosen.is_empty() {
        return Err(RecordError::NothingToReplay { path: path.to_owned() });
    }
    let start_ns = chosen.iter().filter_map(|r| r.first_ns).min().unwrap_or(0);
    let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &chosen {
        nodes.entry(r.node.clone()).or_default().push(r.output.clone());
    }
    for node in dataflow.nodes.iter_mut() {
        let Some(replayed) = nodes.get(&node.id) else { continue };
        let (program, args) = program(&node.id, replayed, start_ns);
        node.path = program;
        node.args = args;
        node.inputs.clear();
        node.build = None;
        node.restart.policy = RestartPolicy::Never;
    }
    Ok(Replacement { nodes, skipped, start_ns })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_proto::tap::TapSample;

    fn output(node: &str, output: &str) -> TapOutput {
        TapOutput { node: node.into(), output: output.into(), machine: "a".into() }
    }

    fn sample(output: u64, t: u64, data: &[u8], size: u64) -> TapSample {
        TapSample { output, timestamp_ns: t, received_ns: t + 1, size, skipped: 0, data: data.to_vec() }
    }

    #[test]
    fn a_recording_reads_back_channel_by_channel_in_order_and_is_never_written_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.mcap");
        let about = BTreeMap::from([("dataflow".to_owned(), "app".to_owned())]);
        let mut recorder =
            Recorder::create(&path, &[output("cam", "image"), output("imu", "data")], about.clone()).expect("creates");
        let frame = TapFrame {
            tap: 1,
            dropped: 2,
            samples: vec![sample(0, 100, b"img1", 4), sample(1, 150, b"imu1", 4), sample(0, 200, b"im", 9)],
        };
        recorder.write(&frame).expect("writes");
        let stats = recorder.finish().expect("finishes");
        assert_eq!((stats.messages, stats.bytes, stats.dropped, stats.cut), (3, 10, 2, 1));
        assert!(matches!(Recorder::create(&path, &[], about), Err(RecordError::Exists { .. })));

        let channels = recorded(&path).expect("reads");
        let summary: Vec<(&str, u64, Option<u64>)> =
            channels.iter().map(|c| (c.topic.as_str(), c.messages, c.first_ns)).collect();
        assert_eq!(summary, [("cam/image", 2, Some(100)), ("imu/data", 1, Some(150))]);
        let cam: Vec<Message> =
            Messages::open(&path, &["cam/image".into()]).expect("opens").collect::<Result<_, _>>().expect("reads");
        let cam: Vec<(u64, &[u8])> = cam.iter().map(|m| (m.log_time, m.data.as_slice())).collect();
        assert_eq!(cam, [(100, &b"img1"[..]), (200, &b"im"[..])]);

        // The mcap crate's own reader agrees, and sees the metadata.
        let bytes = std::fs::read(&path).expect("read");
        let all: Vec<_> = mcap::MessageStream::new(&bytes).expect("stream").collect::<Result<_, _>>().expect("msgs");
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|m| m.channel.message_encoding == MESSAGE_ENCODING));
        let summary = mcap::Summary::read(&bytes).expect("summary").expect("has one");
        assert_eq!(summary.stats.map(|s| s.message_count), Some(3));

        // Not an MCAP file.
        std::fs::write(dir.path().join("x"), b"hello").expect("write");
        assert!(matches!(recorded(&dir.path().join("x")), Err(RecordError::Mcap { .. })));
    }

    #[test]
    fn recorded_producers_are_replaced_by_replay_nodes_and_bad_names_are_refused() {
        let yaml = "nodes:
  - id: cam
    path: camera
    build: make
    inputs: { tick: rill/timer/millis/10 }
    outputs: [image, meta]
  - id: sink
    path: sink
    inputs: { a: cam/image }
";
        let base = rill_core::Dataflow::parse(yaml, Path::new("t.yml")).expect("valid");
        let path = Path::new("r.mcap");
        let recorded = vec![
            Recorded {
                topic: "cam/image".into(),
                node: "cam".into(),
                output: "image".into(),
                messages: 3,
                first_ns: Some(50),
            },
            Recorded {
                topic: "gone/out".into(),
                node: "gone".into(),
                output: "out".into(),
                messages: 1,
                first_ns: Some(10),
            },
        ];
        let program = |node: &str, outputs: &[String], start: u64| {
            ("rill".to_owned(), vec![node.to_owned(), outputs.join(","), start.to_string()])
        };
        let mut dataflow = base.clone();
        let done = replace_producers(&mut dataflow, path, &recorded, None, program).expect("replaces");
        assert_eq!(done.nodes, BTreeMap::from([("cam".to_owned(), vec!["image".to_owned()])]));
        assert_eq!((done.skipped, done.start_ns), (vec!["gone/out".to_owned()], 50));
        let cam = &dataflow.nodes[0];
        assert_eq!((cam.path.as_str(), cam.args.join(" ")), ("rill", "cam image 50".to_owned()));
        assert!(cam.inputs.is_empty() && cam.build.is_none() && cam.outputs == ["image", "meta"]);
        assert_eq!(dataflow.nodes[1], base.nodes[1], "the sink is untouched");

        let mut dataflow = base.clone();
        let wanted = ["cam/imag".to_owned()];
        let err = replace_producers(&mut dataflow, path, &recorded, Some(&wanted), program).expect_err("refused");
        assert!(
            err.to_string().contains("no recorded output `cam/imag`") && err.to_string().contains("cam/image"),
            "{err}"
        );
        let wanted = ["gone/out".to_owned()];
        let err = replace_producers(&mut dataflow, path, &recorded, Some(&wanted), program).expect_err("refused");
        assert!(err.to_string().contains("the dataflow has no output `gone/out`"), "{err}");
        let err = replace_producers(&mut dataflow, path, &recorded[1..], None, program).expect_err("refused");
        assert!(matches!(err, RecordError::NothingToReplay { .. }), "{err}");
    }
}

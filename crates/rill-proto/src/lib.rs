//! Wire messages of the local planes and the bounded event queue both ends
//! use.
//!
//! Two kinds of connections, each a `SOCK_SEQPACKET` socket pair (one
//! message per packet, so the packet boundary is the frame):
//! - **control**, daemon <-> node (the node's fd 3): timer ticks,
//!   `InputClosed`, `Stop`, and the data connections (edges) themselves,
//!   passed as fds with [`DaemonMsg::Edge`];
//! - **edges**, producer <-> consumer, one per pair of nodes that exchange
//!   data: [`EdgeMsg::Data`] one way, [`EdgeMsg::Release`] back. The daemon
//!   wires them and is not on the data path, so a message costs one hop.
//!
//! Shared-memory fds ride as `SCM_RIGHTS` with the first message that names
//! a region on an edge. The encoding is hand-written (little endian,
//! `u16`-prefixed strings): this is the hot path and the shapes are tiny.

mod codec;
#[cfg(feature = "coord")]
pub mod coord;
mod queue;
pub mod shm;
pub mod tap;
pub mod transport;

pub use codec::{DecodeError, Reader, Writer};
pub use queue::{BoundedQueue, Pushed};

/// Payloads of at least this many bytes travel through shared memory.
pub const SHM_THRESHOLD: usize = 4096;
/// Largest packet either side sends; inline payloads are far below it.
pub const MAX_PACKET: usize = 64 * 1024;
/// Protocol version of the local planes, checked at node start.
pub const LOCAL_PROTOCOL_VERSION: u16 = 2;

/// Environment variables the daemon sets for every node process.
pub mod env {
    /// File descriptor number of the node's control connection.
    pub const FD: &str = "RILL_NODE_FD";
    /// The node's id.
    pub const NODE_ID: &str = "RILL_NODE_ID";
    /// Comma-separated `input:queue_size` pairs.
    pub const INPUTS: &str = "RILL_NODE_INPUTS";
    /// Comma-separated output ids.
    pub const OUTPUTS: &str = "RILL_NODE_OUTPUTS";
    /// Local protocol version the daemon speaks.
    pub const PROTOCOL: &str = "RILL_LOCAL_PROTOCOL";
}

/// Nanoseconds since the Unix epoch (the clock of [`Metadata::timestamp_ns`]).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Data that comes with every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metadata {
    /// When the sender called `send`, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
}

/// Where a payload lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Copied into the message (small payloads).
    Inline(Vec<u8>),
    /// The first `len` bytes of the producer's shared region `region`.
    Shared { region: u64, len: u64, region_len: u64 },
}

/// One route an edge carries: the producer's `output` feeds the consumer's
/// `input`, whose queue keeps `queue_size` messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub output: String,
    pub input: String,
    pub queue_size: u32,
}

/// Which end of an edge a node gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This node produces into the edge.
    Out,
    /// This node consumes from the edge.
    In,
}

/// Daemon -> node, on the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonMsg {
    /// A data connection with `peer` (its fd rides along), replacing any
    /// earlier one with the same peer and direction.
    Edge { direction: Direction, peer: String, routes: Vec<Route> },
    /// Every edge of the start is delivered: the node may begin.
    Start,
    /// A timer input ticked.
    Tick { input: String, metadata: Metadata },
    /// The producer of `input` is gone for good.
    InputClosed { input: String },
    /// Stop now: finish up and exit.
    Stop,
    /// Drop the outbound edge to `peer` (a tap that ended): what waits for
    /// it and what it holds are released.
    Unwire { peer: String },
    /// An outbound edge to a tap ([`tap`]): like `Edge`, but the producer
    /// sends it at most one message per `every_us` per output (0: every
    /// one), and names in each how many it skipped before
    /// ([`tap::tap_input`]).
    Tap { peer: String, routes: Vec<Route>, every_us: u64 },
}

/// Node -> daemon, on the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMsg {
    /// What the node counted since it started (cumulative: a report that
    /// is lost or late costs nothing). Sent at most once a second while
    /// something changed, and when the node ends.
    Counts(Counts),
}

/// A node's message counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Per input: messages handed to the node's code, and messages dropped
    /// from its queue (drop-oldest) before it read them.
    pub inputs: Vec<InputCount>,
    /// Per output: messages and payload bytes sent.
    pub outputs: Vec<OutputCount>,
    /// Messages this node dropped from its backlog for a consumer's input
    /// (that consumer did not read fast enough; drop-oldest).
    pub backlog_drops: Vec<BacklogDrop>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputCount {
    pub input: String,
    pub received: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputCount {
    pub output: String,
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BacklogDrop {
    pub consumer: String,
    pub input: String,
    pub dropped: u64,
}

/// The most entries of each list a [`NodeMsg::Counts`] decodes: a node has
/// far fewer inputs, outputs and consumers; a bad peer cannot make more.
pub const MAX_COUNTED: usize = 4096;

/// On an edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeMsg {
    /// Producer -> consumer: a message for `input`. `new_region`: this
    /// packet carries the region's fd (first use on this edge).
    Data { input: String, metadata: Metadata, payload: Payload, new_region: bool },
    /// Producer -> consumer: region destroyed, drop its mapping.
    Unmap { region: u64 },
    /// Consumer -> producer: `count` deliveries of `region` are done with.
    Release { region: u64, count: u32 },
    /// Producer -> consumer, after everything it sent: `input` is closed
    /// for good (its producer ran on another machine and ended there; the
    /// bridge says so in the edge, so the close cannot pass its data).
    Closed { input: String },
}

const TAG_EDGE: u8 = 10;
const TAG_START: u8 = 11;
const TAG_TICK: u8 = 12;
const TAG_INPUT_CLOSED: u8 = 13;
const TAG_STOP: u8 = 14;
const TAG_COUNTS: u8 = 15;
const TAG_UNWIRE: u8 = 16;
const TAG_TAP: u8 = 17;
const TAG_DATA: u8 = 20;
const TAG_UNMAP: u8 = 21;
const TAG_RELEASE: u8 = 22;
const TAG_CLOSED: u8 = 23;
const PAYLOAD_INLINE: u8 = 0;
const PAYLOAD_SHARED: u8 = 1;

fn put_routes(w: &mut Writer<'_>, routes: &[Route]) {
    w.u64(routes.len() as u64);
    for route in routes {
        w.str(&route.output);
        w.str(&route.input);
        w.u64(u64::from(route.queue_size));
    }
}

fn get_routes(r: &mut Reader<'_>) -> Result<Vec<Route>, DecodeError> {
    let count = r.u64()?;
    let mut routes = Vec::new();
    for _ in 0..count.min(u64::from(u16::MAX)) {
        let output = r.str()?.to_owned();
        let input = r.str()?.to_owned();
        let queue_size = u32::try_from(r.u64()?).unwrap_or(u32::MAX);
        routes.push(Route { output, input, queue_size });
    }
    Ok(routes)
}

fn put_payload(w: &mut Writer<'_>, payload: &Payload) {
    match payload {
        Payload::Inline(bytes) => {
            w.u8(PAYLOAD_INLINE);
            w.bytes(bytes);
        }
        Payload::Shared { region, len, region_len } => {
            w.u8(PAYLOAD_SHARED);
            w.u64(*region);
            w.u64(*len);
            w.u64(*region_len);
        }
    }
}

fn get_payload(r: &mut Reader<'_>) -> Result<Payload, DecodeError> {
    match r.u8()? {
        PAYLOAD_INLINE => Ok(Payload::Inline(r.bytes()?.to_vec())),
        PAYLOAD_SHARED => Ok(Payload::Shared { region: r.u64()?, len: r.u64()?, region_len: r.u64()? }),
        other => Err(DecodeError::UnknownTag(other)),
    }
}

impl DaemonMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self {
            DaemonMsg::Edge { direction, peer, routes } => {
                w.u8(TAG_EDGE);
                w.u8(match direction {
                    Direction::Out => 0,
                    Direction::In => 1,
                });
                w.str(peer);
                put_routes(&mut w, routes);
            }
            DaemonMsg::Start => w.u8(TAG_START),
            DaemonMsg::Tick { input, metadata } => {
                w.u8(TAG_TICK);
                w.str(input);
                w.u64(metadata.timestamp_ns);
            }
            DaemonMsg::InputClosed { input } => {
                w.u8(TAG_INPUT_CLOSED);
                w.str(input);
            }
            DaemonMsg::Stop => w.u8(TAG_STOP),
            DaemonMsg::Unwire { peer } => {
                w.u8(TAG_UNWIRE);
                w.str(peer);
            }
            DaemonMsg::Tap { peer, routes, every_us } => {
                w.u8(TAG_TAP);
                w.str(peer);
                put_routes(&mut w, routes);
                w.u64(*every_us);
            }
        }
    }

    /// Decodes one packet.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            TAG_EDGE => {
                let direction = match r.u8()? {
                    0 => Direction::Out,
                    1 => Direction::In,
                    other => return Err(DecodeError::UnknownTag(other)),
                };
                let peer = r.str()?.to_owned();
                DaemonMsg::Edge { direction, peer, routes: get_routes(&mut r)? }
            }
            TAG_START => DaemonMsg::Start,
            TAG_TICK => DaemonMsg::Tick { input: r.str()?.to_owned(), metadata: Metadata { timestamp_ns: r.u64()? } },
            TAG_INPUT_CLOSED => DaemonMsg::InputClosed { input: r.str()?.to_owned() },
            TAG_STOP => DaemonMsg::Stop,
            TAG_UNWIRE => DaemonMsg::Unwire { peer: r.str()?.to_owned() },
            TAG_TAP => DaemonMsg::Tap { peer: r.str()?.to_owned(), routes: get_routes(&mut r)?, every_us: r.u64()? },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl NodeMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self {
            NodeMsg::Counts(counts) => {
                w.u8(TAG_COUNTS);
                w.u64(counts.inputs.len() as u64);
                for c in &counts.inputs {
                    w.str(&c.input);
                    w.u64(c.received);
                    w.u64(c.dropped);
                }
                w.u64(counts.outputs.len() as u64);
                for c in &counts.outputs {
                    w.str(&c.output);
                    w.u64(c.messages);
                    w.u64(c.bytes);
                }
                w.u64(counts.backlog_drops.len() as u64);
                for c in &counts.backlog_drops {
                    w.str(&c.consumer);
                    w.str(&c.input);
                    w.u64(c.dropped);
                }
            }
        }
    }

    /// Decodes one packet (lists longer than [`MAX_COUNTED`] are refused).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            TAG_COUNTS => {
                let mut counts = Counts::default();
                for _ in 0..list_len(&mut r)? {
                    counts.inputs.push(InputCount {
                        input: r.str()?.to_owned(),
                        received: r.u64()?,
                        dropped: r.u64()?,
                    });
                }
                for _ in 0..list_len(&mut r)? {
                    counts.outputs.push(OutputCount {
                        output: r.str()?.to_owned(),
                        messages: r.u64()?,
                        bytes: r.u64()?,
                    });
                }
                for _ in 0..list_len(&mut r)? {
                    let (consumer, input) = (r.str()?.to_owned(), r.str()?.to_owned());
                    counts.backlog_drops.push(BacklogDrop { consumer, input, dropped: r.u64()? });
                }
                NodeMsg::Counts(counts)
            }
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

fn list_len(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    let n = r.u64()?;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_COUNTED => Ok(n),
        _ => Err(DecodeError::TooMany(n)),
    }
}

/// An inline `Data` message's input and metadata, up to its payload's
/// length (what [`EdgeMsg::encode_inline_head`] writes but the length).
fn read_inline_head<'a>(r: &mut Reader<'a>) -> Result<(&'a str, Metadata), DecodeError> {
    let tag = r.u8()?;
    if tag != TAG_DATA {
        return Err(DecodeError::UnknownTag(tag));
    }
    let input = r.str()?;
    let metadata = Metadata { timestamp_ns: r.u64()? };
    let _new_region = r.u8()?;
    match r.u8()? {
        PAYLOAD_INLINE => Ok((input, metadata)),
        other => Err(DecodeError::UnknownTag(other)),
    }
}

impl EdgeMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self {
            EdgeMsg::Data { input, metadata, payload, new_region } => {
                w.u8(TAG_DATA);
                w.str(input);
                w.u64(metadata.timestamp_ns);
                w.u8(u8::from(*new_region));
                put_payload(&mut w, payload);
            }
            EdgeMsg::Unmap { region } => {
                w.u8(TAG_UNMAP);
                w.u64(*region);
            }
            EdgeMsg::Release { region, count } => {
                w.u8(TAG_RELEASE);
                w.u64(*region);
                w.u64(u64::from(*count));
            }
            EdgeMsg::Closed { input } => {
                w.u8(TAG_CLOSED);
                w.str(input);
            }
        }
    }

    /// Whether an encoded message is a [`EdgeMsg::Closed`] (checked without
    /// decoding, on the data path).
    pub fn is_closed(buf: &[u8]) -> bool {
        buf.first() == Some(&TAG_CLOSED)
    }

    /// Encodes `Data` with an inline payload copied straight from `payload`
    /// (one copy, no intermediate `Vec`).
    pub fn encode_inline_data(input: &str, metadata: Metadata, payload: &[u8], out: &mut Vec<u8>) {
        out.reserve(payload.len() + input.len() + 32);
        Self::encode_inline_head(input, metadata, payload.len(), out);
        out.extend_from_slice(payload);
    }

    /// The head of an inline `Data` message whose `len` payload bytes
    /// follow it: `head ++ payload` is what [`EdgeMsg::encode_inline_data`]
    /// writes, so a payload can travel by reference behind it.
    pub fn encode_inline_head(input: &str, metadata: Metadata, len: usize, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.u8(TAG_DATA);
        w.str(input);
        w.u64(metadata.timestamp_ns);
        w.u8(0);
        w.u8(PAYLOAD_INLINE);
        w.u64(len as u64);
    }

    /// The head of an inline `Data` message of `total` bytes, read from a
    /// `prefix` of it: the input, the metadata, and where the payload
    /// starts. The payload must fill the rest of the message exactly, so
    /// its length is `total - start` (else `LengthMismatch`). A prefix too
    /// short for the head is `Truncated`.
    pub fn split_inline_head(prefix: &[u8], total: usize) -> Result<(&str, Metadata, usize), DecodeError> {
        let mut r = Reader::new(prefix);
        let (input, metadata) = read_inline_head(&mut r)?;
        let len = r.u64()?;
        let start = prefix.len() - r.remaining();
        let rest = total.saturating_sub(start) as u64;
        if rest != len {
            return Err(DecodeError::LengthMismatch { declared: len, actual: rest });
        }
        Ok((input, metadata, start))
    }

    /// The parts of an encoded inline `Data` message, borrowed from `buf`.
    pub fn split_inline_data(buf: &[u8]) -> Result<(&str, Metadata, &[u8]), DecodeError> {
        let mut r = Reader::new(buf);
        let (input, metadata) = read_inline_head(&mut r)?;
        let payload = r.bytes()?;
        r.finish()?;
        Ok((input, metadata, payload))
    }

    /// Decodes one packet.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            TAG_DATA => {
                let input = r.str()?.to_owned();
                let metadata = Metadata { timestamp_ns: r.u64()? };
                let new_region = r.u8()? != 0;
                let payload = get_payload(&mut r)?;
                EdgeMsg::Data { input, metadata, payload, new_region }
            }
            TAG_UNMAP => EdgeMsg::Unmap { region: r.u64()? },
            TAG_RELEASE => EdgeMsg::Release { region: r.u64()?, count: u32::try_from(r.u64()?).unwrap_or(u32::MAX) },
            TAG_CLOSED => EdgeMsg::Closed { input: r.str()?.to_owned() },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_an_absurd_list_length_is_refused() {
        let counts = Counts {
            inputs: vec![InputCount { input: "in".into(), received: 7, dropped: 3 }],
            outputs: vec![OutputCount { output: "out".into(), messages: 9, bytes: 1 << 40 }],
            backlog_drops: vec![BacklogDrop { consumer: "sink".into(), input: "in".into(), dropped: 2 }],
        };
        let mut buf = Vec::new();
        NodeMsg::Counts(counts.clone()).encode(&mut buf);
        assert_eq!(NodeMsg::decode(&buf), Ok(NodeMsg::Counts(counts)));
        let mut absurd = vec![TAG_COUNTS];
        absurd.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(NodeMsg::decode(&absurd), Err(DecodeError::TooMany(u64::MAX)));
        assert_eq!(NodeMsg::decode(&buf[..buf.len() - 1]), Err(DecodeError::Truncated));
    }

    fn daemon_roundtrip(msg: DaemonMsg) {
        let mut buf = Vec::new();
        msg.encode(&mut buf);
        assert_eq!(DaemonMsg::decode(&buf).unwrap(), msg);
    }

    fn edge_roundtrip(msg: EdgeMsg) {
        let mut buf = Vec::new();
        msg.encode(&mut buf);
        assert_eq!(EdgeMsg::decode(&buf).unwrap(), msg);
    }

    #[test]
    fn every_message_round_trips() {
        let metadata = Metadata { timestamp_ns: 42 };
        daemon_roundtrip(DaemonMsg::Edge {
            direction: Direction::Out,
            peer: "sink".into(),
            routes: vec![Route { output: "out".into(), input: "in".into(), queue_size: 10 }],
        });
        daemon_roundtrip(DaemonMsg::Edge { direction: Direction::In, peer: "src".into(), routes: vec![] });
        daemon_roundtrip(DaemonMsg::Start);
        daemon_roundtrip(DaemonMsg::Tick { input: "tick".into(), metadata });
        daemon_roundtrip(DaemonMsg::InputClosed { input: "in".into() });
        daemon_roundtrip(DaemonMsg::Stop);
        daemon_roundtrip(DaemonMsg::Unwire { peer: "rill:tap:7".into() });
        daemon_roundtrip(DaemonMsg::Tap {
            peer: "rill:tap:7".into(),
            routes: vec![Route { output: "out".into(), input: "out".into(), queue_size: 64 }],
            every_us: 1000,
        });
        edge_roundtrip(EdgeMsg::Data {
            input: "in".into(),
            metadata,
            payload: Payload::Inline(vec![1, 2]),
            new_region: false,
        });
        edge_roundtrip(EdgeMsg::Data {
            input: "frames".into(),
            metadata,
            payload: Payload::Shared { region: 7, len: 5000, region_len: 8192 },
            new_region: true,
        });
        edge_roundtrip(EdgeMsg::Unmap { region: 3 });
        edge_roundtrip(EdgeMsg::Release { region: 3, count: 2 });
        edge_roundtrip(EdgeMsg::Closed { input: "frames".into() });
        let mut closed = Vec::new();
        EdgeMsg::Closed { input: String::new() }.encode(&mut closed);
        assert!(EdgeMsg::is_closed(&closed) && !EdgeMsg::is_closed(&[TAG_DATA]) && !EdgeMsg::is_closed(&[]));
    }

    #[test]
    fn inline_data_is_encoded_and_split_without_copies() {
        let metadata = Metadata { timestamp_ns: 7 };
        let mut direct = Vec::new();
        EdgeMsg::encode_inline_data("in", metadata, &[1, 2, 3], &mut direct);
        let mut via_enum = Vec::new();
        EdgeMsg::Data { input: "in".into(), metadata, payload: Payload::Inline(vec![1, 2, 3]), new_region: false }
            .encode(&mut via_enum);
        assert_eq!(direct, via_enum);
        assert_eq!(EdgeMsg::split_inline_data(&direct), Ok(("in", metadata, &[1u8, 2, 3][..])));
        let mut head = Vec::new();
        EdgeMsg::encode_inline_head("in", metadata, 3, &mut head);
        assert_eq!([head.as_slice(), &[1, 2, 3]].concat(), direct, "head ++ payload is the message");
        assert_eq!(EdgeMsg::split_inline_head(&direct[..head.len()], direct.len()), Ok(("in", metadata, head.len())));
        // A length that does not match the message, or a head cut short.
        let mismatch = |actual| Err(DecodeError::LengthMismatch { declared: 3, actual });
        assert_eq!(EdgeMsg::split_inline_head(&direct, direct.len() + 1), mismatch(4));
        assert_eq!(EdgeMsg::split_inline_head(&direct, direct.len() - 1), mismatch(2));
        assert_eq!(EdgeMsg::split_inline_head(&direct, 0), mismatch(0), "a total shorter than the head");
        assert_eq!(EdgeMsg::split_inline_head(&direct[..head.len() - 1], direct.len()), Err(DecodeError::Truncated));
        let mut shared = Vec::new();
        EdgeMsg::Data {
            input: "in".into(),
            metadata,
            payload: Payload::Shared { region: 1, len: 1, region_len: 1 },
            new_region: false,
        }
        .encode(&mut shared);
        assert!(EdgeMsg::split_inline_data(&shared).is_err());
    }

    #[test]
    fn truncated_and_unknown_packets_are_errors() {
        let mut buf = Vec::new();
        EdgeMsg::Unmap { region: 9 }.encode(&mut buf);
        assert_eq!(EdgeMsg::decode(&buf[..4]), Err(DecodeError::Truncated));
        assert_eq!(EdgeMsg::decode(&[200]), Err(DecodeError::UnknownTag(200)));
        buf.push(0);
        assert_eq!(EdgeMsg::decode(&buf), Err(DecodeError::TrailingBytes));
        assert_eq!(DaemonMsg::decode(&[TAG_EDGE, 9]), Err(DecodeError::UnknownTag(9)));
    }
}

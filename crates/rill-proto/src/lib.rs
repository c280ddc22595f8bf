//! Wire messages of the local data plane (node <-> daemon) and the bounded
//! event queue both ends use.
//!
//! One message travels as one `SOCK_SEQPACKET` packet, so there is no length
//! framing: the packet boundary is the frame. Shared-memory file descriptors
//! ride along as `SCM_RIGHTS` ancillary data of the packet that first names
//! the region. The encoding is hand-written (little endian, `u16`-prefixed
//! strings) because this is the hot path and the shapes are tiny.

mod codec;
mod queue;
pub mod transport;

pub use codec::{DecodeError, Reader, Writer};
pub use queue::{BoundedQueue, Pushed};

/// Payloads of at least this many bytes travel through shared memory.
pub const SHM_THRESHOLD: usize = 4096;
/// Largest packet either side sends; inline payloads are far below it.
pub const MAX_PACKET: usize = 64 * 1024;
/// Inputs the daemon writes to a node before the node acknowledges them.
pub const INPUT_WINDOW: u32 = 32;
/// A node acknowledges inputs in batches of this many (must be below the window).
pub const ACK_EVERY: u32 = INPUT_WINDOW / 2;
/// Protocol version of the local plane, checked at node start.
pub const LOCAL_PROTOCOL_VERSION: u16 = 1;

/// Environment variables the daemon sets for every node process.
pub mod env {
    /// File descriptor number of the node's connection to the daemon.
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
    /// A slice of a shared-memory region; `len` bytes from offset 0.
    Shared { region: u64, len: u64, region_len: u64 },
}

/// Node -> daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMsg {
    /// Publish `payload` on `output`. For `Payload::Shared`, `region` is the
    /// sender's own region id; the packet carries the region's fd when
    /// `new_region` is set.
    Send { output: String, metadata: Metadata, payload: Payload, new_region: bool },
    /// The receiver is done with the shared message `token`.
    Release { token: u64 },
    /// The sender destroyed one of its regions (it was idle).
    RegionDropped { region: u64 },
    /// The node took `count` more inputs off its socket.
    Ack { count: u32 },
}

/// Daemon -> node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonMsg {
    /// An input arrived. For `Payload::Shared`, `region` is the daemon-wide
    /// region key; the packet carries its fd when the node has not seen it.
    Input { input: String, metadata: Metadata, payload: Payload, token: u64, new_region: bool },
    /// The producer of `input` is gone for good.
    InputClosed { input: String },
    /// Stop now: finish up and exit.
    Stop,
    /// All receivers are done with the sender's region: it may be reused.
    Reclaim { region: u64 },
    /// Forget the mapping of region key `region`.
    Unmap { region: u64 },
}

impl DaemonMsg {
    /// Control messages are never dropped by a full queue.
    pub fn is_droppable(&self) -> bool {
        matches!(self, DaemonMsg::Input { .. })
    }
}

const TAG_SEND: u8 = 1;
const TAG_RELEASE: u8 = 2;
const TAG_REGION_DROPPED: u8 = 3;
const TAG_ACK: u8 = 4;
const TAG_INPUT: u8 = 11;
const TAG_INPUT_CLOSED: u8 = 12;
const TAG_STOP: u8 = 13;
const TAG_RECLAIM: u8 = 14;
const TAG_UNMAP: u8 = 15;
const TAG_BATCH: u8 = 20;
const PAYLOAD_INLINE: u8 = 0;
const PAYLOAD_SHARED: u8 = 1;

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

impl NodeMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self {
            NodeMsg::Send { output, metadata, payload, new_region } => {
                w.u8(TAG_SEND);
                w.str(output);
                w.u64(metadata.timestamp_ns);
                w.u8(u8::from(*new_region));
                put_payload(&mut w, payload);
            }
            NodeMsg::Release { token } => {
                w.u8(TAG_RELEASE);
                w.u64(*token);
            }
            NodeMsg::RegionDropped { region } => {
                w.u8(TAG_REGION_DROPPED);
                w.u64(*region);
            }
            NodeMsg::Ack { count } => {
                w.u8(TAG_ACK);
                w.u64(u64::from(*count));
            }
        }
    }

    /// Decodes one packet.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            TAG_SEND => {
                let output = r.str()?.to_owned();
                let metadata = Metadata { timestamp_ns: r.u64()? };
                let new_region = r.u8()? != 0;
                let payload = get_payload(&mut r)?;
                NodeMsg::Send { output, metadata, payload, new_region }
            }
            TAG_RELEASE => NodeMsg::Release { token: r.u64()? },
            TAG_REGION_DROPPED => NodeMsg::RegionDropped { region: r.u64()? },
            TAG_ACK => NodeMsg::Ack { count: u32::try_from(r.u64()?).unwrap_or(u32::MAX) },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Several daemon messages in one packet: a tag, then each message as a
/// `u32` length and its encoding. Under load the daemon sends batches, so a
/// node takes many messages per system call.
pub struct Batch<'a> {
    out: &'a mut Vec<u8>,
    count: usize,
}

impl<'a> Batch<'a> {
    /// Starts a batch in the empty buffer `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.clear();
        out.push(TAG_BATCH);
        Self { out, count: 0 }
    }

    pub fn push(&mut self, msg: &DaemonMsg) {
        let start = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        msg.encode(self.out);
        let len = (self.out.len() - start - 4) as u32;
        self.out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Calls `each` with every message of a packet (one, or a batch's).
pub fn for_each_daemon_msg(packet: &[u8], mut each: impl FnMut(DaemonMsg)) -> Result<(), DecodeError> {
    if packet.first() != Some(&TAG_BATCH) {
        each(DaemonMsg::decode(packet)?);
        return Ok(());
    }
    let mut rest = &packet[1..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let body = rest.get(4..4 + len).ok_or(DecodeError::Truncated)?;
        each(DaemonMsg::decode(body)?);
        rest = &rest[4 + len..];
    }
    Ok(())
}

impl DaemonMsg {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        match self {
            DaemonMsg::Input { input, metadata, payload, token, new_region } => {
                w.u8(TAG_INPUT);
                w.str(input);
                w.u64(metadata.timestamp_ns);
                w.u64(*token);
                w.u8(u8::from(*new_region));
                put_payload(&mut w, payload);
            }
            DaemonMsg::InputClosed { input } => {
                w.u8(TAG_INPUT_CLOSED);
                w.str(input);
            }
            DaemonMsg::Stop => w.u8(TAG_STOP),
            DaemonMsg::Reclaim { region } => {
                w.u8(TAG_RECLAIM);
                w.u64(*region);
            }
            DaemonMsg::Unmap { region } => {
                w.u8(TAG_UNMAP);
                w.u64(*region);
            }
        }
    }

    /// Decodes one packet.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            TAG_INPUT => {
                let input = r.str()?.to_owned();
                let metadata = Metadata { timestamp_ns: r.u64()? };
                let token = r.u64()?;
                let new_region = r.u8()? != 0;
                let payload = get_payload(&mut r)?;
                DaemonMsg::Input { input, metadata, payload, token, new_region }
            }
            TAG_INPUT_CLOSED => DaemonMsg::InputClosed { input: r.str()?.to_owned() },
            TAG_STOP => DaemonMsg::Stop,
            TAG_RECLAIM => DaemonMsg::Reclaim { region: r.u64()? },
            TAG_UNMAP => DaemonMsg::Unmap { region: r.u64()? },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_roundtrip(msg: NodeMsg) {
        let mut buf = Vec::new();
        msg.encode(&mut buf);
        assert_eq!(NodeMsg::decode(&buf).unwrap(), msg);
    }

    fn daemon_roundtrip(msg: DaemonMsg) {
        let mut buf = Vec::new();
        msg.encode(&mut buf);
        assert_eq!(DaemonMsg::decode(&buf).unwrap(), msg);
    }

    #[test]
    fn every_message_round_trips() {
        let metadata = Metadata { timestamp_ns: 42 };
        node_roundtrip(NodeMsg::Send {
            output: "out".into(),
            metadata,
            payload: Payload::Inline(vec![1, 2, 3]),
            new_region: false,
        });
        node_roundtrip(NodeMsg::Send {
            output: "frames".into(),
            metadata,
            payload: Payload::Shared { region: 7, len: 5000, region_len: 8192 },
            new_region: true,
        });
        node_roundtrip(NodeMsg::Release { token: 9 });
        node_roundtrip(NodeMsg::RegionDropped { region: 3 });
        node_roundtrip(NodeMsg::Ack { count: 16 });
        daemon_roundtrip(DaemonMsg::Input {
            input: "in".into(),
            metadata,
            payload: Payload::Inline(vec![]),
            token: 0,
            new_region: false,
        });
        daemon_roundtrip(DaemonMsg::InputClosed { input: "in".into() });
        daemon_roundtrip(DaemonMsg::Stop);
        daemon_roundtrip(DaemonMsg::Reclaim { region: 1 });
        daemon_roundtrip(DaemonMsg::Unmap { region: 1 });
    }

    #[test]
    fn batches_carry_messages_in_order() {
        let msgs = vec![DaemonMsg::Stop, DaemonMsg::Reclaim { region: 4 }, DaemonMsg::InputClosed { input: "x".into() }];
        let mut buf = Vec::new();
        let mut batch = Batch::new(&mut buf);
        for m in &msgs {
            batch.push(m);
        }
        let mut seen = Vec::new();
        for_each_daemon_msg(&buf, |m| seen.push(m)).unwrap();
        assert_eq!(seen, msgs);
        let mut single = Vec::new();
        DaemonMsg::Stop.encode(&mut single);
        let mut seen = Vec::new();
        for_each_daemon_msg(&single, |m| seen.push(m)).unwrap();
        assert_eq!(seen, vec![DaemonMsg::Stop]);
        assert_eq!(for_each_daemon_msg(&buf[..buf.len() - 1], |_| {}), Err(DecodeError::Truncated));
    }

    #[test]
    fn truncated_and_unknown_packets_are_errors() {
        let mut buf = Vec::new();
        NodeMsg::Release { token: 9 }.encode(&mut buf);
        assert_eq!(NodeMsg::decode(&buf[..4]), Err(DecodeError::Truncated));
        assert_eq!(NodeMsg::decode(&[200]), Err(DecodeError::UnknownTag(200)));
        buf.push(0);
        assert_eq!(NodeMsg::decode(&buf), Err(DecodeError::TrailingBytes));
    }
}

//! Data between machines. An edge whose other node runs elsewhere ends
//! here: outbound, a thread reads what the local producer writes and
//! publishes it on Zenoh under `rill/{dataflow}/{producer}/{consumer}`;
//! inbound, the subscription's callback writes each message into the local
//! consumer's edge with an [`EdgeWriter`], exactly as a local producer would
//! (pooled shared memory reused warm, a drop-oldest backlog per input
//! bounded by its `queue_size`, delivered by the writer's flusher as the
//! consumer makes room). Nodes never see Zenoh. One Zenoh session per
//! daemon, with explicit endpoints (no multicast scouting).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rill_node::{EdgeWriter, PoolLimits};
use rill_proto::shm::Region;
use rill_proto::{EdgeMsg, Payload, transport};
use rustix::io::Errno;
use zenoh::Wait;

use crate::router::RemoteEnd;

/// How long an outbound edge waits for its remote subscriber before the
/// dataflow starts anyway.
const MATCH_WAIT: Duration = Duration::from_secs(10);
/// After its producer's end of the edge closed, how long an outbound edge
/// waits to hear that the producer ended for good (the router says so
/// within milliseconds; a restart replaces the edge instead).
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Numbers outbound edge threads.
static OUTBOUND: AtomicU64 = AtomicU64::new(0);

/// The largest message that crosses machines (1 GiB).
pub const MAX_MESSAGE: usize = 1 << 30;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the cross-machine data session: {0}")]
pub struct BridgeError(String);

/// The cluster credentials of a TLS data plane (PEM).
pub struct DataTls<'a> {
    pub ca: &'a str,
    pub certificate: &'a str,
    pub key: &'a str,
}

/// This daemon's Zenoh session and the subscriptions it serves.
#[derive(Clone)]
pub struct Bridge {
    session: zenoh::Session,
    /// Key -> the writer into the current local consumer end.
    inbound: Arc<Mutex<HashMap<String, Arc<EdgeWriter>>>>,
    subscribers: Arc<Mutex<HashMap<String, zenoh::pubsub::Subscriber<()>>>>,
    /// Key -> how to tell its outbound thread that the producer ended for
    /// good (it then publishes the close after what it forwarded), with the
    /// thread's number. The thread removes its own entry when it ends: the
    /// share may end here (and be forgotten) while it still forwards.
    closers: Arc<Mutex<HashMap<String, Closer>>>,
    /// Inbound keys whose producer ended for good: a consumer end that
    /// comes later (a restarted consumer) is closed at once.
    closed: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Inbound key -> input -> messages dropped here for the local
    /// consumer: refused by its full pool, or dropped from the backlog of
    /// a writer that was replaced (the current writer counts its own).
    drops: Arc<Mutex<HashMap<String, BTreeMap<String, u64>>>>,
}

/// An outbound edge thread's number, and how to tell it its producer ended.
type Closer = (u64, std::sync::mpsc::Sender<()>);

/// The message that closes an edge across machines.
fn closed_message() -> Vec<u8> {
    let mut out = Vec::new();
    EdgeMsg::Closed { input: String::new() }.encode(&mut out);
    out
}

fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|e| format!("{e:?}")).collect();
    format!("[{}]", quoted.join(","))
}

impl Bridge {
    /// Listens on `listen` (e.g. `tcp/0.0.0.0:7447`) and connects to `peers`.
    pub fn open(listen: &str, peers: &[String], tls: Option<DataTls<'_>>) -> Result<Self, BridgeError> {
        let mut config = zenoh::Config::default();
        let set = |config: &mut zenoh::Config, key: &str, value: &str| {
            config.insert_json5(key, value).map_err(|e| BridgeError(format!("{key}: {e}")))
        };
        set(&mut config, "mode", "\"peer\"")?;
        set(&mut config, "scouting/multicast/enabled", "false")?;
        set(&mut config, "listen/endpoints", &json_list(&[listen.to_owned()]))?;
        set(&mut config, "connect/endpoints", &json_list(peers))?;
        // Keep trying peers that are not up yet instead of giving up.
        set(&mut config, "connect/timeout_ms", "-1")?;
        set(&mut config, "connect/exit_on_failure", "false")?;
        // A message larger than a batch (64 KiB) crosses in fragments, one
        // batch each. The publishing thread fills batches and Zenoh's
        // transmit task writes them: with the default 2 batches in the queue
        // they hand over every 128 KiB (32 waits per 4 MiB message); 16
        // batches (1 MiB, the most Zenoh allows) let the two run apart.
        set(&mut config, "transport/link/tx/queue/size/data", "16")?;
        // The receiving side keeps a fragmented message's batches until it
        // is delivered; a pool of 64 (4 MiB per link, allocated when the
        // link opens) spares allocating and zeroing a batch for each
        // fragment of messages up to that size.
        set(&mut config, "transport/link/rx/buffer_size", &(4usize << 20).to_string())?;
        // The largest message a peer may send (Zenoh's default, written out
        // because it is our bound): a larger one is dropped on arrival, so
        // no peer makes this daemon reassemble or map more than this for one
        // message. It matches the consumer pool's byte limit.
        set(&mut config, "transport/link/rx/max_message_size", &MAX_MESSAGE.to_string())?;
        if let Some(tls) = tls {
            use base64::Engine as _;
            let b64 = |pem: &str| {
                serde_json::to_string(&base64::engine::general_purpose::STANDARD.encode(pem)).unwrap_or_default()
            };
            // Mutual: each side presents its certificate and accepts only
            // peers whose certificate chains to the cluster CA and names the
            // address dialled. In memory only: nothing secret on disk.
            let link = "transport/link/tls";
            set(&mut config, &format!("{link}/root_ca_certificate_base64"), &b64(tls.ca))?;
            set(&mut config, &format!("{link}/listen_certificate_base64"), &b64(tls.certificate))?;
            set(&mut config, &format!("{link}/listen_private_key_base64"), &b64(tls.key))?;
            set(&mut config, &format!("{link}/connect_certificate_base64"), &b64(tls.certificate))?;
            set(&mut config, &format!("{link}/connect_private_key_base64"), &b64(tls.key))?;
            set(&mut config, &format!("{link}/enable_mtls"), "true")?;
            set(&mut config, &format!("{link}/verify_name_on_connect"), "true")?;
            set(&mut config, &format!("{link}/close_link_on_expiration"), "true")?;
        }
        let session = zenoh::open(config).wait().map_err(|e| BridgeError(e.to_string()))?;
        Ok(Self {
            session,
            inbound: Arc::default(),
            subscribers: Arc::default(),
            closers: Arc::default(),
            closed: Arc::default(),
            drops: Arc::default(),
        })
    }

    /// What this daemon dropped for consumers of dataflow `uuid` on its
    /// machine: consumer -> input -> messages (cumulative).
    pub fn drops(&self, uuid: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
        let prefix = format!("rill/{uuid}/");
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut add = |key: &str, input: &str, n: u64| {
            let Some(consumer) = key.strip_prefix(&prefix).and_then(|rest| rest.rsplit('/').next()) else { return };
            let total = out.entry(consumer.to_owned()).or_default().entry(input.to_owned()).or_default();
            *total = total.saturating_add(n);
        };
        if let Ok(drops) = self.drops.lock() {
            for (key, inputs) in drops.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                inputs.iter().for_each(|(input, n)| add(key, input, *n));
            }
        }
        if let Ok(writers) = self.inbound.lock() {
            for (key, writer) in writers.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                writer.backlog_drops().iter().for_each(|d| add(key, &d.input, d.dropped));
            }
        }
        out.retain(|_, inputs| {
            inputs.retain(|_, n| *n > 0);
            !inputs.is_empty()
        });
        out
    }

    /// Serves one far end of an edge of dataflow `uuid` (returns at once).
    /// `ready` gets one message when the edge is connected: inbound, once
    /// subscribed; outbound, once the remote subscriber is seen (or after
    /// [`MATCH_WAIT`]), so nothing sent at start is lost.
    pub fn serve(&self, uuid: &str, end: RemoteEnd, ready: std::sync::mpsc::Sender<()>) {
        let key = format!("rill/{uuid}/{}/{}", end.producer, end.consumer);
        let result = if end.outbound {
            self.outbound(key, end.fd, ready)
        } else {
            let inputs: Vec<(String, usize)> =
                end.routes.iter().map(|r| (r.input.clone(), r.queue_size as usize)).collect();
            self.inbound(key, &end.consumer, end.fd, &inputs, ready)
        };
        if let Err(e) = result {
            eprintln!("rill daemon: cross-machine edge {} -> {}: {e}", end.producer, end.consumer);
        }
    }

    /// Local `producer` of dataflow `uuid` ended for good: `consumer`, on
    /// another machine, gets `InputClosed` after every message it sent.
    pub fn close(&self, uuid: &str, producer: &str, consumer: &str) {
        let key = format!("rill/{uuid}/{producer}/{consumer}");
        let closer = self.closers.lock().ok().and_then(|mut c| c.remove(&key));
        let told = closer.is_some_and(|(_, closer)| closer.send(()).is_ok());
        if told {
            return;
        }
        // No edge thread (the producer never started): nothing to wait for
        // but the consumer's subscription, which may not be there yet.
        let session = self.session.clone();
        let closing = std::thread::Builder::new().name("bridge-close".into()).spawn(move || {
            let publisher = match session.declare_publisher(key.clone()).wait() {
                Ok(publisher) => publisher,
                Err(e) => return eprintln!("rill daemon: cannot close {key}: {e}"),
            };
            wait_for_subscriber(&publisher);
            if let Err(e) = publisher.put(closed_message()).wait() {
                eprintln!("rill daemon: cannot close {key}: {e}");
            }
        });
        if let Err(e) = closing {
            eprintln!("rill daemon: cannot close an edge: {e}");
        }
    }

    fn outbound(&self, key: String, fd: OwnedFd, ready: std::sync::mpsc::Sender<()>) -> Result<(), String> {
        let publisher = self
            .session
            .declare_publisher(key.clone())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .wait()
            .map_err(|e| e.to_string())?;
        // A restarted producer's end replaces the old one: the old thread
        // then ends without closing anything.
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let number = OUTBOUND.fetch_add(1, Ordering::Relaxed);
        self.closers.lock().map_err(|_| "poisoned")?.insert(key.clone(), (number, close_tx));
        let closers = self.closers.clone();
        std::thread::Builder::new()
            .name("bridge-out".into())
            .spawn(move || {
                wait_for_subscriber(&publisher);
                let _ = ready.send(());
                forward_out(&fd, |bytes| publisher.put(bytes).wait().map_err(|e| e.to_string()));
                // Everything the producer sent is published. If it ended for
                // good, the close follows it on the same key.
                if close_rx.recv_timeout(CLOSE_WAIT).is_ok()
                    && let Err(e) = publisher.put(closed_message()).wait()
                {
                    eprintln!("rill daemon: cannot close {key}: {e}");
                }
                if let Ok(mut closers) = closers.lock()
                    && closers.get(&key).is_some_and(|(n, _)| *n == number)
                {
                    closers.remove(&key);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn inbound(
        &self,
        key: String,
        consumer: &str,
        fd: OwnedFd,
        inputs: &[(String, usize)],
        ready: std::sync::mpsc::Sender<()>,
    ) -> Result<(), String> {
        let writer = EdgeWriter::new(consumer, fd, inputs, PoolLimits::from_env()).map_err(|e| e.to_string())?;
        if self.closed.lock().is_ok_and(|closed| closed.contains(&key)) {
            writer.close();
        }
        // A restarted consumer: its new end replaces the old one, whose
        // writer (with its flusher and regions) goes.
        let old = self.inbound.lock().map_err(|_| "poisoned")?.insert(key.clone(), Arc::new(writer));
        if let Some(old) = old
            && let Ok(mut drops) = self.drops.lock()
        {
            let mine = drops.entry(key.clone()).or_default();
            for d in old.backlog_drops() {
                let n = mine.entry(d.input).or_default();
                *n = n.saturating_add(d.dropped);
            }
        }
        let mut subscribers = self.subscribers.lock().map_err(|_| "poisoned")?;
        if let std::collections::hash_map::Entry::Vacant(slot) = subscribers.entry(key.clone()) {
            let writers = self.inbound.clone();
            let closed = self.closed.clone();
            let drops = self.drops.clone();
            let sub_key = key;
            let dropped = AtomicU64::new(0);
            let subscriber = self
                .session
                .declare_subscriber(sub_key.clone())
                .callback(move |sample| {
                    let writer = writers.lock().ok().and_then(|w| w.get(&sub_key).cloned());
                    let payload = sample.payload();
                    let mut prefix = [0u8; HEAD_PREFIX];
                    let Some((head, reader)) = read_head(payload, &mut prefix) else { return };
                    if EdgeMsg::is_closed(head) {
                        if let Ok(mut closed) = closed.lock() {
                            closed.insert(sub_key.clone());
                        }
                        if let Some(writer) = writer {
                            writer.close();
                        }
                        return;
                    }
                    let Some(writer) = writer else { return };
                    if let Err(e) = deliver(&writer, payload, head, reader) {
                        // Counted for the input, when the head names one.
                        if let Ok((input, _, _)) = EdgeMsg::split_inline_head(head, payload.len())
                            && let Ok(mut drops) = drops.lock()
                        {
                            let n = drops.entry(sub_key.clone()).or_default().entry(input.to_owned()).or_default();
                            *n = n.saturating_add(1);
                        }
                        // Said once, then every 1,000th time: a flood of
                        // identical lines helps nobody.
                        let n = dropped.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(1000) {
                            eprintln!("rill daemon: dropped a message for {sub_key} ({} so far): {e}", n + 1);
                        }
                    }
                })
                .wait()
                .map_err(|e| e.to_string())?;
            slot.insert(subscriber);
        }
        let _ = ready.send(());
        Ok(())
    }

    /// Dataflow `uuid` ended here: its subscriptions and writers go.
    pub fn forget(&self, uuid: &str) {
        let prefix = format!("rill/{uuid}/");
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.retain(|key, _| !key.starts_with(&prefix));
        }
        if let Ok(mut writers) = self.inbound.lock() {
            writers.retain(|key, _| !key.starts_with(&prefix));
        }
        if let Ok(mut closed) = self.closed.lock() {
            closed.retain(|key| !key.starts_with(&prefix));
        }
        if let Ok(mut drops) = self.drops.lock() {
            drops.retain(|key, _| !key.starts_with(&prefix));
        }
    }
}

/// How much of a message is read first to find its head (an input id is
/// far shorter); a longer head is read the slow way.
const HEAD_PREFIX: usize = 1024;

/// Waits until `publisher` has a subscriber, at most [`MATCH_WAIT`].
fn wait_for_subscriber(publisher: &zenoh::pubsub::Publisher<'_>) {
    let deadline = std::time::Instant::now() + MATCH_WAIT;
    while std::time::Instant::now() < deadline && !publisher.matching_status().wait().is_ok_and(|m| m.matching()) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A message's first bytes (up to [`HEAD_PREFIX`], read into `prefix`),
/// and a reader of what follows them.
fn read_head<'a>(
    payload: &'a zenoh::bytes::ZBytes,
    prefix: &'a mut [u8; HEAD_PREFIX],
) -> Option<(&'a [u8], zenoh::bytes::ZBytesReader<'a>)> {
    let head = &mut prefix[..payload.len().min(HEAD_PREFIX)];
    let mut reader = payload.reader();
    reader.read_exact(head).ok()?;
    Some((head, reader))
}

/// Writes one message that arrived from another machine into the local
/// consumer's edge. Its payload, in as many pieces as Zenoh received it, is
/// copied once: straight into the consumer's pooled region (or message).
/// `head` is the message's first bytes; `rest` reads what follows them.
fn deliver(
    writer: &EdgeWriter,
    payload: &zenoh::bytes::ZBytes,
    head: &[u8],
    mut rest: zenoh::bytes::ZBytesReader<'_>,
) -> Result<(), String> {
    let total = payload.len();
    let (input, metadata, start) = match EdgeMsg::split_inline_head(head, total) {
        Ok(parts) => parts,
        // Only a head cut off by the prefix: a length that does not match
        // the message is refused without reading the rest.
        Err(rill_proto::DecodeError::Truncated) if head.len() == HEAD_PREFIX && head.len() < total => {
            // A head longer than the prefix: the whole message, contiguous.
            let bytes = payload.to_bytes();
            let (input, metadata, data) = EdgeMsg::split_inline_data(&bytes).map_err(|e| e.to_string())?;
            return writer.send(input, metadata, data).map_err(|e| e.to_string());
        }
        Err(e) => return Err(e.to_string()),
    };
    writer
        .send_with(input, metadata, total - start, |buf| {
            // The payload's first bytes came with the head; the rest follows.
            let first = head.len() - start;
            buf[..first].copy_from_slice(&head[start..]);
            rest.read_exact(&mut buf[first..])
        })
        .map_err(|e| e.to_string())
}

/// A payload in a producer's shared region, lent to Zenoh by reference.
#[derive(Debug)]
struct Lent {
    region: Arc<Region>,
    len: usize,
}

impl zenoh_buffers::ZSliceBuffer for Lent {
    fn as_slice(&self) -> &[u8] {
        self.region.bytes(self.len)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// How long a region Zenoh still holds after `put` returned is waited for.
/// Zenoh 1.10 copies a payload into its batches before `put` returns, so
/// this is a safety net, never the normal path: a region still held after
/// it is kept from the producer for good (its pool counts it in flight)
/// rather than overwritten while Zenoh may read it.
const LENT_WAIT: Duration = Duration::from_secs(1);

/// Reads the local producer's messages and publishes each as one inline
/// `EdgeMsg::Data`. A shared payload goes to Zenoh by reference (Zenoh's
/// copy into its batches is the one copy of this hop) and is released to
/// the producer once Zenoh let go of it.
fn forward_out(fd: &OwnedFd, publish: impl Fn(zenoh::bytes::ZBytes) -> Result<(), String>) {
    let mut buf = vec![0u8; rill_proto::MAX_PACKET];
    let mut regions: HashMap<u64, Arc<Region>> = HashMap::new();
    loop {
        let (n, fds) = match transport::recv_packet(fd.as_fd(), &mut buf, false) {
            Ok((n, fds)) if n > 0 => (n, fds),
            Err(Errno::CONNRESET) => continue,
            // The producer ended (or restarted: a new end comes separately).
            _ => return,
        };
        let Ok(msg) = EdgeMsg::decode(&buf[..n]) else { continue };
        match msg {
            EdgeMsg::Data { payload: Payload::Inline(_), .. } => {
                // Already an inline message: publish the packet as it is.
                if let Err(e) = publish(buf[..n].to_vec().into()) {
                    eprintln!("rill daemon: cannot publish: {e}");
                }
            }
            EdgeMsg::Data { input, metadata, payload: Payload::Shared { region, len, region_len }, new_region } => {
                if new_region {
                    match fds.into_iter().next().map(|fd| Region::open(fd, region_len as usize)) {
                        Some(Ok(mapped)) => {
                            regions.insert(region, Arc::new(mapped));
                        }
                        Some(Err(e)) => eprintln!("rill daemon: refusing a shared region from a local producer: {e}"),
                        None => eprintln!("rill daemon: a local producer sent a shared region without its fd"),
                    }
                }
                // (A length beyond the region is the producer's error: not sent.)
                if let Some(mapped) = regions.get(&region).filter(|m| len <= m.len() as u64) {
                    let mut head = Vec::new();
                    EdgeMsg::encode_inline_head(&input, metadata, len as usize, &mut head);
                    let lent = Arc::new(Lent { region: mapped.clone(), len: len as usize });
                    let mut message = zenoh_buffers::ZBuf::from(zenoh_buffers::ZSlice::from(head));
                    message.push_zslice(zenoh_buffers::ZSlice::from(lent.clone()));
                    if let Err(e) = publish(message.into()) {
                        eprintln!("rill daemon: cannot publish: {e}");
                    }
                    let deadline = std::time::Instant::now() + LENT_WAIT;
                    while Arc::strong_count(&lent) > 1 && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    if Arc::strong_count(&lent) > 1 {
                        eprintln!("rill daemon: Zenoh still holds a sent payload; its shared region is not reused");
                        continue;
                    }
                }
                let mut release = Vec::new();
                EdgeMsg::Release { region, count: 1 }.encode(&mut release);
                let _ = transport::send_packet(fd.as_fd(), &release, &[], false);
            }
            EdgeMsg::Unmap { region } => {
                regions.remove(&region);
            }
            EdgeMsg::Release { .. } | EdgeMsg::Closed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_proto::Metadata;

    /// `parts` as one Zenoh payload in that many pieces (as fragments arrive).
    fn pieces(parts: &[&[u8]]) -> zenoh::bytes::ZBytes {
        let mut buf = zenoh_buffers::ZBuf::empty();
        for part in parts {
            buf.push_zslice(zenoh_buffers::ZSlice::from(part.to_vec()));
        }
        buf.into()
    }

    /// What the subscription's callback does with a data message.
    fn deliver_all(writer: &EdgeWriter, payload: &zenoh::bytes::ZBytes) -> Result<(), String> {
        let mut prefix = [0u8; HEAD_PREFIX];
        let (head, reader) = read_head(payload, &mut prefix).ok_or("unreadable")?;
        deliver(writer, payload, head, reader)
    }

    /// The input and payload of the next message the consumer's end gets.
    fn received(fd: &OwnedFd) -> (String, Vec<u8>) {
        let mut buf = vec![0u8; rill_proto::MAX_PACKET];
        let (n, fds) = transport::recv_packet(fd.as_fd(), &mut buf, false).expect("a message");
        match EdgeMsg::decode(&buf[..n]).expect("it decodes") {
            EdgeMsg::Data { input, payload: Payload::Inline(bytes), .. } => (input, bytes),
            EdgeMsg::Data { input, payload: Payload::Shared { len, region_len, .. }, .. } => {
                let fd = fds.into_iter().next().expect("the region's fd with its first use");
                let region = Region::open(fd, region_len as usize).expect("it maps");
                (input, region.bytes(len as usize).to_vec())
            }
            other => panic!("not data: {other:?}"),
        }
    }

    fn message(input: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        EdgeMsg::encode_inline_data(input, Metadata { timestamp_ns: 1 }, payload, &mut out);
        out
    }

    #[test]
    fn a_payload_in_pieces_lands_whole_a_long_head_too_and_a_wrong_length_is_refused() {
        let long_input = "i".repeat(2000);
        let (ours, theirs) = transport::socket_pair().expect("a socket pair");
        let inputs = [("in".to_owned(), 10), (long_input.clone(), 10)];
        let writer = EdgeWriter::new("sink", ours, &inputs, PoolLimits::default()).expect("a writer");

        // Large, in three pieces, the first shorter than the head: it lands
        // in shared memory byte for byte.
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let whole = message("in", &payload);
        deliver_all(&writer, &pieces(&[&whole[..5], &whole[5..70_000], &whole[70_000..]])).expect("delivered");
        assert_eq!(received(&theirs), ("in".to_owned(), payload));

        // Small, in one piece: inline.
        deliver_all(&writer, &pieces(&[&message("in", b"tiny")])).expect("delivered");
        assert_eq!(received(&theirs), ("in".to_owned(), b"tiny".to_vec()));

        // A head longer than the prefix read first: read the slow way.
        let payload = vec![7u8; 5000];
        deliver_all(&writer, &pieces(&[&message(&long_input, &payload)])).expect("delivered");
        assert_eq!(received(&theirs), (long_input, payload));

        // A declared length that does not match what follows: refused, and
        // nothing reaches the consumer.
        for actual in [0usize, 9, 11, 5000] {
            let mut bad = Vec::new();
            EdgeMsg::encode_inline_head("in", Metadata { timestamp_ns: 1 }, 10, &mut bad);
            bad.extend(std::iter::repeat_n(0u8, actual));
            let refused = deliver_all(&writer, &pieces(&[&bad])).expect_err("refused");
            assert!(refused.contains("does not match"), "{refused}");
        }
        assert!(!transport::wait_readable(&theirs, Some(Duration::from_millis(50))).expect("poll"), "nothing sent");
    }
}

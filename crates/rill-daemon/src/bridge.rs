//! Data between machines. An edge whose other node runs elsewhere ends
//! here: outbound, a thread reads what the local producer writes and
//! publishes it on Zenoh under `rill/{dataflow}/{producer}/{consumer}`;
//! inbound, a subscription on that key feeds a thread that writes into the
//! local consumer's edge. Nodes never see Zenoh. One Zenoh session per
//! daemon, with explicit endpoints (no multicast scouting).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rill_proto::{BoundedQueue, EdgeMsg, Payload, SHM_THRESHOLD, transport};
use rustix::io::Errno;
use zenoh::Wait;

use crate::router::RemoteEnd;

/// How long an outbound edge waits for its remote subscriber before the
/// dataflow starts anyway.
const MATCH_WAIT: Duration = Duration::from_secs(10);

/// Messages from Zenoh waiting for a slow local consumer, bounded per input
/// by the input's `queue_size`, oldest dropped: the same rule as on one
/// machine.
#[derive(Default)]
struct InboundQueue {
    state: Mutex<(BoundedQueue<String, zenoh::bytes::ZBytes>, bool)>,
    ready: Condvar,
}

impl InboundQueue {
    fn push(&self, input: String, capacity: usize, bytes: zenoh::bytes::ZBytes) {
        if let Ok(mut state) = self.state.lock() {
            let _ = state.0.push(Some(input), capacity, bytes);
            self.ready.notify_one();
        }
    }

    /// Ends the writer (its consumer end was replaced).
    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
            self.ready.notify_one();
        }
    }

    /// The next message, `Ok(None)` after `timeout`, `Err` once closed.
    fn pop(&self, timeout: Duration) -> Result<Option<zenoh::bytes::ZBytes>, ()> {
        let Ok(mut state) = self.state.lock() else { return Err(()) };
        if state.0.is_empty() && !state.1 {
            state = match self.ready.wait_timeout(state, timeout) {
                Ok((state, _)) => state,
                Err(_) => return Err(()),
            };
        }
        if state.1 {
            return Err(());
        }
        Ok(state.0.pop().map(|(_, bytes)| bytes))
    }
}

/// The inbound queue of one edge and its inputs' bounds.
struct Inbound {
    queue: Arc<InboundQueue>,
    capacity: HashMap<String, usize>,
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the cross-machine data session: {0}")]
pub struct BridgeError(String);

/// This daemon's Zenoh session and the subscriptions it serves.
#[derive(Clone)]
pub struct Bridge {
    session: zenoh::Session,
    /// Key -> the queue of the current local consumer end's writer.
    inbound: Arc<Mutex<HashMap<String, Inbound>>>,
    subscribers: Arc<Mutex<HashMap<String, zenoh::pubsub::Subscriber<()>>>>,
}

fn json_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|e| format!("{e:?}")).collect();
    format!("[{}]", quoted.join(","))
}

impl Bridge {
    /// Listens on `listen` (e.g. `tcp/0.0.0.0:7447`) and connects to `peers`.
    pub fn open(listen: &str, peers: &[String]) -> Result<Self, BridgeError> {
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
        let session = zenoh::open(config).wait().map_err(|e| BridgeError(e.to_string()))?;
        Ok(Self { session, inbound: Arc::default(), subscribers: Arc::default() })
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
            let capacity = end.routes.iter().map(|r| (r.input.clone(), r.queue_size as usize)).collect();
            self.inbound(key, end.fd, capacity, ready)
        };
        if let Err(e) = result {
            eprintln!("rill daemon: cross-machine edge {} -> {}: {e}", end.producer, end.consumer);
        }
    }

    fn outbound(&self, key: String, fd: OwnedFd, ready: std::sync::mpsc::Sender<()>) -> Result<(), String> {
        let publisher = self
            .session
            .declare_publisher(key.clone())
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .wait()
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("bridge-out".into())
            .spawn(move || {
                let deadline = std::time::Instant::now() + MATCH_WAIT;
                while std::time::Instant::now() < deadline
                    && !publisher.matching_status().wait().is_ok_and(|m| m.matching())
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = ready.send(());
                forward_out(&fd, |bytes| publisher.put(bytes).wait().map_err(|e| e.to_string()));
            })
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn inbound(
        &self,
        key: String,
        fd: OwnedFd,
        capacity: HashMap<String, usize>,
        ready: std::sync::mpsc::Sender<()>,
    ) -> Result<(), String> {
        let queue = Arc::new(InboundQueue::default());
        // A restarted consumer: its new end replaces the old one, whose
        // writer ends.
        let old = self
            .inbound
            .lock()
            .map_err(|_| "poisoned")?
            .insert(key.clone(), Inbound { queue: queue.clone(), capacity });
        if let Some(old) = old {
            old.queue.close();
        }
        let mut subscribers = self.subscribers.lock().map_err(|_| "poisoned")?;
        if let std::collections::hash_map::Entry::Vacant(slot) = subscribers.entry(key.clone()) {
            let senders = self.inbound.clone();
            let sub_key = key;
            let subscriber = self
                .session
                .declare_subscriber(sub_key.clone())
                .callback(move |sample| {
                    // Shares the received buffer; the bytes are copied once, later.
                    let bytes = sample.payload().clone();
                    let Some(input) = bytes.slices().next().and_then(EdgeMsg::peek_input).map(str::to_owned) else {
                        return;
                    };
                    if let Ok(senders) = senders.lock()
                        && let Some(inbound) = senders.get(&sub_key)
                    {
                        let capacity = inbound.capacity.get(&input).copied().unwrap_or(rill_core::DEFAULT_QUEUE_SIZE);
                        inbound.queue.push(input, capacity, bytes);
                    }
                })
                .wait()
                .map_err(|e| e.to_string())?;
            slot.insert(subscriber);
        }
        let _ = ready.send(());
        std::thread::Builder::new()
            .name("bridge-in".into())
            .spawn(move || forward_in(&fd, &queue))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A read-only mapping of a producer's region.
struct Mapped {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Mapped {
    fn new(fd: &OwnedFd, len: usize) -> Option<Self> {
        // SAFETY: a fresh shared read-only mapping, unmapped in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }
        .ok()?;
        Some(Self { ptr, len })
    }

    fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: in bounds; the mapping lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), len.min(self.len)) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: exactly the range we mapped.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

/// Reads the local producer's messages and publishes each as one inline
/// `EdgeMsg::Data`; shared payloads are copied out once and released.
fn forward_out(fd: &OwnedFd, publish: impl Fn(Vec<u8>) -> Result<(), String>) {
    let mut buf = vec![0u8; rill_proto::MAX_PACKET];
    let mut regions: HashMap<u64, Mapped> = HashMap::new();
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
                if let Err(e) = publish(buf[..n].to_vec()) {
                    eprintln!("rill daemon: cannot publish: {e}");
                }
            }
            EdgeMsg::Data { input, metadata, payload: Payload::Shared { region, len, region_len }, new_region } => {
                if new_region && let Some(mapped) = fds.first().and_then(|f| Mapped::new(f, region_len as usize)) {
                    regions.insert(region, mapped);
                }
                if let Some(mapped) = regions.get(&region) {
                    // The one copy of this hop: from the shared region into the message.
                    let mut out = Vec::new();
                    EdgeMsg::encode_inline_data(&input, metadata, mapped.bytes(len as usize), &mut out);
                    if let Err(e) = publish(out) {
                        eprintln!("rill daemon: cannot publish: {e}");
                    }
                }
                let mut release = Vec::new();
                EdgeMsg::Release { region, count: 1 }.encode(&mut release);
                let _ = transport::send_packet(fd.as_fd(), &release, &[], false);
            }
            EdgeMsg::Unmap { region } => {
                regions.remove(&region);
            }
            EdgeMsg::Release { .. } => {}
        }
    }
}

/// Writes messages from Zenoh into the local consumer's edge: small ones
/// inline, large ones through a fresh shared region each, which the
/// consumer is told to unmap once it released it.
fn forward_in(fd: &OwnedFd, queue: &InboundQueue) {
    let mut next_region = 0u64;
    let mut buf = vec![0u8; 256];
    loop {
        let bytes = match queue.pop(Duration::from_millis(200)) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                if !answer_releases(fd, &mut buf) {
                    return;
                }
                continue;
            }
            Err(()) => return,
        };
        let bytes = bytes.to_bytes();
        let Ok((input, metadata, data)) = EdgeMsg::split_inline_data(&bytes) else {
            continue;
        };
        let sent = if data.len() < SHM_THRESHOLD {
            transport::send_packet(fd.as_fd(), &bytes, &[], false)
        } else {
            next_region += 1;
            // The one copy of this hop: from the network buffer into shared memory.
            match shared_copy(data) {
                Ok((memfd, region_len)) => {
                    let payload = Payload::Shared { region: next_region, len: data.len() as u64, region_len };
                    let mut out = Vec::with_capacity(64);
                    EdgeMsg::Data { input: input.to_owned(), metadata, payload, new_region: true }.encode(&mut out);
                    transport::send_packet(fd.as_fd(), &out, &[memfd.as_fd()], false)
                }
                Err(e) => {
                    eprintln!("rill daemon: cannot allocate shared memory for a remote message: {e}");
                    continue;
                }
            }
        };
        if sent.is_err() || !answer_releases(fd, &mut buf) {
            // The consumer is gone; a restarted one gets a new end.
            return;
        }
    }
}

/// A memfd holding `data`, and its size.
fn shared_copy(data: &[u8]) -> std::io::Result<(OwnedFd, u64)> {
    let memfd = rustix::fs::memfd_create("rill-shm", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut written = 0;
    while written < data.len() {
        written += rustix::io::write(&memfd, &data[written..])?;
    }
    Ok((memfd, data.len() as u64))
}

/// Each region the consumer released is unmapped (it was used once).
/// False if the consumer is gone.
fn answer_releases(fd: &OwnedFd, buf: &mut [u8]) -> bool {
    loop {
        match transport::recv_packet(fd.as_fd(), buf, true) {
            Ok((n, _)) if n > 0 => {
                if let Ok(EdgeMsg::Release { region, .. }) = EdgeMsg::decode(&buf[..n]) {
                    let mut out = Vec::new();
                    EdgeMsg::Unmap { region }.encode(&mut out);
                    let _ = transport::send_packet(fd.as_fd(), &out, &[], true);
                }
            }
            Err(Errno::WOULDBLOCK) => return true,
            Err(Errno::CONNRESET) => continue,
            _ => return false,
        }
    }
}

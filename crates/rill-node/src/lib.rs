//! The node API that user code links.
//!
//! A node finds its daemon connection in the environment the daemon set
//! ([`rill_proto::env`]), receives [`Event`]s and sends outputs:
//!
//! ```no_run
//! let mut node = rill_node::Node::from_env()?;
//! while let Some(event) = node.next_event() {
//!     if let rill_node::Event::Input { id, data, .. } = event {
//!         node.send_output("out", &data)?;
//!         let _ = id;
//!     }
//! }
//! # Ok::<(), rill_node::NodeError>(())
//! ```
//!
//! Payloads of [`SHM_THRESHOLD`] bytes or more travel through shared memory:
//! [`Node::allocate`] hands out a writable [`Sample`], [`Node::send_sample`]
//! publishes it without copying, and receivers read it in place through
//! [`Data`].

mod pool;
mod shm;

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use rill_proto::{Metadata, SHM_THRESHOLD};
use rill_proto::{BoundedQueue, DaemonMsg, NodeMsg, Payload, env, transport};
use rustix::io::Errno;

use crate::pool::Pool;
use crate::shm::Region;

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("environment variable {0} is not set: start this node with `rill run` or a rill daemon")]
    MissingEnv(&'static str),
    #[error("environment variable {name} has a bad value {value:?}")]
    BadEnv { name: &'static str, value: String },
    #[error("the daemon speaks local protocol {daemon}, this node {node}: rebuild the node against the same rill version")]
    ProtocolMismatch { daemon: u16, node: u16 },
    #[error("`{0}` is not an output of this node (declare it under `outputs:`)")]
    UnknownOutput(String),
    #[error("{MAX_BUSY_REGIONS} shared-memory messages are still held by receivers after {} s: a receiver keeps `Data` alive, or is stuck", SHM_WAIT.as_secs())]
    SharedMemoryExhausted,
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for NodeError {
    fn from(e: Errno) -> Self {
        NodeError::Io(e.into())
    }
}

/// Something that happened to this node.
#[derive(Debug)]
pub enum Event {
    /// A message arrived on input `id`.
    Input { id: String, metadata: Metadata, data: Data },
    /// The producer of input `id` is gone; no more messages will arrive on it.
    InputClosed { id: String },
    /// The dataflow is stopping: finish up and return from `main`.
    Stop,
}

/// Why [`Node::recv_timeout`] returned no event.
#[derive(Debug, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing arrived in time.
    Timeout,
    /// The event stream has ended (stopped, all inputs closed, or the daemon left).
    Finished,
}

/// Shared regions a sender may have in flight; past it, `allocate` waits
/// for receivers to finish with one (backpressure instead of unbounded
/// memory).
pub const MAX_BUSY_REGIONS: usize = 128;
/// How long `allocate` waits for a region to come back.
const SHM_WAIT: Duration = Duration::from_secs(10);

/// Queue bound for an input the daemon did not describe.
const DEFAULT_QUEUE_SIZE: usize = 10;

/// The daemon connection; shared with [`Data`] so dropping a shared payload
/// can tell the daemon it is released.
#[derive(Debug)]
struct Connection {
    fd: OwnedFd,
}

impl Connection {
    fn send(&self, msg: &NodeMsg, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), Errno> {
        let mut buf = Vec::with_capacity(64);
        msg.encode(&mut buf);
        transport::send_packet(self.fd.as_fd(), &buf, fds, false)
    }
}

/// A received payload, inline or read in place from shared memory.
pub struct Data {
    inner: DataInner,
}

enum DataInner {
    Inline(Vec<u8>),
    Shared { region: Arc<Region>, len: usize, _release: Release },
}

/// Tells the daemon, once, that a shared message is no longer read.
struct Release {
    conn: Arc<Connection>,
    token: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        // The daemon may be gone already; then there is nothing to release.
        let _ = self.conn.send(&NodeMsg::Release { token: self.token }, &[]);
    }
}

impl Data {
    /// True when the bytes are read in place from shared memory.
    pub fn is_shared(&self) -> bool {
        matches!(self.inner, DataInner::Shared { .. })
    }
}

impl Deref for Data {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            DataInner::Inline(v) => v,
            DataInner::Shared { region, len, .. } => region.bytes(*len),
        }
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data").field("len", &self.len()).field("shared", &self.is_shared()).finish()
    }
}

/// A writable buffer to fill and then send with [`Node::send_sample`].
pub struct Sample {
    inner: SampleInner,
    pool: Arc<Mutex<Pool>>,
}

enum SampleInner {
    Inline(Vec<u8>),
    Shared { id: u64, region: Arc<Region>, len: usize },
    Sent,
}

impl Deref for Sample {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            SampleInner::Inline(v) => v,
            SampleInner::Shared { region, len, .. } => region.bytes(*len),
            SampleInner::Sent => &[],
        }
    }
}

impl DerefMut for Sample {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            SampleInner::Inline(v) => v,
            SampleInner::Shared { region, len, .. } => region.bytes_mut(*len),
            SampleInner::Sent => &mut [],
        }
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        // Never sent: the region is free again at once.
        if let SampleInner::Shared { id, .. } = self.inner {
            lock(&self.pool).give_back(id);
        }
    }
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // A panic while holding the lock leaves only plain bookkeeping behind.
    pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A running node's handle to its daemon.
pub struct Node {
    id: String,
    conn: Arc<Connection>,
    inputs: HashMap<String, usize>,
    outputs: HashSet<String>,
    open_inputs: HashSet<String>,
    queue: BoundedQueue<String, Event>,
    mappings: HashMap<u64, Arc<Region>>,
    pool: Arc<Mutex<Pool>>,
    recv_buf: Vec<u8>,
    stopped: bool,
    daemon_gone: bool,
    /// Inputs taken off the socket and not yet acknowledged to the daemon.
    unacked: u32,
}

fn env_var(name: &'static str) -> Result<String, NodeError> {
    std::env::var(name).map_err(|_| NodeError::MissingEnv(name))
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|s| !s.is_empty())
}

impl Node {
    /// Connects using the environment the daemon set for this process.
    pub fn from_env() -> Result<Self, NodeError> {
        let protocol_text = env_var(env::PROTOCOL)?;
        let protocol: u16 = protocol_text
            .parse()
            .map_err(|_| NodeError::BadEnv { name: env::PROTOCOL, value: protocol_text.clone() })?;
        if protocol != rill_proto::LOCAL_PROTOCOL_VERSION {
            return Err(NodeError::ProtocolMismatch { daemon: protocol, node: rill_proto::LOCAL_PROTOCOL_VERSION });
        }
        let fd_text = env_var(env::FD)?;
        let raw: i32 = fd_text.parse().map_err(|_| NodeError::BadEnv { name: env::FD, value: fd_text.clone() })?;
        // Is it really an open socket? fstat before taking ownership.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        if rustix::fs::fstat(borrowed).is_err() {
            return Err(NodeError::BadEnv { name: env::FD, value: fd_text });
        }
        // SAFETY: the daemon passed this descriptor to us for exclusive use.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        let mut inputs = HashMap::new();
        let inputs_text = env_var(env::INPUTS)?;
        for entry in split_list(&inputs_text) {
            let (id, size) = entry.rsplit_once(':').unwrap_or((entry, "10"));
            let size = size.parse().map_err(|_| NodeError::BadEnv { name: env::INPUTS, value: inputs_text.clone() })?;
            inputs.insert(id.to_owned(), size);
        }
        let outputs = split_list(&env_var(env::OUTPUTS)?).map(str::to_owned).collect();
        Ok(Self {
            id: env_var(env::NODE_ID)?,
            conn: Arc::new(Connection { fd }),
            open_inputs: inputs.keys().cloned().collect(),
            inputs,
            outputs,
            queue: BoundedQueue::default(),
            mappings: HashMap::new(),
            pool: Arc::default(),
            recv_buf: vec![0; rill_proto::MAX_PACKET],
            stopped: false,
            daemon_gone: false,
            unacked: 0,
        })
    }

    /// This node's id in the dataflow.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Blocks for the next event; `None` once the stream has ended.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.recv_timeout(Duration::from_secs(3600)) {
                Ok(event) => return Some(event),
                Err(RecvError::Finished) => return None,
                Err(RecvError::Timeout) => continue,
            }
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Drain whatever is waiting first, so the queue bound (drop
            // oldest) applies to everything that arrived since last time.
            self.pump();
            if let Some((_, event)) = self.queue.pop() {
                match &event {
                    Event::Stop => self.stopped = true,
                    Event::InputClosed { id } => {
                        self.open_inputs.remove(id);
                    }
                    Event::Input { .. } => {}
                }
                return Ok(event);
            }
            if self.is_finished() {
                return Err(RecvError::Finished);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout);
            }
            match transport::wait_readable(self.conn.fd.as_fd(), Some(left)) {
                Ok(_) => {}
                Err(_) => self.daemon_gone = true,
            }
        }
    }

    fn is_finished(&self) -> bool {
        self.stopped || self.daemon_gone || (!self.inputs.is_empty() && self.open_inputs.is_empty())
    }

    /// Reads every packet that is waiting, without blocking, and tells the
    /// daemon (in batches) how many inputs it took, which opens its window.
    fn pump(&mut self) {
        self.drain_socket();
        if self.unacked >= rill_proto::ACK_EVERY {
            let _ = self.conn.send(&NodeMsg::Ack { count: self.unacked }, &[]);
            self.unacked = 0;
        }
    }

    fn drain_socket(&mut self) {
        while !self.daemon_gone {
            let (n, fds) = match transport::recv_packet(self.conn.fd.as_fd(), &mut self.recv_buf, true) {
                Err(Errno::WOULDBLOCK) => return,
                Ok((n, fds)) if n > 0 => (n, fds),
                // 0 bytes: the daemon closed the connection.
                Ok(_) | Err(_) => {
                    self.daemon_gone = true;
                    return;
                }
            };
            // Each message that introduces a region takes the next fd.
            let mut fds = fds.into_iter();
            let mut msgs = Vec::new();
            if let Err(e) = rill_proto::for_each_daemon_msg(&self.recv_buf[..n], |msg| msgs.push(msg)) {
                eprintln!("rill-node: dropping undecodable message from the daemon: {e}");
            }
            for msg in msgs {
                let fd = match &msg {
                    DaemonMsg::Input { new_region: true, .. } => fds.next(),
                    _ => None,
                };
                self.handle(msg, fd);
            }
        }
    }

    fn handle(&mut self, msg: DaemonMsg, fd: Option<OwnedFd>) {
        match msg {
            DaemonMsg::Input { input, metadata, payload, token, new_region } => {
                self.unacked += 1;
                let data = match payload {
                    Payload::Inline(bytes) => Data { inner: DataInner::Inline(bytes) },
                    Payload::Shared { region, len, region_len } => {
                        let release = Release { conn: self.conn.clone(), token };
                        if new_region {
                            let mapped = fd
                                .ok_or_else(|| std::io::Error::other("region fd missing"))
                                .and_then(|fd| Region::open(fd, region_len as usize));
                            match mapped {
                                Ok(mapped) => {
                                    self.mappings.insert(region, Arc::new(mapped));
                                }
                                Err(e) => {
                                    eprintln!("rill-node: cannot map shared region: {e}");
                                    return;
                                }
                            }
                        }
                        let Some(mapped) = self.mappings.get(&region) else {
                            eprintln!("rill-node: message names unknown shared region {region}");
                            return;
                        };
                        Data { inner: DataInner::Shared { region: mapped.clone(), len: len as usize, _release: release } }
                    }
                };
                let capacity = self.inputs.get(&input).copied().unwrap_or(DEFAULT_QUEUE_SIZE);
                // A dropped event releases its shared payload on drop.
                let _ = self.queue.push(Some(input.clone()), capacity, Event::Input { id: input, metadata, data });
            }
            DaemonMsg::InputClosed { input } => {
                self.queue.push(None, 0, Event::InputClosed { id: input });
            }
            DaemonMsg::Stop => {
                // Stop is not kept waiting behind a deep input queue.
                self.queue.push_urgent(Event::Stop);
            }
            DaemonMsg::Reclaim { region } => {
                let destroyed = lock(&self.pool).give_back(region);
                if let Some(region) = destroyed {
                    let _ = self.conn.send(&NodeMsg::RegionDropped { region }, &[]);
                }
            }
            DaemonMsg::Unmap { region } => {
                self.mappings.remove(&region);
            }
        }
    }

    /// A buffer of `len` bytes to fill and send with [`Node::send_sample`].
    /// At or above [`SHM_THRESHOLD`] it is shared memory: nothing is copied
    /// on the way to the receivers. With [`MAX_BUSY_REGIONS`] in flight it
    /// first waits for receivers to finish with one.
    pub fn allocate(&mut self, len: usize) -> Result<Sample, NodeError> {
        let inner = if len < SHM_THRESHOLD {
            SampleInner::Inline(vec![0; len])
        } else {
            self.wait_for_free_region()?;
            let (id, region) = lock(&self.pool).take(len)?;
            SampleInner::Shared { id, region, len }
        };
        Ok(Sample { inner, pool: self.pool.clone() })
    }

    fn wait_for_free_region(&mut self) -> Result<(), NodeError> {
        let deadline = Instant::now() + SHM_WAIT;
        loop {
            if lock(&self.pool).busy() < MAX_BUSY_REGIONS {
                return Ok(());
            }
            // Reclaims arrive on the socket; events that come along are queued.
            self.pump();
            if lock(&self.pool).busy() < MAX_BUSY_REGIONS {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.daemon_gone {
                return Err(NodeError::SharedMemoryExhausted);
            }
            if transport::wait_readable(self.conn.fd.as_fd(), Some(left)).is_err() {
                self.daemon_gone = true;
            }
        }
    }

    /// Publishes a filled sample on `output`.
    pub fn send_sample(&self, output: &str, mut sample: Sample) -> Result<(), NodeError> {
        self.check_output(output)?;
        let metadata = Metadata { timestamp_ns: now_ns() };
        match std::mem::replace(&mut sample.inner, SampleInner::Sent) {
            SampleInner::Inline(bytes) => {
                let msg = NodeMsg::Send { output: output.to_owned(), metadata, payload: Payload::Inline(bytes), new_region: false };
                self.conn.send(&msg, &[])?;
            }
            SampleInner::Shared { id, region, len } => {
                let new_region = lock(&self.pool).announce(id);
                let payload = Payload::Shared { region: id, len: len as u64, region_len: region.len() as u64 };
                let msg = NodeMsg::Send { output: output.to_owned(), metadata, payload, new_region };
                let fds: Vec<_> = if new_region { region.fd().into_iter().collect() } else { Vec::new() };
                if let Err(e) = self.conn.send(&msg, &fds) {
                    lock(&self.pool).give_back(id);
                    return Err(e.into());
                }
            }
            SampleInner::Sent => {}
        }
        Ok(())
    }

    /// Publishes `data` on `output`, copying it once (into the message, or
    /// into shared memory when large). Use [`Node::allocate`] to avoid the copy.
    pub fn send_output(&mut self, output: &str, data: &[u8]) -> Result<(), NodeError> {
        self.check_output(output)?;
        let mut sample = self.allocate(data.len())?;
        sample.copy_from_slice(data);
        self.send_sample(output, sample)
    }

    fn check_output(&self, output: &str) -> Result<(), NodeError> {
        if self.outputs.contains(output) { Ok(()) } else { Err(NodeError::UnknownOutput(output.to_owned())) }
    }
}


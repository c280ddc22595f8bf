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
//! Messages go straight to the receiving node over a socket the daemon set
//! up (one hop). Payloads of [`SHM_THRESHOLD`] bytes or more travel through
//! shared memory: [`Node::allocate`] hands out a writable [`Sample`],
//! [`Node::send_sample`] publishes it without copying, and receivers read it
//! in place through [`Data`].

mod edge;
mod pool;
mod shm;

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rill_proto::{BoundedQueue, DaemonMsg, Direction, EdgeMsg, Payload, env, transport};
pub use rill_proto::{Metadata, SHM_THRESHOLD};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::edge::{EdgeConn, InEdge, Offer, OutEdge};
use crate::pool::Pool;
use crate::shm::Region;

/// What can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("environment variable {0} is not set: start this node with `rill run` or a rill daemon")]
    MissingEnv(&'static str),
    #[error("environment variable {name} has a bad value {value:?}")]
    BadEnv { name: &'static str, value: String },
    #[error(
        "the daemon speaks local protocol {daemon}, this node {node}: rebuild the node against the same rill version"
    )]
    ProtocolMismatch { daemon: u16, node: u16 },
    #[error("`{0}` is not an output of this node (declare it under `outputs:`)")]
    UnknownOutput(String),
    #[error("{MAX_BUSY_REGIONS} shared-memory messages are still held by receivers after {} s: a receiver keeps `Data` alive, or is stuck", SHM_WAIT.as_secs())]
    SharedMemoryExhausted,
    #[error("the daemon did not finish wiring this node within {} s", START_WAIT.as_secs())]
    StartTimeout,
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
/// How long `from_env` waits for the daemon's wiring.
const START_WAIT: Duration = Duration::from_secs(30);
/// Default of `RILL_NODE_SPIN_US`.
const DEFAULT_SPIN: Duration = Duration::from_micros(50);

fn spin_window() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| {
        std::env::var("RILL_NODE_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_micros)
            .unwrap_or(DEFAULT_SPIN)
    })
}

/// How long a node that ends waits to hand over messages still queued for
/// slow receivers.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(2);

/// Queue bound for an input the daemon did not describe.
const DEFAULT_QUEUE_SIZE: usize = 10;

/// A received payload, inline or read in place from shared memory.
pub struct Data {
    inner: DataInner,
}

enum DataInner {
    Inline(Vec<u8>),
    Shared { region: Arc<Region>, len: usize, _release: Release },
}

/// Tells the producer, once, that a shared message is no longer read.
struct Release {
    conn: Arc<EdgeConn>,
    region: u64,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.conn.release(self.region);
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
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A running node's handle to its daemon and its peers.
pub struct Node {
    id: String,
    control: OwnedFd,
    inputs: HashMap<String, usize>,
    outputs: HashSet<String>,
    open_inputs: HashSet<String>,
    queue: BoundedQueue<String, Event>,
    out_edges: Vec<OutEdge>,
    in_edges: Vec<InEdge>,
    pool: Arc<Mutex<Pool>>,
    recv_buf: Vec<u8>,
    started: bool,
    stopped: bool,
    daemon_gone: bool,
}

fn env_var(name: &'static str) -> Result<String, NodeError> {
    std::env::var(name).map_err(|_| NodeError::MissingEnv(name))
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|s| !s.is_empty())
}

fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec { tv_sec: d.as_secs() as i64, tv_nsec: i64::from(d.subsec_nanos()) }
}

impl Node {
    /// Connects using the environment the daemon set for this process and
    /// waits until the daemon has wired it to its peers.
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
        // SAFETY: only inspected; ownership is taken below once it is known open.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        if rustix::fs::fstat(borrowed).is_err() {
            return Err(NodeError::BadEnv { name: env::FD, value: fd_text });
        }
        // SAFETY: the daemon passed this descriptor to us for exclusive use.
        let control = unsafe { OwnedFd::from_raw_fd(raw) };
        rustix::io::fcntl_setfd(&control, rustix::io::FdFlags::CLOEXEC)?;
        let mut inputs = HashMap::new();
        let inputs_text = env_var(env::INPUTS)?;
        for entry in split_list(&inputs_text) {
            let (id, size) = entry.rsplit_once(':').unwrap_or((entry, "10"));
            let size = size.parse().map_err(|_| NodeError::BadEnv { name: env::INPUTS, value: inputs_text.clone() })?;
            inputs.insert(id.to_owned(), size);
        }
        let outputs = split_list(&env_var(env::OUTPUTS)?).map(str::to_owned).collect();
        let mut node = Self {
            id: env_var(env::NODE_ID)?,
            control,
            open_inputs: inputs.keys().cloned().collect(),
            inputs,
            outputs,
            queue: BoundedQueue::default(),
            out_edges: Vec::new(),
            in_edges: Vec::new(),
            pool: Arc::default(),
            recv_buf: vec![0; rill_proto::MAX_PACKET],
            started: false,
            stopped: false,
            daemon_gone: false,
        };
        let deadline = Instant::now() + START_WAIT;
        while !node.started {
            node.drain_control();
            if node.started {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if node.daemon_gone || left.is_zero() {
                return Err(NodeError::StartTimeout);
            }
            let _ = transport::wait_readable(node.control.as_fd(), Some(left));
        }
        Ok(node)
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
            if !self.spin(left) {
                self.wait(left);
            }
        }
    }

    /// Polls without sleeping for a short while (`RILL_NODE_SPIN_US`,
    /// default 50 µs): an answer that comes back within it costs no
    /// wake-up, which on virtual machines can cost tens of microseconds.
    /// True if something arrived.
    fn spin(&self, limit: Duration) -> bool {
        let until = Instant::now() + spin_window().min(limit);
        while Instant::now() < until {
            if self.poll(Duration::ZERO) {
                return true;
            }
            // A peer woken onto this CPU runs now instead of after the spin.
            rustix::thread::sched_yield();
        }
        false
    }

    fn is_finished(&self) -> bool {
        self.stopped || self.daemon_gone || (!self.inputs.is_empty() && self.open_inputs.is_empty())
    }

    /// Sleeps until any connection has something (or room, for a backlog).
    fn wait(&self, timeout: Duration) {
        self.poll(timeout);
    }

    /// Waits up to `timeout` for any connection; true if one is ready.
    fn poll(&self, timeout: Duration) -> bool {
        let mut fds = Vec::with_capacity(1 + self.in_edges.len() + self.out_edges.len());
        fds.push(PollFd::new(&self.control, PollFlags::IN));
        for edge in self.in_edges.iter().filter(|e| !e.eof) {
            fds.push(PollFd::new(&edge.conn.fd, PollFlags::IN));
        }
        for edge in self.out_edges.iter().filter(|e| !e.broken) {
            let mut flags = PollFlags::IN;
            if edge.has_backlog() {
                flags |= PollFlags::OUT;
            }
            fds.push(PollFd::new(&edge.conn.fd, flags));
        }
        rustix::event::poll(&mut fds, Some(&timespec(timeout))).is_ok_and(|n| n > 0)
    }

    /// Reads every connection without blocking and moves queued outputs on.
    fn pump(&mut self) {
        self.drain_control();
        for i in 0..self.in_edges.len() {
            self.drain_in_edge(i);
            self.in_edges[i].conn.flush_releases();
        }
        self.service_out_edges();
    }

    fn drain_control(&mut self) {
        while !self.daemon_gone {
            let (n, fds) = match transport::recv_packet(self.control.as_fd(), &mut self.recv_buf, true) {
                Err(Errno::WOULDBLOCK) => return,
                Ok((n, fds)) if n > 0 => (n, fds),
                // 0 bytes: the daemon closed the connection.
                Ok(_) | Err(_) => {
                    self.daemon_gone = true;
                    return;
                }
            };
            match DaemonMsg::decode(&self.recv_buf[..n]) {
                Ok(msg) => self.handle_control(msg, fds.into_iter().next()),
                Err(e) => eprintln!("rill-node: dropping undecodable message from the daemon: {e}"),
            }
        }
    }

    fn handle_control(&mut self, msg: DaemonMsg, fd: Option<OwnedFd>) {
        match msg {
            DaemonMsg::Edge { direction, peer, routes } => {
                let Some(fd) = fd else {
                    eprintln!("rill-node: edge with {peer} arrived without its socket");
                    return;
                };
                match direction {
                    Direction::Out => {
                        if let Some(edge) = self.out_edges.iter_mut().find(|e| e.consumer == peer) {
                            let void = edge.replace(fd, routes);
                            self.release_all(void);
                        } else {
                            self.out_edges.push(OutEdge::new(peer, fd, routes));
                        }
                    }
                    Direction::In => {
                        let edge = InEdge::new(peer.clone(), fd, &routes);
                        match self.in_edges.iter().position(|e| e.producer == peer) {
                            Some(i) => {
                                // The producer restarted: what its last run
                                // sent comes first.
                                self.drain_in_edge(i);
                                self.in_edges[i] = edge;
                            }
                            None => self.in_edges.push(edge),
                        }
                    }
                }
            }
            DaemonMsg::Start => self.started = true,
            DaemonMsg::Tick { input, metadata } => {
                let capacity = self.inputs.get(&input).copied().unwrap_or(DEFAULT_QUEUE_SIZE);
                let data = Data { inner: DataInner::Inline(Vec::new()) };
                let _ = self.queue.push(Some(input.clone()), capacity, Event::Input { id: input, metadata, data });
            }
            DaemonMsg::InputClosed { input } => {
                // The producer has exited: everything it sent is in its
                // edge. Deliver that before the close.
                if let Some(i) = self.in_edges.iter().position(|e| e.inputs.contains(&input)) {
                    self.drain_in_edge(i);
                }
                self.queue.push(None, 0, Event::InputClosed { id: input });
            }
            DaemonMsg::Stop => {
                // Stop is not kept waiting behind a deep input queue.
                self.queue.push_urgent(Event::Stop);
            }
        }
    }

    fn drain_in_edge(&mut self, i: usize) {
        let mut reset_seen = false;
        loop {
            let edge = &mut self.in_edges[i];
            if edge.eof {
                return;
            }
            let (n, fds) = match transport::recv_packet(edge.conn.fd.as_fd(), &mut self.recv_buf, true) {
                Err(Errno::WOULDBLOCK) => return,
                Ok((n, fds)) if n > 0 => (n, fds),
                // A producer that exits with unread releases makes the
                // kernel report ECONNRESET once, ahead of what it sent.
                Err(Errno::CONNRESET) if !reset_seen => {
                    reset_seen = true;
                    continue;
                }
                Ok(_) | Err(_) => {
                    edge.eof = true;
                    edge.mappings.clear();
                    return;
                }
            };
            let msg = match EdgeMsg::decode(&self.recv_buf[..n]) {
                Ok(msg) => msg,
                Err(e) => {
                    eprintln!("rill-node: dropping undecodable message from {}: {e}", edge.producer);
                    continue;
                }
            };
            match msg {
                EdgeMsg::Data { input, metadata, payload, new_region } => {
                    let data = match payload {
                        Payload::Inline(bytes) => Data { inner: DataInner::Inline(bytes) },
                        Payload::Shared { region, len, region_len } => {
                            let release = Release { conn: edge.conn.clone(), region };
                            if new_region {
                                let mapped = fds
                                    .into_iter()
                                    .next()
                                    .ok_or_else(|| std::io::Error::other("region fd missing"))
                                    .and_then(|fd| Region::open(fd, region_len as usize));
                                match mapped {
                                    Ok(mapped) => {
                                        edge.mappings.insert(region, Arc::new(mapped));
                                    }
                                    Err(e) => {
                                        eprintln!("rill-node: cannot map shared region: {e}");
                                        continue;
                                    }
                                }
                            }
                            let Some(mapped) = edge.mappings.get(&region) else {
                                eprintln!("rill-node: message names unknown shared region {region}");
                                continue;
                            };
                            Data {
                                inner: DataInner::Shared {
                                    region: mapped.clone(),
                                    len: len as usize,
                                    _release: release,
                                },
                            }
                        }
                    };
                    let capacity = self.inputs.get(&input).copied().unwrap_or(DEFAULT_QUEUE_SIZE);
                    // A dropped event releases its shared payload on drop.
                    let _ = self.queue.push(Some(input.clone()), capacity, Event::Input { id: input, metadata, data });
                }
                EdgeMsg::Unmap { region } => {
                    edge.mappings.remove(&region);
                }
                EdgeMsg::Release { .. } => {}
            }
        }
    }

    /// Reads releases from consumers and writes what waits in backlogs.
    fn service_out_edges(&mut self) {
        let mut released: Vec<(u64, u32)> = Vec::new();
        let mut void: Vec<EdgeMsg> = Vec::new();
        let mut broken_outstanding: Vec<HashMap<u64, u32>> = Vec::new();
        {
            let pool = lock(&self.pool);
            for edge in &mut self.out_edges {
                if edge.broken {
                    continue;
                }
                loop {
                    match transport::recv_packet(edge.conn.fd.as_fd(), &mut self.recv_buf, true) {
                        Ok((n, _)) if n > 0 => {
                            if let Ok(EdgeMsg::Release { region, count }) = EdgeMsg::decode(&self.recv_buf[..n]) {
                                edge.released(region, count);
                                released.push((region, count));
                            }
                        }
                        Err(Errno::WOULDBLOCK) => break,
                        Err(Errno::CONNRESET) => continue,
                        // The consumer is gone: what it held is released.
                        Ok(_) | Err(_) => {
                            edge.broken = true;
                            break;
                        }
                    }
                }
                void.extend(edge.flush(&pool));
                if edge.broken {
                    broken_outstanding.push(edge.take_outstanding());
                    void.extend(edge.drain_backlog());
                }
            }
        }
        for (region, count) in released {
            self.release_region(region, count);
        }
        for outstanding in broken_outstanding {
            self.release_all(outstanding);
        }
        for msg in void {
            self.void_msg(msg);
        }
    }

    fn release_all(&mut self, outstanding: HashMap<u64, u32>) {
        for (region, count) in outstanding {
            self.release_region(region, count);
        }
    }

    /// A message that will not be delivered: its reference on a region goes.
    fn void_msg(&mut self, msg: EdgeMsg) {
        if let EdgeMsg::Data { payload: Payload::Shared { region, .. }, .. } = msg {
            self.release_region(region, 1);
        }
    }

    fn release_region(&mut self, region: u64, count: u32) {
        let destroyed = lock(&self.pool).release(region, count);
        if let Some(region) = destroyed {
            self.forget_region(region);
        }
    }

    /// A destroyed region: consumers that mapped it drop the mapping.
    fn forget_region(&mut self, region: u64) {
        let pool = lock(&self.pool);
        for edge in &mut self.out_edges {
            edge.forget(&pool, region);
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
            // Releases arrive on the edges; events that come along are queued.
            self.pump();
            if lock(&self.pool).busy() < MAX_BUSY_REGIONS {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.daemon_gone {
                return Err(NodeError::SharedMemoryExhausted);
            }
            self.wait(left);
        }
    }

    /// Publishes a filled sample on `output`.
    pub fn send_sample(&mut self, output: &str, mut sample: Sample) -> Result<(), NodeError> {
        self.check_output(output)?;
        let metadata = Metadata { timestamp_ns: now_ns() };
        let (payload, shared_id) = match std::mem::replace(&mut sample.inner, SampleInner::Sent) {
            SampleInner::Inline(bytes) => (Payload::Inline(bytes), None),
            SampleInner::Shared { id, region, len } => {
                (Payload::Shared { region: id, len: len as u64, region_len: region.len() as u64 }, Some(id))
            }
            SampleInner::Sent => return Ok(()),
        };
        let deliveries: Vec<(usize, String, usize)> = self
            .out_edges
            .iter()
            .enumerate()
            .flat_map(|(i, edge)| {
                edge.routes.get(output).into_iter().flatten().map(move |(input, cap)| (i, input.clone(), *cap))
            })
            .collect();
        if let Some(id) = shared_id {
            // No receiver at all: the region is free again at once, or
            // destroyed (then peers that mapped it earlier must forget it).
            let destroyed = lock(&self.pool).sent(id, deliveries.len() as u32);
            if let Some(region) = destroyed {
                self.forget_region(region);
            }
        }
        let mut void = Vec::new();
        {
            let pool = lock(&self.pool);
            for (i, input, capacity) in deliveries {
                let msg = EdgeMsg::Data { input: input.clone(), metadata, payload: payload.clone(), new_region: false };
                if let Offer::Dropped(old) = self.out_edges[i].offer(&pool, Some(input), capacity, msg) {
                    void.push(old);
                }
            }
        }
        for msg in void {
            self.void_msg(msg);
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

impl Drop for Node {
    /// Hands over messages still queued for slow receivers (bounded wait).
    fn drop(&mut self) {
        let deadline = Instant::now() + FLUSH_ON_EXIT;
        loop {
            self.service_out_edges();
            let waiting = self.out_edges.iter().any(|e| e.has_backlog() && !e.broken);
            let left = deadline.saturating_duration_since(Instant::now());
            if !waiting || left.is_zero() {
                return;
            }
            self.wait(left.min(Duration::from_millis(50)));
        }
    }
}

//! [`Node`]: a running node's connection to its daemon and its peers. The
//! receive path lives here (control messages, input edges, the event
//! queue); the sending side is [`Outbound`](crate::outbound::Outbound).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rill_proto::shm::Region;
use rill_proto::{BoundedQueue, DaemonMsg, Direction, EdgeMsg, Metadata, NodeMsg, Payload, Pushed, env, transport};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::counters::Counters;
use crate::data::{Data, Sample, SampleInner};
use crate::edge::{EdgeConn, InEdge};
use crate::outbound::Outbound;
use crate::pool::{PoolLimits, Take};
use crate::{Event, NodeError, RecvError, SHM_THRESHOLD};

/// How long `allocate` waits for a region to come back.
pub(crate) const SHM_WAIT: Duration = Duration::from_secs(10);
/// How long `from_env` waits for the daemon's wiring.
pub(crate) const START_WAIT: Duration = Duration::from_secs(30);
/// Default of `RILL_NODE_SPIN_US`.
const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// How long a node that ends waits to hand over messages still queued for
/// slow receivers.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(2);
/// Queue bound for an input the daemon did not describe: the file format's
/// default (`rill_core::DEFAULT_QUEUE_SIZE`; rill-node does not link rill-core).
const DEFAULT_QUEUE_SIZE: usize = 10;

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

/// A running node's handle to its daemon and its peers.
pub struct Node {
    id: String,
    control: OwnedFd,
    inputs: HashMap<String, usize>,
    outputs: HashSet<String>,
    open_inputs: HashSet<String>,
    /// Inputs whose `InputClosed` is queued (at most one each).
    closing: HashSet<String>,
    queue: BoundedQueue<String, Event>,
    in_edges: Vec<InEdge>,
    outbound: Arc<Outbound>,
    recv_buf: Vec<u8>,
    counters: Counters,
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
        let outputs: HashSet<String> = split_list(&env_var(env::OUTPUTS)?).map(str::to_owned).collect();
        let counters = Counters::new(inputs.keys(), outputs.iter());
        let outbound = Outbound::new(PoolLimits::from_env())?;
        let mut node = Self {
            id: env_var(env::NODE_ID)?,
            control,
            open_inputs: inputs.keys().cloned().collect(),
            closing: HashSet::new(),
            inputs,
            outputs,
            queue: BoundedQueue::default(),
            in_edges: Vec::new(),
            outbound,
            recv_buf: vec![0; rill_proto::MAX_PACKET],
            counters,
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
                    Event::Input { id, .. } => self.counters.received(id),
                }
                self.report_counts(false);
                return Ok(event);
            }
            self.report_counts(false);
            if self.is_finished() {
                return Err(RecvError::Finished);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout);
            }
            // Counts that changed are reported within REPORT_EVERY, also
            // while nothing else happens.
            let left = self.counters.due_at().map_or(left, |at| left.min(at.saturating_duration_since(Instant::now())));
            if !self.spin(left, false) {
                self.wait(left, false);
            }
        }
    }

    /// Tells the daemon this node's counts when they changed and a report
    /// is due (or now, with `force`). Never blocks: a report that does not
    /// fit the socket goes with the next one.
    fn report_counts(&mut self, force: bool) {
        let now = Instant::now();
        let due = self.counters.due_at().is_some_and(|at| force || now >= at);
        if !due || self.daemon_gone {
            return;
        }
        let backlog_drops = self.outbound.with(|s| s.backlog_drops());
        let mut buf = Vec::new();
        NodeMsg::Counts(self.counters.report(backlog_drops, now)).encode(&mut buf);
        if buf.len() > rill_proto::MAX_PACKET || transport::send_packet(self.control.as_fd(), &buf, &[], true).is_err()
        {
            self.counters.mark_changed();
        }
    }

    /// Polls without sleeping for a short while (`RILL_NODE_SPIN_US`,
    /// default 50 µs): an answer that comes back within it costs no
    /// wake-up, which on virtual machines can cost tens of microseconds.
    /// True if something arrived (with `releases`: a release too).
    fn spin(&self, limit: Duration, releases: bool) -> bool {
        let until = Instant::now() + spin_window().min(limit);
        let out_conns = self.release_conns(releases);
        let mut fds = self.poll_fds(&out_conns);
        while Instant::now() < until {
            if rustix::event::poll(&mut fds, Some(&transport::timespec(Duration::ZERO))).is_ok_and(|n| n > 0) {
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

    /// Waits up to `timeout` for a control message or input; with
    /// `releases`, also for consumers' releases. True if one is ready.
    /// (Backlogs are the flusher's: this thread never waits for room.)
    fn wait(&self, timeout: Duration, releases: bool) -> bool {
        let out_conns = self.release_conns(releases);
        let mut fds = self.poll_fds(&out_conns);
        rustix::event::poll(&mut fds, Some(&transport::timespec(timeout))).is_ok_and(|n| n > 0)
    }

    /// The connections releases arrive on, if they are waited for.
    fn release_conns(&self, releases: bool) -> Vec<Arc<EdgeConn>> {
        if !releases {
            return Vec::new();
        }
        self.outbound.with(|s| s.edges.iter().filter(|e| !e.broken).map(|e| e.conn.clone()).collect())
    }

    /// Control, open input edges, and `out_conns`, polled for input.
    fn poll_fds<'a>(&'a self, out_conns: &'a [Arc<EdgeConn>]) -> Vec<PollFd<'a>> {
        let mut fds = Vec::with_capacity(1 + self.in_edges.len() + out_conns.len());
        fds.push(PollFd::new(&self.control, PollFlags::IN));
        for edge in self.in_edges.iter().filter(|e| !e.eof) {
            fds.push(PollFd::new(&edge.conn.fd, PollFlags::IN));
        }
        for conn in out_conns {
            fds.push(PollFd::new(&conn.fd, PollFlags::IN));
        }
        fds
    }

    /// Reads every connection without blocking and moves queued outputs on.
    fn pump(&mut self) {
        self.drain_control();
        for i in 0..self.in_edges.len() {
            self.drain_in_edge(i);
            self.in_edges[i].conn.flush_releases();
        }
        self.outbound.with(|s| s.service(Instant::now()));
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
                    Direction::Out => self.outbound.with(|s| s.attach(peer, fd, routes)),
                    Direction::In => {
                        let edge = InEdge::new(peer.clone(), fd, &routes, Arc::downgrade(&self.outbound));
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
                let data = Data::inline(Vec::new());
                let pushed = self.queue.push(Some(input.clone()), capacity, Event::Input { id: input, metadata, data });
                if let Pushed::DroppedOldest(Event::Input { id, .. }) = &pushed {
                    self.counters.dropped(id);
                }
            }
            DaemonMsg::InputClosed { input } => {
                // The producer has exited: everything it sent is in its
                // edge. Deliver that before the close.
                if let Some(i) = self.in_edges.iter().position(|e| e.inputs.contains(&input)) {
                    self.drain_in_edge(i);
                }
                if self.closing.insert(input.clone()) {
                    self.queue.push(None, 0, Event::InputClosed { id: input });
                }
            }
            DaemonMsg::Stop => {
                // Stop is not kept waiting behind a deep input queue.
                self.queue.push_urgent(Event::Stop);
            }
            DaemonMsg::Unwire { peer } => self.outbound.with(|s| s.detach(&peer)),
            DaemonMsg::Tap { peer, routes, every_us } => {
                let Some(fd) = fd else {
                    eprintln!("rill-node: tap {peer} arrived without its socket");
                    return;
                };
                let every = Duration::from_micros(every_us);
                self.outbound.with(|s| s.attach_tap(peer, fd, routes, every));
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
                        Payload::Inline(bytes) => Data::inline(bytes),
                        Payload::Shared { region, len, region_len } => {
                            if new_region {
                                let Some(fd) = fds.into_iter().next() else {
                                    eprintln!(
                                        "rill-node: {} sent shared region {region} without its fd",
                                        edge.producer
                                    );
                                    continue;
                                };
                                match Region::open(fd, region_len as usize) {
                                    Ok(mapped) => {
                                        edge.mappings.insert(region, Arc::new(mapped));
                                    }
                                    Err(e) => {
                                        eprintln!("rill-node: refusing a message from {}: {e}", edge.producer);
                                        continue;
                                    }
                                }
                            }
                            let Some(mapped) = edge.mappings.get(&region) else {
                                eprintln!("rill-node: {} names unknown shared region {region}", edge.producer);
                                continue;
                            };
                            if len > mapped.len() as u64 {
                                eprintln!(
                                    "rill-node: refusing a message from {}: {len} bytes in a region of {}",
                                    edge.producer,
                                    mapped.len()
                                );
                                continue;
                            }
                            Data::shared(mapped.clone(), len as usize, edge.conn.clone(), region)
                        }
                    };
                    if !edge.inputs.contains(&input) {
                        // Not an input this producer feeds: dropped (which
                        // releases a shared payload), so a bad peer cannot
                        // grow the queue with made-up input names.
                        eprintln!("rill-node: {} sent a message for unknown input {input:?}", edge.producer);
                        continue;
                    }
                    let capacity = self.inputs.get(&input).copied().unwrap_or(DEFAULT_QUEUE_SIZE);
                    // A dropped event releases its shared payload on drop.
                    let pushed =
                        self.queue.push(Some(input.clone()), capacity, Event::Input { id: input, metadata, data });
                    if let Pushed::DroppedOldest(Event::Input { id, .. }) = &pushed {
                        self.counters.dropped(id);
                    }
                }
                EdgeMsg::Unmap { region } => {
                    edge.mappings.remove(&region);
                }
                // From the bridge, behind everything the remote producer sent.
                EdgeMsg::Closed { input } => {
                    if edge.inputs.contains(&input) && self.closing.insert(input.clone()) {
                        self.queue.push(None, 0, Event::InputClosed { id: input });
                    }
                }
                EdgeMsg::Release { .. } => {}
            }
        }
    }

    /// A buffer of `len` bytes to fill and send with [`Node::send_sample`].
    /// At or above [`SHM_THRESHOLD`] it is shared memory: nothing is copied
    /// on the way to the receivers. At the pool's limits (see
    /// [`MAX_BUSY_REGIONS`](crate::MAX_BUSY_REGIONS)) it first waits for
    /// receivers to finish with a region.
    pub fn allocate(&mut self, len: usize) -> Result<Sample, NodeError> {
        let inner = if len < SHM_THRESHOLD {
            SampleInner::Inline(vec![0; len])
        } else {
            let (id, region) = self.take_region(len)?;
            SampleInner::Shared { id, region, len }
        };
        Ok(Sample::new(inner, self.outbound.clone()))
    }

    fn take_region(&mut self, len: usize) -> Result<(u64, Arc<Region>), NodeError> {
        let deadline = Instant::now() + SHM_WAIT;
        // When a release is worth waiting for, the moment to stop waiting
        // and create a region instead.
        let mut create_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let create = create_at.is_some_and(|at| now >= at);
            match self.outbound.with(|s| s.take(len, create))? {
                Take::Got(id, region) => return Ok((id, region)),
                Take::Wait(patience) => {
                    create_at.get_or_insert(now + patience);
                }
                Take::Full => {}
            }
            if now >= deadline || self.daemon_gone {
                return Err(NodeError::SharedMemoryExhausted);
            }
            // Releases arrive on the edges; events that come along are queued.
            self.pump();
            let left = create_at.map_or(deadline, |at| at.min(deadline)).saturating_duration_since(Instant::now());
            // A consumer that keeps up releases within microseconds: catch
            // that without the cost of sleeping and being woken.
            if !self.spin(left, true) {
                self.wait(left, true);
            }
        }
    }

    /// Publishes a filled sample on `output`.
    pub fn send_sample(&mut self, output: &str, mut sample: Sample) -> Result<(), NodeError> {
        self.check_output(output)?;
        let metadata = Metadata { timestamp_ns: rill_proto::now_ns() };
        let payload = match std::mem::replace(&mut sample.inner, SampleInner::Sent) {
            SampleInner::Inline(bytes) => Payload::Inline(bytes),
            SampleInner::Shared { id, region, len } => {
                Payload::Shared { region: id, len: len as u64, region_len: region.len() as u64 }
            }
            SampleInner::Sent => return Ok(()),
        };
        let bytes = match &payload {
            Payload::Inline(bytes) => bytes.len(),
            Payload::Shared { len, .. } => *len as usize,
        };
        self.outbound.with(|s| s.send(output, metadata, payload));
        self.counters.sent(output, bytes);
        self.report_counts(false);
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

    /// Checks that `output` is declared under this node's `outputs:`, as
    /// sending does (so a caller can check before giving up a sample).
    pub fn check_output(&self, output: &str) -> Result<(), NodeError> {
        if self.outputs.contains(output) { Ok(()) } else { Err(NodeError::UnknownOutput(output.to_owned())) }
    }
}

impl Drop for Node {
    /// Hands over messages still queued for slow receivers (bounded wait).
    fn drop(&mut self) {
        self.outbound.stop_flusher();
        self.outbound.flush_for(FLUSH_ON_EXIT);
        // The last counts, ahead of the end the daemon sees next.
        self.report_counts(true);
    }
}

//! The sending side of a node, and of the bridge's writer into a local
//! consumer: the edges to consumers and the shared-memory pool, behind one
//! lock shared by the sender's thread, the `Sample`s it lent out, and a
//! flusher thread.
//!
//! The flusher is why a message never waits for its producer's next call.
//! It starts the first time it is needed, so a producer whose consumers
//! keep up stays single-threaded (glibc's malloc is measurably faster then).
//! A send writes straight into the consumer's socket; when the socket is
//! full, the rest waits in the edge's bounded backlog and the flusher writes
//! it as soon as the consumer makes room, whatever the producer is doing
//! (sleeping, computing, blocked on a camera). It costs nothing while
//! sockets have room: it sleeps until a backlog starts, a consumer's release
//! finds no room, a free region turns idle, or (every [`RELEASE_TICK`] while
//! consumers hold deliveries and the pool holds more than its warm reserve)
//! releases are due to be read so that idle memory can be given back even by
//! a producer that never calls in again.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rill_proto::{EdgeMsg, Metadata, Payload, Route, transport};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::edge::{EdgeConn, OutEdge, Sampler};
use crate::pool::{Pool, PoolLimits, Take};

/// While consumers hold deliveries, how often the flusher reads their
/// releases when the producer does not (so idle regions can be trimmed).
const RELEASE_TICK: Duration = Duration::from_millis(250);

/// Packets the flusher writes per hold of the lock, so a sender's own call
/// never waits long behind it.
const FLUSH_BATCH: usize = 64;

/// Shared by the sender's thread, its lent `Sample`s and the flusher.
pub(crate) struct Outbound {
    state: Mutex<Sending>,
    /// Wakes the flusher: a backlog started, a release waits, or shutdown.
    wake: OwnedFd,
    shutdown: AtomicBool,
    /// The flusher thread, once started; `this` starts it.
    flusher: Mutex<Option<JoinHandle<()>>>,
    this: std::sync::Weak<Outbound>,
    /// Consumer-side connections whose releases found no room.
    waiting_releases: Mutex<Vec<Arc<EdgeConn>>>,
}

/// Edges and pool; every method runs under the [`Outbound`] lock.
pub(crate) struct Sending {
    pub(crate) edges: Vec<OutEdge>,
    pub(crate) pool: Pool,
    buf: Vec<u8>,
    /// An edge's backlog started since the flusher last looked.
    backlog_started: bool,
    /// The flusher sleeps with no deadline: it must be woken as soon as it
    /// has something to time (releases to read, regions to trim).
    flusher_asleep: bool,
    /// `pool.free_changes` when it went to sleep.
    asleep_at_change: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only plain bookkeeping behind.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Outbound {
    pub(crate) fn new(limits: PoolLimits) -> std::io::Result<Arc<Self>> {
        let wake =
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)?;
        Ok(Arc::new_cyclic(|this| Self {
            flusher: Mutex::new(None),
            this: this.clone(),
            state: Mutex::new(Sending {
                edges: Vec::new(),
                pool: Pool::new(limits),
                buf: vec![0; 256],
                backlog_started: false,
                // Not started yet: as good as asleep with nothing to do.
                flusher_asleep: true,
                asleep_at_change: 0,
            }),
            wake,
            shutdown: AtomicBool::new(false),
            waiting_releases: Mutex::default(),
        }))
    }

    /// Runs `f` under the lock; wakes the flusher if a backlog started, or
    /// if it sleeps with no deadline and now has something to time.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Sending) -> R) -> R {
        let (result, wake) = {
            let mut state = lock(&self.state);
            let result = f(&mut state);
            let mut wake = std::mem::take(&mut state.backlog_started);
            if state.flusher_asleep && state.has_something_to_time() {
                state.flusher_asleep = false;
                wake = true;
            }
            (result, wake)
        };
        if wake {
            self.wake();
        }
        result
    }

    /// Wakes the flusher, starting it the first time.
    fn wake(&self) {
        let mut flusher = lock(&self.flusher);
        if flusher.is_none()
            && !self.shutdown.load(Ordering::Acquire)
            && let Some(this) = self.this.upgrade()
        {
            match std::thread::Builder::new().name("rill-flush".into()).spawn(move || this.run_flusher()) {
                Ok(thread) => *flusher = Some(thread),
                Err(e) => eprintln!("rill-node: cannot start the flusher thread: {e}"),
            }
        }
        drop(flusher);
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// A consumer-side connection has releases that found no room.
    pub(crate) fn watch_releases(&self, conn: Arc<EdgeConn>) {
        let mut waiting = lock(&self.waiting_releases);
        if !waiting.iter().any(|c| Arc::ptr_eq(c, &conn)) {
            waiting.push(conn);
        }
        drop(waiting);
        self.wake();
    }

    /// Ends the flusher thread, if it started.
    pub(crate) fn stop_flusher(&self) {
        self.shutdown.store(true, Ordering::Release);
        let thread = lock(&self.flusher).take();
        if let Some(thread) = thread {
            let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
            let _ = thread.join();
        }
    }

    fn run_flusher(&self) {
        let mut eventfd_buf = [0u8; 8];
        while !self.shutdown.load(Ordering::Acquire) {
            let now = Instant::now();
            let (watch, deadline) = {
                // Not `with`: the flusher need not wake itself.
                let mut s = lock(&self.state);
                s.service(now);
                s.trim(now);
                let deadline = s.next_deadline(now);
                s.flusher_asleep = deadline.is_none();
                s.asleep_at_change = s.pool.free_changes;
                s.backlog_started = false;
                (s.backlogged(), deadline)
            };
            let waiting: Vec<Arc<EdgeConn>> = {
                let mut waiting = lock(&self.waiting_releases);
                waiting.retain(|conn| !conn.flush_releases());
                waiting.clone()
            };
            let mut fds = Vec::with_capacity(1 + watch.len() + waiting.len());
            fds.push(PollFd::new(&self.wake, PollFlags::IN));
            fds.extend(watch.iter().map(|(c, flags)| PollFd::new(&c.fd, *flags)));
            fds.extend(waiting.iter().map(|c| PollFd::new(&c.fd, PollFlags::OUT)));
            let timeout = deadline.map(|d| transport::timespec(d.saturating_duration_since(Instant::now())));
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    eprintln!("rill-node: the flusher cannot wait for its sockets: {e}");
                    return;
                }
            }
            let _ = rustix::io::read(&self.wake, &mut eventfd_buf);
        }
    }

    /// Writes what waits in backlogs, for at most `limit` (a node that ends
    /// hands over messages still queued for slow receivers).
    pub(crate) fn flush_for(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let watch = self.with(|s| {
                s.service(Instant::now());
                s.backlogged()
            });
            let left = deadline.saturating_duration_since(Instant::now());
            if watch.is_empty() || left.is_zero() {
                return;
            }
            let mut fds: Vec<PollFd<'_>> = watch.iter().map(|(c, flags)| PollFd::new(&c.fd, *flags)).collect();
            let _ = rustix::event::poll(&mut fds, Some(&transport::timespec(left.min(Duration::from_millis(50)))));
        }
    }
}

impl Sending {
    /// A connection to consumer `peer`: new, or replacing the one to its
    /// previous run (whose unreleased deliveries are void; the backlog goes
    /// to the new connection).
    pub(crate) fn attach(&mut self, peer: String, fd: OwnedFd, routes: Vec<Route>) {
        let now = Instant::now();
        match self.edges.iter_mut().position(|e| e.consumer == peer) {
            Some(i) => {
                let void = self.edges[i].replace(fd, routes);
                self.backlog_started |= self.edges[i].has_backlog();
                let mut destroyed = Vec::new();
                for (region, count) in void {
                    destroyed.extend(self.pool.release(region, count, now));
                }
                self.settle(destroyed, Vec::new(), now);
            }
            None => self.edges.push(OutEdge::new(peer, fd, routes)),
        }
    }

    /// A connection to tap `peer`: sampled ([`Sampler`]), named outputs.
    pub(crate) fn attach_tap(&mut self, peer: String, fd: OwnedFd, routes: Vec<Route>, every: Duration) {
        self.detach(&peer);
        let mut edge = OutEdge::new(peer, fd, routes);
        edge.sampler = Some(Sampler::new(every));
        self.edges.push(edge);
    }

    /// Drops the connection to `peer` (a tap that ended): what waits for
    /// it and what it holds are released, and sends no longer count it.
    pub(crate) fn detach(&mut self, peer: &str) {
        let Some(i) = self.edges.iter().position(|e| e.consumer == peer) else { return };
        self.edges[i].broken = true;
        self.settle(Vec::new(), Vec::new(), Instant::now());
        self.edges.remove(i);
    }

    /// A region of at least `len` bytes (see [`Pool::take`]). Releases that
    /// arrived are read first, so a burst reuses warm regions instead of
    /// creating new ones.
    pub(crate) fn take(&mut self, len: usize, create: bool) -> std::io::Result<Take> {
        self.read_releases(Instant::now());
        self.pool.take(len, create)
    }

    /// A sample that was never sent: its region is free again.
    pub(crate) fn give_back(&mut self, region: u64) {
        let now = Instant::now();
        let destroyed = self.pool.give_back(region, now);
        self.settle(destroyed, Vec::new(), now);
    }

    /// Sends `payload` on `output` to every input it feeds.
    pub(crate) fn send(&mut self, output: &str, metadata: Metadata, payload: Payload) {
        let now = Instant::now();
        // (edge, input, for a tap: what it skipped before, queue bound)
        let mut deliveries: Vec<(usize, String, Option<u64>, usize)> = Vec::new();
        for (i, edge) in self.edges.iter_mut().enumerate() {
            let Some(routes) = edge.routes.get(output) else { continue };
            let skipped = match edge.sampler.as_mut() {
                None => None,
                Some(sampler) => match sampler.take(output, now) {
                    Some(skipped) => Some(skipped),
                    None => continue,
                },
            };
            deliveries.extend(routes.iter().map(|(input, cap)| (i, input.clone(), skipped, *cap)));
        }
        let mut destroyed = Vec::new();
        if let Payload::Shared { region, .. } = payload {
            // No receiver at all: the region is free again at once.
            destroyed = self.pool.sent(region, deliveries.len() as u32, now);
        }
        let mut void = Vec::new();
        let count = deliveries.len();
        let mut payload = Some(payload);
        for (n, (i, input, skipped, capacity)) in deliveries.into_iter().enumerate() {
            // The last delivery takes the payload; earlier ones copy it
            // (a few bytes inline, or a region handle).
            let payload = if n + 1 == count { payload.take() } else { payload.clone() };
            let Some(payload) = payload else { break };
            let named = skipped.map_or_else(|| input.clone(), |skipped| rill_proto::tap::tap_input(&input, skipped));
            let msg = EdgeMsg::Data { input: named, metadata, payload, new_region: false };
            self.backlog_started |= self.edges[i].offer(&self.pool, Some(input), capacity, msg, &mut void);
        }
        self.settle(destroyed, void, now);
    }

    /// What was dropped for consumers that did not keep up, per consumer
    /// and input (cumulative).
    pub(crate) fn backlog_drops(&self) -> Vec<rill_proto::BacklogDrop> {
        let mut drops: Vec<rill_proto::BacklogDrop> = self
            .edges
            .iter()
            .flat_map(|edge| {
                edge.dropped_oldest.iter().map(|(input, n)| rill_proto::BacklogDrop {
                    consumer: edge.consumer.clone(),
                    input: input.clone(),
                    dropped: *n,
                })
            })
            .collect();
        drops.sort_by(|a, b| (&a.consumer, &a.input).cmp(&(&b.consumer, &b.input)));
        drops
    }

    /// Tells every consumer that `output`'s inputs are closed for good,
    /// behind what waits for them (never dropped).
    pub(crate) fn close(&mut self, output: &str) {
        let mut void = Vec::new();
        for i in 0..self.edges.len() {
            let inputs: Vec<String> =
                self.edges[i].routes.get(output).into_iter().flatten().map(|(input, _)| input.clone()).collect();
            for input in inputs {
                let msg = EdgeMsg::Closed { input };
                self.backlog_started |= self.edges[i].offer(&self.pool, None, usize::MAX, msg, &mut void);
            }
        }
        self.settle(Vec::new(), void, Instant::now());
    }

    /// Reads releases, writes backlogs, and gives up on consumers that left.
    pub(crate) fn service(&mut self, now: Instant) {
        self.read_releases(now);
        let mut void = Vec::new();
        for edge in self.edges.iter_mut().filter(|e| e.has_backlog()) {
            void.extend(edge.flush(&self.pool, FLUSH_BATCH));
        }
        self.settle(Vec::new(), void, now);
    }

    /// Destroys free regions that stayed unused for the idle time.
    pub(crate) fn trim(&mut self, now: Instant) {
        let destroyed = self.pool.trim(now);
        self.settle(destroyed, Vec::new(), now);
    }

    /// Connections whose backlog waits, and what for: room in the socket
    /// (`OUT`) or the consumer's releases (`IN`).
    pub(crate) fn backlogged(&self) -> Vec<(Arc<EdgeConn>, PollFlags)> {
        self.edges
            .iter()
            .filter(|e| !e.broken && e.has_backlog())
            .map(|e| (e.conn.clone(), if e.waits_for_releases() { PollFlags::IN } else { PollFlags::OUT }))
            .collect()
    }

    /// The pool holds more than its warm reserve, and its free regions
    /// changed or deliveries are outstanding: a sleeping flusher may now
    /// have a deadline. (Within the reserve nothing is ever trimmed, so a
    /// steady producer never wakes it.)
    fn has_something_to_time(&self) -> bool {
        self.releases_matter() || (self.pool.beyond_reserve() && self.pool.free_changes != self.asleep_at_change)
    }

    /// Reading releases the producer does not read itself matters only if
    /// trimming may follow: the pool holds more than its warm reserve.
    fn releases_matter(&self) -> bool {
        self.pool.beyond_reserve() && self.edges.iter().any(|e| !e.broken && e.has_outstanding())
    }

    /// When the flusher must look again without being woken.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let releases_due = self.releases_matter().then(|| now + RELEASE_TICK);
        match (self.pool.next_trim(), releases_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reads every consumer's releases (without blocking); a consumer that
    /// is gone breaks its edge.
    fn read_releases(&mut self, now: Instant) {
        let mut released = Vec::new();
        for edge in &mut self.edges {
            if edge.broken {
                continue;
            }
            loop {
                match transport::recv_packet(std::os::fd::AsFd::as_fd(&edge.conn.fd), &mut self.buf, true) {
                    Ok((n, _)) if n > 0 => {
                        if let Ok(EdgeMsg::Release { region, count }) = EdgeMsg::decode(&self.buf[..n]) {
                            edge.released(region, count);
                            released.push((region, count));
                        }
                    }
                    Err(Errno::WOULDBLOCK) => break,
                    // Reported once when the consumer exited with unread
                    // packets; what it sent before is still there.
                    Err(Errno::CONNRESET) => continue,
                    Ok(_) | Err(_) => {
                        edge.broken = true;
                        break;
                    }
                }
            }
        }
        let mut destroyed = Vec::new();
        for (region, count) in released {
            destroyed.extend(self.pool.release(region, count, now));
        }
        // A backlog that waited for these releases goes on now: the flusher
        // may be asleep waiting for releases someone else just read.
        let mut void = Vec::new();
        for edge in self.edges.iter_mut().filter(|e| !e.broken && e.has_backlog() && !e.waits_for_releases()) {
            void.extend(edge.flush(&self.pool, FLUSH_BATCH));
            // What it waits for may have changed: the flusher looks again.
            self.backlog_started |= edge.has_backlog();
        }
        self.settle(destroyed, void, now);
    }

    /// Follows up on regions and messages that are done with: messages that
    /// will not be delivered release their region reference; broken edges
    /// release what their consumer held; destroyed regions are unmapped by
    /// the consumers that mapped them (which may break more edges, so this
    /// runs until nothing is left).
    fn settle(&mut self, mut destroyed: Vec<u64>, mut void: Vec<EdgeMsg>, now: Instant) {
        loop {
            for edge in self.edges.iter_mut().filter(|e| e.broken) {
                void.extend(edge.drain_backlog());
                for (region, count) in edge.take_outstanding() {
                    destroyed.extend(self.pool.release(region, count, now));
                }
            }
            for msg in void.drain(..) {
                if let EdgeMsg::Data { payload: Payload::Shared { region, .. }, .. } = msg {
                    destroyed.extend(self.pool.release(region, 1, now));
                }
            }
            if destroyed.is_empty() {
                return;
            }
            for region in destroyed.drain(..) {
                for edge in &mut self.edges {
                    self.backlog_started |= edge.forget(&self.pool, region, &mut void);
                }
            }
        }
    }
}

//! Data connections with other nodes. An [`OutEdge`] carries this node's
//! outputs to one consumer, with a bounded drop-oldest backlog for when the
//! consumer's socket is full; an [`InEdge`] brings one producer's messages
//! and keeps the mappings of its shared regions.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rill_proto::shm::Region;
use rill_proto::{BoundedQueue, EdgeMsg, Payload, Pushed, Route, transport};
use rustix::io::Errno;

use crate::outbound::Outbound;
use crate::pool::Pool;

/// A socket shared with the [`Data`](crate::Data) it delivered, so dropping
/// a payload can release it.
#[derive(Debug)]
pub(crate) struct EdgeConn {
    pub(crate) fd: OwnedFd,
    /// Releases the socket had no room for; sent by the flusher once it has.
    pending_releases: Mutex<HashMap<u64, u32>>,
    /// The flusher that sends pending releases (consumer side).
    flusher: Weak<Outbound>,
}

/// True for errors that mean the peer is gone for good.
pub(crate) fn peer_gone(e: Errno) -> bool {
    matches!(e, Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN | Errno::BADF)
}

impl EdgeConn {
    pub(crate) fn new(fd: OwnedFd, flusher: Weak<Outbound>) -> Self {
        Self { fd, pending_releases: Mutex::default(), flusher }
    }

    /// One delivery of `region` is done with. Never blocks: a consumer
    /// must not stall because its producer is busy; what finds no room is
    /// left to the flusher.
    pub(crate) fn release(self: &Arc<Self>, region: u64) {
        let mut pending = self.pending_releases.lock().unwrap_or_else(PoisonError::into_inner);
        *pending.entry(region).or_default() += 1;
        if !Self::send_releases(&self.fd, &mut pending) {
            drop(pending);
            if let Some(flusher) = self.flusher.upgrade() {
                flusher.watch_releases(self.clone());
            }
        }
    }

    /// Sends releases that waited for room; true when none waits any more.
    pub(crate) fn flush_releases(&self) -> bool {
        let mut pending = self.pending_releases.lock().unwrap_or_else(PoisonError::into_inner);
        Self::send_releases(&self.fd, &mut pending)
    }

    fn send_releases(fd: &OwnedFd, pending: &mut HashMap<u64, u32>) -> bool {
        let mut buf = Vec::with_capacity(24);
        while let Some((&region, &count)) = pending.iter().next() {
            buf.clear();
            EdgeMsg::Release { region, count }.encode(&mut buf);
            match transport::send_packet(fd.as_fd(), &buf, &[], true) {
                Ok(()) => {
                    pending.remove(&region);
                }
                // Full: keep for later.
                Err(Errno::WOULDBLOCK | Errno::NOBUFS | Errno::NOMEM) => return false,
                // Gone: nothing to release to.
                Err(_) => pending.clear(),
            }
        }
        true
    }

    pub(crate) fn send(&self, msg: &EdgeMsg, fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
        let mut buf = Vec::with_capacity(64);
        msg.encode(&mut buf);
        transport::send_packet(self.fd.as_fd(), &buf, fds, true)
    }
}

/// Shared messages a consumer may keep beyond its queues (e.g. the previous
/// frame while it waits for the next) before the producer holds back.
pub(crate) const HOLD_SLACK: usize = 4;

/// To one consumer.
pub(crate) struct OutEdge {
    pub(crate) consumer: String,
    pub(crate) conn: Arc<EdgeConn>,
    /// Output -> the consumer's inputs it feeds, with their queue bounds.
    pub(crate) routes: HashMap<String, Vec<(String, usize)>>,
    backlog: BoundedQueue<String, EdgeMsg>,
    /// Regions whose fd the consumer has.
    mapped: HashSet<u64>,
    /// Deliveries per region the consumer has not released.
    outstanding: HashMap<u64, u32>,
    /// Their sum.
    in_flight: usize,
    /// Most shared deliveries the consumer may hold unreleased: the sum of
    /// its inputs' `queue_size` (it cannot queue more without dropping),
    /// plus [`HOLD_SLACK`] it may keep while it works (the previous frame). A
    /// consumer that stops reading thus pins at most this many regions in
    /// its socket and queue, plus its backlog here (same bound, oldest
    /// dropped), and the producer keeps regions for everyone else.
    shared_cap: usize,
    pub(crate) broken: bool,
    /// Messages dropped from the backlog (drop-oldest), per input: the
    /// consumer's loss, counted here (keys are the routes' inputs).
    pub(crate) dropped_oldest: HashMap<String, u64>,
    /// A tap's: which messages it gets.
    pub(crate) sampler: Option<Sampler>,
}

/// A tap's sampling at the producer: at most one message per `every` of
/// each output; what it skips is counted and named with the next one it
/// gets ([`rill_proto::tap::tap_input`]).
pub(crate) struct Sampler {
    every: std::time::Duration,
    /// Per output: when the tap last got one, and how many it skipped since.
    outputs: HashMap<String, (std::time::Instant, u64)>,
}

impl Sampler {
    pub(crate) fn new(every: std::time::Duration) -> Self {
        Self { every, outputs: HashMap::new() }
    }

    /// `n` messages of `output` meant for the tap were dropped on the way:
    /// told with the next one, as skipped.
    pub(crate) fn lost(&mut self, output: &str, n: u64) {
        if let Some((_, skipped)) = self.outputs.get_mut(output) {
            *skipped = skipped.saturating_add(n);
        }
    }

    /// `Some(skipped before it)` if the tap gets this message of `output`.
    pub(crate) fn take(&mut self, output: &str, now: std::time::Instant) -> Option<u64> {
        match self.outputs.get_mut(output) {
            Some((last, skipped)) if now.saturating_duration_since(*last) < self.every => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                self.outputs.insert(output.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

impl OutEdge {
    pub(crate) fn new(consumer: String, fd: OwnedFd, routes: Vec<Route>) -> Self {
        let mut by_output: HashMap<String, Vec<(String, usize)>> = HashMap::new();
        let mut inputs: HashMap<String, usize> = HashMap::new();
        for route in routes {
            inputs.insert(route.input.clone(), route.queue_size as usize);
            by_output.entry(route.output).or_default().push((route.input, route.queue_size as usize));
        }
        let shared_cap = inputs.values().fold(HOLD_SLACK, |sum, q| sum.saturating_add(*q));
        Self {
            consumer,
            conn: Arc::new(EdgeConn::new(fd, Weak::new())),
            routes: by_output,
            backlog: BoundedQueue::default(),
            mapped: HashSet::new(),
            outstanding: HashMap::new(),
            in_flight: 0,
            shared_cap,
            broken: false,
            dropped_oldest: HashMap::new(),
            sampler: None,
        }
    }

    /// A new connection to the (restarted) consumer. Deliveries to the old
    /// one are void: returns them for release. The backlog goes to the new one.
    pub(crate) fn replace(&mut self, fd: OwnedFd, routes: Vec<Route>) -> HashMap<u64, u32> {
        let fresh = OutEdge::new(self.consumer.clone(), fd, routes);
        self.conn = fresh.conn;
        self.routes = fresh.routes;
        self.shared_cap = fresh.shared_cap;
        self.mapped.clear();
        self.broken = false;
        self.take_outstanding()
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// True while the consumer holds deliveries it has not released.
    pub(crate) fn has_outstanding(&self) -> bool {
        !self.outstanding.is_empty()
    }

    /// The backlog waits for the consumer to release shared deliveries (not
    /// for room in its socket).
    pub(crate) fn waits_for_releases(&self) -> bool {
        self.in_flight >= self.shared_cap
    }

    /// Sends `msg` now if nothing waits before it and the socket has room,
    /// else queues it under `input`'s bound (`None`: never dropped).
    /// Messages that will not be delivered (the oldest one dropped, or all
    /// of them when the edge broke) go to `void`, for release. Returns true
    /// if this started a backlog (the flusher must watch the edge).
    pub(crate) fn offer(
        &mut self,
        pool: &Pool,
        input: Option<String>,
        capacity: usize,
        msg: EdgeMsg,
        void: &mut Vec<EdgeMsg>,
    ) -> bool {
        if !self.backlog.is_empty() {
            // Older messages first; whatever fits now goes now.
            void.extend(self.flush(pool, usize::MAX));
        }
        if self.broken {
            void.push(msg);
            return false;
        }
        let was_empty = self.backlog.is_empty();
        let msg = if was_empty {
            match self.write(pool, msg) {
                Ok(()) => return false,
                Err((e, msg)) if peer_gone(e) => {
                    self.broken = true;
                    void.push(msg);
                    return false;
                }
                Err((_, msg)) => msg,
            }
        } else {
            msg
        };
        let key = if matches!(msg, EdgeMsg::Data { .. }) { input } else { None };
        if let Pushed::DroppedOldest(old) = self.backlog.push(key, capacity, msg) {
            if let EdgeMsg::Data { input, .. } = &old {
                // (A tap's message names its skips too: counted by output,
                // and told with the tap's next message.)
                let (input, skipped) = rill_proto::tap::parse_tap_input(input);
                if let Some(sampler) = self.sampler.as_mut() {
                    sampler.lost(input, skipped.saturating_add(1));
                }
                match self.dropped_oldest.get_mut(input) {
                    Some(n) => *n += 1,
                    None => {
                        self.dropped_oldest.insert(input.to_owned(), 1);
                    }
                }
            }
            void.push(old);
        }
        was_empty
    }

    /// Writes up to `max` packets of the backlog, until the socket is full.
    /// Returns messages that were dropped because the edge broke.
    pub(crate) fn flush(&mut self, pool: &Pool, max: usize) -> Vec<EdgeMsg> {
        let mut dropped = Vec::new();
        let mut written = 0;
        while let Some((key, msg)) = self.backlog.pop() {
            if written == max && !self.broken {
                self.backlog.push_front(key, msg);
                break;
            }
            written += 1;
            if self.broken {
                dropped.push(msg);
                continue;
            }
            match self.write(pool, msg) {
                Ok(()) => {}
                Err((e, msg)) if peer_gone(e) => {
                    self.broken = true;
                    dropped.push(msg);
                }
                // Full (or short of kernel memory): the rest waits.
                Err((_, msg)) => {
                    self.backlog.push_front(key, msg);
                    break;
                }
            }
        }
        dropped
    }

    fn write(&mut self, pool: &Pool, mut msg: EdgeMsg) -> Result<(), (Errno, EdgeMsg)> {
        let mut shared = None;
        if let EdgeMsg::Data { payload: Payload::Shared { region, .. }, new_region, .. } = &mut msg {
            if self.in_flight >= self.shared_cap {
                // As if the socket were full: it waits in the backlog.
                return Err((Errno::WOULDBLOCK, msg));
            }
            *new_region = !self.mapped.contains(region);
            shared = Some((*region, *new_region));
        }
        let fd = match shared {
            Some((region, true)) => match pool.region(region).and_then(|r| r.fd()) {
                Some(fd) => Some(fd),
                None => return Err((Errno::BADF, msg)),
            },
            _ => None,
        };
        let fds: &[BorrowedFd<'_>] = match &fd {
            Some(fd) => std::slice::from_ref(fd),
            None => &[],
        };
        match self.conn.send(&msg, fds) {
            Ok(()) => {
                if let Some((region, new)) = shared {
                    if new {
                        self.mapped.insert(region);
                    }
                    *self.outstanding.entry(region).or_default() += 1;
                    self.in_flight += 1;
                }
                Ok(())
            }
            Err(e) => Err((e, msg)),
        }
    }

    /// The consumer released `count` deliveries of `region`.
    pub(crate) fn released(&mut self, region: u64, count: u32) {
        if let Some(n) = self.outstanding.get_mut(&region) {
            let done = count.min(*n);
            *n -= done;
            self.in_flight = self.in_flight.saturating_sub(done as usize);
            if *n == 0 {
                self.outstanding.remove(&region);
            }
        }
    }

    /// The region is destroyed: tell the consumer if it has it mapped.
    /// Returns true if that started a backlog.
    pub(crate) fn forget(&mut self, pool: &Pool, region: u64, void: &mut Vec<EdgeMsg>) -> bool {
        // Unmap is never dropped by the backlog bound.
        self.mapped.remove(&region) && self.offer(pool, None, usize::MAX, EdgeMsg::Unmap { region }, void)
    }

    /// Everything the consumer still held (the edge broke): for release.
    pub(crate) fn take_outstanding(&mut self) -> HashMap<u64, u32> {
        self.in_flight = 0;
        std::mem::take(&mut self.outstanding)
    }

    /// Backlogged messages, discarded (the edge is gone for good).
    pub(crate) fn drain_backlog(&mut self) -> Vec<EdgeMsg> {
        self.backlog.drain().collect()
    }
}

/// From one producer.
pub(crate) struct InEdge {
    pub(crate) producer: String,
    /// This node's inputs the producer feeds.
    pub(crate) inputs: Vec<String>,
    pub(crate) conn: Arc<EdgeConn>,
    pub(crate) mappings: HashMap<u64, Arc<Region>>,
    /// The producer closed its end.
    pub(crate) eof: bool,
}

impl InEdge {
    pub(crate) fn new(producer: String, fd: OwnedFd, routes: &[Route], flusher: Weak<Outbound>) -> Self {
        let inputs = routes.iter().map(|r| r.input.clone()).collect();
        Self { producer, inputs, conn: Arc::new(EdgeConn::new(fd, flusher)), mappings: HashMap::new(), eof: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_sampler_sends_one_message_per_interval_and_names_what_it_skipped_or_lost() {
        let start = std::time::Instant::now();
        let ms = |n: u64| start + std::time::Duration::from_millis(n);
        let mut sampler = Sampler::new(std::time::Duration::from_millis(10));
        assert_eq!(sampler.take("out", ms(0)), Some(0), "the first one goes");
        assert_eq!(sampler.take("other", ms(1)), Some(0), "per output");
        assert_eq!(sampler.take("out", ms(3)), None);
        assert_eq!(sampler.take("out", ms(9)), None);
        sampler.lost("out", 2);
        assert_eq!(sampler.take("out", ms(10)), Some(4), "2 skipped, 2 lost on the way");
        assert_eq!(sampler.take("out", ms(12)), None);
        let mut every = Sampler::new(std::time::Duration::ZERO);
        assert_eq!((every.take("out", ms(0)), every.take("out", ms(0))), (Some(0), Some(0)), "0: every message");
    }

    #[test]
    fn only_a_dead_peer_breaks_an_edge() {
        for gone in [Errno::PIPE, Errno::CONNRESET, Errno::NOTCONN, Errno::BADF] {
            assert!(peer_gone(gone), "{gone:?}");
        }
        // Full, or short of kernel memory for a moment: the message waits.
        for transient in [Errno::WOULDBLOCK, Errno::NOBUFS, Errno::NOMEM, Errno::INTR, Errno::TOOMANYREFS] {
            assert!(!peer_gone(transient), "{transient:?}");
        }
    }
}

//! Data connections with other nodes. An [`OutEdge`] carries this node's
//! outputs to one consumer, with a bounded drop-oldest backlog for when the
//! consumer's socket is full; an [`InEdge`] brings one producer's messages
//! and keeps the mappings of its shared regions.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rill_proto::{BoundedQueue, EdgeMsg, Payload, Pushed, Route, transport};
use rustix::io::Errno;

use crate::pool::Pool;
use crate::shm::Region;

/// A socket shared with the [`Data`](crate::Data) it delivered, so dropping
/// a payload can release it.
#[derive(Debug)]
pub(crate) struct EdgeConn {
    pub(crate) fd: OwnedFd,
    /// Releases the socket had no room for; sent with the next ones.
    pending_releases: std::sync::Mutex<HashMap<u64, u32>>,
}

impl EdgeConn {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self { fd, pending_releases: std::sync::Mutex::default() }
    }

    /// One delivery of `region` is done with. Never blocks: a consumer
    /// must not stall because its producer is busy.
    pub(crate) fn release(&self, region: u64) {
        let mut pending = self.pending_releases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *pending.entry(region).or_default() += 1;
        Self::send_releases(&self.fd, &mut pending);
    }

    /// Sends releases that waited for room.
    pub(crate) fn flush_releases(&self) {
        let mut pending = self.pending_releases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::send_releases(&self.fd, &mut pending);
    }

    fn send_releases(fd: &OwnedFd, pending: &mut HashMap<u64, u32>) {
        let regions: Vec<(u64, u32)> = pending.iter().map(|(r, c)| (*r, *c)).collect();
        for (region, count) in regions {
            let mut buf = Vec::with_capacity(24);
            EdgeMsg::Release { region, count }.encode(&mut buf);
            match transport::send_packet(fd.as_fd(), &buf, &[], true) {
                Ok(()) => {
                    pending.remove(&region);
                }
                // Full: keep for later. Gone: nothing to release to.
                Err(Errno::WOULDBLOCK) => return,
                Err(_) => {
                    pending.clear();
                    return;
                }
            }
        }
    }

    pub(crate) fn send(&self, msg: &EdgeMsg, fds: &[BorrowedFd<'_>], nonblocking: bool) -> Result<(), Errno> {
        let mut buf = Vec::with_capacity(64);
        msg.encode(&mut buf);
        transport::send_packet(self.fd.as_fd(), &buf, fds, nonblocking)
    }
}

/// What happened when a message was offered to an edge.
pub(crate) enum Offer {
    Sent,
    Queued,
    /// Dropped (queue full: this is the dropped older message, or the edge
    /// is broken: the message itself); its shared reference must go.
    Dropped(EdgeMsg),
}

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
    pub(crate) broken: bool,
}

impl OutEdge {
    pub(crate) fn new(consumer: String, fd: OwnedFd, routes: Vec<Route>) -> Self {
        let mut by_output: HashMap<String, Vec<(String, usize)>> = HashMap::new();
        for route in routes {
            by_output.entry(route.output).or_default().push((route.input, route.queue_size as usize));
        }
        Self {
            consumer,
            conn: Arc::new(EdgeConn::new(fd)),
            routes: by_output,
            backlog: BoundedQueue::default(),
            mapped: HashSet::new(),
            outstanding: HashMap::new(),
            broken: false,
        }
    }

    /// A new connection to the (restarted) consumer. Deliveries to the old
    /// one are void: returns them for release. The backlog goes to the new one.
    pub(crate) fn replace(&mut self, fd: OwnedFd, routes: Vec<Route>) -> HashMap<u64, u32> {
        let fresh = OutEdge::new(self.consumer.clone(), fd, routes);
        self.conn = fresh.conn;
        self.routes = fresh.routes;
        self.mapped.clear();
        self.broken = false;
        std::mem::take(&mut self.outstanding)
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Sends `msg` now if nothing waits before it and the socket has room,
    /// else queues it under `input`'s bound.
    pub(crate) fn offer(&mut self, pool: &Pool, input: Option<String>, capacity: usize, msg: EdgeMsg) -> Offer {
        if self.broken {
            return Offer::Dropped(msg);
        }
        let msg = if self.backlog.is_empty() {
            match self.write(pool, msg) {
                Ok(()) => return Offer::Sent,
                Err((Errno::WOULDBLOCK, msg)) => msg,
                Err((_, msg)) => {
                    self.broken = true;
                    return Offer::Dropped(msg);
                }
            }
        } else {
            msg
        };
        let key = if matches!(msg, EdgeMsg::Data { .. }) { input } else { None };
        match self.backlog.push(key, capacity, msg) {
            Pushed::Kept => Offer::Queued,
            Pushed::DroppedOldest(old) => Offer::Dropped(old),
        }
    }

    /// Writes the backlog until the socket is full. Returns messages that
    /// were dropped because the edge broke.
    pub(crate) fn flush(&mut self, pool: &Pool) -> Vec<EdgeMsg> {
        let mut dropped = Vec::new();
        while let Some((key, msg)) = self.backlog.pop() {
            if self.broken {
                dropped.push(msg);
                continue;
            }
            match self.write(pool, msg) {
                Ok(()) => {}
                Err((Errno::WOULDBLOCK, msg)) => {
                    self.backlog.push_front(key, msg);
                    break;
                }
                Err((_, msg)) => {
                    self.broken = true;
                    dropped.push(msg);
                }
            }
        }
        dropped
    }

    fn write(&mut self, pool: &Pool, mut msg: EdgeMsg) -> Result<(), (Errno, EdgeMsg)> {
        let mut shared = None;
        if let EdgeMsg::Data { payload: Payload::Shared { region, .. }, new_region, .. } = &mut msg {
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
        match self.conn.send(&msg, fds, true) {
            Ok(()) => {
                if let Some((region, new)) = shared {
                    if new {
                        self.mapped.insert(region);
                    }
                    *self.outstanding.entry(region).or_default() += 1;
                }
                Ok(())
            }
            Err(e) => Err((e, msg)),
        }
    }

    /// The consumer released `count` deliveries of `region`.
    pub(crate) fn released(&mut self, region: u64, count: u32) {
        if let Some(n) = self.outstanding.get_mut(&region) {
            *n = n.saturating_sub(count);
            if *n == 0 {
                self.outstanding.remove(&region);
            }
        }
    }

    /// The region is destroyed: tell the consumer if it has it mapped.
    pub(crate) fn forget(&mut self, pool: &Pool, region: u64) {
        if self.mapped.remove(&region) {
            // Unmap is never dropped by the backlog bound.
            let _ = self.offer(pool, None, usize::MAX, EdgeMsg::Unmap { region });
        }
    }

    /// Everything the consumer still held (the edge broke): for release.
    pub(crate) fn take_outstanding(&mut self) -> HashMap<u64, u32> {
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
    pub(crate) fn new(producer: String, fd: OwnedFd, routes: &[Route]) -> Self {
        let inputs = routes.iter().map(|r| r.input.clone()).collect();
        Self { producer, inputs, conn: Arc::new(EdgeConn::new(fd)), mappings: HashMap::new(), eof: false }
    }
}

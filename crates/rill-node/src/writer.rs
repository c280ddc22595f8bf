//! [`EdgeWriter`]: writes into one local consumer's edge exactly as a
//! producer node does (pooled, reused shared memory from [`SHM_THRESHOLD`]
//! on, a drop-oldest backlog per input that a flusher thread delivers as the
//! consumer makes room), for a producer that is a thread rather than a node
//! process: the daemon's bridge, which receives messages from other
//! machines and hands them to local consumers.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rill_proto::{Metadata, Payload, Route};

use crate::SHM_THRESHOLD;
use crate::outbound::Outbound;
use crate::pool::{PoolLimits, Take};

/// Why a message was not written (it is dropped; the writer goes on).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the consumer has no input `{0}` on this edge")]
    UnknownInput(String),
    #[error("shared memory is exhausted: the consumer holds every region this writer may have")]
    Exhausted,
    #[error("cannot create shared memory: {0}")]
    Io(#[from] std::io::Error),
}

/// The producer's end of one edge, written from any thread.
pub struct EdgeWriter {
    outbound: Arc<Outbound>,
    inputs: Vec<String>,
}

impl EdgeWriter {
    /// Writes into `fd`, the producer's end of an edge to `consumer` that
    /// feeds `inputs` (each with its queue bound).
    pub fn new(consumer: &str, fd: OwnedFd, inputs: &[(String, usize)], limits: PoolLimits) -> std::io::Result<Self> {
        let outbound = Outbound::new(limits)?;
        // Each input is its own "output" here: a message goes to the input it names.
        let routes = inputs
            .iter()
            .map(|(input, size)| Route {
                output: input.clone(),
                input: input.clone(),
                queue_size: u32::try_from(*size).unwrap_or(u32::MAX),
            })
            .collect();
        outbound.with(|s| s.attach(consumer.to_owned(), fd, routes));
        Ok(Self { outbound, inputs: inputs.iter().map(|(i, _)| i.clone()).collect() })
    }

    /// Writes `payload` for `input`, copying it once: into the message, or
    /// into a pooled shared region from [`SHM_THRESHOLD`] bytes on. Never
    /// blocks: at the pool's limits the message is dropped with an error.
    pub fn send(&self, input: &str, metadata: Metadata, payload: &[u8]) -> Result<(), WriteError> {
        self.send_with(input, metadata, payload.len(), |buf| {
            buf.copy_from_slice(payload);
            Ok(())
        })
    }

    /// Writes a `len`-byte payload for `input` that `fill` writes in place:
    /// straight into a pooled shared region from [`SHM_THRESHOLD`] bytes on
    /// (outside the writer's lock, so a large copy holds up nothing else).
    /// Never blocks; a failed `fill` drops the message (the region is free
    /// again).
    pub fn send_with(
        &self,
        input: &str,
        metadata: Metadata,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> std::io::Result<()>,
    ) -> Result<(), WriteError> {
        if !self.inputs.iter().any(|i| i == input) {
            return Err(WriteError::UnknownInput(input.to_owned()));
        }
        if len < SHM_THRESHOLD {
            let mut payload = vec![0; len];
            fill(&mut payload)?;
            self.outbound.with(|s| s.send(input, metadata, Payload::Inline(payload)));
            return Ok(());
        }
        // Never waits: this runs on the network's receive thread.
        let (id, region) = self.outbound.with(|s| match s.take(len, true)? {
            Take::Got(id, region) => Ok((id, region)),
            Take::Wait(_) | Take::Full => Err(WriteError::Exhausted),
        })?;
        // SAFETY: the pool just lent this region to us alone; no receiver
        // holds it until it is sent below.
        if let Err(e) = fill(unsafe { region.bytes_mut(len) }) {
            self.outbound.with(|s| s.give_back(id));
            return Err(e.into());
        }
        let payload = Payload::Shared { region: id, len: len as u64, region_len: region.len() as u64 };
        self.outbound.with(|s| s.send(input, metadata, payload));
        Ok(())
    }
}

impl EdgeWriter {
    /// What its backlog dropped (drop-oldest) because the consumer did not
    /// read, per input (cumulative).
    pub fn backlog_drops(&self) -> Vec<rill_proto::BacklogDrop> {
        self.outbound.with(|s| s.backlog_drops())
    }

    /// Writes what waits in the backlog, for at most `limit` (before the
    /// writer is dropped, which would discard it).
    pub fn flush_for(&self, limit: std::time::Duration) {
        self.outbound.flush_for(limit);
    }

    /// The producer ended for good (on its machine): each input gets
    /// `InputClosed` after every message written before.
    pub fn close(&self) {
        for input in &self.inputs {
            self.outbound.with(|s| s.close(input));
        }
    }
}

impl Drop for EdgeWriter {
    fn drop(&mut self) {
        self.outbound.stop_flusher();
    }
}

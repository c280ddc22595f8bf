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
        if !self.inputs.iter().any(|i| i == input) {
            return Err(WriteError::UnknownInput(input.to_owned()));
        }
        self.outbound.with(|s| {
            let payload = if payload.len() < SHM_THRESHOLD {
                Payload::Inline(payload.to_vec())
            } else {
                // Never waits: this runs on the network's receive thread.
                let Take::Got(id, region) = s.take(payload.len(), true)? else {
                    return Err(WriteError::Exhausted);
                };
                // SAFETY: the pool just lent this region to us alone; no
                // receiver holds it until it is sent below.
                unsafe { region.bytes_mut(payload.len()) }.copy_from_slice(payload);
                Payload::Shared { region: id, len: payload.len() as u64, region_len: region.len() as u64 }
            };
            s.send(input, metadata, payload);
            Ok(())
        })
    }
}

impl EdgeWriter {
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

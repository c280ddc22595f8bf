//! Payloads: [`Data`] a node received (inline, or read in place from the
//! producer's shared memory) and [`Sample`], a buffer being filled to send.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use rill_proto::shm::Region;

use crate::edge::EdgeConn;
use crate::outbound::Outbound;

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
    pub(crate) fn inline(bytes: Vec<u8>) -> Self {
        Self { inner: DataInner::Inline(bytes) }
    }

    /// `len` bytes of a mapped `region`, released to the producer over
    /// `conn` when dropped.
    pub(crate) fn shared(mapping: Arc<Region>, len: usize, conn: Arc<EdgeConn>, region: u64) -> Self {
        Self { inner: DataInner::Shared { region: mapping, len, _release: Release { conn, region } } }
    }

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

/// A writable buffer to fill and then send with
/// [`Node::send_sample`](crate::Node::send_sample).
pub struct Sample {
    pub(crate) inner: SampleInner,
    outbound: Arc<Outbound>,
}

pub(crate) enum SampleInner {
    Inline(Vec<u8>),
    /// Region `id` of the sender's pool, lent to this sample alone.
    Shared {
        id: u64,
        region: Arc<Region>,
        len: usize,
    },
    Sent,
}

impl Sample {
    pub(crate) fn new(inner: SampleInner, outbound: Arc<Outbound>) -> Self {
        Self { inner, outbound }
    }

    /// For language bindings whose buffers may outlive the sample (Python
    /// views): the shared mapping behind it, kept mapped while the returned
    /// handle lives, even after the sample was sent. `None` when inline.
    #[doc(hidden)]
    pub fn mapping(&self) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        match &self.inner {
            SampleInner::Shared { region, .. } => Some(region.clone()),
            SampleInner::Inline(_) | SampleInner::Sent => None,
        }
    }
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
            // SAFETY: the pool lends a region to one sample at a time and
            // no receiver holds it until the sample is sent; `&mut self`
            // keeps the slice unique.
            SampleInner::Shared { region, len, .. } => unsafe { region.bytes_mut(*len) },
            SampleInner::Sent => &mut [],
        }
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        // Never sent: the region is free again at once.
        if let SampleInner::Shared { id, .. } = self.inner {
            self.outbound.with(|s| s.give_back(id));
        }
    }
}

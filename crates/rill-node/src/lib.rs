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
//! in place through [`Data`]. Sending never blocks on a slow receiver: what
//! its socket has no room for waits in a bounded backlog that a background
//! thread delivers as soon as the receiver reads, whether or not this node
//! calls in again.
//!
//! [`EdgeWriter`] is the same sending side without a daemon connection, for
//! in-process producers (the daemon's cross-machine bridge).

mod counters;
mod data;
mod edge;
mod node;
mod outbound;
mod pool;
mod writer;

pub use data::{Data, Sample};
pub use node::Node;
pub use pool::{IDLE_ENV, LIMIT_ENV, PoolLimits};
pub use rill_proto::{Metadata, SHM_THRESHOLD, now_ns};
use rustix::io::Errno;
pub use writer::{EdgeWriter, WriteError};

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
    #[error(
        "shared memory stays exhausted after {} s: receivers still hold {MAX_BUSY_REGIONS} messages or {LIMIT_ENV} megabytes (a receiver keeps `Data` alive, or is stuck)",
        node::SHM_WAIT.as_secs()
    )]
    SharedMemoryExhausted,
    #[error("the daemon did not finish wiring this node within {} s", node::START_WAIT.as_secs())]
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

/// Shared regions a sender may have in flight; past it (or past
/// `RILL_SHM_LIMIT_MB` megabytes, default 1024), `allocate` waits for
/// receivers to finish with one (backpressure instead of unbounded memory).
pub const MAX_BUSY_REGIONS: usize = 128;

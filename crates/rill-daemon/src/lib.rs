//! The daemon: spawns and supervises node processes and routes their
//! messages over the local data plane. `rill run` uses [`Runtime`] directly;
//! the networked daemon (`net`, `local`) drives the same parts.

pub mod access;
pub mod artifacts;
pub mod bridge;
pub mod doctor;
pub mod git;
pub mod lines;
pub mod local;
pub mod net;
pub mod printed;
pub mod router;
pub mod routes;
pub mod run;
pub mod spawn;
pub mod supervisor;
pub mod tally;
pub mod tap;
pub mod usage;

pub use run::{Report, Reporter, RunError, RunOptions, RunReport, Runtime, Share, StopHandle, Stream};
pub use supervisor::{ExitStatus, NodeSummary, Notice, Outcome, Sig};

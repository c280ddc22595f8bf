//! Dataflow descriptors (`dataflow.yml`) and cluster files (`cluster.yml`):
//! types, parsing, validation.
//!
//! Pure: no I/O besides [`Dataflow::load`] reading one file, no networking, no printing.
//! Validation reports every problem at once, each with its file position.

mod args;
mod cluster;
mod diagnostics;
mod duration;
mod ids;
mod mermaid;
mod model;
mod parse;
mod placement;
mod read;
mod received;
mod source;
mod suggest;
mod timer;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

pub use cluster::{ClusterFile, DEFAULT_CLUSTER_PORT, Machine, token_name};
pub use diagnostics::{Diagnostic, Diagnostics, Severity};
pub use model::{
    Artifact, DEFAULT_MAX_RESTART_DELAY, DEFAULT_QUEUE_SIZE, DEFAULT_RESTART_DELAY, Dataflow, Deploy, Distribute,
    GitRev, GitSource, InputSource, InputSpec, LogLevel, MAX_ARTIFACT_SIZE, NodeSpec, Printed, RestartPolicy,
    RestartSpec, artifact_id_problem, git_repo_problem, is_sha256_hex,
};
pub use parse::Positions;
pub use placement::{DaemonInfo, Placement, PlacementError, format_labels, parse_labels, place};
pub use received::{MAX_QUEUE_SIZE, name_problem, received_problems};
pub use suggest::did_you_mean;

//! The coordinator: owns cluster state and serves one port for HTTP and
//! WebSocket: `GET /api/health` (no auth), `/api/daemon` (daemons),
//! `/api/control` (the CLI).

pub mod client;
mod cluster;
pub mod dataflows;
mod logs;
mod persist;
mod server;
mod store;

pub use cluster::{Cluster, Hello, RegisterError};
pub use server::{CoordinatorConfig, Listening, ServeError, Settings, StoreConfig, serve, serve_on, serve_until};
pub use store::{Store, StoreError};

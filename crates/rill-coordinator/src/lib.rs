//! The coordinator: owns cluster state and serves one port, HTTPS and WSS
//! (plaintext only with `--insecure-plaintext`): `GET /api/health` (open),
//! `/api/daemon` (daemons, with a credential), `/api/control` (the CLI,
//! with the admin token).

pub mod artifacts;
mod auth;
pub mod client;
mod cluster;
pub mod dataflows;
mod listener;
mod logs;
mod names;
mod persist;
mod server;
mod store;
mod taps;
mod tokens;

pub use auth::Security;
pub use cluster::{Cluster, Hello, RegisterError};
pub use listener::{PLAINTEXT_REFUSED, Peer};
pub use names::server_names;
pub use server::{CoordinatorConfig, Listening, ServeError, Settings, StoreConfig, serve, serve_on, serve_until};
pub use store::{Store, StoreError};

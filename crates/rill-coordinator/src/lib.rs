//! The coordinator: owns cluster state and serves one port, HTTPS and WSS
//! (plaintext only with `--insecure-plaintext`): `GET /api/health` (open),
//! `/api/daemon` (daemons, with a credential), `/api/control` (the CLI,
//! with the admin token).

pub mod artifacts;
mod auth;
pub mod client;
mod listener;
mod names;
mod cluster;
pub mod dataflows;
mod logs;
mod persist;
mod server;
mod store;
mod tokens;

pub use auth::Security;
pub use names::server_names;
pub use listener::{PLAINTEXT_REFUSED, Peer};
pub use cluster::{Cluster, Hello, RegisterError};
pub use server::{CoordinatorConfig, Listening, ServeError, Settings, StoreConfig, serve, serve_on, serve_until};
pub use store::{Store, StoreError};

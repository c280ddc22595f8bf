//! Managed clusters: the machines of a `cluster.yml`, reached with the
//! system's OpenSSH client.
//!
//! - `ssh.rs`: one `ssh` per remote command, multiplexed (one handshake per
//!   host), options that make it fail instead of asking, commands quoted.
//! - `preflight.rs`: what a machine has (OS, arch, rill and its version,
//!   sudo, systemd) and what each command needs of it.
//! - `remote.rs`: the scripts that start, find and stop a machine's daemon.
//! - `service.rs`: the daemon as a systemd service (`rill cluster install`).
//! - `push.rs`: node binaries pushed into a daemon's artifact directory
//!   (`distribute: scp`), and the machines each node may run on.
//! - `inventory.rs`: what `rill cluster up` records for later commands.
//!
//! Blocking (std processes and threads): the CLI runs one thread per machine.

pub mod inventory;
pub mod preflight;
pub mod push;
pub mod remote;
pub mod service;
pub mod ssh;

pub use inventory::{Inventory, InventoryMachine};
pub use preflight::{Facts, Gap, Needs};
pub use ssh::{Ssh, SshError, Target};

//! How the daemon proves who it is and checks the coordinator, worked out
//! again for every connection attempt (a coordinator on this machine may
//! not have written its state yet; an enrolled daemon switches to its
//! certificate).

use std::path::PathBuf;

use rill_auth::dial::Dial;
use rill_auth::{ClusterCa, Fingerprint};

#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `host:port` of the coordinator.
    pub addr: String,
    /// `--insecure-plaintext`.
    pub plaintext: bool,
    /// The CA fingerprint to pin, when given (flag, environment, config).
    pub pin: Option<Fingerprint>,
    /// The state directory of a coordinator on this machine: its CA is
    /// pinned and its admin token is the credential (the same user can
    /// read both anyway).
    pub local_state: Option<PathBuf>,
}

/// Why there is no way to connect.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct AccessProblem {
    pub message: String,
    /// Waiting may fix it (a local coordinator still starting).
    pub transient: bool,
}

impl Access {
    /// An access that always dials the same way (benchmarks, tests).
    pub fn fixed(dial: Dial) -> FixedAccess {
        FixedAccess(dial)
    }

    pub fn dial(&self) -> Result<Dial, AccessProblem> {
        let waiting = |dir: &std::path::Path, what: &str| AccessProblem {
            message: format!(
                "waiting for the coordinator on this machine: no {what} in {} yet (it writes them at its first start)",
                dir.display()
            ),
            transient: true,
        };
        let admin = match &self.local_state {
            Some(dir) => {
                let path = dir.join(rill_auth::identity::ADMIN_TOKEN);
                if !path.exists() {
                    return Err(waiting(dir, "admin token"));
                }
                let secret = rill_auth::identity::read_admin(&path)
                    .map_err(|e| AccessProblem { message: e.to_string(), transient: false })?;
                Some(secret.expose())
            }
            None => None,
        };
        let Some(bearer) = admin else {
            return Err(AccessProblem {
                message: format!(
                    "no credential for the coordinator at {}: pass --join-token-file (`rill token create` prints one)",
                    self.addr
                ),
                transient: false,
            });
        };
        if self.plaintext {
            return Ok(Dial { addr: self.addr.clone(), tls: None, bearer: Some(bearer) });
        }
        let pin = match (&self.pin, &self.local_state) {
            (Some(pin), _) => *pin,
            (None, Some(dir)) if dir.join(rill_auth::ca::CA_CERT).exists() => ClusterCa::fingerprint_in(dir)
                .map_err(|e| AccessProblem { message: e.to_string(), transient: false })?,
            (None, Some(dir)) => return Err(waiting(dir, "cluster CA")),
            (None, None) => {
                return Err(AccessProblem {
                    message: format!(
                        "no fingerprint to verify the coordinator at {} by: pass --coordinator-fingerprint",
                        self.addr
                    ),
                    transient: false,
                });
            }
        };
        let tls = rill_auth::tls::client_config(pin, None)
            .map_err(|e| AccessProblem { message: e.to_string(), transient: false })?;
        Ok(Dial { addr: self.addr.clone(), tls: Some(tls), bearer: Some(bearer) })
    }
}

/// The same dial every time.
#[derive(Debug, Clone)]
pub struct FixedAccess(pub Dial);

/// What the connection loop asks for a dial.
pub trait Dialer: Send + Sync + std::fmt::Debug {
    fn addr(&self) -> &str;
    fn dial(&self) -> Result<Dial, AccessProblem>;
}

impl Dialer for Access {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn dial(&self) -> Result<Dial, AccessProblem> {
        Access::dial(self)
    }
}

impl Dialer for FixedAccess {
    fn addr(&self) -> &str {
        &self.0.addr
    }

    fn dial(&self) -> Result<Dial, AccessProblem> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_coordinator_not_started_yet_is_waited_for_a_remote_one_without_credential_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("coordinator-1");
        let access = Access { addr: "127.0.0.1:1".into(), local_state: Some(state.clone()), ..Default::default() };
        let problem = access.dial().unwrap_err();
        assert!(problem.transient && problem.message.contains("waiting for the coordinator"), "{problem}");
        rill_auth::CoordinatorIdentity::load_or_create(&state, &["127.0.0.1".into()]).unwrap();
        let dial = access.dial().unwrap();
        assert!(dial.tls.is_some() && dial.bearer.is_some());
        let remote = Access { addr: "10.0.0.1:1".into(), ..Default::default() };
        let problem = remote.dial().unwrap_err();
        assert!(!problem.transient && problem.message.contains("--join-token-file"), "{problem}");
    }
}

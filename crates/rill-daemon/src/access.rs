//! How the daemon proves who it is and checks the coordinator, worked out
//! again for every connection attempt (a coordinator on this machine may
//! not have written its state yet; an enrolled daemon switches to its
//! certificate). In order:
//!
//! 1. the certificate it enrolled with (in its identity directory), over
//!    mutual TLS, the CA it enrolled with pinned;
//! 2. its join token: the CA fingerprint the token carries is pinned, so
//!    the secret goes only to the right coordinator; it sends its public key
//!    and keeps the certificate it gets back;
//! 3. the admin token of a coordinator on this machine.

use std::path::PathBuf;

use rill_auth::dial::Dial;
use rill_auth::{ClusterCa, Fingerprint, JoinToken};

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
    /// The join token (`--join-token-file`, `RILL_JOIN_TOKEN`).
    pub join: Option<JoinToken>,
    /// Where enrolled identities are kept: one directory per cluster CA and
    /// token (`<root>/<first 16 hex digits of the CA fingerprint>/<token
    /// name>-<first 12 hex digits of the secret's hash>`)
    /// with the key, the certificate and the CA pin, so joining another
    /// cluster, or again with a new token, never mixes them up.
    pub identity_root: Option<PathBuf>,
    /// `--machine-id` (an enrolling daemon proves its key for it).
    pub machine_id: Option<String>,
}

/// How to connect this time.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub dial: Dial,
    /// The public key to enroll (hex), with a join token, and the proof
    /// that this daemon holds it.
    pub enroll_key: Option<String>,
    pub enroll_proof: Option<String>,
}

impl From<Dial> for Attempt {
    fn from(dial: Dial) -> Self {
        Self { dial, enroll_key: None, enroll_proof: None }
    }
}

fn permanent(e: impl std::fmt::Display) -> AccessProblem {
    AccessProblem { message: e.to_string(), transient: false }
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

    /// The identity directory for the cluster this daemon joins: the
    /// token's or the pinned CA's; with neither, the one cluster it
    /// enrolled in (unless it is the local coordinator's daemon).
    fn identity_dir(&self) -> Option<PathBuf> {
        let root = self.identity_root.as_ref()?;
        if let Some(token) = &self.join {
            // The name and a digest of the secret: a token minted again
            // under the same name (after the old one was revoked) gets a
            // fresh identity instead of the revoked certificate.
            let digest = &token.secret.hash().hex()[..12];
            let cluster = root.join(&token.ca.hex()[..16]);
            let dir = cluster.join(format!("{}-{digest}", token.name));
            // An identity enrolled before identities carried the digest
            // (rill 0.1 before this change): kept, so an upgraded daemon
            // is still the same member.
            let legacy = cluster.join(&token.name);
            if !dir.exists() && legacy.join(rill_auth::enroll::DAEMON_CERT).exists() {
                return Some(legacy);
            }
            return Some(dir);
        }
        let clusters = match self.pin {
            Some(ca) => vec![root.join(&ca.hex()[..16])],
            None if self.local_state.is_some() => return None,
            None => subdirs(root),
        };
        // Without a token: the identity enrolled last.
        let enrolled = clusters.iter().flat_map(|c| subdirs(c)).filter_map(|dir| {
            let at = std::fs::metadata(dir.join(rill_auth::enroll::DAEMON_CERT)).and_then(|m| m.modified()).ok()?;
            Some((at, dir))
        });
        enrolled.max().map(|(_, dir)| dir)
    }

    pub fn attempt(&self) -> Result<Attempt, AccessProblem> {
        let identity_dir = self.identity_dir();
        if let Some(dir) = &identity_dir
            && !self.plaintext
            && let Some((identity, pin)) = rill_auth::enroll::load_enrolled(dir).map_err(permanent)?
        {
            self.check_pin(pin)?;
            let tls = rill_auth::tls::client_config(pin, Some(&identity)).map_err(permanent)?;
            return Ok(Dial { addr: self.addr.clone(), tls: Some(tls), bearer: None }.into());
        }
        if let Some(token) = &self.join {
            self.check_pin(token.ca)?;
            let Some(dir) = &identity_dir else {
                return Err(permanent("a daemon that joins with a token needs a cache directory for its key"));
            };
            let key = rill_auth::enroll::DaemonKey::load_or_create(dir).map_err(permanent)?;
            let tls = match self.plaintext {
                true => None,
                false => Some(rill_auth::tls::client_config(token.ca, None).map_err(permanent)?),
            };
            let dial = Dial { addr: self.addr.clone(), tls, bearer: Some(token.expose()) };
            let proof = match &self.machine_id {
                Some(machine) => Some(key.prove(&token.name, machine, &token.ca).map_err(permanent)?),
                None => None,
            };
            return Ok(Attempt { dial, enroll_key: Some(key.public_hex()), enroll_proof: proof });
        }
        self.dial().map(Attempt::from)
    }

    /// A fingerprint given on the command line must agree with the token's
    /// (or the enrolled one's).
    fn check_pin(&self, pin: Fingerprint) -> Result<(), AccessProblem> {
        match self.pin {
            Some(given) if given != pin => Err(permanent(format!(
                "--coordinator-fingerprint {given} is not the cluster CA this daemon joins ({pin})"
            ))),
            _ => Ok(()),
        }
    }

    /// Keeps the certificate the coordinator signed at enrollment.
    pub fn enrolled(&self, certificate: &str) -> Result<(), AccessProblem> {
        let (Some(dir), Some(token)) = (self.identity_dir(), &self.join) else { return Ok(()) };
        rill_auth::enroll::save_certificate(&dir, certificate, token.ca).map_err(permanent)
    }

    fn dial(&self) -> Result<Dial, AccessProblem> {
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
        // (A fingerprint given explicitly means TLS, whatever a file says.)
        let local_plaintext =
            self.pin.is_none() && self.local_state.as_deref().is_some_and(rill_auth::identity::serves_plaintext);
        if self.plaintext || local_plaintext {
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

/// The directories in `dir`.
fn subdirs(dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

/// The same dial every time.
#[derive(Debug, Clone)]
pub struct FixedAccess(pub Dial);

/// What the connection loop asks for a dial.
pub trait Dialer: Send + Sync + std::fmt::Debug {
    fn addr(&self) -> &str;
    fn attempt(&self) -> Result<Attempt, AccessProblem>;
    /// The coordinator signed `certificate` for the enrolled key.
    fn enrolled(&self, certificate: &str) -> Result<(), AccessProblem>;
}

impl Dialer for Access {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn attempt(&self) -> Result<Attempt, AccessProblem> {
        Access::attempt(self)
    }

    fn enrolled(&self, certificate: &str) -> Result<(), AccessProblem> {
        Access::enrolled(self, certificate)
    }
}

impl Dialer for FixedAccess {
    fn addr(&self) -> &str {
        &self.0.addr
    }

    fn attempt(&self) -> Result<Attempt, AccessProblem> {
        Ok(self.0.clone().into())
    }

    fn enrolled(&self, _: &str) -> Result<(), AccessProblem> {
        Ok(())
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

    #[test]
    fn identities_are_kept_per_token_secret_and_one_enrolled_before_that_is_still_found() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Fingerprint::of(b"ca");
        let token = |name: &str| rill_auth::JoinToken::mint(name, ca).unwrap();
        let access = |join| Access { identity_root: Some(tmp.path().into()), join: Some(join), ..Default::default() };
        let (first, again) = (token("robot"), token("robot"));
        let (a, b) = (access(first).identity_dir().unwrap(), access(again.clone()).identity_dir().unwrap());
        assert_ne!(a, b, "a token minted again under the same name gets a fresh identity");
        assert!(a.file_name().unwrap().to_string_lossy().starts_with("robot-"));
        // A daemon enrolled by an older rill kept its identity under the bare name.
        let legacy = tmp.path().join(&ca.hex()[..16]).join("robot");
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join(rill_auth::enroll::DAEMON_CERT), "cert").unwrap();
        assert_eq!(access(again.clone()).identity_dir().unwrap(), legacy);
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(access(again).identity_dir().unwrap(), b, "once its own exists, that one");
    }
}

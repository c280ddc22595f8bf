//! Connected daemons. Registration rules live here, apart from the sockets.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rill_proto::coord::{CoordinatorMessage, DaemonStatus, ErrorCode};
use tokio::sync::mpsc;

/// What a daemon says about itself when it registers.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    pub protocol: u32,
    pub version: String,
    pub machine_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub zenoh_endpoint: Option<String>,
    /// `os/arch`, as the daemon reports it.
    pub platform: String,
    /// Where it keeps shipped node binaries.
    pub artifact_dir: Option<String>,
}

/// Why a registration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "the daemon speaks coordinator protocol {daemon}, this coordinator {coordinator}: run the same rill version on both"
    )]
    ProtocolMismatch { daemon: u32, coordinator: u32 },
    /// Another connection holds the machine id: probe it (see
    /// [`Cluster::probe`]) before admitting or refusing the newcomer.
    #[error("machine id \"{machine}\" is held by connection {old}")]
    Held { machine: String, old: String },
    #[error(
        "a daemon with machine id \"{0}\" is already connected and answered a probe: stop it, or give this one another --machine-id"
    )]
    AlreadyConnected(String),
}

impl RegisterError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RegisterError::ProtocolMismatch { .. } => ErrorCode::ProtocolMismatch,
            RegisterError::Held { .. } | RegisterError::AlreadyConnected(_) => ErrorCode::AlreadyConnected,
        }
    }
}

struct Connected {
    machine_id: Option<String>,
    labels: BTreeMap<String, String>,
    version: String,
    platform: String,
    artifact_dir: Option<String>,
    zenoh_endpoint: Option<String>,
    last_heartbeat: Instant,
    /// Probes sent to it (newest last, at most [`PROBES`]), and whether
    /// each was answered: two newcomers may probe it at once.
    probes: Vec<(u64, bool)>,
    /// Messages to this daemon's connection.
    tx: mpsc::Sender<CoordinatorMessage>,
    /// It said it is shutting down: nothing is placed or recovered on it.
    leaving: bool,
}

/// Probes remembered per connection.
const PROBES: usize = 8;

/// Messages queued for one daemon's connection; a daemon this far behind is
/// dropped (its handler ends and its dataflows' nodes become lost) rather
/// than letting the queue grow.
pub const DAEMON_QUEUE: usize = 1024;

/// The daemons connected right now.
#[derive(Default)]
pub struct Cluster {
    daemons: HashMap<String, Connected>,
    /// Dropped because their queue was full; their handlers are ending.
    overflowed: std::collections::HashSet<String>,
    next_id: u64,
}

impl Cluster {
    /// Admits a daemon; returns its id. If a connection already holds its
    /// machine id, the answer is [`RegisterError::Held`]: the caller probes
    /// that one and then [`Cluster::replace`]s it or refuses the newcomer.
    pub fn register(
        &mut self,
        hello: Hello,
        tx: mpsc::Sender<CoordinatorMessage>,
        now: Instant,
    ) -> Result<String, RegisterError> {
        let Hello { protocol, version, machine_id, labels, zenoh_endpoint, platform, artifact_dir } = hello;
        if protocol != rill_proto::coord::COORD_PROTOCOL_VERSION {
            return Err(RegisterError::ProtocolMismatch {
                daemon: protocol,
                coordinator: rill_proto::coord::COORD_PROTOCOL_VERSION,
            });
        }
        if let Some(machine) = &machine_id {
            let holder = self.daemons.iter().find(|(_, d)| d.machine_id.as_ref() == Some(machine));
            if let Some((old, _)) = holder {
                return Err(RegisterError::Held { machine: machine.clone(), old: old.clone() });
            }
        }
        self.next_id += 1;
        let id = match &machine_id {
            Some(machine) => format!("{machine}-{}", self.next_id),
            None => format!("daemon-{}", self.next_id),
        };
        self.daemons.insert(
            id.clone(),
            Connected {
                machine_id,
                labels,
                version,
                platform,
                artifact_dir,
                zenoh_endpoint,
                last_heartbeat: now,
                probes: Vec::new(),
                tx,
                leaving: false,
            },
        );
        Ok(id)
    }

    /// Data endpoints of every daemon but `daemon_id`.
    pub fn peers_of(&self, daemon_id: &str) -> Vec<String> {
        let mut peers: Vec<String> = self
            .daemons
            .iter()
            .filter(|(id, _)| id.as_str() != daemon_id)
            .filter_map(|(_, d)| d.zenoh_endpoint.clone())
            .collect();
        peers.sort();
        peers
    }

    pub fn heartbeat(&mut self, daemon_id: &str, now: Instant) {
        if let Some(d) = self.daemons.get_mut(daemon_id) {
            d.last_heartbeat = now;
        }
    }

    /// The connection ended. False if it had been replaced already (its
    /// successor owns its dataflows); true if it was connected or dropped
    /// for falling behind (its dataflows must be written off).
    pub fn disconnected(&mut self, daemon_id: &str) -> bool {
        self.daemons.remove(daemon_id).is_some() | self.overflowed.remove(daemon_id)
    }

    /// Asks the connection whether it is alive (a `Ping` it must answer).
    pub fn probe(&mut self, daemon_id: &str, nonce: u64) {
        if let Some(d) = self.daemons.get_mut(daemon_id) {
            if d.probes.len() == PROBES {
                d.probes.remove(0);
            }
            d.probes.push((nonce, false));
            let _ = d.tx.try_send(CoordinatorMessage::Ping { nonce });
        }
    }

    /// The connection answered a probe.
    pub fn ponged(&mut self, daemon_id: &str, nonce: u64) {
        if let Some(d) = self.daemons.get_mut(daemon_id)
            && let Some((_, answered)) = d.probes.iter_mut().find(|(sent, _)| *sent == nonce)
        {
            *answered = true;
        }
    }

    /// Did the connection answer probe `nonce`? `None`: it is gone.
    pub fn probe_answered(&self, daemon_id: &str, nonce: u64) -> Option<bool> {
        let d = self.daemons.get(daemon_id)?;
        Some(d.probes.contains(&(nonce, true)))
    }

    /// Drops a connection that did not answer its probe; its handler ends
    /// (its channel closes) without writing off its dataflows, which its
    /// successor reclaims.
    pub fn replace(&mut self, daemon_id: &str) {
        self.daemons.remove(daemon_id);
    }

    pub fn len(&self) -> usize {
        self.daemons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty()
    }

    /// Every daemon, sorted by machine id then id.
    pub fn status(&self, now: Instant) -> Vec<DaemonStatus> {
        let mut list: Vec<DaemonStatus> = self
            .daemons
            .iter()
            .map(|(id, d)| DaemonStatus {
                daemon_id: id.clone(),
                machine_id: d.machine_id.clone(),
                labels: d.labels.clone(),
                version: d.version.clone(),
                platform: d.platform.clone(),
                last_heartbeat_ms: now.duration_since(d.last_heartbeat).as_millis() as u64,
                artifact_dir: d.artifact_dir.clone(),
            })
            .collect();
        list.sort_by(|a, b| (&a.machine_id, &a.daemon_id).cmp(&(&b.machine_id, &b.daemon_id)));
        list
    }

    /// The daemons as placement sees them, in registration order.
    /// `id` is shutting down: from now on it is no candidate for placement
    /// or auto-recovery (it would ignore a spawn, and the nodes would be
    /// recorded on a daemon that is going away).
    pub fn leaving(&mut self, id: &str) {
        if let Some(daemon) = self.daemons.get_mut(id) {
            daemon.leaving = true;
        }
    }

    /// The daemons nodes may be placed on (not those shutting down).
    pub fn daemon_infos(&self) -> Vec<rill_core::DaemonInfo> {
        let mut infos: Vec<rill_core::DaemonInfo> = self
            .daemons
            .iter()
            .filter(|(_, d)| !d.leaving)
            .map(|(id, d)| rill_core::DaemonInfo {
                id: id.clone(),
                machine_id: d.machine_id.clone(),
                labels: d.labels.clone(),
            })
            .collect();
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        infos
    }

    /// Sends to one daemon; false if it is gone, or was just dropped because
    /// [`DAEMON_QUEUE`] messages wait for it.
    pub fn send(&mut self, daemon_id: &str, msg: CoordinatorMessage) -> bool {
        let Some(d) = self.daemons.get(daemon_id) else { return false };
        match d.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                eprintln!("rill coordinator: daemon {daemon_id} is {DAEMON_QUEUE} messages behind; dropping it");
                self.daemons.remove(daemon_id);
                self.overflowed.insert(daemon_id.to_owned());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(c: &mut Cluster, machine: Option<&str>, now: Instant) -> Result<String, RegisterError> {
        let (tx, _rx) = mpsc::channel(DAEMON_QUEUE);
        let hello = Hello {
            protocol: rill_proto::coord::COORD_PROTOCOL_VERSION,
            version: "0.1.0".into(),
            machine_id: machine.map(Into::into),
            ..Hello::default()
        };
        c.register(hello, tx, now)
    }

    #[test]
    fn a_daemon_whose_queue_is_full_is_dropped_and_its_dataflows_written_off() {
        let mut c = Cluster::default();
        let (tx, _rx) = mpsc::channel(2);
        let hello = Hello { protocol: rill_proto::coord::COORD_PROTOCOL_VERSION, ..Hello::default() };
        let id = c.register(hello, tx, Instant::now()).unwrap();
        assert!(c.send(&id, CoordinatorMessage::Heartbeat) && c.send(&id, CoordinatorMessage::Heartbeat));
        assert!(!c.send(&id, CoordinatorMessage::Heartbeat), "the third does not fit");
        assert!(c.is_empty(), "dropped");
        assert!(c.disconnected(&id), "its handler writes its dataflows off");
        assert!(!c.disconnected(&id), "once");
    }

    #[test]
    fn a_daemon_shutting_down_is_no_candidate_for_placement_or_recovery() {
        let mut c = Cluster::default();
        let now = Instant::now();
        let a = register(&mut c, Some("a"), now).unwrap();
        register(&mut c, Some("b"), now).unwrap();
        c.leaving(&a);
        let candidates: Vec<String> = c.daemon_infos().into_iter().filter_map(|d| d.machine_id).collect();
        assert_eq!(candidates, ["b"]);
        assert_eq!(c.status(now).len(), 2, "still connected and shown until it is gone");
    }

    #[test]
    fn wrong_protocol_is_refused_with_its_code() {
        let mut c = Cluster::default();
        let (tx, _rx) = mpsc::channel(DAEMON_QUEUE);
        let err = c.register(Hello { protocol: 99, ..Hello::default() }, tx, Instant::now()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::ProtocolMismatch);
        assert!(c.is_empty());
    }

    #[test]
    fn a_held_machine_id_is_probed_and_a_silent_holder_replaced() {
        let mut c = Cluster::default();
        let t0 = Instant::now();
        let (tx, mut old_rx) = mpsc::channel(DAEMON_QUEUE);
        let hello = Hello {
            protocol: rill_proto::coord::COORD_PROTOCOL_VERSION,
            machine_id: Some("a".into()),
            ..Hello::default()
        };
        let first = c.register(hello, tx, t0).unwrap();
        let Err(RegisterError::Held { old, .. }) = register(&mut c, Some("a"), t0) else { panic!("not held") };
        assert_eq!(old, first);
        c.probe(&old, 7);
        assert_eq!(old_rx.try_recv().ok(), Some(CoordinatorMessage::Ping { nonce: 7 }));
        assert_eq!(c.probe_answered(&old, 7), Some(false));
        c.ponged(&old, 6);
        assert_eq!(c.probe_answered(&old, 7), Some(false), "an old nonce is no answer");
        c.probe(&old, 8);
        c.ponged(&old, 7);
        assert_eq!(c.probe_answered(&old, 7), Some(true), "an earlier probe is still answered");
        assert_eq!(c.probe_answered(&old, 8), Some(false));
        c.replace(&old);
        assert_eq!(c.probe_answered(&old, 7), None);
        assert!(!c.disconnected(&old), "its handler does not write anything off");
        let second = register(&mut c, Some("a"), t0).unwrap();
        assert_ne!(first, second);
        assert!(!c.send(&first, CoordinatorMessage::Heartbeat), "the replaced one is gone");
        assert_eq!(c.len(), 1);
        assert!(register(&mut c, None, t0).is_ok());
        assert!(register(&mut c, None, t0).is_ok(), "unnamed daemons never conflict");
        assert_eq!(c.len(), 3);
    }
}

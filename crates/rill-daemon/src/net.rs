//! The daemon's connection to the coordinator: register, heartbeats both
//! ways, and reconnect with exponential backoff and jitter when the
//! connection is lost or the coordinator goes silent for
//! [`SILENT_HEARTBEATS`] heartbeats (nodes keep running meanwhile). A
//! permanent rejection (protocol mismatch, machine id held by a live daemon)
//! ends the loop with an error instead. On shutdown (SIGTERM) the daemon
//! tells the coordinator, stops its nodes in order and reports them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::local::{LocalDataflows, LocalEvent, ShareReport};
use rill_proto::coord::{
    COORD_PROTOCOL_VERSION, CoordinatorMessage, DaemonMessage, ErrorCode, LogLine, NodeStatus, SILENT_HEARTBEATS,
};
use tokio_tungstenite::tungstenite::Message;

/// First reconnect delay; doubled per failed attempt.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Node output and status messages kept while the coordinator is slow or
/// away; more are dropped.
const STREAM_BACKLOG: usize = 10_000;
/// Tap frames queued for the coordinator (each at most
/// [`rill_proto::tap::MAX_TAP_FRAME`]); a tap whose frame finds no room
/// drops it and counts the samples.
const TAP_FRAMES: usize = 8;

/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a shutdown waits for the nodes when the coordinator is away
/// (each share escalates Stop -> SIGTERM -> SIGKILL by itself well before).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// What the daemon's owner asks of it (first SIGTERM/SIGINT, second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Stop the nodes in order, report, exit.
    Stop,
    /// Kill the nodes now.
    Kill,
}

/// Who this daemon is and where its coordinator is.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub machine_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// How to reach the coordinator: its address, the pinned CA and this
    /// daemon's credential, asked again at every attempt.
    pub coordinator: Arc<dyn crate::access::Dialer>,
    /// Port of the cross-machine data session; 0 picks a free one.
    pub data_port: u16,
    /// The version it reports (the binary's, which a build stamp may extend:
    /// what `rill cluster upgrade` waits to see).
    pub version: String,
    /// Where shipped node binaries are kept (an absolute path); `None`:
    /// nodes with `distribute: scp|http` cannot run here.
    pub artifact_dir: Option<std::path::PathBuf>,
    /// Where node sources from git are cloned; `None`: nodes with `git`
    /// cannot run here.
    pub source_dir: Option<std::path::PathBuf>,
}

/// What the daemon tells its caller (the CLI prints these).
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionEvent {
    Registered { daemon_id: String },
    Local(LocalEvent),
    Lost { reason: String },
    Retrying { attempt: u32, delay: Duration },
}

/// The coordinator refused this daemon for good.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the coordinator refused this daemon ({}): {message}", code.name())]
pub struct Rejected {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejected {
    /// The daemon's exit code for this refusal, one per kind, so a service
    /// manager or script can tell them apart (documented in docs/security.md).
    pub fn exit_code(&self) -> u8 {
        match self.code {
            ErrorCode::AlreadyConnected => 2,
            ErrorCode::ProtocolMismatch => 3,
            ErrorCode::Unauthorized => 4,
            ErrorCode::Untrusted => 5,
            ErrorCode::Revoked => 6,
            ErrorCode::Expired => 7,
            ErrorCode::AlreadyBound => 8,
            ErrorCode::BadRequest
            | ErrorCode::NotFound
            | ErrorCode::Placement
            | ErrorCode::NameInUse
            | ErrorCode::Internal => 9,
        }
    }
}

/// A dial failure that trying again cannot fix: the credential was refused
/// (401, with the coordinator's reason), or the coordinator's certificate
/// is not from the pinned CA.
fn refusal(e: &rill_auth::dial::DialError) -> Option<Rejected> {
    use rill_auth::dial::DialError;
    match e {
        DialError::Status { status: 401, message, code, .. } => Some(Rejected {
            code: code.as_deref().and_then(ErrorCode::parse).unwrap_or(ErrorCode::Unauthorized),
            message: message.clone(),
        }),
        DialError::Tls { untrusted: true, .. } => Some(Rejected { code: ErrorCode::Untrusted, message: e.to_string() }),
        _ => None,
    }
}

/// Delay before reconnect attempt `attempt` (1-based): doubling from
/// [`BACKOFF_BASE`] up to [`BACKOFF_MAX`], minus up to 20 % jitter so a
/// fleet does not reconnect in lockstep.
pub fn backoff(attempt: u32, jitter_seed: u64) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    let full = BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX);
    let jitter_permille = jitter_seed % 200;
    full - full * jitter_permille as u32 / 1000
}

fn jitter_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| u64::from(d.subsec_nanos())).unwrap_or(0)
        ^ u64::from(std::process::id())
}

/// The dataflow shares this daemon runs; they outlive connections.
struct Shares {
    /// Node output and node status for the coordinator.
    stream_rx: Option<mpsc::Receiver<DaemonMessage>>,
    /// Tap frames for the coordinator, and where taps put them.
    tap_rx: Option<mpsc::Receiver<Vec<u8>>>,
    tap_sink: crate::tap::FrameSink,
    /// The data session, opened at the first registration.
    bridge: Option<crate::bridge::Bridge>,
    local: LocalDataflows,
    finished_tx: mpsc::UnboundedSender<ShareReport>,
    finished_rx: Option<mpsc::UnboundedReceiver<ShareReport>>,
    on_local: Arc<dyn Fn(LocalEvent) + Send + Sync>,
    /// Reports that could not be sent yet (no connection).
    unreported: Vec<ShareReport>,
    /// Reports sent on this connection that the coordinator has not
    /// confirmed (`go` confirms a ready share, `finish_recorded` an end).
    /// What is written into a connection that then dies may be lost, so
    /// these are sent again after the next registration. At most two per
    /// share.
    unconfirmed: Vec<ShareReport>,
    /// The last status of every node of a share here whose end the
    /// coordinator has not confirmed, sent again after each registration
    /// (bounded by the nodes of those shares).
    statuses: Arc<std::sync::Mutex<BTreeMap<(String, String), NodeStatus>>>,
    /// Each node's latest counts, sent again at each registration (a
    /// coordinator that restarted has none; an idle node sends no more).
    counts: Arc<std::sync::Mutex<BTreeMap<(String, String), rill_proto::coord::NodeCounts>>>,
    /// What the bridge dropped for local consumers, per dataflow, as last
    /// sent (cleared at each registration, so all of it goes again).
    bridge_drops: HashMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// Shutting down: stop what runs, report, then return.
    leaving: bool,
}

impl Shares {
    fn statuses(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), NodeStatus>> {
        self.statuses.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), rill_proto::coord::NodeCounts>> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bridge's drops for local consumers that changed since last sent.
    fn changed_bridge_drops(&mut self) -> Vec<DaemonMessage> {
        let Some(bridge) = &self.bridge else { return Vec::new() };
        let mut changed = Vec::new();
        let running = self.local.running();
        for uuid in running.iter().cloned() {
            let drops = bridge.drops(&uuid);
            if !drops.is_empty() && self.bridge_drops.get(&uuid) != Some(&drops) {
                self.bridge_drops.insert(uuid.clone(), drops.clone());
                changed.push(DaemonMessage::BridgeDrops { uuid, drops });
            }
        }
        self.bridge_drops.retain(|uuid, _| running.contains(uuid));
        changed
    }

    /// A share ended: it runs no node any more. Its node statuses are kept
    /// until the coordinator confirms its end.
    fn ended(&mut self, uuid: &str) {
        self.local.ended(uuid);
    }

    /// A share's report, to be sent. A share that ended before it was
    /// wired may still say it is ready afterwards: that is dropped, since
    /// the coordinator never confirms it and a daemon shutting down would
    /// wait for the confirmation forever.
    fn queue(&mut self, report: ShareReport) {
        match &report {
            ShareReport::Finished((uuid, _, _)) => self.ended(uuid),
            ShareReport::Ready { uuid } if !self.local.running().contains(uuid) => return,
            ShareReport::Ready { .. } => {}
        }
        self.unreported.push(report);
    }

    /// What a registration reports as ours: running shares, and ended ones
    /// whose end the coordinator has not heard yet (so it reclaims them and
    /// hears the end, instead of starting them again).
    fn owned(&self) -> Vec<String> {
        debug_assert!(self.unconfirmed.is_empty(), "requeued when the connection ended");
        let mut uuids = self.local.running();
        for report in &self.unreported {
            if let ShareReport::Finished((uuid, _, _)) = report
                && !uuids.contains(uuid)
            {
                uuids.push(uuid.clone());
            }
        }
        uuids
    }

    /// Sends what shares reported, oldest first; keeps what could not be sent.
    async fn report<S>(&mut self, sink: &mut S) -> Result<(), String>
    where
        S: SinkExt<Message> + Unpin,
        S::Error: std::fmt::Display,
    {
        while let Some(first) = self.unreported.first() {
            let (msg, ended) = match first {
                ShareReport::Ready { uuid } => (DaemonMessage::DataflowReady { uuid: uuid.clone() }, None),
                ShareReport::Finished((uuid, success, summary)) => {
                    let msg = DaemonMessage::DataflowFinished {
                        uuid: uuid.clone(),
                        success: *success,
                        summary: summary.clone(),
                    };
                    (msg, Some(uuid.clone()))
                }
            };
            send(sink, &msg).await?;
            let sent = self.unreported.remove(0);
            if let Some(uuid) = ended {
                self.unconfirmed.retain(|r| !matches!(r, ShareReport::Ready { uuid: u } if *u == uuid));
            }
            self.unconfirmed.push(sent);
        }
        Ok(())
    }

    /// The coordinator confirmed a report: `go` (`finished` false) or
    /// `finish_recorded`.
    fn confirmed(&mut self, uuid: &str, finished: bool) {
        if finished {
            self.statuses().retain(|(u, _), _| u != uuid);
            self.counts().retain(|(u, _), _| u != uuid);
        }
        self.unconfirmed.retain(|r| match r {
            ShareReport::Ready { uuid: u } => finished || u != uuid,
            ShareReport::Finished((u, _, _)) => !finished || u != uuid,
        });
    }

    /// The connection ended: what it did not confirm goes first next time.
    fn requeue_unconfirmed(&mut self) {
        let mut again = std::mem::take(&mut self.unconfirmed);
        again.append(&mut self.unreported);
        self.unreported = again;
    }

    /// Shutting down, and nothing is left to run or to report.
    fn done_leaving(&self) -> bool {
        self.leaving && self.local.running().is_empty() && self.unreported.is_empty() && self.unconfirmed.is_empty()
    }

    fn shutdown(&mut self, how: Shutdown) {
        self.leaving = true;
        match how {
            Shutdown::Stop => self.local.stop_all(),
            Shutdown::Kill => self.local.kill_all(),
        }
    }
}

/// How one connection ended.
enum Ended {
    /// Transient: try again. `registered`: it had got as far as that, so
    /// the backoff starts afresh.
    Lost {
        reason: String,
        registered: bool,
    },
    Rejected(Rejected),
    /// Shut down: every share ended and was reported (if connected).
    ShutDown,
}

/// Connects, and keeps reconnecting, until rejected for good or shut down
/// through `shutdown`.
pub async fn run(
    config: DaemonConfig,
    mut shutdown: mpsc::UnboundedReceiver<Shutdown>,
    on_event: impl Fn(ConnectionEvent) + Send + Sync + 'static,
) -> Result<(), Rejected> {
    let on_event: Arc<dyn Fn(ConnectionEvent) + Send + Sync> = Arc::new(on_event);
    let local_events = on_event.clone();
    let mut config = config;
    if config.data_port == 0 {
        config.data_port =
            std::net::TcpListener::bind("0.0.0.0:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(7447);
    }
    let (stream_tx, stream_rx) = mpsc::channel::<DaemonMessage>(STREAM_BACKLOG);
    let (tap_tx, tap_rx) = mpsc::channel::<Vec<u8>>(TAP_FRAMES);
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let statuses: Arc<std::sync::Mutex<BTreeMap<(String, String), NodeStatus>>> = Arc::default();
    let status_log = statuses.clone();
    let counts: Arc<std::sync::Mutex<BTreeMap<(String, String), rill_proto::coord::NodeCounts>>> = Arc::default();
    let counts_log = counts.clone();
    let mut shares = Shares {
        stream_rx: Some(stream_rx),
        tap_rx: Some(tap_rx),
        tap_sink: Arc::new(move |frame| tap_tx.try_send(frame).is_ok()),
        bridge: None,
        local: LocalDataflows::new(
            config.artifact_dir.clone().map(|dir| crate::artifacts::Artifacts::new(dir, config.coordinator.clone())),
            config.source_dir.clone(),
        ),
        finished_tx,
        finished_rx: Some(finished_rx),
        on_local: Arc::new(move |e| {
            match &e {
                LocalEvent::Log { uuid, node, stderr, line, .. } => {
                    let stream = if *stderr { "stderr" } else { "stdout" };
                    let log =
                        LogLine { uuid: uuid.clone(), node: node.clone(), stream: stream.into(), line: line.clone() };
                    let _ = stream_tx.try_send(DaemonMessage::Log(log));
                }
                LocalEvent::Node { uuid, node, status } => {
                    status_log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert((uuid.clone(), node.clone()), status.clone());
                    let msg =
                        DaemonMessage::NodeStatus { uuid: uuid.clone(), node: node.clone(), status: status.clone() };
                    let _ = stream_tx.try_send(msg);
                }
                LocalEvent::Usage { uuid, node, usage } => {
                    let msg = DaemonMessage::Usage { uuid: uuid.clone(), node: node.clone(), usage: *usage };
                    let _ = stream_tx.try_send(msg);
                    return;
                }
                // Cumulative: one lost to a full stream is made good by the next.
                LocalEvent::Counts { uuid, node, counts } => {
                    counts_log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert((uuid.clone(), node.clone()), counts.clone());
                    let msg = DaemonMessage::Counts { uuid: uuid.clone(), node: node.clone(), counts: counts.clone() };
                    let _ = stream_tx.try_send(msg);
                    return;
                }
                _ => {}
            }
            local_events(ConnectionEvent::Local(e))
        }),
        unreported: Vec::new(),
        unconfirmed: Vec::new(),
        statuses,
        counts,
        bridge_drops: HashMap::new(),
        leaving: false,
    };
    // This process's data-plane key; the coordinator certifies it at each
    // registration.
    let data_key = match rill_auth::enroll::DaemonKey::ephemeral() {
        Ok(key) => key,
        Err(e) => return Err(Rejected { code: ErrorCode::Internal, message: format!("no data-plane key: {e}") }),
    };
    let mut attempt = 0u32;
    loop {
        match connect_once(&config, &data_key, &*on_event, &mut shares, &mut shutdown).await {
            Ended::Rejected(rejected) => {
                // Refused for good: the nodes end with the daemon, in order.
                shares.shutdown(Shutdown::Stop);
                drain_offline(&mut shares, &mut shutdown).await;
                return Err(rejected);
            }
            Ended::ShutDown => return Ok(()),
            Ended::Lost { reason, registered } => {
                if registered {
                    attempt = 0;
                }
                on_event(ConnectionEvent::Lost { reason });
            }
        }
        if shares.leaving {
            drain_offline(&mut shares, &mut shutdown).await;
            return Ok(());
        }
        attempt += 1;
        let delay = backoff(attempt, jitter_seed());
        on_event(ConnectionEvent::Retrying { attempt, delay });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // (A dropped sender means "never": the branch is disabled.)
            Some(how) = shutdown.recv() => {
                shares.shutdown(how);
                drain_offline(&mut shares, &mut shutdown).await;
                return Ok(());
            }
        }
    }
}

/// Shutting down without a coordinator: waits until every share ended (at
/// most [`SHUTDOWN_LIMIT`]); a second signal kills.
async fn drain_offline(shares: &mut Shares, shutdown: &mut mpsc::UnboundedReceiver<Shutdown>) {
    let Some(mut finished_rx) = shares.finished_rx.take() else { return };
    let deadline = tokio::time::Instant::now() + SHUTDOWN_LIMIT;
    while !shares.local.running().is_empty() {
        tokio::select! {
            report = finished_rx.recv() => match report {
                Some(ShareReport::Finished((uuid, _, _))) => shares.ended(&uuid),
                Some(ShareReport::Ready { .. }) => {}
                None => break,
            },
            Some(how) = shutdown.recv() => shares.shutdown(how),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    shares.finished_rx = Some(finished_rx);
}

async fn connect_once(
    config: &DaemonConfig,
    data_key: &rill_auth::enroll::DaemonKey,
    on_event: &(dyn Fn(ConnectionEvent) + Send + Sync),
    shares: &mut Shares,
    shutdown: &mut mpsc::UnboundedReceiver<Shutdown>,
) -> Ended {
    let url = format!("{}/api/daemon", config.coordinator.addr());
    let mut registered = false;
    let lost = |reason: String, registered: bool| Ended::Lost { reason, registered };
    let heartbeat_every = rill_proto::coord::heartbeat_interval();
    let silence = heartbeat_every * SILENT_HEARTBEATS;
    // A stopped or partitioned coordinator may accept TCP and say nothing.
    // (Reads, and at first writes, small key files.)
    let attempt = match tokio::task::block_in_place(|| config.coordinator.attempt()) {
        Ok(attempt) => attempt,
        Err(problem) if problem.transient => return lost(problem.message, false),
        Err(problem) => return Ended::Rejected(Rejected { code: ErrorCode::Unauthorized, message: problem.message }),
    };
    let ws = match tokio::time::timeout(silence, rill_auth::dial::websocket(&attempt.dial, "/api/daemon")).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => match refusal(&e) {
            Some(rejected) => return Ended::Rejected(rejected),
            None => return lost(e.to_string(), false),
        },
        Err(_) => return lost(format!("{url} did not answer within {silence:?}"), false),
    };
    // The address this machine reaches the coordinator from is the one
    // other daemons can reach it at, too.
    let local_ip = ws.get_ref().local_addr().ok().map(|a| a.ip());
    // Data links are TLS (mutual, cluster certificates) unless the whole
    // cluster is plaintext.
    let tls = attempt.dial.tls.is_some();
    let scheme = if tls { "tls" } else { "tcp" };
    let endpoint = local_ip.map(|ip| format!("{scheme}/{}", std::net::SocketAddr::new(ip, config.data_port)));
    let (mut sink, mut stream) = ws.split();
    let register = DaemonMessage::Register {
        protocol: COORD_PROTOCOL_VERSION,
        version: config.version.clone(),
        machine_id: config.machine_id.clone(),
        labels: config.labels.clone(),
        zenoh_endpoint: endpoint.clone(),
        running: shares.owned(),
        enroll_key: attempt.enroll_key,
        enroll_proof: attempt.enroll_proof,
        platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        data_key: tls.then(|| data_key.public_hex()),
        artifact_dir: config.artifact_dir.as_ref().map(|d| d.display().to_string()),
    };
    if let Err(e) = send(&mut sink, &register).await {
        return lost(e, false);
    }
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    let mut last_heard = tokio::time::Instant::now();
    let (Some(mut finished_rx), Some(mut stream_rx), Some(mut tap_rx)) =
        (shares.finished_rx.take(), shares.stream_rx.take(), shares.tap_rx.take())
    else {
        return lost("internal: channels missing".into(), false);
    };
    let ended = 'conn: loop {
        tokio::select! {
            streamed = stream_rx.recv(), if registered => {
                if let Some(msg) = streamed
                    && let Err(e) = send(&mut sink, &msg).await
                {
                    break 'conn lost(e, registered);
                }
            }
            Some(frame) = tap_rx.recv(), if registered => {
                if let Err(e) = sink.send(Message::Binary(frame.into())).await {
                    break 'conn lost(format!("send failed: {e}"), registered);
                }
            }
            done = finished_rx.recv() => {
                if let Some(report) = done {
                    shares.queue(report);
                }
                // The share's node statuses were queued before its end: send
                // them first, so the coordinator sees them in that order.
                while registered && let Ok(msg) = stream_rx.try_recv() {
                    if let Err(e) = send(&mut sink, &msg).await {
                        break 'conn lost(e, registered);
                    }
                }
                if registered && let Err(e) = shares.report(&mut sink).await {
                    break 'conn lost(e, registered);
                }
                if shares.done_leaving() {
                    let _ = sink.close().await;
                    break 'conn Ended::ShutDown;
                }
            }
            Some(how) = shutdown.recv() => {
                if !shares.leaving && registered && let Err(e) = send(&mut sink, &DaemonMessage::ShuttingDown).await {
                    shares.shutdown(how);
                    break 'conn lost(e, registered);
                }
                shares.shutdown(how);
                if shares.done_leaving() {
                    let _ = sink.close().await;
                    break 'conn Ended::ShutDown;
                }
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<CoordinatorMessage>(&text) {
                    Ok(CoordinatorMessage::Heartbeat) => last_heard = tokio::time::Instant::now(),
                    Ok(CoordinatorMessage::Ping { nonce }) => {
                        last_heard = tokio::time::Instant::now();
                        if let Err(e) = send(&mut sink, &DaemonMessage::Pong { nonce }).await {
                            break 'conn lost(e, registered);
                        }
                    }
                    Ok(CoordinatorMessage::Registered { daemon_id, peers, certificate, data_tls }) => {
                        if let Some(pem) = certificate
                            && let Err(e) = tokio::task::block_in_place(|| config.coordinator.enrolled(&pem))
                        {
                            break Ended::Rejected(Rejected { code: ErrorCode::Internal, message: e.message });
                        }
                        last_heard = tokio::time::Instant::now();
                        registered = true;
                        on_event(ConnectionEvent::Registered { daemon_id });
                        // A signal that came before this registration.
                        if shares.leaving && let Err(e) = send(&mut sink, &DaemonMessage::ShuttingDown).await {
                            break 'conn lost(e, registered);
                        }
                        // What queued while disconnected: the log lines go;
                        // node statuses and counts are superseded by the
                        // snapshot below (an old `running` after a share's
                        // end would revive it).
                        while let Ok(msg) = stream_rx.try_recv() {
                            if matches!(msg, DaemonMessage::NodeStatus { .. } | DaemonMessage::Counts { .. }) {
                                continue;
                            }
                            if let Err(e) = send(&mut sink, &msg).await {
                                break 'conn lost(e, registered);
                            }
                        }
                        // What runs here, for a coordinator that restarted or
                        // wrote these nodes off as lost meanwhile.
                        let statuses: Vec<DaemonMessage> = shares
                            .statuses()
                            .iter()
                            .map(|((uuid, node), status)| DaemonMessage::NodeStatus {
                                uuid: uuid.clone(),
                                node: node.clone(),
                                status: status.clone(),
                            })
                            .chain(shares.counts().iter().map(|((uuid, node), counts)| DaemonMessage::Counts {
                                uuid: uuid.clone(),
                                node: node.clone(),
                                counts: counts.clone(),
                            }))
                            .collect();
                        shares.bridge_drops.clear();
                        for msg in &statuses {
                            if let Err(e) = send(&mut sink, msg).await {
                                break 'conn lost(e, registered);
                            }
                        }
                        if shares.bridge.is_none() && let Some(endpoint) = &endpoint {
                            let tls = data_tls.as_ref().map(|d| crate::bridge::DataTls {
                                ca: &d.ca,
                                certificate: &d.certificate,
                                key: data_key.private_pem(),
                            });
                            match tokio::task::block_in_place(|| crate::bridge::Bridge::open(endpoint, &peers, tls)) {
                                Ok(bridge) => shares.bridge = Some(bridge),
                                Err(e) => on_event(ConnectionEvent::Lost { reason: e.to_string() }),
                            }
                        }
                        // Ends that happened while disconnected.
                        if let Err(e) = shares.report(&mut sink).await {
                            break 'conn lost(e, registered);
                        }
                    }
                    Ok(CoordinatorMessage::Spawn(_)) if shares.leaving => {}
                    Ok(CoordinatorMessage::Spawn(spawn)) => {
                        shares.local.spawn(spawn, shares.bridge.clone(), shares.finished_tx.clone(), shares.on_local.clone());
                    }
                    Ok(CoordinatorMessage::StopDataflow { uuid }) => shares.local.stop(&uuid),
                    Ok(CoordinatorMessage::Tap { uuid, tap, outputs, preview, every_us }) => {
                        shares.local.tap(&uuid, tap, &outputs, preview, every_us, shares.tap_sink.clone());
                    }
                    Ok(CoordinatorMessage::Untap { uuid, tap }) => shares.local.untap(&uuid, tap),
                    Ok(CoordinatorMessage::Go { uuid }) => {
                        shares.confirmed(&uuid, false);
                        shares.local.go(&uuid);
                    }
                    Ok(CoordinatorMessage::FinishRecorded { uuid }) => {
                        shares.confirmed(&uuid, true);
                        if shares.done_leaving() {
                            let _ = sink.close().await;
                            break 'conn Ended::ShutDown;
                        }
                    }
                    Ok(CoordinatorMessage::Error { code, message }) => {
                        break Ended::Rejected(Rejected { code, message });
                    }
                    Err(e) => break lost(format!("unreadable message from the coordinator: {e}"), registered),
                },
                Some(Ok(Message::Close(_))) | None => break lost("the coordinator closed the connection".into(), registered),
                Some(Ok(_)) => {}
                Some(Err(e)) => break lost(format!("connection error: {e}"), registered),
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > silence {
                    break lost(format!("the coordinator has been silent for {silence:?}"), registered);
                }
                if let Err(e) = send(&mut sink, &DaemonMessage::Heartbeat).await {
                    break lost(e, registered);
                }
                // (Once a second, with the heartbeat: drops are rare.)
                if registered {
                    for msg in shares.changed_bridge_drops() {
                        if let Err(e) = send(&mut sink, &msg).await {
                            break 'conn lost(e, registered);
                        }
                    }
                }
            }
        }
    };
    // Taps belong to the connection: the coordinator sends those still
    // open again after the next registration.
    shares.local.untap_all();
    while tap_rx.try_recv().is_ok() {}
    shares.finished_rx = Some(finished_rx);
    shares.stream_rx = Some(stream_rx);
    shares.tap_rx = Some(tap_rx);
    shares.requeue_unconfirmed();
    ended
}

async fn send<S>(sink: &mut S, msg: &DaemonMessage) -> Result<(), String>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    sink.send(Message::Text(text.into())).await.map_err(|e| format!("send failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_share_that_says_ready_after_its_end_does_not_keep_a_leaving_daemon_waiting() {
        let (_stream_tx, stream_rx) = mpsc::channel(1);
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let mut shares = Shares {
            stream_rx: Some(stream_rx),
            tap_rx: None,
            tap_sink: Arc::new(|_| false),
            bridge: None,
            local: LocalDataflows::default(),
            finished_tx,
            finished_rx: Some(finished_rx),
            on_local: Arc::new(|_| {}),
            unreported: Vec::new(),
            unconfirmed: Vec::new(),
            statuses: Arc::default(),
            counts: Arc::default(),
            bridge_drops: HashMap::new(),
            leaving: true,
        };
        let uuid = "00000000-0000-0000-0000-000000000001".to_owned();
        shares.queue(ShareReport::Finished((uuid.clone(), false, "node `src` failed".into())));
        // Its ready wait timed out after the share ended.
        shares.queue(ShareReport::Ready { uuid: uuid.clone() });
        let mut sent: Vec<Message> = Vec::new();
        shares.report(&mut sent).await.expect("sent");
        assert_eq!(sent.len(), 1, "only the end is reported: {sent:?}");
        shares.confirmed(&uuid, true);
        assert!(shares.done_leaving(), "nothing left to wait for: {:?}", shares.unconfirmed);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_down_by_at_most_a_fifth() {
        assert_eq!(backoff(1, 0), Duration::from_millis(250));
        assert_eq!(backoff(3, 0), Duration::from_millis(1000));
        assert_eq!(backoff(30, 0), BACKOFF_MAX);
        let jittered = backoff(3, 199);
        assert!(jittered < Duration::from_millis(1000) && jittered >= Duration::from_millis(800), "{jittered:?}");
    }
}

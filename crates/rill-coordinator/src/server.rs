//! The HTTP + WebSocket endpoints. Handlers translate frames to calls on
//! [`Cluster`]; no cluster rule lives here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use rill_proto::coord::{
    COORD_PROTOCOL_VERSION, ControlRequest, ControlResponse, CoordinatorMessage, DaemonMessage, DataflowStatus,
    ErrorCode, Health, NodeStatus,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::{DaemonCredential, Security};
use crate::cluster::Cluster;
use crate::dataflows::{
    DAEMON_SHUT_DOWN, DAEMON_UNREACHABLE, DataflowRecord, Dataflows, ShareOutcome, StartError, plan,
};
use crate::listener::{Peer, SecureListener};
use crate::persist::Persister;
use crate::store::Store;
use crate::tokens::{Binding, Refused, Tokens};
use std::collections::BTreeMap;

/// The first message of a connection must come within this.
const HELLO_LIMIT: Duration = Duration::from_secs(10);

/// Where the coordinator keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Memory,
    Redb(std::path::PathBuf),
}

impl StoreConfig {
    /// Parses `--store`: `memory`, `redb` (at `default_path`) or `redb:PATH`.
    pub fn parse(text: &str, default_path: &std::path::Path) -> Result<Self, String> {
        match text {
            "memory" => Ok(StoreConfig::Memory),
            "redb" => Ok(StoreConfig::Redb(default_path.to_owned())),
            _ => match text.strip_prefix("redb:") {
                Some(path) if !path.is_empty() => Ok(StoreConfig::Redb(path.into())),
                _ => Err(format!("unknown store `{text}`: use `memory`, `redb` or `redb:PATH`")),
            },
        }
    }
}

impl std::fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("memory, nothing kept"),
            StoreConfig::Redb(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Where the coordinator listens and keeps its state.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub bind: SocketAddr,
    pub store: StoreConfig,
    pub settings: Settings,
    pub security: Security,
}

/// The coordinator's rules that have knobs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long nodes may be lost (daemon shut down, unreachable, or not
    /// reporting after a coordinator restart) before their dataflow fails.
    pub lost_timeout: Duration,
    /// Ended dataflows kept; older ones are pruned with their logs.
    pub keep_ended: usize,
    /// At most one auto-recovery per machine and dataflow in this window.
    pub recovery_backoff: Duration,
    /// Bytes of uploaded node binaries kept (oldest unused builds go first).
    pub artifact_store_limit: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lost_timeout: crate::dataflows::LOST_TIMEOUT,
            keep_ended: crate::dataflows::KEEP_ENDED,
            recovery_backoff: crate::dataflows::RECOVERY_BACKOFF,
            artifact_store_limit: crate::artifacts::DEFAULT_LIMIT,
        }
    }
}

/// Why the coordinator could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    // Not a `source`: the text already includes it, and a chain would repeat it.
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: std::io::Error },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Identity(#[from] rill_auth::AuthError),
}

struct App {
    cluster: Mutex<Cluster>,
    dataflows: Mutex<Dataflows>,
    logs: Mutex<crate::logs::Logs>,
    taps: Mutex<crate::taps::Taps>,
    persister: Persister,
    started: Instant,
    /// How often daemons and the coordinator hear from each other.
    heartbeat: Duration,
    security: Security,
    tokens: Mutex<Tokens>,
    /// The join token each connected daemon came in with (revoking or
    /// expiring it disconnects the daemon).
    token_of: Mutex<BTreeMap<String, crate::auth::TokenRef>>,
    /// Uploaded node binaries (`distribute: http`).
    artifacts: crate::artifacts::ArtifactStore,
}

impl App {
    // Lock order: cluster, then dataflows. The maps stay consistent even
    // if a handler panicked, so a poisoned lock is still usable.
    fn cluster(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dataflows(&self) -> MutexGuard<'_, Dataflows> {
        self.dataflows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn logs(&self) -> MutexGuard<'_, crate::logs::Logs> {
        self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // Taken alone: never while holding another lock.
    fn taps(&self) -> MutexGuard<'_, crate::taps::Taps> {
        self.taps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `daemon` the open taps of dataflow `uuid` (after its share
    /// was spawned there, or after it reconnected).
    fn send_taps(&self, daemon: &str, uuid: &str) {
        let taps = self.taps().of(uuid);
        let mut cluster = self.cluster();
        taps.into_iter().for_each(|tap| {
            cluster.send(daemon, tap);
        });
    }

    // Taken alone: never while holding another lock.
    fn tokens(&self) -> MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn token_of(&self) -> MutexGuard<'_, BTreeMap<String, crate::auth::TokenRef>> {
        self.token_of.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a changed record for the store; a failure is logged, not
    /// fatal (the dataflows keep running). Call it while still holding the
    /// `dataflows` lock the change was made under, so records reach the
    /// store in the order they changed.
    fn persist(&self, record: &DataflowRecord) {
        self.persister.save(record);
    }

    /// Applies a change to the dataflows and queues its record, under one lock.
    fn update(&self, change: impl FnOnce(&mut Dataflows) -> Option<DataflowRecord>) -> Option<DataflowRecord> {
        let mut dataflows = self.dataflows();
        let changed = change(&mut dataflows);
        if let Some(record) = &changed {
            self.persist(record);
        }
        drop(dataflows);
        if let Some(record) = changed.as_ref().filter(|r| !r.is_active()) {
            self.logs().ended(&record.uuid);
            self.taps().ended(&record.uuid);
        }
        changed
    }

    /// Lets the log followers and taps of ended dataflows go (whatever
    /// ended them).
    fn end_followers(&self) {
        let followed = self.logs().followed();
        let ended = self.inactive(followed);
        let mut logs = self.logs();
        ended.iter().for_each(|uuid| logs.ended(uuid));
        drop(logs);
        let tapped = self.taps().tapped();
        let ended = self.inactive(tapped);
        let mut taps = self.taps();
        ended.iter().for_each(|uuid| taps.ended(uuid));
    }

    /// Those of `uuids` whose dataflow is not active (or not known).
    fn inactive(&self, uuids: Vec<String>) -> Vec<String> {
        let dataflows = self.dataflows();
        uuids.into_iter().filter(|uuid| !dataflows.find(uuid).is_some_and(DataflowRecord::is_active)).collect()
    }
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A coordinator that has its store open and its port bound, not serving yet:
/// what can fail at start has failed by then.
pub struct Listening {
    listener: TcpListener,
    store: Store,
    settings: Settings,
    security: Security,
}

impl Listening {
    /// Opens the store, then binds `config.bind`.
    pub async fn bind(config: CoordinatorConfig) -> Result<Self, ServeError> {
        let store = match &config.store {
            StoreConfig::Memory => Store::Memory,
            StoreConfig::Redb(path) => Store::open(path)?,
        };
        let listener =
            TcpListener::bind(config.bind).await.map_err(|reason| ServeError::Bind { addr: config.bind, reason })?;
        Ok(Listening { listener, store, settings: config.settings, security: config.security })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub async fn serve(self) -> Result<(), ServeError> {
        serve_on(self.listener, self.store, self.settings, self.security).await
    }

    /// Serves until `shutdown`, then stores what is queued (see [`serve_until`]).
    pub async fn serve_until(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ServeError> {
        serve_until(self.listener, self.store, self.settings, self.security, shutdown).await
    }
}

/// Binds `config.bind` and serves until the process ends.
pub async fn serve(config: CoordinatorConfig) -> Result<(), ServeError> {
    Listening::bind(config).await?.serve().await
}

/// Serves on an already bound listener (tests bind port 0).
pub async fn serve_on(
    listener: TcpListener,
    store: Store,
    settings: Settings,
    security: Security,
) -> Result<(), ServeError> {
    serve_until(listener, store, settings, security, std::future::pending()).await
}

/// Serves until `shutdown` completes (SIGTERM), then writes every queued
/// record before returning: a stopped coordinator loses nothing it had
/// answered. Daemons see the connection end and reconnect to the next one.
pub async fn serve_until(
    listener: TcpListener,
    store: Store,
    settings: Settings,
    security: Security,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener = SecureListener::start(listener, security.server_config()?)?;
    let dataflows = Dataflows::restore(store.load()?, Instant::now(), settings.lost_timeout, settings.recovery_backoff);
    let tokens = Tokens::restore(store.load_tokens()?);
    let state_dir = &security.identity.dir;
    let artifact_dir = (!state_dir.as_os_str().is_empty()).then(|| state_dir.join("artifacts"));
    let artifacts = crate::artifacts::ArtifactStore::new(artifact_dir, settings.artifact_store_limit);
    let app = Arc::new(App {
        cluster: Mutex::new(Cluster::default()),
        dataflows: Mutex::new(dataflows),
        logs: Mutex::default(),
        taps: Mutex::default(),
        persister: Persister::start(store)?,
        started: Instant::now(),
        heartbeat: rill_proto::coord::heartbeat_interval(),
        security,
        tokens: Mutex::new(tokens),
        token_of: Mutex::default(),
        artifacts,
    });
    let expirer = app.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            dispatch_pending(&expirer).await;
            retry_recovery(&expirer);
            disconnect_expired(&expirer);
            expirer.end_followers();
            let pruned = expirer.dataflows().prune(settings.keep_ended);
            if !pruned.is_empty() {
                let mut logs = expirer.logs();
                pruned.iter().for_each(|uuid| logs.forget(uuid));
                drop(logs);
                expirer.persister.delete(pruned);
            }
            let expired = {
                let mut dataflows = expirer.dataflows();
                let expired = dataflows.expire_lost(Instant::now());
                expired.iter().for_each(|(record, _)| expirer.persist(record));
                expired
            };
            for (record, stop) in expired {
                eprintln!(
                    "rill coordinator: dataflow {} ({}) {:?}: {}",
                    record.name,
                    record.uuid,
                    record.status,
                    record.reason.as_deref().unwrap_or("lost nodes did not come back")
                );
                let mut cluster = expirer.cluster();
                for daemon in stop {
                    cluster.send(&daemon, CoordinatorMessage::StopDataflow { uuid: record.uuid.clone() });
                }
            }
        }
    });
    let router = Router::new()
        .route("/api/health", get(health))
        .route("/api/daemon", get(daemon_ws))
        .route("/api/control", get(control_ws))
        .route("/api/artifacts/{build_id}/{node_id}", get(get_artifact).put(put_artifact))
        .with_state(app.clone());
    tokio::select! {
        served = axum::serve(listener, router.into_make_service_with_connect_info::<Peer>()) => served?,
        () = shutdown => {}
    }
    app.persister.flush().await;
    Ok(())
}

async fn health(State(app): State<Arc<App>>) -> axum::Json<Health> {
    axum::Json(Health {
        version: VERSION.to_owned(),
        protocol: COORD_PROTOCOL_VERSION,
        uptime_ms: app.started.elapsed().as_millis() as u64,
        daemons_connected: app.cluster().len(),
    })
}

/// How a request proves it comes from a daemon of this cluster (or the admin).
fn daemon_credential(app: &App, headers: &HeaderMap, peer: &Peer) -> Result<DaemonCredential, crate::auth::Refusal> {
    let tokens = app.tokens();
    crate::auth::daemon(&app.security, headers, peer.client_cert.as_ref(), &tokens, now_ms())
}

// The credential is checked before the upgrade: a refused client gets a
// 401 it can show, and never a WebSocket.
async fn daemon_ws(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<Peer>,
    State(app): State<Arc<App>>,
) -> Response {
    let checked = daemon_credential(&app, &headers, &peer);
    let credential = match checked {
        Ok(credential) => credential,
        Err(refusal) => {
            eprintln!("rill coordinator: refused a daemon from {}: {}", peer.addr, refusal.message);
            return refusal.into_response();
        }
    };
    ws.max_message_size(rill_proto::coord::MAX_DAEMON_MESSAGE)
        .on_upgrade(move |socket| handle_daemon(socket, app, credential, peer.addr.ip()))
}

/// `PUT /api/artifacts/{build_id}/{node_id}` (admin): stores a node binary
/// for `distribute: http`; answers its SHA-256 and size.
async fn put_artifact(
    axum::extract::Path((build_id, node_id)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    State(app): State<Arc<App>>,
    body: axum::body::Body,
) -> Response {
    if let Err(refusal) = crate::auth::control(&app.security, &headers) {
        return refusal.into_response();
    }
    let announced = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|len| len > rill_core::MAX_ARTIFACT_SIZE) {
        return artifact_error(crate::artifacts::ArtifactError::TooLarge);
    }
    let keep = app.dataflows().active_build_ids();
    match app.artifacts.put(&build_id, &node_id, body.into_data_stream(), &keep).await {
        Ok((sha256, size)) => {
            eprintln!("rill coordinator: stored artifact {build_id}/{node_id} ({size} bytes, sha256 {sha256})");
            axum::Json(serde_json::json!({ "build_id": build_id, "node_id": node_id, "sha256": sha256, "size": size }))
                .into_response()
        }
        Err(e) => artifact_error(e),
    }
}

/// `GET /api/artifacts/{build_id}/{node_id}` (a daemon or the admin): the
/// binary as stored. Daemons check its SHA-256 against the one `rill start`
/// computed before they run it.
async fn get_artifact(
    axum::extract::Path((build_id, node_id)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<Peer>,
    State(app): State<Arc<App>>,
) -> Response {
    let checked = daemon_credential(&app, &headers, &peer);
    if let Err(refusal) = checked {
        return refusal.into_response();
    }
    let (file, size) = match app.artifacts.open(&build_id, &node_id).await {
        Ok(opened) => opened,
        Err(e) => return artifact_error(e),
    };
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(file)))
            }
            // Ends the body short: the daemon sees fewer bytes than announced.
            Err(e) => Some((Err(e), None)),
        }
    });
    let headers = [(axum::http::header::CONTENT_LENGTH, size.to_string())];
    (headers, axum::body::Body::from_stream(chunks)).into_response()
}

fn artifact_error(e: crate::artifacts::ArtifactError) -> Response {
    use crate::artifacts::ArtifactError as E;
    let status = match &e {
        E::BadId(_) => axum::http::StatusCode::BAD_REQUEST,
        E::NotFound { .. } => axum::http::StatusCode::NOT_FOUND,
        E::TooLarge => axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        E::NoStore => axum::http::StatusCode::SERVICE_UNAVAILABLE,
        E::Body(_) | E::Io(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        eprintln!("rill coordinator: artifact request failed: {e}");
    }
    (status, format!("{e}\n")).into_response()
}

async fn control_ws(ws: WebSocketUpgrade, headers: HeaderMap, State(app): State<Arc<App>>) -> Response {
    if let Err(refusal) = crate::auth::control(&app.security, &headers) {
        return refusal.into_response();
    }
    ws.on_upgrade(move |socket| handle_control(socket, app))
}

async fn send_json<T: serde::Serialize>(socket: &mut (impl SinkExt<Message> + Unpin), value: &T) -> bool {
    match serde_json::to_string(value) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// The next text frame, parsed; `None` when the connection ended or sent
/// something that is not a text frame of this protocol.
async fn next_json<T: serde::de::DeserializeOwned>(
    stream: &mut (impl StreamExt<Item = Result<Message, axum::Error>> + Unpin),
) -> Option<Result<T, String>> {
    match next_frame(stream).await? {
        Incoming::Json(parsed) => Some(parsed),
        Incoming::Binary(_) => None,
    }
}

/// A text frame, parsed, or a binary one (a daemon's tap frame).
enum Incoming<T> {
    Json(Result<T, String>),
    Binary(Vec<u8>),
}

/// The next text or binary frame; `None` when the connection ended.
async fn next_frame<T: serde::de::DeserializeOwned>(
    stream: &mut (impl StreamExt<Item = Result<Message, axum::Error>> + Unpin),
) -> Option<Incoming<T>> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(text)) => {
                return Some(Incoming::Json(serde_json::from_str(&text).map_err(|e| e.to_string())));
            }
            Ok(Message::Binary(bytes)) => return Some(Incoming::Binary(bytes.to_vec())),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(_) | Err(_) => return None,
        }
    }
}

async fn handle_daemon(socket: WebSocket, app: Arc<App>, credential: DaemonCredential, peer_ip: std::net::IpAddr) {
    let (mut sink, mut stream) = socket.split();
    let first = tokio::time::timeout(HELLO_LIMIT, next_json::<DaemonMessage>(&mut stream)).await;
    let Ok(Some(first)) = first else { return };
    let (mut hello, running, (enroll_key, enroll_proof, data_key)) = match first {
        Ok(DaemonMessage::Register {
            protocol,
            version,
            machine_id,
            labels,
            zenoh_endpoint,
            running,
            enroll_key,
            enroll_proof,
            platform,
            data_key,
            artifact_dir,
        }) => {
            // Shown as it is: printable and short.
            let platform: String = platform.chars().filter(|c| !c.is_control()).take(64).collect();
            // A path the CLI quotes into a remote command: absolute, plain, bounded.
            let artifact_dir =
                artifact_dir.filter(|d| d.starts_with('/') && d.len() <= 4096 && !d.chars().any(char::is_control));
            let hello =
                crate::cluster::Hello { protocol, version, machine_id, labels, zenoh_endpoint, platform, artifact_dir };
            (hello, running, (enroll_key, enroll_proof, data_key))
        }
        Ok(other) => {
            let message = format!("expected register, got {other:?}");
            send_json(&mut sink, &CoordinatorMessage::Error { code: ErrorCode::BadRequest, message }).await;
            return;
        }
        Err(e) => {
            // Perhaps a newer peer's message: say which protocol we speak.
            let message = format!(
                "cannot read the first message ({e}); this coordinator speaks protocol {COORD_PROTOCOL_VERSION}"
            );
            send_json(&mut sink, &CoordinatorMessage::Error { code: ErrorCode::ProtocolMismatch, message }).await;
            return;
        }
    };
    // (A daemon of another protocol is refused by `admit`, unenrolled.)
    let certificate = match hello.protocol == COORD_PROTOCOL_VERSION {
        true => match authorize(&app, &credential, &mut hello, enroll_key.as_deref(), enroll_proof.as_deref()).await {
            Ok(certificate) => certificate,
            Err(refused) => {
                let name = hello.machine_id.as_deref().unwrap_or("(no machine id)");
                eprintln!("rill coordinator: refused daemon {name}: {}", refused.message);
                send_json(&mut sink, &CoordinatorMessage::Error { code: refused.code, message: refused.message }).await;
                return;
            }
        },
        false => None,
    };
    let data_tls = match data_plane_certificate(&app, &hello, data_key.as_deref(), peer_ip) {
        Ok(data_tls) => data_tls,
        Err(refused) => {
            send_json(&mut sink, &CoordinatorMessage::Error { code: refused.code, message: refused.message }).await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel(crate::cluster::DAEMON_QUEUE);
    let machine_id = hello.machine_id.clone();
    let daemon_id = match admit(&app, hello, tx).await {
        Ok(id) => id,
        Err(e) => {
            send_json(&mut sink, &CoordinatorMessage::Error { code: e.code(), message: e.to_string() }).await;
            return;
        }
    };
    if let DaemonCredential::Join { token } | DaemonCredential::Certificate { token } = &credential {
        app.token_of().insert(daemon_id.clone(), token.clone());
    }
    let peers = app.cluster().peers_of(&daemon_id);
    let registered = CoordinatorMessage::Registered { daemon_id: daemon_id.clone(), peers, certificate, data_tls };
    if !send_json(&mut sink, &registered).await {
        app.token_of().remove(&daemon_id);
        // A start may have placed nodes on it meanwhile.
        if app.cluster().disconnected(&daemon_id) {
            write_off(&app, &daemon_id, DAEMON_UNREACHABLE);
        }
        return;
    }
    // What it still runs (after its or our restart) is its again.
    for uuid in &running {
        let stop = {
            let mut dataflows = app.dataflows();
            let (changed, stop) = dataflows.reclaimed(uuid, &daemon_id, machine_id.as_deref());
            changed.iter().for_each(|record| app.persist(record));
            stop
        };
        if stop {
            app.cluster().send(&daemon_id, CoordinatorMessage::StopDataflow { uuid: uuid.clone() });
        } else {
            app.send_taps(&daemon_id, uuid);
        }
    }
    // What it should run but does not (it restarted, the machine rebooted).
    if let Some(machine) = &machine_id {
        recover_lost(&app, &daemon_id, machine);
    }
    let silence = app.heartbeat * rill_proto::coord::SILENT_HEARTBEATS;
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(app.heartbeat);
    // It said it is shutting down: what it reports now is lost, not finished.
    let mut leaving = false;
    // Reports on nodes that are not its own are dropped; the first is logged.
    let mut forged = 0u64;
    let mut refuse_report = |what: &str, uuid: &str, node: &str| {
        if forged == 0 {
            eprintln!(
                "rill coordinator: refused a {what} from {daemon_id} about node {node} of dataflow {uuid}: \
                 not placed on it (further refusals on this connection are not logged)"
            );
        }
        forged += 1;
    };
    loop {
        tokio::select! {
            incoming = next_frame::<DaemonMessage>(&mut stream) => {
                let Some(incoming) = incoming else { break };
                last_heard = Instant::now();
                app.cluster().heartbeat(&daemon_id, last_heard);
                let incoming = match incoming {
                    Incoming::Json(incoming) => incoming,
                    Incoming::Binary(frame) => {
                        if relay_tap(&app, &daemon_id, machine_id.as_deref(), frame) == crate::taps::Relayed::Malformed {
                            refuse_report("malformed tap frame", "-", "-");
                        }
                        continue;
                    }
                };
                match incoming {
                    Ok(DaemonMessage::Pong { nonce }) => app.cluster().ponged(&daemon_id, nonce),
                    Ok(DaemonMessage::ShuttingDown) => {
                        eprintln!("rill coordinator: daemon {daemon_id} is shutting down");
                        app.cluster().leaving(&daemon_id);
                        if let Some(machine) = &machine_id {
                            app.dataflows().left_in_order(machine);
                        }
                        leaving = true;
                    }
                    Ok(DaemonMessage::DataflowReady { uuid }) => {
                        let mut cluster = app.cluster();
                        for daemon in app.dataflows().daemon_ready(&uuid, &daemon_id) {
                            cluster.send(&daemon, CoordinatorMessage::Go { uuid: uuid.clone() });
                        }
                    }
                    // Only the coordinator decides that a node is lost.
                    Ok(DaemonMessage::NodeStatus { status: NodeStatus::Lost { .. }, .. }) => {}
                    Ok(DaemonMessage::NodeStatus { uuid, node, .. })
                        if !app.dataflows().placed_on(&uuid, &node, &daemon_id, machine_id.as_deref()) =>
                    {
                        refuse_report("status", &uuid, &node);
                    }
                    Ok(DaemonMessage::NodeStatus { uuid, node, status }) => {
                        // A node its daemon stopped on the way out is lost, not ended.
                        let status = match status {
                            NodeStatus::Finished | NodeStatus::Failed { .. } if leaving => {
                                NodeStatus::Lost { reason: DAEMON_SHUT_DOWN.into() }
                            }
                            status => status,
                        };
                        app.update(|d| d.node_status(&uuid, &node, status, &daemon_id));
                    }
                    Ok(DaemonMessage::BridgeDrops { uuid, drops }) => {
                        app.dataflows().bridge_drops(&uuid, &daemon_id, machine_id.as_deref(), drops);
                    }
                    Ok(DaemonMessage::Usage { uuid, node, usage }) => {
                        if app.dataflows().placed_on(&uuid, &node, &daemon_id, machine_id.as_deref()) {
                            app.dataflows().usage(&uuid, &node, usage, Instant::now());
                        } else {
                            refuse_report("usage", &uuid, &node);
                        }
                    }
                    Ok(DaemonMessage::Counts { uuid, node, counts }) => {
                        if app.dataflows().placed_on(&uuid, &node, &daemon_id, machine_id.as_deref()) {
                            app.dataflows().counts(&uuid, &node, counts, Instant::now());
                        } else {
                            refuse_report("counts", &uuid, &node);
                        }
                    }
                    // Kept only for its own nodes of dataflows we know.
                    Ok(DaemonMessage::Log(line)) => {
                        if app.dataflows().placed_on(&line.uuid, &line.node, &daemon_id, machine_id.as_deref()) {
                            app.logs().push(line);
                        } else {
                            refuse_report("log line", &line.uuid, &line.node);
                        }
                    }
                    Ok(DaemonMessage::DataflowFinished { uuid, success, summary }) => {
                        let outcome = if leaving {
                            ShareOutcome::Left
                        } else {
                            ShareOutcome::Ended { success, summary: &summary }
                        };
                        app.update(|d| d.daemon_finished(&uuid, &daemon_id, outcome, Instant::now()));
                        let go = app.dataflows().go_after_end(&uuid);
                        let mut cluster = app.cluster();
                        for daemon in go {
                            cluster.send(&daemon, CoordinatorMessage::Go { uuid: uuid.clone() });
                        }
                        cluster.send(&daemon_id, CoordinatorMessage::FinishRecorded { uuid });
                    }
                    Ok(DaemonMessage::Heartbeat | DaemonMessage::Register { .. }) | Err(_) => {}
                }
            }
            outgoing = rx.recv() => match outgoing {
                // Its token was revoked or expired: told why, then gone.
                Some(msg @ CoordinatorMessage::Error { .. }) => {
                    let _ = tokio::time::timeout(silence, send_json(&mut sink, &msg)).await;
                    break;
                }
                // A daemon that stops reading must not wedge this loop.
                Some(msg) => if !matches!(tokio::time::timeout(silence, send_json(&mut sink, &msg)).await, Ok(true)) {
                    break;
                },
                // Replaced by a newer connection for its machine.
                None => break,
            },
            _ = tick.tick() => {
                let beat = tokio::time::timeout(silence, send_json(&mut sink, &CoordinatorMessage::Heartbeat));
                if last_heard.elapsed() > silence || !matches!(beat.await, Ok(true)) {
                    break;
                }
            }
        }
    }
    app.token_of().remove(&daemon_id);
    if app.cluster().disconnected(&daemon_id) {
        let reason = if leaving { DAEMON_SHUT_DOWN } else { DAEMON_UNREACHABLE };
        write_off(&app, &daemon_id, reason);
    }
}

/// Unix time in ms (token deadlines are wall-clock deadlines).
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Checks a registering daemon against the token it came with: a join
/// token enrolls its key (bound, certificate signed and stored before it is
/// sent); a certificate must be for this machine. A token's labels are the
/// only ones its daemon may claim (claiming none gets them all). Returns
/// the new certificate, if one was signed.
async fn authorize(
    app: &App,
    credential: &DaemonCredential,
    hello: &mut crate::cluster::Hello,
    enroll_key: Option<&str>,
    enroll_proof: Option<&str>,
) -> Result<Option<String>, Refused> {
    let refuse = |code, message: String| Err(Refused { code, message });
    let (token, enrolling) = match credential {
        DaemonCredential::Admin => return Ok(None),
        DaemonCredential::Join { token } => (token, true),
        DaemonCredential::Certificate { token } => (token, false),
    };
    let Some(machine) = hello.machine_id.clone() else {
        return refuse(ErrorCode::BadRequest, "a daemon that joins with a token needs --machine-id".into());
    };
    let token_ref = token;
    let record = app.tokens().get(&token_ref.name).filter(|r| r.hash == token_ref.hash).cloned();
    let Some(record) = record else {
        return refuse(ErrorCode::Revoked, format!("token {} was revoked", token_ref.name));
    };
    let token = &token_ref.name;
    if let Some(allowed) = &record.labels {
        if hello.labels.is_empty() {
            hello.labels = allowed.clone();
        } else if let Some((key, value)) = hello.labels.iter().find(|(k, v)| allowed.get(*k) != Some(*v)) {
            let granted = rill_core::format_labels(allowed);
            return refuse(
                ErrorCode::Unauthorized,
                format!("label {key}={value} is not granted by token {token} (it grants {granted})"),
            );
        }
    }
    if !enrolling {
        return match &record.bound {
            Some(bound) if bound.machine_id == machine => Ok(None),
            Some(bound) => refuse(
                ErrorCode::AlreadyBound,
                format!("this certificate is machine {}'s, not {machine}'s", bound.machine_id),
            ),
            None => refuse(ErrorCode::Unauthorized, "this certificate is not enrolled".into()),
        };
    }
    let Some(key_hex) = enroll_key else {
        return refuse(
            ErrorCode::BadRequest,
            "a daemon enrolling with a join token sends its key; this one sent none".into(),
        );
    };
    let bad_key = |e: rill_auth::AuthError| Refused { code: ErrorCode::BadRequest, message: e.to_string() };
    let (raw, key) = rill_auth::enroll::key_fingerprint(key_hex).map_err(bad_key)?;
    let proven = enroll_proof
        .is_some_and(|proof| rill_auth::enroll::proof_holds(&raw, proof, token, &machine, &app.security.fingerprint()));
    if !proven {
        return refuse(ErrorCode::Unauthorized, "the enrolling daemon did not prove it holds its key".into());
    }
    let pem = app.security.identity.ca.sign_daemon(&machine, &raw).map_err(bad_key)?;
    let cert = rill_auth::enroll::cert_fingerprint(&pem).map_err(bad_key)?;
    let binding =
        Binding { machine_id: machine.clone(), key: key.to_string(), cert: cert.to_string(), enrolled_ms: now_ms() };
    // Checked and bound under one lock, and queued for the store under it
    // too (so stores keep the order of changes): of two keys enrolling at
    // once, one wins.
    let stored = {
        let mut tokens = app.tokens();
        if tokens.get(token).is_none_or(|r| r.hash != token_ref.hash) {
            return refuse(ErrorCode::Revoked, format!("token {token} was revoked"));
        }
        let bound = tokens.enroll(token, binding, &key, now_ms())?;
        app.persister.save_token(&bound)
    };
    if let Err(e) = stored.await {
        return refuse(ErrorCode::Internal, format!("cannot store the enrollment: {e}"));
    }
    eprintln!("rill coordinator: machine {machine} enrolled with token {token} (key {key})");
    Ok(Some(pem))
}

/// The certificate for a daemon's data-plane key (from the data-plane CA),
/// valid for the address its connection comes from, which must be the one
/// in the endpoint it registered (`tls/IP:PORT`): peers verify that name,
/// and no daemon gets a certificate for another's address. None in a
/// plaintext cluster, or for a daemon that sent no key.
fn data_plane_certificate(
    app: &App,
    hello: &crate::cluster::Hello,
    data_key: Option<&str>,
    from: std::net::IpAddr,
) -> Result<Option<rill_proto::coord::DataTls>, Refused> {
    let bad = |message: String| Refused { code: ErrorCode::BadRequest, message };
    if app.security.plaintext {
        return Ok(None);
    }
    // (Without a key it gets no certificate, and no peer will talk to it.)
    let Some(key_hex) = data_key else { return Ok(None) };
    let (raw, _) = rill_auth::enroll::key_fingerprint(key_hex).map_err(|e| bad(e.to_string()))?;
    let ip = match hello.zenoh_endpoint.as_deref() {
        None => None,
        Some(endpoint) => {
            let address = endpoint.strip_prefix("tls/").ok_or_else(|| {
                bad(format!("data endpoint {endpoint:?}: a TLS cluster's daemons listen on tls/IP:PORT"))
            })?;
            let address: std::net::SocketAddr =
                address.parse().map_err(|_| bad(format!("data endpoint {endpoint:?} is not tls/IP:PORT")))?;
            Some(address.ip())
        }
    };
    if let Some(ip) = ip.filter(|ip| ip.to_canonical() != from.to_canonical()) {
        return Err(bad(format!(
            "data endpoint address {ip} is not the address this daemon connects from ({from}): \
             other daemons would not reach it there"
        )));
    }
    let name = hello.machine_id.as_deref().unwrap_or("daemon");
    let data_ca = &app.security.identity.data_ca;
    let certificate = data_ca.sign_data_plane(name, &raw, ip).map_err(|e| bad(e.to_string()))?;
    Ok(Some(rill_proto::coord::DataTls { certificate, ca: data_ca.cert_pem().to_owned() }))
}

/// Disconnects daemons whose token expired while they were connected (or
/// was revoked while they were registering, after the revoke looked).
fn disconnect_expired(app: &App) {
    use rill_proto::coord::TokenState;
    let now = now_ms();
    let unusable: Vec<(String, String, TokenState)> = {
        let connected = app.token_of().clone();
        let tokens = app.tokens();
        connected
            .into_iter()
            .map(|(daemon, token)| {
                // A record of that name with another secret is a new token: the daemon's is gone.
                let record = tokens.get(&token.name).filter(|r| r.hash == token.hash);
                let state = record.map_or(TokenState::Revoked, |r| r.state(now));
                (daemon, token.name, state)
            })
            .filter(|(_, _, state)| matches!(state, TokenState::Expired | TokenState::Revoked))
            .collect()
    };
    for (daemon, token, state) in unusable {
        let (code, message) = match state {
            TokenState::Expired => (ErrorCode::Expired, format!("token {token} has expired")),
            _ => (ErrorCode::Revoked, format!("token {token} was revoked")),
        };
        eprintln!("rill coordinator: {message}: disconnecting {daemon}");
        app.token_of().remove(&daemon);
        app.cluster().send(&daemon, CoordinatorMessage::Error { code, message });
    }
}

/// Auto-recovery for daemons that came back within the recovery backoff
/// (their registration found it too early): their machines' lost nodes are
/// spawned again once the backoff has passed.
fn retry_recovery(app: &App) {
    let connected: Vec<(String, String)> =
        app.cluster().daemon_infos().into_iter().filter_map(|d| Some((d.id, d.machine_id?))).collect();
    for (daemon, machine) in connected {
        recover_lost(app, &daemon, &machine);
    }
}

/// Spawns on `daemon` the lost nodes placed on its `machine` of every
/// dataflow it does not run a share of (within the recovery backoff).
fn recover_lost(app: &App, daemon: &str, machine: &str) {
    let spawns = {
        let mut dataflows = app.dataflows();
        let owned = dataflows.shares_of(daemon);
        let spawns = dataflows.recover(daemon, Some(machine), &owned, Instant::now());
        spawns.iter().for_each(|(record, _)| app.persist(record));
        spawns
    };
    for (record, spawn) in spawns {
        eprintln!(
            "rill coordinator: auto-recovery: re-spawning {} on {daemon} for dataflow {}",
            spawn.nodes.join(", "),
            record.name
        );
        let uuid = spawn.uuid.clone();
        app.cluster().send(daemon, CoordinatorMessage::Spawn(spawn));
        app.send_taps(daemon, &uuid);
    }
}

/// The connection of `daemon_id` is gone: the nodes it ran are lost.
fn write_off(app: &App, daemon_id: &str, reason: &str) {
    let mut dataflows = app.dataflows();
    for record in dataflows.daemon_gone(daemon_id, reason, Instant::now()) {
        eprintln!("rill coordinator: dataflow {} degraded: {reason} ({daemon_id})", record.name);
        app.persist(&record);
    }
}

/// Registers a daemon. If its machine id is held by another connection,
/// that one is probed: if it answers within two heartbeats it keeps the id
/// and the newcomer is refused for good; otherwise it is replaced.
async fn admit(
    app: &App,
    hello: crate::cluster::Hello,
    tx: mpsc::Sender<CoordinatorMessage>,
) -> Result<String, crate::RegisterError> {
    use crate::RegisterError;
    let first = app.cluster().register(hello.clone(), tx.clone(), Instant::now());
    let Err(RegisterError::Held { machine, old }) = first else { return first };
    let nonce = uuid::Uuid::new_v4().as_u64_pair().0;
    app.cluster().probe(&old, nonce);
    let deadline = Instant::now() + app.heartbeat * 2;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // (Bound first: the cluster lock must not live through the match.)
        let answered = app.cluster().probe_answered(&old, nonce);
        match answered {
            Some(true) => return Err(RegisterError::AlreadyConnected(machine)),
            Some(false) if Instant::now() < deadline => continue,
            Some(false) => {
                eprintln!("rill coordinator: {old} did not answer a probe; machine {machine} reconnected");
                app.cluster().replace(&old);
                break;
            }
            None => break,
        }
    }
    let second = app.cluster().register(hello, tx, Instant::now());
    match second {
        // Yet another connection took the id meanwhile.
        Err(RegisterError::Held { machine, .. }) => Err(RegisterError::AlreadyConnected(machine)),
        other => other,
    }
}

async fn handle_control(socket: WebSocket, app: Arc<App>) {
    let (mut sink, mut stream) = socket.split();
    match tokio::time::timeout(HELLO_LIMIT, next_json::<ControlRequest>(&mut stream)).await {
        Ok(Some(Ok(ControlRequest::Hello { protocol }))) if protocol == COORD_PROTOCOL_VERSION => {
            send_json(&mut sink, &ControlResponse::Hello { version: VERSION.to_owned() }).await;
        }
        Ok(Some(_)) => {
            let message = format!(
                "this coordinator speaks protocol {COORD_PROTOCOL_VERSION} (rill {VERSION}): use the same rill version"
            );
            send_json(&mut sink, &ControlResponse::Error { code: ErrorCode::ProtocolMismatch, message }).await;
            return;
        }
        _ => return,
    }
    while let Some(request) = next_json::<ControlRequest>(&mut stream).await {
        if let Ok(ControlRequest::Logs { dataflow, node, follow }) = request {
            if !stream_logs(&app, &mut sink, &mut stream, &dataflow, node.as_deref(), follow).await {
                break;
            }
            continue;
        }
        if let Ok(ControlRequest::Tap { dataflow, outputs, preview, every_us }) = request {
            // A tap holds the connection until the client leaves.
            stream_tap(&app, &mut sink, &mut stream, &dataflow, &outputs, (preview, every_us)).await;
            break;
        }
        let response = match request {
            Ok(ControlRequest::Status) => ControlResponse::Status {
                version: VERSION.to_owned(),
                uptime_ms: app.started.elapsed().as_millis() as u64,
                ca_fingerprint: app.security.fingerprint().to_string(),
                transport: app.security.transport().to_owned(),
                daemons: app.cluster().status(Instant::now()),
                dataflows: app.dataflows().list(),
            },
            Ok(ControlRequest::Hello { .. }) => ControlResponse::Hello { version: VERSION.to_owned() },
            Ok(ControlRequest::Start { descriptor, name, base_dir, dry_run, wait_ms }) => {
                let wait = wait_ms.map(Duration::from_millis);
                start(&app, descriptor, name, base_dir, dry_run, wait).await
            }
            Ok(ControlRequest::List) => ControlResponse::List { dataflows: app.dataflows().list() },
            Ok(ControlRequest::Topics { dataflow }) => {
                let found = app.dataflows().find(&dataflow).map(|r| (r.uuid.clone(), r.name.clone(), r.topics()));
                match found {
                    Some((uuid, name, topics)) => ControlResponse::Topics { uuid, name, topics },
                    None => ControlResponse::Error {
                        code: ErrorCode::NotFound,
                        message: unknown_dataflow(&app, &dataflow, false),
                    },
                }
            }
            Ok(ControlRequest::Stop { dataflow }) => stop(&app, &dataflow).await,
            Ok(ControlRequest::Restart { dataflow }) => restart(&app, &dataflow).await,
            Ok(ControlRequest::TokenCreate { name, ttl_ms, labels }) => create_token(&app, &name, ttl_ms, labels).await,
            Ok(ControlRequest::TokenList) => ControlResponse::Tokens { tokens: app.tokens().list(now_ms()) },
            Ok(ControlRequest::TokenRevoke { name }) => revoke_token(&app, &name).await,
            // Answered above.
            Ok(ControlRequest::Logs { .. } | ControlRequest::Tap { .. }) => continue,
            Err(e) => ControlResponse::Error { code: ErrorCode::BadRequest, message: e },
        };
        if !send_json(&mut sink, &response).await {
            break;
        }
    }
}

fn refused(refused: Refused) -> ControlResponse {
    ControlResponse::Error { code: refused.code, message: refused.message }
}

/// Mints a token; it is shown only once its record is stored.
async fn create_token(
    app: &App,
    name: &str,
    ttl_ms: Option<u64>,
    labels: Option<BTreeMap<String, String>>,
) -> ControlResponse {
    let created = {
        let mut tokens = app.tokens();
        tokens
            .create(name, ttl_ms, labels, app.security.fingerprint(), now_ms())
            .map(|(token, record, replaced)| (token, app.persister.save_token(&record), record, replaced))
    };
    let (token, stored, record, replaced) = match created {
        Ok(created) => created,
        Err(e) => return refused(e),
    };
    if let Err(e) = stored.await {
        app.tokens().forget(name, replaced);
        return ControlResponse::Error { code: ErrorCode::Internal, message: format!("cannot store the token: {e}") };
    }
    eprintln!("rill coordinator: token {name} created");
    ControlResponse::TokenCreated { token: token.expose(), info: record.info(now_ms()) }
}

/// Revokes a token (stored first) and disconnects the daemon using it.
async fn revoke_token(app: &App, name: &str) -> ControlResponse {
    // Queued under the tokens lock, so stores keep the order of changes.
    let revoked = {
        let mut tokens = app.tokens();
        tokens.revoke(name).map(|changed| changed.map(|record| app.persister.save_token(&record)))
    };
    let changed = match revoked {
        Ok(changed) => changed,
        Err(e) => return refused(e),
    };
    let was_revoked_now = changed.is_some();
    if let Some(stored) = changed
        && let Err(e) = stored.await
    {
        return ControlResponse::Error {
            code: ErrorCode::Internal,
            message: format!("cannot store the revocation: {e}"),
        };
    }
    let holders: Vec<String> =
        app.token_of().iter().filter(|(_, token)| token.name == name).map(|(daemon, _)| daemon.clone()).collect();
    for daemon in &holders {
        app.token_of().remove(daemon);
        let message = format!("token {name} was revoked");
        app.cluster().send(daemon, CoordinatorMessage::Error { code: ErrorCode::Revoked, message });
    }
    if was_revoked_now {
        eprintln!("rill coordinator: token {name} revoked");
    }
    ControlResponse::TokenRevoked {
        name: name.to_owned(),
        changed: was_revoked_now,
        disconnected: holders.into_iter().next(),
    }
}

/// Sends the kept lines, then (with `follow`) each new one until the
/// client goes away. False when the connection is over.
async fn stream_logs(
    app: &App,
    sink: &mut (impl SinkExt<Message> + Unpin),
    stream: &mut (impl StreamExt<Item = Result<Message, axum::Error>> + Unpin),
    dataflow: &str,
    node: Option<&str>,
    follow: bool,
) -> bool {
    let found = app.dataflows().find(dataflow).map(|r| {
        let nodes: Vec<String> = r.descriptor.nodes.iter().map(|n| n.id.clone()).collect();
        (r.uuid.clone(), r.name.clone(), nodes)
    });
    let Some((uuid, name, nodes)) = found else {
        let message = unknown_dataflow(app, dataflow, false);
        return send_json(sink, &ControlResponse::Error { code: ErrorCode::NotFound, message }).await;
    };
    if let Some(node) = node.filter(|node| !nodes.iter().any(|n| n == node)) {
        let suggestion = rill_core::did_you_mean(node, nodes.iter().map(String::as_str), "its nodes");
        let message = format!("dataflow `{name}` has no node `{node}`{suggestion}");
        return send_json(sink, &ControlResponse::Error { code: ErrorCode::NotFound, message }).await;
    }
    let (kept, rx) = if follow {
        let (kept, rx) = app.logs().follow(&uuid, node);
        (kept, Some(rx))
    } else {
        (app.logs().kept(&uuid, node), None)
    };
    for line in kept {
        if !send_json(sink, &ControlResponse::Log(line)).await {
            return false;
        }
    }
    let Some(mut rx) = rx else {
        return send_json(sink, &ControlResponse::LogEnd).await;
    };
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => if !send_json(sink, &ControlResponse::Log(line)).await { return false },
                // Let go: the dataflow ended (every line was sent), or this
                // follower fell too far behind (the connection ends).
                None => {
                    let active = app.dataflows().find(&uuid).is_some_and(DataflowRecord::is_active);
                    return !active && send_json(sink, &ControlResponse::LogEnd).await;
                }
            },
            // The client sends nothing while following: anything is the end.
            _ = stream.next() => return false,
        }
    }
}

/// Passes a daemon's tap frame on to its client, if the tap reads a node
/// placed on that daemon.
fn relay_tap(app: &App, daemon: &str, machine: Option<&str>, frame: Vec<u8>) -> crate::taps::Relayed {
    let Some((tap, uuid, nodes)) = app.taps().route(&frame) else {
        return match rill_proto::tap::header(&frame) {
            Ok(_) => crate::taps::Relayed::Unknown,
            Err(_) => crate::taps::Relayed::Malformed,
        };
    };
    let serves = {
        let dataflows = app.dataflows();
        nodes.iter().any(|node| dataflows.placed_on(&uuid, node, daemon, machine))
    };
    if !serves {
        return crate::taps::Relayed::Unknown;
    }
    app.taps().relay(tap, frame)
}

/// How long a tap frame may take to reach its client.
const TAP_SEND_LIMIT: Duration = Duration::from_secs(10);

/// Opens a tap on `outputs` (`node/output`; none: all) of a running
/// dataflow, says `Tapped`, then passes its frames on until the client
/// leaves (or the dataflow ends: `TapEnd`). Closing it unwires it.
async fn stream_tap(
    app: &App,
    sink: &mut (impl SinkExt<Message> + Unpin),
    stream: &mut (impl StreamExt<Item = Result<Message, axum::Error>> + Unpin),
    dataflow: &str,
    wanted: &[String],
    (preview, every_us): (u64, u64),
) {
    let resolved = {
        let dataflows = app.dataflows();
        dataflows.find(dataflow).filter(|r| r.is_active()).map(|record| match record.status {
            // Its nodes run nowhere yet: nothing to wire.
            DataflowStatus::Pending => Err((
                ErrorCode::BadRequest,
                format!("dataflow {} is still waiting for daemons to run on: tap it once it runs", record.name),
            )),
            _ => tap_outputs(record, wanted).map(|outputs| (record.uuid.clone(), record.name.clone(), outputs)),
        })
    };
    // (Not under the lock above: it takes it.)
    let resolved = resolved.unwrap_or_else(|| Err((ErrorCode::NotFound, unknown_dataflow(app, dataflow, true))));
    let (uuid, name, outputs) = match resolved {
        Ok(resolved) => resolved,
        Err((code, message)) => {
            send_json(sink, &ControlResponse::Error { code, message }).await;
            return;
        }
    };
    let preview = preview.min(rill_proto::tap::MAX_TAP_PREVIEW);
    // (At most a second apart: a person could not tell.)
    let every_us = every_us.min(1_000_000);
    let opened = app.taps().open(&uuid, outputs.clone(), preview, every_us);
    let (tap, mut frames) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            send_json(sink, &ControlResponse::Error { code: ErrorCode::BadRequest, message: e.to_string() }).await;
            return;
        }
    };
    // The daemons now, after the tap is open: one that registers from here
    // on gets it from `send_taps`.
    let daemons = app.dataflows().find(&uuid).map(DataflowRecord::daemons).unwrap_or_default();
    let message = crate::taps::open_message(&app.taps(), tap);
    if let Some(message) = message {
        let mut cluster = app.cluster();
        for daemon in &daemons {
            cluster.send(daemon, message.clone());
        }
    }
    let tapped = ControlResponse::Tapped { uuid: uuid.clone(), name, tap, outputs };
    if send_json(sink, &tapped).await {
        loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    // A client that stops reading lets its tap go.
                    Some(frame) => {
                        let sent = tokio::time::timeout(TAP_SEND_LIMIT, sink.send(Message::Binary(frame.into()))).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break;
                        }
                    }
                    None => {
                        let reason = "the dataflow ended".to_owned();
                        send_json(sink, &ControlResponse::TapEnd { reason }).await;
                        break;
                    }
                },
                // The client sends nothing while tapping: anything is the end.
                _ = stream.next() => break,
            }
        }
    }
    let untap = app.taps().close(tap);
    let daemons = app.dataflows().find(&uuid).map(DataflowRecord::daemons).unwrap_or_default();
    if let Some(untap) = untap {
        let mut cluster = app.cluster();
        for daemon in &daemons {
            cluster.send(daemon, untap.clone());
        }
    }
}

/// The outputs a tap asks for (`node/output`; none: every output the node
/// sends itself), each with where its node runs; an unknown one is an
/// error naming the closest, and one that carries what a node prints
/// (`send_stdout_as`, `send_logs_as`: sent by its daemon) is refused.
fn tap_outputs(
    record: &DataflowRecord,
    wanted: &[String],
) -> Result<Vec<rill_proto::coord::TapOutput>, (ErrorCode, String)> {
    let printed = |node: &rill_core::NodeSpec, output: &str| node.printed.outputs().any(|p| p == output);
    for topic in wanted {
        let Some((node, output)) = topic.split_once('/') else { continue };
        if record.descriptor.node(node).is_some_and(|n| printed(n, output)) {
            let message = format!(
                "`{topic}` carries what node `{node}` prints, which taps cannot read yet: see it with `rill logs {} {node}`",
                record.name
            );
            return Err((ErrorCode::NotFound, message));
        }
    }
    let all: Vec<(String, String)> = record
        .descriptor
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().filter(|o| !printed(n, o)).map(move |o| (n.id.clone(), o.clone())))
        .collect();
    let names: Vec<String> = all.iter().map(|(n, o)| format!("{n}/{o}")).collect();
    let mut chosen = if wanted.is_empty() { all.clone() } else { Vec::new() };
    for topic in wanted {
        let Some(i) = names.iter().position(|n| n == topic) else {
            let hint = rill_core::did_you_mean(topic, names.iter().map(String::as_str), "outputs");
            let message = format!(
                "dataflow {} has no output `{topic}`{hint} (outputs are NODE/OUTPUT: `rill topic list {}`)",
                record.name, record.name
            );
            return Err((ErrorCode::NotFound, message));
        };
        if !chosen.contains(&all[i]) {
            chosen.push(all[i].clone());
        }
    }
    let machine = |node: &str| {
        record
            .placement
            .iter()
            .find(|p| p.node == node)
            .map(|p| p.machine_id.clone().unwrap_or_else(|| p.daemon_id.clone()))
    };
    Ok(chosen
        .into_iter()
        .map(|(node, output)| rill_proto::coord::TapOutput {
            machine: machine(&node).unwrap_or_default(),
            node,
            output,
        })
        .collect())
}

/// "no (running) dataflow named ...", with the closest name and the known ones.
fn unknown_dataflow(app: &App, wanted: &str, running: bool) -> String {
    let dataflows = app.dataflows().list();
    let names = dataflows.iter().filter(|d| !running || d.status.is_active()).map(|d| d.name.as_str());
    let which = if running { "running dataflows" } else { "dataflows" };
    let suggestion = rill_core::did_you_mean(wanted, names, which);
    let running = if running { "running " } else { "" };
    format!("no {running}dataflow named or with uuid `{wanted}`{suggestion}")
}

fn start_error(e: StartError) -> ControlResponse {
    let code = match e {
        StartError::Placement(_) => ErrorCode::Placement,
        StartError::NameInUse(_) => ErrorCode::NameInUse,
    };
    ControlResponse::Error { code, message: e.to_string() }
}

async fn start(
    app: &App,
    descriptor: rill_core::Dataflow,
    name: Option<String>,
    base_dir: String,
    dry_run: bool,
    wait: Option<Duration>,
) -> ControlResponse {
    // The CLI checked the file, but anything that deserializes may arrive.
    let mut problems = rill_core::received_problems(&descriptor);
    problems.extend(name.as_deref().and_then(rill_core::name_problem));
    if !problems.is_empty() {
        let message = format!("the dataflow is not valid: {}", problems.join("; "));
        return ControlResponse::Error { code: ErrorCode::BadRequest, message };
    }
    let daemons = app.cluster().daemon_infos();
    if dry_run {
        return match plan(&descriptor, &daemons) {
            Ok(placement) => ControlResponse::Plan { placement },
            Err(e) => start_error(e),
        };
    }
    let (record, spawns, stored) = {
        let mut dataflows = app.dataflows();
        let (record, spawns) = match dataflows.start(descriptor, name, base_dir, &daemons, wait) {
            Ok(started) => started,
            Err(e) => return start_error(e),
        };
        let stored = app.persister.save_confirmed(&record);
        (record, spawns, stored)
    };
    // Nothing runs unless its record is stored: a coordinator restart must
    // not forget a running dataflow.
    if let Err(e) = stored.await {
        app.dataflows().forget(&record.uuid);
        let message = format!("the dataflow was not started: its record cannot be stored ({e})");
        return ControlResponse::Error { code: ErrorCode::Internal, message };
    }
    if let Some(waiting) = &record.waiting {
        eprintln!(
            "rill coordinator: dataflow {} ({}) waits for daemons: {}",
            record.name,
            record.uuid,
            waiting.problems.join("; ")
        );
        let wait_ms = wait.map_or(0, |w| w.as_millis() as u64);
        return ControlResponse::Pending {
            uuid: record.uuid,
            name: record.name,
            waiting: waiting.problems.clone(),
            wait_ms,
        };
    }
    // A `rill stop` that came while the record was being stored: nothing is started.
    if app.update(|d| d.stopped_before_spawn(&record.uuid, Instant::now())).is_some() {
        return ControlResponse::Started { uuid: record.uuid, name: record.name, placement: record.placement };
    }
    send_spawns(app, &record.uuid, spawns);
    ControlResponse::Started { uuid: record.uuid, name: record.name, placement: record.placement }
}

/// Sends each daemon its share of a dataflow whose record is stored.
fn send_spawns(app: &App, uuid: &str, spawns: Vec<(String, rill_proto::coord::SpawnDataflow)>) {
    for (daemon, spawn) in spawns {
        // A daemon that left since the plan: its part is lost, not silently dropped.
        let sent = app.cluster().send(&daemon, CoordinatorMessage::Spawn(spawn));
        if !sent {
            app.update(|d| d.share_lost(uuid, &daemon, DAEMON_UNREACHABLE, Instant::now()));
        }
    }
}

/// Starts the pending dataflows that daemons have joined for, once their
/// records are stored; fails those whose wait is over.
async fn dispatch_pending(app: &App) {
    let daemons = app.cluster().daemon_infos();
    let (placed, expired) = {
        let mut dataflows = app.dataflows();
        let placed = dataflows.place_pending(&daemons);
        let expired = dataflows.expire_pending(now_ms());
        let placed: Vec<_> = placed
            .into_iter()
            .map(|(record, spawns)| {
                let stored = app.persister.save_confirmed(&record);
                (record, spawns, stored)
            })
            .collect();
        expired.iter().for_each(|record| app.persist(record));
        (placed, expired)
    };
    for record in expired {
        eprintln!(
            "rill coordinator: dataflow {} ({}) failed: {}",
            record.name,
            record.uuid,
            record.reason.unwrap_or_default()
        );
    }
    for (record, spawns, stored) in placed {
        if let Err(e) = stored.await {
            let reason = format!("its record cannot be stored ({e})");
            eprintln!("rill coordinator: pending dataflow {} not started: {reason}", record.name);
            app.update(|d| d.fail_unstarted(&record.uuid, &reason));
            continue;
        }
        // A `rill stop` that came while the record was being stored.
        if app.update(|d| d.stopped_before_spawn(&record.uuid, Instant::now())).is_some() {
            continue;
        }
        eprintln!("rill coordinator: pending dataflow {} ({}) placed; starting it", record.name, record.uuid);
        send_spawns(app, &record.uuid, spawns);
    }
}

async fn stop(app: &App, dataflow: &str) -> ControlResponse {
    let stopping = {
        let mut dataflows = app.dataflows();
        dataflows.stop(dataflow).map(|(record, daemons)| {
            let stored = app.persister.save_confirmed(&record);
            (record, daemons, stored)
        })
    };
    let Some((record, daemons, stored)) = stopping else {
        let message = unknown_dataflow(app, dataflow, true);
        return ControlResponse::Error { code: ErrorCode::NotFound, message };
    };
    {
        let mut cluster = app.cluster();
        for daemon in daemons {
            cluster.send(&daemon, CoordinatorMessage::StopDataflow { uuid: record.uuid.clone() });
        }
    }
    if let Err(e) = stored.await {
        let message = format!(
            "dataflow {} is stopping, but that cannot be stored ({e}): after a coordinator restart it would be listed as running",
            record.name
        );
        return ControlResponse::Error { code: ErrorCode::Internal, message };
    }
    ControlResponse::Stopped { uuid: record.uuid, name: record.name }
}

async fn restart(app: &App, dataflow: &str) -> ControlResponse {
    let old = app.dataflows().find(dataflow).cloned();
    let Some(old) = old else {
        let message = unknown_dataflow(app, dataflow, false);
        return ControlResponse::Error { code: ErrorCode::NotFound, message };
    };
    if let ControlResponse::Error { code, message } = stop(app, &old.uuid).await {
        // Already ended: restart simply starts it again.
        if code != ErrorCode::NotFound {
            return ControlResponse::Error { code, message };
        }
    }
    // A pending one keeps waiting, for what is left of its wait.
    let wait = old.waiting.as_ref().map(|w| Duration::from_millis(w.until_ms.saturating_sub(now_ms())));
    match start(app, old.descriptor, Some(old.name), old.base_dir, false, wait).await {
        ControlResponse::Started { uuid, name, placement } => {
            ControlResponse::Restarted { old_uuid: old.uuid, new_uuid: uuid, name, placement }
        }
        ControlResponse::Pending { uuid, name, .. } => {
            ControlResponse::Restarted { old_uuid: old.uuid, new_uuid: uuid, name, placement: Vec::new() }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use rill_auth::dial::{Dial, DialError, websocket};

    /// A coordinator on a free port, and how its admin reaches it.
    async fn start() -> Dial {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let identity = rill_auth::CoordinatorIdentity::ephemeral(&["127.0.0.1".into()]).unwrap();
        let tls = rill_auth::tls::client_config(identity.ca.fingerprint(), None).unwrap();
        let dial = Dial { addr: addr.to_string(), tls: Some(tls), bearer: Some(identity.admin.expose()) };
        let security = Security { identity: Arc::new(identity), plaintext: false };
        tokio::spawn(serve_on(listener, Store::Memory, Settings::default(), security));
        dial
    }

    async fn first_reply(dial: &Dial, path: &str, text: &str) -> serde_json::Value {
        let mut ws = websocket(dial, path).await.unwrap();
        ws.send(WsMessage::Text(text.into())).await.unwrap();
        loop {
            if let Some(Ok(WsMessage::Text(reply))) = ws.next().await {
                return serde_json::from_str(&reply).unwrap();
            }
        }
    }

    type Ws = rill_auth::dial::Ws;

    /// A raw daemon connection registered as `machine`, and its first reply.
    async fn raw_daemon(dial: &Dial, machine: &str) -> (Ws, serde_json::Value) {
        let mut ws = websocket(dial, "/api/daemon").await.unwrap();
        let register = format!(
            r#"{{"type":"register","protocol":{COORD_PROTOCOL_VERSION},"version":"0","machine_id":"{machine}","labels":{{}}}}"#
        );
        ws.send(WsMessage::Text(register.into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(Ok(WsMessage::Text(reply))) = ws.next().await {
                    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
                    if reply["type"] != "heartbeat" {
                        return reply;
                    }
                }
            }
        })
        .await
        .expect("a reply within 10 s");
        (ws, reply)
    }

    #[tokio::test]
    async fn a_holder_that_answers_the_probe_keeps_its_machine_id_a_silent_one_is_replaced() {
        let addr = &start().await;
        // Registered, then silent (still connected, answers nothing).
        let (_silent, reply) = raw_daemon(addr, "a").await;
        assert_eq!(reply["type"], "registered", "{reply}");
        let (mut live, reply) = raw_daemon(addr, "a").await;
        assert_eq!(reply["type"], "registered", "the silent holder is replaced: {reply}");
        // This one answers every ping.
        tokio::spawn(async move {
            while let Some(Ok(WsMessage::Text(text))) = live.next().await {
                let msg: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if msg["type"] == "ping" {
                    let pong = format!(r#"{{"type":"pong","nonce":{}}}"#, msg["nonce"]);
                    let _ = live.send(WsMessage::Text(pong.into())).await;
                }
            }
        });
        let (_refused, reply) = raw_daemon(addr, "a").await;
        assert_eq!(reply["code"], "already_connected", "a live holder keeps its id: {reply}");
    }

    #[tokio::test]
    async fn a_start_with_an_absurd_descriptor_is_refused_with_the_reasons() {
        let dial = start().await;
        let mut cli = websocket(&dial, "/api/control").await.unwrap();
        let hello = format!(r#"{{"type":"hello","protocol":{COORD_PROTOCOL_VERSION}}}"#);
        cli.send(WsMessage::Text(hello.into())).await.unwrap();
        let _ = cli.next().await;
        let node = r#"{"id":"a*","path":"/bin/true","args":[],"env":{},"build":null,"outputs":[],
            "inputs":{"t":{"source":{"timer":{"interval_ns":0}},"queue_size":1}},
            "restart":{"policy":"never","max_restarts":null,"restart_delay_ms":500},
            "deploy":{"machine":null,"labels":{},"distribute":"local","working_dir":null}}"#;
        let start = format!(
            r#"{{"type":"start","descriptor":{{"nodes":[{node}]}},"name":"x\u0000y","base_dir":"/","dry_run":false}}"#
        );
        cli.send(WsMessage::Text(start.into())).await.unwrap();
        let Some(Ok(WsMessage::Text(reply))) = cli.next().await else { panic!("no reply") };
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["code"], "bad_request", "{reply}");
        let message = reply["message"].as_str().unwrap_or("");
        for expected in ["node id \"a*\" is not valid", "zero interval", "dataflow name"] {
            assert!(message.contains(expected), "{expected}: {message}");
        }
    }

    #[test]
    fn store_option_parses() {
        let default = std::path::Path::new("/d/c.redb");
        assert_eq!(StoreConfig::parse("memory", default), Ok(StoreConfig::Memory));
        assert_eq!(StoreConfig::parse("redb", default), Ok(StoreConfig::Redb(default.into())));
        assert_eq!(StoreConfig::parse("redb:/x.redb", default), Ok(StoreConfig::Redb("/x.redb".into())));
        assert!(StoreConfig::parse("sqlite", default).unwrap_err().contains("use `memory`, `redb` or `redb:PATH`"));
    }

    #[tokio::test]
    async fn a_daemon_with_another_protocol_gets_protocol_mismatch() {
        let addr = &start().await;
        let reply = first_reply(
            addr,
            "/api/daemon",
            r#"{"type":"register","protocol":999,"version":"9.9","machine_id":null,"labels":{}}"#,
        )
        .await;
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], "protocol_mismatch");
        let reply = first_reply(addr, "/api/control", r#"{"type":"hello","protocol":999}"#).await;
        assert_eq!(reply["code"], "protocol_mismatch");
        let reply = first_reply(addr, "/api/daemon", r#"{"type":"something_new"}"#).await;
        assert_eq!(reply["code"], "protocol_mismatch");
    }

    #[tokio::test]
    async fn registered_daemons_appear_in_status() {
        let dial = start().await;
        let mut daemon = websocket(&dial, "/api/daemon").await.unwrap();
        let register = format!(
            r#"{{"type":"register","protocol":{COORD_PROTOCOL_VERSION},"version":"0.1.0","machine_id":"b","labels":{{"gpu":"true"}}}}"#
        );
        daemon.send(WsMessage::Text(register.into())).await.unwrap();
        let Some(Ok(WsMessage::Text(reply))) = daemon.next().await else { panic!("no reply") };
        assert!(reply.contains("registered"), "{reply}");
        let mut cli = websocket(&dial, "/api/control").await.unwrap();
        cli.send(WsMessage::Text(format!(r#"{{"type":"hello","protocol":{COORD_PROTOCOL_VERSION}}}"#).into()))
            .await
            .unwrap();
        let _ = cli.next().await;
        cli.send(WsMessage::Text(r#"{"type":"status"}"#.into())).await.unwrap();
        let Some(Ok(WsMessage::Text(status))) = cli.next().await else { panic!("no status") };
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["daemons"][0]["machine_id"], "b");
        assert_eq!(status["daemons"][0]["labels"]["gpu"], "true");
        assert_eq!(status["transport"], "tls");
        assert!(status["ca_fingerprint"].as_str().is_some_and(|f| f.starts_with("sha256:")), "{status}");
    }

    #[tokio::test]
    async fn control_and_daemon_routes_refuse_a_missing_or_wrong_credential_health_is_open() {
        let admin = start().await;
        for path in ["/api/control", "/api/daemon"] {
            let anonymous = Dial { bearer: None, ..admin.clone() };
            let err = websocket(&anonymous, path).await.err().expect("refused");
            assert!(
                matches!(&err, DialError::Status { status: 401, message, .. } if message.contains("no credential")),
                "{path}: {err}"
            );
            let wrong = Dial { bearer: Some(rill_auth::Secret::generate().unwrap().expose()), ..admin.clone() };
            let err = websocket(&wrong, path).await.err().expect("refused");
            assert_eq!(err.status(), Some(401), "{path}: {err}");
        }
        // Health needs no credential (a plain HTTPS GET over the same TLS).
        let health = websocket(&Dial { bearer: None, ..admin.clone() }, "/api/health").await.err();
        assert_eq!(health.as_ref().and_then(DialError::status), Some(200), "{health:?}");
    }

    #[tokio::test]
    async fn a_plaintext_client_is_told_why_and_a_wrong_pin_fails_before_any_secret() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let admin = start().await;
        let mut tcp = tokio::net::TcpStream::connect(&admin.addr).await.unwrap();
        tcp.write_all(b"GET /api/health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("HTTPS and WSS only"), "{answer}");
        let other = rill_auth::ClusterCa::generate().unwrap().fingerprint();
        let pinned_elsewhere = Dial { tls: Some(rill_auth::tls::client_config(other, None).unwrap()), ..admin };
        let err = websocket(&pinned_elsewhere, "/api/control").await.err().expect("refused");
        assert!(
            matches!(&err, DialError::Tls { reason, .. } if reason.contains("not from the pinned cluster CA")),
            "{err}"
        );
    }
}

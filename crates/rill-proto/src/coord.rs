//! Messages between the CLI, the coordinator and the daemons: JSON text
//! frames over WebSocket. Every connection opens with a hello that carries
//! [`COORD_PROTOCOL_VERSION`]; a peer with another version gets
//! [`ErrorCode::ProtocolMismatch`] and is closed.

use std::collections::BTreeMap;

use rill_core::Dataflow;
use serde::{Deserialize, Serialize};

/// Version of the coordinator protocol (CLI and daemons). 2: heartbeats and
/// probes both ways, `shutting_down`, lost nodes and degraded dataflows.
/// 3: `finish_recorded`. 4: TLS and credentials, join tokens, enrollment.
/// 5: shipped node binaries (`deploy.artifact`, `artifact_dir`).
pub const COORD_PROTOCOL_VERSION: u32 = 5;
/// Default coordinator port (HTTP and WebSocket).
pub const DEFAULT_PORT: u16 = 6013;
/// How often daemons and the coordinator send each other a heartbeat, by
/// default (`RILL_HEARTBEAT_MS` overrides it on both sides).
pub const HEARTBEAT_INTERVAL_MS: u64 = 1000;
/// A peer that sent nothing for this many heartbeats is gone.
pub const SILENT_HEARTBEATS: u32 = 3;
/// Longest line of node output sent to the coordinator; daemons cut longer
/// ones and the coordinator cuts what a peer sends beyond it.
pub const MAX_LOG_LINE: usize = 64 * 1024;
/// Largest message the coordinator reads from a daemon (a log line at
/// [`MAX_LOG_LINE`] with room to spare); a bigger one ends the connection.
pub const MAX_DAEMON_MESSAGE: usize = 1024 * 1024;
/// Environment variable that sets the heartbeat interval in milliseconds.
pub const HEARTBEAT_ENV: &str = "RILL_HEARTBEAT_MS";

/// The heartbeat interval: `RILL_HEARTBEAT_MS` (at least 10) or the default.
pub fn heartbeat_interval() -> std::time::Duration {
    let ms = std::env::var(HEARTBEAT_ENV).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(HEARTBEAT_INTERVAL_MS);
    std::time::Duration::from_millis(ms.max(10))
}

/// Machine-readable error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    ProtocolMismatch,
    BadRequest,
    /// Another live daemon (it answered a probe) holds this machine id.
    AlreadyConnected,
    NotFound,
    Placement,
    NameInUse,
    Internal,
    /// The credential was missing or wrong.
    Unauthorized,
    /// The coordinator's certificate is not from the pinned cluster CA.
    Untrusted,
    /// The join token was revoked (`rill token revoke`).
    Revoked,
    /// The join token's `--ttl` has passed.
    Expired,
    /// The join token is bound to another machine's key.
    AlreadyBound,
}

impl ErrorCode {
    /// The code from its wire name (`already_bound`), as a refusal's
    /// `x-rill-error` header carries it.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }

    /// The wire name.
    pub fn name(&self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// Daemon -> coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DaemonMessage {
    /// First message on every connection (also after a reconnect).
    Register {
        protocol: u32,
        version: String,
        machine_id: Option<String>,
        labels: BTreeMap<String, String>,
        /// Where this daemon's data session listens (`tcp/IP:PORT`).
        #[serde(default)]
        zenoh_endpoint: Option<String>,
        /// Dataflows (uuids) it runs nodes of, or whose end it has not
        /// reported yet: after a reconnect, the coordinator knows they are
        /// its (and does not start them again).
        #[serde(default)]
        running: Vec<String>,
        /// With a join token: the key to enroll (an uncompressed P-256
        /// point, hex), for which the coordinator signs a certificate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enroll_key: Option<String>,
        /// With `enroll_key`: its signature over the token's name, the
        /// machine id and the CA fingerprint (hex), proving the daemon holds it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enroll_proof: Option<String>,
        /// `os/arch` (`linux/x86_64`).
        #[serde(default)]
        platform: String,
        /// The public key of this daemon process's data-plane links (hex,
        /// like `enroll_key`): the coordinator signs a certificate for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_key: Option<String>,
        /// Where it keeps shipped node binaries (an absolute path on its
        /// machine): `rill start` pushes `distribute: scp` binaries there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        artifact_dir: Option<String>,
    },
    Heartbeat,
    /// The answer to [`CoordinatorMessage::Ping`].
    Pong {
        nonce: u64,
    },
    /// The daemon is shutting down (SIGTERM): its nodes are being stopped,
    /// and its shares are lost, not finished.
    ShuttingDown,
    /// This daemon's share is wired: its nodes run, its edges to other
    /// machines are connected. They start at `Go`.
    DataflowReady {
        uuid: String,
    },
    /// A line a node printed.
    Log(LogLine),
    /// A node of a dataflow started, is restarting, or ended.
    NodeStatus {
        uuid: String,
        node: String,
        status: NodeStatus,
    },
    /// A node's message counters (cumulative over its restarts), at most
    /// about once a second while they change.
    Counts {
        uuid: String,
        node: String,
        counts: NodeCounts,
    },
    /// Messages this daemon's bridge dropped for consumers on its machine
    /// (consumer -> input -> count, cumulative), when they change.
    BridgeDrops {
        uuid: String,
        drops: BTreeMap<String, BTreeMap<String, u64>>,
    },
    /// A running node's CPU and memory, about once a second.
    Usage {
        uuid: String,
        node: String,
        usage: NodeUsage,
    },
    /// A dataflow's nodes on this daemon all ended.
    DataflowFinished {
        uuid: String,
        success: bool,
        summary: String,
    },
}

/// What a daemon needs to run its share of a dataflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpawnDataflow {
    pub uuid: String,
    pub name: String,
    pub descriptor: Dataflow,
    /// Directory of the dataflow file where `rill start` ran: relative node
    /// paths, build commands and `deploy.working_dir` start there.
    pub base_dir: String,
    /// The nodes this daemon runs.
    pub nodes: Vec<String>,
}

/// Coordinator -> daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoordinatorMessage {
    /// `peers`: data endpoints of the other connected daemons.
    Registered {
        daemon_id: String,
        #[serde(default)]
        peers: Vec<String>,
        /// The certificate (PEM) the coordinator signed for the key this
        /// daemon enrolled with its join token; it connects with it from
        /// now on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<String>,
        /// The data-plane certificate (PEM) for `data_key`, and the cluster
        /// CA (PEM) that peers' certificates must chain to. `None` with
        /// `--insecure-plaintext`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_tls: Option<DataTls>,
    },
    Spawn(SpawnDataflow),
    StopDataflow {
        uuid: String,
    },
    /// Every daemon of the dataflow is ready: start the nodes.
    Go {
        uuid: String,
    },
    /// The coordinator is alive (sent every heartbeat interval).
    Heartbeat,
    /// Answer with [`DaemonMessage::Pong`]: is this connection still alive?
    Ping {
        nonce: u64,
    },
    /// The daemon's `dataflow_finished` for `uuid` was received. Until
    /// then the daemon counts the share as its own and reports its end
    /// again after a reconnect: a report written into a connection that
    /// died may never have arrived.
    FinishRecorded {
        uuid: String,
    },
    /// A permanent rejection: the daemon must not retry.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Copy what these outputs send (those of nodes placed here) into
    /// binary tap frames ([`crate::tap`]); a sample's output is its index
    /// in `outputs`. `preview`: payload bytes per sample.
    Tap {
        uuid: String,
        tap: u64,
        outputs: Vec<TapOutput>,
        preview: u64,
        /// The producer sends the tap at most one message of an output
        /// per this many µs (0: every message).
        every_us: u64,
    },
    /// The tap's client is gone: unwire it.
    Untap {
        uuid: String,
        tap: u64,
    },
}

/// An output a tap reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapOutput {
    pub node: String,
    pub output: String,
    /// Where its producer runs (machine id, else daemon id).
    #[serde(default)]
    pub machine: String,
}

/// CLI -> coordinator: one request per message, answered in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlRequest {
    Hello {
        protocol: u32,
    },
    Status,
    /// Place and start a dataflow (or only show the plan).
    Start {
        descriptor: Dataflow,
        name: Option<String>,
        base_dir: String,
        dry_run: bool,
        /// Milliseconds to wait for daemons its nodes can be placed on
        /// (`rill start --wait-for-daemons`); without it a node that cannot
        /// be placed fails the start at once.
        #[serde(default)]
        wait_ms: Option<u64>,
    },
    List,
    /// The outputs of a dataflow (name or uuid), who consumes them, and
    /// what they carried.
    Topics {
        dataflow: String,
    },
    /// Stop by name or uuid.
    Stop {
        dataflow: String,
    },
    /// Stop, then start again from the stored descriptor.
    Restart {
        dataflow: String,
    },
    /// The kept lines of a dataflow (optionally one node); with `follow`,
    /// then every new one until the connection closes.
    Logs {
        dataflow: String,
        node: Option<String>,
        follow: bool,
    },
    /// Mint a join token (`ttl_ms: None`: it never expires; `labels`: the
    /// only labels its daemon may claim).
    TokenCreate {
        name: String,
        ttl_ms: Option<u64>,
        labels: Option<BTreeMap<String, String>>,
    },
    TokenList,
    /// Revoke a token (idempotent) and disconnect its daemon.
    TokenRevoke {
        name: String,
    },
    /// Stream what `outputs` (`node/output`; none: every output) of a
    /// running dataflow send, `preview` payload bytes each, as binary tap
    /// frames after [`ControlResponse::Tapped`], until this connection
    /// closes (or the dataflow ends: [`ControlResponse::TapEnd`]).
    Tap {
        dataflow: String,
        outputs: Vec<String>,
        preview: u64,
        /// At most one message of an output per this many µs (0: every
        /// one; [`crate::tap::TAP_EVERY_US`] for a person to read).
        every_us: u64,
    },
}

/// What a daemon's data-plane links (Zenoh, mutual TLS) need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataTls {
    pub certificate: String,
    pub ca: String,
}

/// Where a join token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    Unused,
    Enrolled,
    Expired,
    Revoked,
}

/// A join token as `rill token list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub state: TokenState,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub labels: Option<BTreeMap<String, String>>,
    /// The machine it enrolled, and its key's fingerprint.
    pub machine_id: Option<String>,
    pub key_fingerprint: Option<String>,
}

/// One line of node output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub uuid: String,
    pub node: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

/// Where one node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlacement {
    pub node: String,
    pub daemon_id: String,
    pub machine_id: Option<String>,
}

/// Lifecycle of a dataflow, as the coordinator records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataflowStatus {
    /// Started with `--wait-for-daemons`, some node has no daemon to run on
    /// yet: it starts when matching daemons join, or fails at the deadline.
    Pending,
    Running,
    /// Running, but some nodes are lost (their daemon shut down or went
    /// silent); back to `Running` when they run again.
    Degraded,
    Stopping,
    Finished,
    Failed,
    Stopped,
}

/// Where a node is, as its daemon reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeStatus {
    Running {
        pid: u32,
    },
    Restarting,
    Finished,
    Failed {
        reason: String,
    },
    /// Its daemon shut down or is unreachable.
    Lost {
        reason: String,
    },
}

impl NodeStatus {
    /// The state's name, as it is serialized (`running`, `lost`, ...).
    pub fn state(&self) -> &'static str {
        match self {
            NodeStatus::Running { .. } => "running",
            NodeStatus::Restarting => "restarting",
            NodeStatus::Finished => "finished",
            NodeStatus::Failed { .. } => "failed",
            NodeStatus::Lost { .. } => "lost",
        }
    }
}

impl DataflowStatus {
    /// Not over yet: some of its nodes run or may run again.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DataflowStatus::Pending | DataflowStatus::Running | DataflowStatus::Degraded | DataflowStatus::Stopping
        )
    }
}

/// One dataflow in `rill list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataflowSummary {
    pub uuid: String,
    pub name: String,
    pub status: DataflowStatus,
    pub placement: Vec<NodePlacement>,
    /// Why it failed, if it did.
    pub reason: Option<String>,
    /// Node id -> its last reported status.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeStatus>,
    /// A pending dataflow: what each unplaced node waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    /// Node id -> messages in and out, drops and rates, as last reported
    /// (nodes that reported nothing yet are missing).
    #[serde(default)]
    pub traffic: BTreeMap<String, NodeTraffic>,
    /// Node id -> CPU and memory of its running process (fresh samples only).
    #[serde(default)]
    pub usage: BTreeMap<String, NodeUsage>,
    /// Node id -> times it was restarted (nodes never restarted are missing).
    #[serde(default)]
    pub restarts: BTreeMap<String, u32>,
}

/// A node's message counters as its daemon reports them: since the
/// dataflow started, over every run of the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    #[serde(default)]
    pub inputs: BTreeMap<String, InputCounts>,
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputCounts>,
    /// What this node, as a producer, dropped for consumers that did not
    /// keep up: consumer -> input -> messages.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backlog_drops: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputCounts {
    /// Messages handed to the node's code.
    pub received: u64,
    /// Messages dropped (drop-oldest) before the node read them.
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputCounts {
    pub messages: u64,
    pub bytes: u64,
}

impl NodeCounts {
    /// The counters a node process reported.
    pub fn from_wire(counts: &crate::Counts) -> Self {
        let mut out = Self::default();
        for c in &counts.inputs {
            out.inputs.insert(c.input.clone(), InputCounts { received: c.received, dropped: c.dropped });
        }
        for c in &counts.outputs {
            out.outputs.insert(c.output.clone(), OutputCounts { messages: c.messages, bytes: c.bytes });
        }
        for c in &counts.backlog_drops {
            let n = out.backlog_drops.entry(c.consumer.clone()).or_default().entry(c.input.clone()).or_default();
            *n = n.saturating_add(c.dropped);
        }
        out
    }

    /// Adds `other` (another run of the node, or drops counted elsewhere).
    pub fn add(&mut self, other: &NodeCounts) {
        for (input, c) in &other.inputs {
            let mine = self.inputs.entry(input.clone()).or_default();
            mine.received = mine.received.saturating_add(c.received);
            mine.dropped = mine.dropped.saturating_add(c.dropped);
        }
        for (output, c) in &other.outputs {
            let mine = self.outputs.entry(output.clone()).or_default();
            mine.messages = mine.messages.saturating_add(c.messages);
            mine.bytes = mine.bytes.saturating_add(c.bytes);
        }
        for (consumer, inputs) in &other.backlog_drops {
            for (input, n) in inputs {
                let mine = self.backlog_drops.entry(consumer.clone()).or_default().entry(input.clone()).or_default();
                *mine = mine.saturating_add(*n);
            }
        }
    }

    /// Messages handed to the node's code, on all inputs.
    pub fn received(&self) -> u64 {
        self.inputs.values().fold(0, |sum, c| sum.saturating_add(c.received))
    }

    /// Messages sent, on all outputs.
    pub fn sent(&self) -> u64 {
        self.outputs.values().fold(0, |sum, c| sum.saturating_add(c.messages))
    }
}

/// What a running node process uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    pub pid: u32,
    /// Percent of one core over the last second.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

/// One node's traffic in `rill list`: its inputs' drops include what
/// producers dropped for it (counted at the producer), and totals and rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeTraffic {
    pub received: u64,
    pub dropped: u64,
    pub sent: u64,
    pub bytes_sent: u64,
    /// Messages per second over the last report interval (0 when idle).
    pub msgs_in_per_s: f64,
    pub msgs_out_per_s: f64,
    pub inputs: BTreeMap<String, InputCounts>,
    pub outputs: BTreeMap<String, OutputCounts>,
}

/// Every node's traffic from its counts and rates (`node -> (in/s, out/s)`):
/// a message a producer dropped for a consumer's input counts as dropped
/// on that input, also for a consumer that reported nothing yet (a stuck
/// one). The caller checks that the names exist.
pub fn traffic<'a>(
    counts: &'a BTreeMap<String, NodeCounts>,
    bridge_drops: impl IntoIterator<Item = &'a BTreeMap<String, BTreeMap<String, u64>>>,
    rates: &BTreeMap<String, (f64, f64)>,
) -> BTreeMap<String, NodeTraffic> {
    let mut out: BTreeMap<String, NodeTraffic> = counts
        .iter()
        .map(|(node, c)| {
            let (msgs_in_per_s, msgs_out_per_s) = rates.get(node).copied().unwrap_or_default();
            let traffic = NodeTraffic {
                inputs: c.inputs.clone(),
                outputs: c.outputs.clone(),
                msgs_in_per_s,
                msgs_out_per_s,
                ..NodeTraffic::default()
            };
            (node.clone(), traffic)
        })
        .collect();
    let producers = counts.values().map(|c| &c.backlog_drops);
    for drops in producers.chain(bridge_drops) {
        for (consumer, inputs) in drops {
            let traffic = out.entry(consumer.clone()).or_default();
            for (input, n) in inputs {
                let mine = traffic.inputs.entry(input.clone()).or_default();
                mine.dropped = mine.dropped.saturating_add(*n);
            }
        }
    }
    for traffic in out.values_mut() {
        traffic.received = traffic.inputs.values().fold(0, |sum, c| sum.saturating_add(c.received));
        traffic.dropped = traffic.inputs.values().fold(0, |sum, c| sum.saturating_add(c.dropped));
        traffic.sent = traffic.outputs.values().fold(0, |sum, c| sum.saturating_add(c.messages));
        traffic.bytes_sent = traffic.outputs.values().fold(0, |sum, c| sum.saturating_add(c.bytes));
    }
    out
}

/// One output of a dataflow (`NODE/OUTPUT`), as `rill topic` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    /// `node/output`.
    pub name: String,
    pub node: String,
    pub output: String,
    /// Where its producer runs (machine id, else daemon id).
    pub machine: String,
    /// `node/input (queue N)` of each consumer.
    pub consumers: Vec<TopicConsumer>,
    /// Messages and bytes sent on it so far (as last reported).
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConsumer {
    pub node: String,
    pub input: String,
    pub queue_size: usize,
    pub machine: String,
    /// What this input received and dropped so far (from any producer).
    pub received: u64,
    pub dropped: u64,
}

/// One node in `rill top`: where it runs, what it uses, what flows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopRow {
    pub node: String,
    /// Its machine id, else its daemon's id.
    pub machine: String,
    pub state: String,
    pub pid: Option<u32>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub restarts: u32,
    pub msgs_in_per_s: f64,
    pub msgs_out_per_s: f64,
    pub received: u64,
    pub sent: u64,
    pub dropped: u64,
}

impl DataflowSummary {
    /// Its nodes as `rill top` shows them, in placement order.
    pub fn top_rows(&self) -> Vec<TopRow> {
        self.placement
            .iter()
            .map(|p| {
                let status = self.nodes.get(&p.node);
                let state = status.map_or("starting", NodeStatus::state).to_owned();
                let pid = match status {
                    Some(NodeStatus::Running { pid }) => Some(*pid),
                    _ => None,
                };
                let usage = self.usage.get(&p.node);
                let traffic = self.traffic.get(&p.node).cloned().unwrap_or_default();
                TopRow {
                    node: p.node.clone(),
                    machine: p.machine_id.clone().unwrap_or_else(|| p.daemon_id.clone()),
                    state,
                    pid,
                    cpu_percent: usage.map(|u| u.cpu_percent),
                    rss_bytes: usage.map(|u| u.rss_bytes),
                    restarts: self.restarts.get(&p.node).copied().unwrap_or(0),
                    msgs_in_per_s: traffic.msgs_in_per_s,
                    msgs_out_per_s: traffic.msgs_out_per_s,
                    received: traffic.received,
                    sent: traffic.sent,
                    dropped: traffic.dropped,
                }
            })
            .collect()
    }
}

/// A connected daemon, as `rill status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon_id: String,
    pub machine_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    /// `os/arch` (`linux/x86_64`).
    #[serde(default)]
    pub platform: String,
    /// Milliseconds since its last heartbeat.
    pub last_heartbeat_ms: u64,
    /// Where it keeps shipped node binaries, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_dir: Option<String>,
}

/// Coordinator -> CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlResponse {
    Hello {
        version: String,
    },
    Status {
        version: String,
        uptime_ms: u64,
        /// The cluster CA's fingerprint (`sha256:…`), what clients pin.
        #[serde(default)]
        ca_fingerprint: String,
        /// `tls`, or `plaintext` (`--insecure-plaintext`).
        #[serde(default)]
        transport: String,
        daemons: Vec<DaemonStatus>,
        dataflows: Vec<DataflowSummary>,
    },
    /// The plan of a dry run.
    Plan {
        placement: Vec<NodePlacement>,
    },
    Started {
        uuid: String,
        name: String,
        placement: Vec<NodePlacement>,
    },
    /// Started with a wait, and some node has no daemon yet.
    Pending {
        uuid: String,
        name: String,
        /// What each unplaced node waits for.
        waiting: Vec<String>,
        /// Milliseconds until it fails if still unplaced.
        wait_ms: u64,
    },
    List {
        dataflows: Vec<DataflowSummary>,
    },
    Topics {
        uuid: String,
        name: String,
        topics: Vec<Topic>,
    },
    Stopped {
        uuid: String,
        name: String,
    },
    Restarted {
        old_uuid: String,
        new_uuid: String,
        name: String,
        placement: Vec<NodePlacement>,
    },
    Log(LogLine),
    /// No more lines (the end of the kept lines, without `follow`).
    LogEnd,
    /// The tap is wired; binary frames follow. A sample's output is its
    /// index in `outputs`.
    Tapped {
        uuid: String,
        name: String,
        tap: u64,
        outputs: Vec<TapOutput>,
    },
    /// No more frames: the dataflow ended.
    TapEnd {
        reason: String,
    },
    /// The join token, shown this once.
    TokenCreated {
        token: String,
        info: TokenInfo,
    },
    Tokens {
        tokens: Vec<TokenInfo>,
    },
    /// `changed: false`: it was revoked already. `disconnected`: the
    /// daemon that was connected with it.
    TokenRevoked {
        name: String,
        changed: bool,
        disconnected: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// `GET /api/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub version: String,
    pub protocol: u32,
    pub uptime_ms: u64,
    pub daemons_connected: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_state_name_is_its_serialized_tag() {
        for status in [
            NodeStatus::Running { pid: 1 },
            NodeStatus::Restarting,
            NodeStatus::Finished,
            NodeStatus::Failed { reason: "x".into() },
            NodeStatus::Lost { reason: "y".into() },
        ] {
            assert_eq!(serde_json::to_value(&status).unwrap()["state"], status.state());
        }
    }

    #[test]
    fn a_producers_backlog_drops_count_on_the_consumers_input_and_totals_add_up() {
        let mut counts = BTreeMap::new();
        let mut source = NodeCounts::default();
        source.outputs.insert("out".into(), OutputCounts { messages: 100, bytes: 6400 });
        source.backlog_drops.entry("sink".into()).or_default().insert("in".into(), 30);
        // A consumer stuck before its first report still shows the drops.
        source.backlog_drops.entry("stuck".into()).or_default().insert("in".into(), 5);
        let mut sink = NodeCounts::default();
        sink.inputs.insert("in".into(), InputCounts { received: 60, dropped: 10 });
        sink.inputs.insert("tick".into(), InputCounts { received: 3, dropped: 1 });
        // A restarted run adds up.
        let mut before = NodeCounts::default();
        before.inputs.insert("in".into(), InputCounts { received: 20, dropped: 4 });
        sink.add(&before);
        counts.insert("source".to_owned(), source);
        counts.insert("sink".to_owned(), sink);
        let rates = BTreeMap::from([("sink".to_owned(), (12.0, 0.0))]);
        // What a daemon's bridge dropped for the sink adds up the same way.
        let bridge = BTreeMap::from([("sink".to_owned(), BTreeMap::from([("in".to_owned(), 6)]))]);
        let traffic = traffic(&counts, [&bridge], &rates);
        let sink = &traffic["sink"];
        assert_eq!(sink.inputs["in"], InputCounts { received: 80, dropped: 50 });
        assert_eq!((sink.received, sink.dropped, sink.sent), (83, 51, 0));
        assert_eq!(sink.msgs_in_per_s, 12.0);
        let source = &traffic["source"];
        assert_eq!((source.sent, source.bytes_sent, source.received, source.dropped), (100, 6400, 0, 0));
        assert_eq!(traffic["stuck"].inputs["in"], InputCounts { received: 0, dropped: 5 });
        assert_eq!(traffic["stuck"].dropped, 5);
    }

    #[test]
    fn messages_have_a_stable_tagged_json_shape() {
        let msg = DaemonMessage::Register {
            protocol: 1,
            version: "0.1.0".into(),
            machine_id: Some("a".into()),
            labels: [("gpu".to_owned(), "true".to_owned())].into(),
            zenoh_endpoint: None,
            running: vec![],
            enroll_key: None,
            enroll_proof: None,
            platform: "linux/x86_64".into(),
            data_key: None,
            artifact_dir: None,
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            r#"{"type":"register","protocol":1,"version":"0.1.0","machine_id":"a","labels":{"gpu":"true"},"zenoh_endpoint":null,"running":[],"platform":"linux/x86_64"}"#
        );
        let back: DaemonMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, msg);
        let err = CoordinatorMessage::Error { code: ErrorCode::ProtocolMismatch, message: "x".into() };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"error","code":"protocol_mismatch","message":"x"}"#
        );
    }
}

//! The validated dataflow descriptor that the rest of rill works with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::{serde_millis, serde_nanos};

/// Queue length of an input when `queue_size` is not given.
pub const DEFAULT_QUEUE_SIZE: usize = 10;

/// The longest pause between restarts when `max_restart_delay` is not given.
pub const DEFAULT_MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// Pause before a node is restarted when `restart_delay` is not given.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(500);

/// A validated dataflow: every reference between nodes resolves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataflow {
    /// The nodes in file order.
    pub nodes: Vec<NodeSpec>,
}

/// One node of a dataflow: what to run, what it consumes and produces, where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Unique id within the dataflow.
    pub id: String,
    /// Executable: relative to the dataflow file's directory, absolute, or a bare command name.
    pub path: String,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Shell command run before the node starts.
    pub build: Option<String>,
    /// Input id -> where its messages come from.
    pub inputs: BTreeMap<String, InputSpec>,
    /// Output ids this node may send on.
    pub outputs: Vec<String>,
    /// What to do when the node exits.
    pub restart: RestartSpec,
    /// Placement and binary distribution.
    pub deploy: Deploy,
    /// CPU cores the node is pinned to (none: not pinned).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_affinity: Vec<u32>,
    /// Where the node's source comes from: cloned before its build, and
    /// its working directory (none: the dataflow file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// The module nodes it was expanded from, outermost first (their ids);
    /// empty for a node written in the dataflow file itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// What the node prints, as outputs (`send_stdout_as`, `send_logs_as`)
    /// and filtered (`min_log_level`).
    #[serde(default, skip_serializing_if = "Printed::is_default")]
    pub printed: Printed,
}

/// A node's source in a git repository, at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    /// A URL, or a path (relative to the dataflow file's directory).
    pub repo: String,
    pub rev: GitRev,
}

/// Which revision of a [`GitSource`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitRev {
    /// The branch's newest commit, looked up at every build.
    Branch(String),
    /// The commit the tag names.
    Tag(String),
    /// A commit id (4 to 40 hex digits).
    Rev(String),
}

impl GitRev {
    /// `branch main`, `tag v1.2`, `rev 3f2a9c1`.
    pub fn describe(&self) -> String {
        match self {
            GitRev::Branch(name) => format!("branch {name}"),
            GitRev::Tag(name) => format!("tag {name}"),
            GitRev::Rev(id) => format!("rev {id}"),
        }
    }

    /// Why `text` cannot be a branch or tag name (what git itself refuses,
    /// and anything git could read as an option), or a commit id for `rev`.
    pub fn problem(&self) -> Option<String> {
        match self {
            GitRev::Branch(name) | GitRev::Tag(name) => {
                let bad = name.is_empty()
                    || name.starts_with(['-', '/', '.'])
                    || name.ends_with(['/', '.'])
                    || name.ends_with(".lock")
                    || name.contains("..")
                    || name.contains("@{")
                    || name.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
                bad.then(|| format!("`{name}` is not a valid git branch or tag name"))
            }
            GitRev::Rev(id) => (!(4..=40).contains(&id.len()) || !id.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| format!("`{id}` is not a commit id: 4 to 40 hex digits")),
        }
    }
}

/// Why `repo` cannot be given to git: empty, an option, a control
/// character, or a transport that runs commands (`ext::`, `fd::`).
pub fn git_repo_problem(repo: &str) -> Option<String> {
    let bad = repo.trim().is_empty()
        || repo.starts_with('-')
        || repo.chars().any(char::is_control)
        || repo.starts_with("ext::")
        || repo.starts_with("fd::");
    bad.then(|| {
        format!("`{repo}` is not a repository rill will clone: a URL (https://, ssh://, git://, file://) or a path")
    })
}

/// What happens to the lines a node prints besides `rill logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Printed {
    /// Output on which every line (stdout and stderr) is also sent, as UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_as: Option<String>,
    /// Output on which log records (JSON lines) are sent, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_as: Option<String>,
    /// Log records below this level are dropped, from `rill logs` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_log_level: Option<LogLevel>,
}

impl Printed {
    fn is_default(&self) -> bool {
        *self == Printed::default()
    }

    /// The outputs the daemon sends on for the node (not the node itself).
    pub fn outputs(&self) -> impl Iterator<Item = &str> {
        self.stdout_as.iter().chain(&self.logs_as).map(String::as_str)
    }
}

/// How much a log line matters, most to least. A line that is not a log
/// record (a plain print) counts as `Stdout`, the least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    Stdout,
}

impl LogLevel {
    /// Every level, most important first.
    pub const ALL: [LogLevel; 6] =
        [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug, LogLevel::Trace, LogLevel::Stdout];

    /// The level's name as written in files and records.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
            LogLevel::Stdout => "stdout",
        }
    }

    /// A level as loggers write it, in any case (`WARN`, `warning`, `Info`).
    pub fn parse(text: &str) -> Option<LogLevel> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "warning" => Some(LogLevel::Warn),
            "err" => Some(LogLevel::Error),
            _ => LogLevel::ALL.into_iter().find(|level| level.name() == lower),
        }
    }
}

/// One input of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Where messages come from.
    pub source: InputSource,
    /// Messages kept before the oldest is dropped; at least 1.
    pub queue_size: usize,
}

/// The origin of an input's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSource {
    /// An output of a node (`node-id/output-id`).
    Node {
        /// Id of the sending node.
        node: String,
        /// Id of the output on that node.
        output: String,
    },
    /// A built-in timer (`rill/timer/...`).
    Timer {
        /// Time between ticks. Stored in nanoseconds because `hz` timers are not whole milliseconds.
        #[serde(rename = "interval_ns", with = "serde_nanos")]
        interval: Duration,
    },
}

/// Restart behaviour of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartSpec {
    /// When to restart.
    pub policy: RestartPolicy,
    /// Give up after this many restarts; `None` means no limit.
    pub max_restarts: Option<u32>,
    /// Pause before the first restart, doubled for each further one.
    #[serde(rename = "restart_delay_ms", with = "serde_millis")]
    pub restart_delay: Duration,
    /// The longest pause between restarts (the doubling stops there).
    #[serde(rename = "max_restart_delay_ms", with = "serde_millis", default = "default_max_restart_delay")]
    pub max_restart_delay: Duration,
}

fn default_max_restart_delay() -> Duration {
    DEFAULT_MAX_RESTART_DELAY
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::default(),
            max_restarts: None,
            restart_delay: DEFAULT_RESTART_DELAY,
            max_restart_delay: DEFAULT_MAX_RESTART_DELAY,
        }
    }
}

/// When a node that exited is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    Never,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Restart after every exit.
    Always,
}

/// Where a node runs and how its binary gets there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    /// Machine id from `cluster.yml`; takes priority over `labels`.
    pub machine: Option<String>,
    /// Labels the chosen daemon must all have.
    pub labels: BTreeMap<String, String>,
    /// How the node's binary reaches that machine.
    pub distribute: Distribute,
    /// Working directory on the target machine.
    pub working_dir: Option<PathBuf>,
    /// With `scp` or `http`: the binary `rill start` built and shipped.
    /// Never from the file; the CLI sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
}

/// A node binary built by `rill start` and shipped to the daemons
/// (`distribute: scp|http`): daemons run it only if its SHA-256 matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// The build it belongs to (`http`: its directory on the coordinator).
    pub build_id: String,
    /// Lowercase hex SHA-256 of the binary.
    pub sha256: String,
    pub size: u64,
}

/// Largest node binary that may be shipped (`distribute: scp|http`).
pub const MAX_ARTIFACT_SIZE: u64 = 1 << 30;

/// Why `id` cannot name an artifact file or directory (a build id, a node
/// id in `/api/artifacts/{build_id}/{node_id}`): anything that could leave
/// its directory (`..`, `/`, `\`, NUL, an absolute path) is refused.
pub fn artifact_id_problem(id: &str) -> Option<String> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    (!valid).then(|| {
        format!("{id:?} is not a valid artifact id: 1 to 128 letters, digits, '_', '-' or '.', not `.` or `..`")
    })
}

/// Whether `text` is a SHA-256 in lowercase hex.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How a node's binary is delivered to a remote daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribute {
    /// The daemon builds or finds the binary itself.
    #[default]
    Local,
    /// The CLI copies the binary over SSH before start.
    Scp,
    /// The daemon downloads the binary from the coordinator.
    Http,
}

impl Dataflow {
    /// The node with this id, if any.
    pub fn node(&self, id: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|node| node.id == id)
    }
}

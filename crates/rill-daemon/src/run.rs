//! `rill run`: one dataflow on this machine. The runner owns the router
//! thread and the [`Supervisor`], feeds the supervisor with process exits,
//! stop requests and the clock, and carries out its actions.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rill_core::Dataflow;

use crate::printed::{Printers, producer_id};
use crate::router::Instance;
use crate::router::{Command, RouterHandle, RouterStats};
use crate::routes::Routes;
use crate::spawn::{resolve_program, spawn_node};
use crate::supervisor::{Action, ExitStatus, NodeSummary, Notice, Sig, Supervisor};

/// How long the pipes of a node that ended for good may stay open (held
/// by a process it left behind) before its printed outputs close anyway.
const PRINTED_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Lines of a node's stderr kept for the failure summary.
const STDERR_TAIL: usize = 10;

/// Tunables of a local run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// From `Stop` to SIGTERM.
    pub grace: Duration,
    /// From SIGTERM to SIGKILL.
    pub term_grace: Duration,
    /// Skip the nodes' `build` commands.
    pub skip_build: bool,
    /// Where nodes with a `git` source are cloned (see `git.rs`); `None`:
    /// such nodes cannot run here.
    pub source_cache: Option<PathBuf>,
}

/// This runtime runs part of a dataflow; the rest runs on other machines.
pub struct Share {
    /// The nodes that run here.
    pub local: std::collections::BTreeSet<String>,
    /// Receives the far ends of edges to nodes elsewhere.
    pub remote_ends: Sender<crate::router::Remote>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(2),
            term_grace: Duration::from_secs(2),
            skip_build: false,
            source_cache: None,
        }
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the runner tells its caller as it goes (the CLI prints these).
#[derive(Debug)]
pub enum Report<'a> {
    /// A line a node (or its build command) printed.
    Log {
        node: &'a str,
        stream: Stream,
        line: &'a str,
    },
    Building {
        node: &'a str,
        command: &'a str,
    },
    Spawned {
        node: &'a str,
        pid: u32,
    },
    /// A node ended for good.
    Ended {
        node: &'a str,
        outcome: &'a crate::Outcome,
    },
    Notice(&'a Notice),
    /// The stop sequence began.
    Stopping,
    /// A node's message counters changed (its total over its runs; about
    /// once a second at most).
    Counts {
        node: &'a str,
        counts: &'a rill_proto::coord::NodeCounts,
    },
    /// A running node's CPU (percent of one core over the last second) and
    /// resident memory, once a second.
    Usage {
        node: &'a str,
        pid: u32,
        cpu_percent: f64,
        rss_bytes: u64,
    },
}

/// Receives [`Report`]s; called from several threads.
pub type Reporter = Arc<dyn Fn(Report<'_>) + Send + Sync>;

/// Why a run could not happen at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("build of node `{node}` failed: `{command}` exited with {status}")]
    Build { node: String, command: String, status: ExitStatus },
    #[error("could not run the build command of node `{node}`: {source}")]
    BuildSpawn { node: String, source: std::io::Error },
    #[error("cannot get the source of node `{node}`: {why}")]
    Source { node: String, why: String },
    #[error("could not start the data plane: {0}")]
    Router(std::io::Error),
}

/// How the run went.
#[derive(Debug)]
pub struct RunReport {
    pub nodes: Vec<NodeSummary>,
    /// Last stderr lines of every node that printed any.
    pub stderr_tails: HashMap<String, Vec<String>>,
    pub router: RouterStats,
    /// The run ended because a stop was requested.
    pub stopped: bool,
}

impl RunReport {
    pub fn success(&self) -> bool {
        self.nodes.iter().all(|n| !n.outcome.is_failure())
    }
}

enum RunEvent {
    Exited {
        node: String,
        instance: Instance,
        status: ExitStatus,
    },
    Stop,
    Kill,
    Go,
    /// The daemon is shutting down: its nodes will run again elsewhere or
    /// later, so consumers on other machines are not told their inputs closed.
    Leaving,
    /// For the router (taps).
    Router(Command),
}

/// Asks a running [`Runtime`] to stop (first call) or to kill (`kill`).
#[derive(Clone)]
pub struct StopHandle(Sender<RunEvent>);

impl StopHandle {
    /// Begin the stop sequence; a second call escalates to SIGKILL.
    pub fn stop(&self) {
        let _ = self.0.send(RunEvent::Stop);
    }
    /// SIGKILL every node now.
    pub fn kill(&self) {
        let _ = self.0.send(RunEvent::Kill);
    }
    /// Every machine of a shared dataflow is wired: nodes may start.
    pub fn go(&self) {
        let _ = self.0.send(RunEvent::Go);
    }
    /// The daemon shuts down (then [`StopHandle::stop`]): its nodes are lost,
    /// not ended, for consumers on other machines.
    pub fn leaving(&self) {
        let _ = self.0.send(RunEvent::Leaving);
    }
    /// Wires tap `tap` to `node`'s `outputs` (see `tap.rs`).
    pub fn tap(&self, tap: u64, node: &str, outputs: &[String], every_us: u64, ends: crate::tap::TapEnds) {
        let routes = crate::tap::routes(outputs);
        let _ = self.0.send(RunEvent::Router(Command::Tap { tap, node: node.to_owned(), routes, every_us, ends }));
    }
    /// Unwires tap `tap`.
    pub fn untap(&self, tap: u64) {
        let _ = self.0.send(RunEvent::Router(Command::Untap { tap }));
    }
}

type Tails = Arc<Mutex<HashMap<String, VecDeque<String>>>>;

/// A shipped node binary and the hash it must have.
#[derive(Debug, Clone)]
pub struct Shipped {
    pub path: PathBuf,
    pub sha256: String,
    /// Verified just now: the first start need not hash it again.
    pub fresh: bool,
}

/// One dataflow running on this machine.
pub struct Runtime {
    dataflow: Dataflow,
    base_dir: PathBuf,
    options: RunOptions,
    reporter: Reporter,
    tx: Sender<RunEvent>,
    rx: Receiver<RunEvent>,
    tails: Tails,
    log_threads: Vec<JoinHandle<()>>,
    next_instance: Instance,
    share: Option<Share>,
    /// Nodes whose binary was shipped (`distribute: scp|http`): the
    /// verified file, or why there is none. Not built here.
    shipped: HashMap<String, Result<Shipped, String>>,
    /// Running nodes' pids and last CPU/memory sample (see `usage`).
    usage: HashMap<String, (u32, Option<(Instant, crate::usage::ProcSample)>)>,
    /// What the nodes print, sent on their printed outputs (set by `run`).
    printers: Arc<Printers>,
    /// Checkouts of nodes with a `git` source: their directory.
    checkouts: HashMap<String, PathBuf>,
}

impl Runtime {
    /// `base_dir` is the dataflow file's directory: relative paths and
    /// build commands are taken from there, and nodes run in it.
    pub fn new(dataflow: Dataflow, base_dir: PathBuf, options: RunOptions, reporter: Reporter) -> Self {
        let (tx, rx) = channel();
        Self {
            dataflow,
            base_dir,
            options,
            reporter,
            tx,
            rx,
            tails: Arc::default(),
            log_threads: Vec::new(),
            next_instance: 0,
            share: None,
            shipped: HashMap::new(),
            usage: HashMap::new(),
            printers: Arc::new(Printers::new(&Dataflow { nodes: Vec::new() }, |_| false)),
            checkouts: HashMap::new(),
        }
    }

    /// Samples every running node's CPU and memory, and reports each that
    /// has an earlier sample to compare with.
    fn sample_usage(&mut self) {
        let now = Instant::now();
        for (node, (pid, last)) in &mut self.usage {
            let Some(sample) = crate::usage::sample(*pid) else { continue };
            if let Some(before) = last.replace((now, sample)) {
                let cpu_percent = crate::usage::cpu_percent(before, (now, sample));
                (self.reporter)(Report::Usage { node, pid: *pid, cpu_percent, rss_bytes: sample.rss_bytes });
            }
        }
    }

    /// Runs only `share.local` of the dataflow; edges to the other nodes end
    /// at `share.remote_ends` (the cross-machine bridge).
    pub fn with_share(mut self, share: Share) -> Self {
        self.share = Some(share);
        self
    }

    /// Runs `node` from a shipped binary (or fails its start with the
    /// reason) instead of its `path`, and skips its `build`. The file was
    /// just verified; every later start (a restart) checks its hash again.
    pub fn ship(&mut self, node: &str, program: Result<Shipped, String>) {
        self.shipped.insert(node.to_owned(), program);
    }

    /// The program of a shipped node, checked again if it ran before.
    fn shipped_program(&mut self, node: &str) -> Option<Result<PathBuf, String>> {
        let shipped = match self.shipped.get_mut(node)? {
            Ok(shipped) => shipped,
            Err(why) => return Some(Err(why.clone())),
        };
        if std::mem::replace(&mut shipped.fresh, false) {
            return Some(Ok(shipped.path.clone()));
        }
        Some(match rill_auth::digest::sha256_file(&shipped.path) {
            Ok(found) if found == shipped.sha256 => Ok(shipped.path.clone()),
            Ok(found) => Err(format!(
                "{} changed since it was checked (sha256 {found}, not {}): refused, not run",
                shipped.path.display(),
                shipped.sha256
            )),
            Err(e) => Err(format!("cannot read {}: {e}", shipped.path.display())),
        })
    }

    /// The nodes this runtime supervises.
    fn local_dataflow(&self) -> Dataflow {
        let mut local = self.dataflow.clone();
        if let Some(share) = &self.share {
            local.nodes.retain(|n| share.local.contains(&n.id));
        }
        local
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.tx.clone())
    }

    /// Where `node` builds and runs from: its checkout, or the dataflow's directory.
    fn node_dir(&self, node: &str) -> PathBuf {
        self.checkouts.get(node).cloned().unwrap_or_else(|| self.base_dir.clone())
    }

    /// Clones (or finds in the cache) the source of every local node with
    /// `git`, saying so in its log.
    fn fetch_sources(&mut self) -> Result<(), RunError> {
        let sources: Vec<(String, rill_core::GitSource)> = self
            .local_dataflow()
            .nodes
            .into_iter()
            .filter(|n| !self.shipped.contains_key(&n.id))
            .filter_map(|n| Some((n.id, n.git?)))
            .collect();
        for (node, source) in sources {
            let Some(cache) = self.options.source_cache.clone() else {
                let why = "this runtime has no source cache directory".to_owned();
                return Err(RunError::Source { node, why });
            };
            let what = format!("{} at {}", source.repo, source.rev.describe());
            let line = format!("rill: getting the source: {what}");
            (self.reporter)(Report::Log { node: &node, stream: Stream::Stderr, line: &line });
            let checkout = crate::git::checkout(&cache, &source, &self.base_dir)
                .map_err(|e| RunError::Source { node: node.clone(), why: e.to_string() })?;
            let how = if checkout.reused { "already there" } else { "cloned" };
            let line = format!("rill: source is commit {} in {} ({how})", checkout.commit, checkout.dir.display());
            (self.reporter)(Report::Log { node: &node, stream: Stream::Stderr, line: &line });
            self.checkouts.insert(node, checkout.dir);
        }
        Ok(())
    }

    /// Builds, runs until every node has ended, and reports.
    pub fn run(mut self) -> Result<RunReport, RunError> {
        self.fetch_sources()?;
        if !self.options.skip_build {
            self.build()?;
        }
        let local = self.local_dataflow();
        self.printers = Arc::new(Printers::new(&self.dataflow, |id| local.node(id).is_some()));
        let mut routes = Routes::new(&self.dataflow);
        let remote = self.share.take().map(|share| {
            routes.timers.retain_mut(|(_, targets)| {
                targets.retain(|(node, _)| share.local.contains(node));
                !targets.is_empty()
            });
            // (With what they print: sent by their daemon.)
            let nodes = self
                .dataflow
                .nodes
                .iter()
                .filter(|n| !share.local.contains(&n.id))
                .flat_map(|n| [n.id.clone(), producer_id(&n.id)])
                .collect();
            crate::router::RemotePeers { nodes, ends: share.remote_ends }
        });
        let reporter = self.reporter.clone();
        let counts: crate::router::CountsSink = Arc::new(move |node, counts| reporter(Report::Counts { node, counts }));
        let router = RouterHandle::start(routes, remote, counts, self.printers.clone()).map_err(RunError::Router)?;
        let mut supervisor = Supervisor::new(&local, self.options.grace, self.options.term_grace);
        let mut pending: VecDeque<Action> = supervisor.start().into();
        let mut stopped = false;
        let mut next_usage = Instant::now() + crate::usage::SAMPLE_EVERY;
        loop {
            while let Some(action) = pending.pop_front() {
                pending.extend(self.execute(action, &mut supervisor, &router));
            }
            if supervisor.all_finished() {
                break;
            }
            let wait = supervisor
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600))
                .min(next_usage.saturating_duration_since(Instant::now()));
            let now = || Instant::now();
            if now() >= next_usage {
                self.sample_usage();
                next_usage = now() + crate::usage::SAMPLE_EVERY;
                continue;
            }
            match self.rx.recv_timeout(wait) {
                Ok(RunEvent::Exited { node, instance, status }) => {
                    self.usage.remove(&node);
                    pending.extend(supervisor.exited(&node, instance, status, now()));
                }
                Ok(RunEvent::Stop) if !supervisor.is_stopping() => {
                    stopped = true;
                    (self.reporter)(Report::Stopping);
                    pending.extend(supervisor.stop_all(now()));
                }
                Ok(RunEvent::Stop | RunEvent::Kill) => {
                    stopped = true;
                    pending.extend(supervisor.kill_all(now()));
                }
                Ok(RunEvent::Go) => router.send(Command::Go),
                Ok(RunEvent::Leaving) => router.send(Command::Leaving),
                Ok(RunEvent::Router(command)) => router.send(command),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            pending.extend(supervisor.tick(now()));
        }
        // The last lines of nodes that ended just now are read, and their
        // printed outputs closed, before the router goes.
        self.join_log_threads();
        // (What a process left behind still holds open is closed now.)
        for node in &local.nodes {
            if self.printers.force_close(&node.id) {
                router.send(Command::CloseOutputs { node: producer_id(&node.id) });
            }
        }
        while let Ok(event) = self.rx.try_recv() {
            if let RunEvent::Router(command @ Command::CloseOutputs { .. }) = event {
                router.send(command);
            }
        }
        let router_stats = router.shutdown();
        let stderr_tails = self
            .tails
            .lock()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.iter().cloned().collect())).collect())
            .unwrap_or_default();
        Ok(RunReport { nodes: supervisor.summary(), stderr_tails, router: router_stats, stopped })
    }

    fn execute(&mut self, action: Action, supervisor: &mut Supervisor, router: &RouterHandle) -> Vec<Action> {
        match action {
            Action::Spawn { node } => self.spawn(&node, supervisor, router),
            Action::SendStop { node } => {
                router.send(Command::Stop { node: Some(node) });
                Vec::new()
            }
            Action::Signal { pid, signal, .. } => {
                let signal = match signal {
                    Sig::Term => rustix::process::Signal::TERM,
                    Sig::Kill => rustix::process::Signal::KILL,
                };
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    // The whole group: a node's own children go too.
                    let _ = rustix::process::kill_process_group(pid, signal);
                }
                Vec::new()
            }
            Action::CloseOutputs { node } => {
                if let Some(crate::supervisor::NodeState::Finished(outcome)) = supervisor.state(&node) {
                    (self.reporter)(Report::Ended { node: &node, outcome });
                }
                if self.printers.finished(&node) {
                    router.send(Command::CloseOutputs { node: producer_id(&node) });
                } else if self.printers.produces(&producer_id(&node)) {
                    self.close_printed_later(&node);
                }
                router.send(Command::CloseOutputs { node });
                Vec::new()
            }
            Action::Notice(notice) => {
                (self.reporter)(Report::Notice(&notice));
                Vec::new()
            }
        }
    }

    fn spawn(&mut self, node_id: &str, supervisor: &mut Supervisor, router: &RouterHandle) -> Vec<Action> {
        let Some(node) = self.dataflow.node(node_id).cloned() else { return Vec::new() };
        let node_dir = self.node_dir(node_id);
        let program = match self.shipped_program(node_id).unwrap_or_else(|| resolve_program(&node.path, &node_dir)) {
            Ok(program) => program,
            Err(e) => return supervisor.spawn_failed(node_id, e),
        };
        let dir = match crate::spawn::working_dir(&node, &node_dir) {
            Ok(dir) => dir,
            Err(e) => return supervisor.spawn_failed(node_id, e),
        };
        // A shipped script is stored under its digest: the node's own path
        // says whether it is one.
        let interpreter = crate::spawn::is_python(std::path::Path::new(&node.path))
            .then(|| crate::spawn::python_for(&node, &node_dir));
        let mut spawned = match spawn_node(&node, &program, interpreter.as_deref(), &dir) {
            Ok(spawned) => spawned,
            Err(e) if let Some(python) = &interpreter => {
                let hint = format!(
                    "a .py node runs with `{}` (set {} in the node's env or the daemon's environment to choose another)",
                    python.to_string_lossy(),
                    crate::spawn::PYTHON_ENV
                );
                return supervisor.spawn_failed(node_id, format!("{}: {e}; {hint}", program.display()));
            }
            Err(e) => return supervisor.spawn_failed(node_id, format!("{}: {e}", program.display())),
        };
        self.next_instance += 1;
        let instance = self.next_instance;
        let pid = spawned.child.id();
        self.usage.insert(node.id.clone(), (pid, None));
        router.send(Command::Attach { node: node.id.clone(), instance, socket: spawned.socket });
        (self.reporter)(Report::Spawned { node: node_id, pid });
        if let Some(warning) = spawned.warning.take() {
            (self.reporter)(Report::Log { node: node_id, stream: Stream::Stderr, line: &warning });
        }
        if let Some(out) = spawned.child.stdout.take() {
            self.pipe_lines(node_id, Stream::Stdout, out);
        }
        if let Some(err) = spawned.child.stderr.take() {
            self.pipe_lines(node_id, Stream::Stderr, err);
        }
        let tx = self.tx.clone();
        let node_name = node_id.to_owned();
        let mut child = spawned.child;
        let waiter = std::thread::Builder::new().name(format!("wait-{node_id}")).spawn(move || {
            let status = match child.wait() {
                Ok(status) => status.into(),
                Err(_) => ExitStatus::Code(-1),
            };
            let _ = tx.send(RunEvent::Exited { node: node_name, instance, status });
        });
        if let Err(e) = waiter {
            // Nothing would ever report its exit and the run would hang:
            // kill it and report it ended (it stays a zombie until we exit).
            eprintln!("rill: cannot watch node {node_id} ({e}); killing it");
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            let _ =
                self.tx.send(RunEvent::Exited { node: node_id.to_owned(), instance, status: ExitStatus::Signal(9) });
        }
        supervisor.spawned(node_id, instance, pid, Instant::now())
    }

    /// Closes what `node` printed once it has had [`PRINTED_CLOSE_GRACE`] to
    /// be read to its end: a process the node left behind may hold its pipes.
    fn close_printed_later(&self, node: &str) {
        let (printers, tx, name) = (self.printers.clone(), self.tx.clone(), node.to_owned());
        let closing = std::thread::Builder::new().name(format!("close-{node}")).spawn(move || {
            std::thread::sleep(PRINTED_CLOSE_GRACE);
            if printers.force_close(&name) {
                printed_closed(&tx, &name);
            }
        });
        if closing.is_err() && self.printers.force_close(node) {
            printed_closed(&self.tx, node);
        }
    }

    /// Reads a node's stdout or stderr: each line to the log (unless
    /// `min_log_level` drops it) and to the node's printed outputs.
    fn pipe_lines(&mut self, node: &str, stream: Stream, pipe: impl Read + Send + 'static) {
        let reporter = self.reporter.clone();
        let tails = (stream == Stream::Stderr).then(|| self.tails.clone());
        let name = node.to_owned();
        let node = node.to_owned();
        let printers = self.printers.clone();
        let tx = self.tx.clone();
        printers.pipe_opened(&node);
        let handle = std::thread::Builder::new().name(format!("log-{node}")).spawn(move || {
            let max = printers.max_line(&node);
            crate::lines::for_each_line(BufReader::new(pipe), max, |line| {
                if !printers.line(&node, line).log {
                    return;
                }
                let line = crate::lines::clip(line, crate::lines::MAX_LINE);
                let line = line.as_ref();
                reporter(Report::Log { node: &node, stream, line });
                if let Some(tails) = &tails
                    && let Ok(mut tails) = tails.lock()
                {
                    let tail = tails.entry(node.clone()).or_default();
                    if tail.len() == STDERR_TAIL {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_owned());
                }
            });
            if printers.pipe_ended(&node) {
                printed_closed(&tx, &node);
            }
        });
        match handle {
            Ok(handle) => self.log_threads.push(handle),
            // Nothing reads this pipe: it must not hold the outputs open.
            Err(_) if self.printers.pipe_ended(&name) => printed_closed(&self.tx, &name),
            Err(_) => {}
        }
    }

    /// Waits (briefly) for the last node output to be printed; a node's
    /// leftover grandchild may hold a pipe open, so never forever.
    fn join_log_threads(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && self.log_threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for thread in self.log_threads.drain(..).filter(|t| t.is_finished()) {
            let _ = thread.join();
        }
    }

    /// Runs every distinct `build` command once per directory (a node's
    /// checkout, or the dataflow's), in file order.
    fn build(&mut self) -> Result<(), RunError> {
        let mut done: Vec<(PathBuf, String)> = Vec::new();
        let builds: Vec<(String, String)> = self
            .local_dataflow()
            .nodes
            .iter()
            .filter(|n| !self.shipped.contains_key(&n.id))
            .filter_map(|n| n.build.clone().map(|b| (n.id.clone(), b)))
            .collect();
        for (node, command) in builds {
            let dir = self.node_dir(&node);
            if done.iter().any(|(d, c)| *d == dir && *c == command) {
                continue;
            }
            (self.reporter)(Report::Building { node: &node, command: &command });
            let status = run_build(&command, &dir, &node, &self.reporter)
                .map_err(|source| RunError::BuildSpawn { node: node.clone(), source })?;
            if !status.success() {
                return Err(RunError::Build { node, command, status });
            }
            done.push((dir, command));
        }
        Ok(())
    }
}

/// `node`'s printed outputs were closed (by a thread other than the run
/// loop's): the router tells consumers on other machines.
fn printed_closed(tx: &Sender<RunEvent>, node: &str) {
    let _ = tx.send(RunEvent::Router(Command::CloseOutputs { node: producer_id(node) }));
}

fn run_build(command: &str, dir: &Path, node: &str, reporter: &Reporter) -> std::io::Result<ExitStatus> {
    let mut build = std::process::Command::new("sh");
    crate::spawn::SECRET_ENV.iter().for_each(|var| {
        build.env_remove(var);
    });
    let mut child = build
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take();
    let err_reporter = reporter.clone();
    let err_node = node.to_owned();
    let err_thread = std::thread::spawn(move || {
        if let Some(stderr) = stderr {
            crate::lines::for_each_line(BufReader::new(stderr), crate::lines::MAX_LINE, |line| {
                err_reporter(Report::Log { node: &err_node, stream: Stream::Stderr, line });
            });
        }
    });
    if let Some(stdout) = child.stdout.take() {
        crate::lines::for_each_line(BufReader::new(stdout), crate::lines::MAX_LINE, |line| {
            reporter(Report::Log { node, stream: Stream::Stdout, line });
        });
    }
    let _ = err_thread.join();
    Ok(child.wait()?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shipped_binary_changed_after_its_first_start_is_refused_at_the_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        std::fs::write(&path, b"hello world").unwrap();
        let flow = Dataflow::parse("nodes:\n  - id: a\n    path: ./x\n", Path::new("t.yml")).unwrap();
        let mut runtime = Runtime::new(flow, dir.path().to_owned(), RunOptions::default(), Arc::new(|_| {}));
        let sha256 = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9".to_owned();
        runtime.ship("a", Ok(Shipped { path: path.clone(), sha256, fresh: true }));
        assert_eq!(runtime.shipped_program("a"), Some(Ok(path.clone())), "first start: just verified");
        assert_eq!(runtime.shipped_program("a"), Some(Ok(path.clone())), "unchanged");
        std::fs::write(&path, b"hello w0rld").unwrap();
        let refused = runtime.shipped_program("a").unwrap().unwrap_err();
        assert!(refused.contains("changed since it was checked"), "{refused}");
        assert_eq!(runtime.shipped_program("b"), None, "not shipped: its path");
    }
}

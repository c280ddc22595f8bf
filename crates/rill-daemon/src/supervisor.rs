//! The node lifecycle state machine of one dataflow: spawning, restart
//! policies, and the stop sequence (`Stop` -> grace -> SIGTERM -> SIGKILL).
//! Pure logic: it is fed events with the current time and answers with
//! [`Action`]s that the runner carries out, so every transition lives here
//! and is unit-tested without processes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use rill_core::{Dataflow, RestartPolicy, RestartSpec};

use crate::router::Instance;

/// Longest wait between restarts, whatever the backoff says.
/// After SIGKILL, how long before we stop waiting for the exit (a process
/// stuck in the kernel, e.g. on a dead NFS mount, may never exit): the node
/// is then abandoned, so the run can end.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How a node process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal} ({})", signal_name(*signal)),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// Which signal to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
}

/// How far the stop sequence of a node has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopPhase {
    /// `Stop` sent; waiting for the grace period.
    Asked,
    /// SIGTERM sent.
    Terminated,
    /// SIGKILL sent after Stop and SIGTERM went unanswered.
    Killed,
    /// SIGKILL sent at once because the stop was forced (second Ctrl-C),
    /// whatever the node had been sent before.
    Forced,
}

/// Where one node is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Not started yet (or its spawn is in progress).
    Pending,
    Running {
        instance: Instance,
        pid: u32,
    },
    Stopping {
        instance: Instance,
        pid: u32,
        phase: StopPhase,
        deadline: Instant,
    },
    /// Exited; will be spawned again at `at`.
    Restarting {
        at: Instant,
    },
    Finished(Outcome),
}

/// How a node ended for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited 0 by itself.
    Succeeded,
    /// Exited otherwise by itself (after any restarts).
    Failed(ExitStatus),
    /// Could not be started.
    SpawnFailed(String),
    /// Ended during the stop sequence; `escalation` is the last signal we had to send.
    Stopped { status: ExitStatus, escalation: Option<Sig> },
    /// Killed with SIGKILL at once by a forced stop.
    Killed { status: ExitStatus },
    /// Did not exit within [`KILL_WAIT`] after SIGKILL; no longer waited for.
    Abandoned { pid: u32 },
    /// Never started or was waiting to restart when the dataflow stopped.
    Cancelled,
}

impl Outcome {
    /// Does this outcome make the run fail?
    pub fn is_failure(&self) -> bool {
        match self {
            Outcome::Succeeded | Outcome::Cancelled => false,
            // Not the node's fault, but it did not end cleanly either.
            Outcome::Failed(_) | Outcome::SpawnFailed(_) | Outcome::Killed { .. } | Outcome::Abandoned { .. } => true,
            // SIGTERM is an acceptable way to stop; needing SIGKILL is not.
            Outcome::Stopped { escalation, .. } => *escalation == Some(Sig::Kill),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Succeeded => write!(f, "finished"),
            Outcome::Failed(status) => write!(f, "failed with {status}"),
            Outcome::SpawnFailed(e) => write!(f, "could not start: {e}"),
            Outcome::Stopped { escalation: None, .. } => write!(f, "stopped"),
            Outcome::Stopped { escalation: Some(Sig::Term), .. } => {
                write!(f, "stopped by SIGTERM (did not exit within the grace period after Stop)")
            }
            Outcome::Stopped { escalation: Some(Sig::Kill), .. } => {
                write!(f, "killed with SIGKILL (ignored Stop and SIGTERM)")
            }
            Outcome::Killed { .. } => write!(f, "killed with SIGKILL (the stop was forced)"),
            Outcome::Abandoned { pid } => {
                write!(f, "did not exit within {} s of SIGKILL; pid {pid} abandoned", KILL_WAIT.as_secs())
            }
            Outcome::Cancelled => write!(f, "not running (dataflow stopped)"),
        }
    }
}

/// Something the runner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn {
        node: String,
    },
    SendStop {
        node: String,
    },
    Signal {
        node: String,
        pid: u32,
        signal: Sig,
    },
    /// The node's outputs will not produce again: close its receivers' inputs.
    CloseOutputs {
        node: String,
    },
    /// Tell the user.
    Notice(Notice),
}

/// What the user is told about the lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Restarting { node: String, status: ExitStatus, attempt: u32, delay: Duration },
    Escalating { node: String, signal: Sig },
}

/// One node's final line in the run summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    pub node: String,
    pub outcome: Outcome,
    pub restarts: u32,
}

#[derive(Debug)]
struct Supervised {
    restart: RestartSpec,
    state: NodeState,
    restarts: u32,
}

/// The lifecycle of every node of one dataflow.
#[derive(Debug)]
pub struct Supervisor {
    nodes: BTreeMap<String, Supervised>,
    stopping: bool,
    /// From `Stop` to SIGTERM.
    grace: Duration,
    /// From SIGTERM to SIGKILL.
    term_grace: Duration,
}

impl Supervisor {
    pub fn new(dataflow: &Dataflow, grace: Duration, term_grace: Duration) -> Self {
        let nodes = dataflow
            .nodes
            .iter()
            .map(|n| (n.id.clone(), Supervised { restart: n.restart.clone(), state: NodeState::Pending, restarts: 0 }))
            .collect();
        Self { nodes, stopping: false, grace, term_grace }
    }

    /// Spawn every node.
    pub fn start(&mut self) -> Vec<Action> {
        self.nodes.keys().map(|node| Action::Spawn { node: node.clone() }).collect()
    }

    pub fn state(&self, node: &str) -> Option<&NodeState> {
        self.nodes.get(node).map(|n| &n.state)
    }

    /// A spawn succeeded.
    pub fn spawned(&mut self, node: &str, instance: Instance, pid: u32, now: Instant) -> Vec<Action> {
        let Some(n) = self.nodes.get_mut(node) else { return Vec::new() };
        n.state = NodeState::Running { instance, pid };
        if self.stopping {
            // Stop arrived while it was starting: it gets the sequence too.
            n.state = NodeState::Stopping { instance, pid, phase: StopPhase::Asked, deadline: now + self.grace };
            return vec![Action::SendStop { node: node.to_owned() }];
        }
        Vec::new()
    }

    /// A spawn failed; the node is finished.
    pub fn spawn_failed(&mut self, node: &str, error: String) -> Vec<Action> {
        self.finish(node, Outcome::SpawnFailed(error))
    }

    fn finish(&mut self, node: &str, outcome: Outcome) -> Vec<Action> {
        let Some(n) = self.nodes.get_mut(node) else { return Vec::new() };
        n.state = NodeState::Finished(outcome);
        vec![Action::CloseOutputs { node: node.to_owned() }]
    }

    /// Process `instance` of `node` ended with `status`.
    pub fn exited(&mut self, node: &str, instance: Instance, status: ExitStatus, now: Instant) -> Vec<Action> {
        let stopping = self.stopping;
        let Some(n) = self.nodes.get_mut(node) else { return Vec::new() };
        match n.state.clone() {
            NodeState::Running { instance: running, .. } if running == instance => {
                let wants_restart = match n.restart.policy {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Always => true,
                };
                let allowed = n.restart.max_restarts.is_none_or(|max| n.restarts < max);
                if wants_restart && allowed && !stopping {
                    n.restarts += 1;
                    let attempt = n.restarts;
                    let delay = backoff(n.restart.restart_delay, attempt, n.restart.max_restart_delay);
                    n.state = NodeState::Restarting { at: now + delay };
                    return vec![Action::Notice(Notice::Restarting { node: node.to_owned(), status, attempt, delay })];
                }
                let outcome = if status.success() { Outcome::Succeeded } else { Outcome::Failed(status) };
                self.finish(node, outcome)
            }
            NodeState::Stopping { instance: stopping_instance, phase, .. } if stopping_instance == instance => {
                let outcome = match phase {
                    StopPhase::Asked => Outcome::Stopped { status, escalation: None },
                    StopPhase::Terminated => Outcome::Stopped { status, escalation: Some(Sig::Term) },
                    StopPhase::Killed => Outcome::Stopped { status, escalation: Some(Sig::Kill) },
                    StopPhase::Forced => Outcome::Killed { status },
                };
                self.finish(node, outcome)
            }
            // A stale report about an instance we no longer track.
            _ => Vec::new(),
        }
    }

    /// Begin the stop sequence for every node (Ctrl-C).
    pub fn stop_all(&mut self, now: Instant) -> Vec<Action> {
        self.stopping = true;
        let mut actions = Vec::new();
        let ids: Vec<String> = self.nodes.keys().cloned().collect();
        for node in ids {
            let Some(n) = self.nodes.get_mut(&node) else { continue };
            match n.state {
                NodeState::Running { instance, pid } => {
                    n.state =
                        NodeState::Stopping { instance, pid, phase: StopPhase::Asked, deadline: now + self.grace };
                    actions.push(Action::SendStop { node });
                }
                NodeState::Restarting { .. } => actions.extend(self.finish(&node, Outcome::Cancelled)),
                NodeState::Pending | NodeState::Stopping { .. } | NodeState::Finished(_) => {}
            }
        }
        actions
    }

    /// SIGKILL everything now (second Ctrl-C).
    pub fn kill_all(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = self.stop_all(now);
        actions.retain(|a| !matches!(a, Action::SendStop { .. }));
        for (node, n) in &mut self.nodes {
            if let NodeState::Stopping { instance, pid, phase, .. } = n.state
                && !matches!(phase, StopPhase::Killed | StopPhase::Forced)
            {
                n.state = NodeState::Stopping { instance, pid, phase: StopPhase::Forced, deadline: now + KILL_WAIT };
                actions.push(Action::Signal { node: node.clone(), pid, signal: Sig::Kill });
            }
        }
        actions
    }

    /// Time has passed: escalate stops, start due restarts.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for (node, n) in &mut self.nodes {
            match n.state {
                NodeState::Stopping { instance, pid, phase, deadline } if deadline <= now => {
                    let (next, signal, wait) = match phase {
                        StopPhase::Asked => (StopPhase::Terminated, Sig::Term, self.term_grace),
                        StopPhase::Terminated => (StopPhase::Killed, Sig::Kill, KILL_WAIT),
                        StopPhase::Killed | StopPhase::Forced => {
                            n.state = NodeState::Finished(Outcome::Abandoned { pid });
                            actions.push(Action::CloseOutputs { node: node.clone() });
                            continue;
                        }
                    };
                    n.state = NodeState::Stopping { instance, pid, phase: next, deadline: now + wait };
                    actions.push(Action::Notice(Notice::Escalating { node: node.clone(), signal }));
                    actions.push(Action::Signal { node: node.clone(), pid, signal });
                }
                NodeState::Restarting { at } if at <= now && !self.stopping => {
                    n.state = NodeState::Pending;
                    actions.push(Action::Spawn { node: node.clone() });
                }
                _ => {}
            }
        }
        actions
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter_map(|n| match n.state {
                NodeState::Stopping { deadline, .. } => Some(deadline),
                NodeState::Restarting { at } => Some(at),
                _ => None,
            })
            .min()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Every node has ended for good.
    pub fn all_finished(&self) -> bool {
        self.nodes.values().all(|n| matches!(n.state, NodeState::Finished(_)))
    }

    /// Final state of every node, in id order.
    pub fn summary(&self) -> Vec<NodeSummary> {
        self.nodes
            .iter()
            .map(|(node, n)| NodeSummary {
                node: node.clone(),
                outcome: match &n.state {
                    NodeState::Finished(outcome) => outcome.clone(),
                    _ => Outcome::Cancelled,
                },
                restarts: n.restarts,
            })
            .collect()
    }
}

/// `base` before the first attempt, doubled for each further one, at most `cap`.
fn backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn supervisor(yaml: &str) -> Supervisor {
        let dataflow = Dataflow::parse(yaml, Path::new("t.yml")).expect("valid");
        Supervisor::new(&dataflow, Duration::from_secs(2), Duration::from_secs(1))
    }

    const ONE: &str = "nodes:\n  - id: a\n    path: ./a\n";

    #[test]
    fn clean_exit_finishes_and_closes_outputs() {
        let mut s = supervisor(ONE);
        let now = Instant::now();
        assert_eq!(s.start(), vec![Action::Spawn { node: "a".into() }]);
        s.spawned("a", 1, 100, now);
        assert_eq!(s.exited("a", 1, ExitStatus::Code(0), now), vec![Action::CloseOutputs { node: "a".into() }]);
        assert!(s.all_finished());
        assert!(!s.summary()[0].outcome.is_failure());
    }

    #[test]
    fn on_failure_restarts_with_backoff_until_max() {
        let mut s = supervisor(
            "nodes:\n  - id: a\n    path: ./a\n    restart_policy: on-failure\n    max_restarts: 2\n    restart_delay: 0.1\n",
        );
        let t0 = Instant::now();
        s.start();
        s.spawned("a", 1, 100, t0);
        let actions = s.exited("a", 1, ExitStatus::Code(3), t0);
        assert!(
            matches!(&actions[..], [Action::Notice(Notice::Restarting { attempt: 1, delay, .. })] if *delay == Duration::from_millis(100))
        );
        assert_eq!(s.tick(t0 + Duration::from_millis(50)), vec![]);
        assert_eq!(s.tick(t0 + Duration::from_millis(100)), vec![Action::Spawn { node: "a".into() }]);
        s.spawned("a", 2, 101, t0);
        let actions = s.exited("a", 2, ExitStatus::Code(3), t0);
        assert!(
            matches!(&actions[..], [Action::Notice(Notice::Restarting { attempt: 2, delay, .. })] if *delay == Duration::from_millis(200))
        );
        s.tick(t0 + Duration::from_secs(1));
        s.spawned("a", 3, 102, t0);
        assert_eq!(s.exited("a", 3, ExitStatus::Code(3), t0), vec![Action::CloseOutputs { node: "a".into() }]);
        let summary = &s.summary()[0];
        assert_eq!((summary.restarts, summary.outcome.clone()), (2, Outcome::Failed(ExitStatus::Code(3))));
    }

    #[test]
    fn on_failure_does_not_restart_a_clean_exit_and_always_does() {
        let mut s = supervisor("nodes:\n  - id: a\n    path: ./a\n    restart_policy: on-failure\n");
        let now = Instant::now();
        s.spawned("a", 1, 1, now);
        assert_eq!(s.exited("a", 1, ExitStatus::Code(0), now), vec![Action::CloseOutputs { node: "a".into() }]);
        let mut s = supervisor("nodes:\n  - id: a\n    path: ./a\n    restart_policy: always\n");
        s.spawned("a", 1, 1, now);
        assert!(matches!(s.exited("a", 1, ExitStatus::Code(0), now)[..], [Action::Notice(Notice::Restarting { .. })]));
    }

    #[test]
    fn stop_escalates_to_sigterm_then_sigkill() {
        let mut s = supervisor(ONE);
        let t0 = Instant::now();
        s.spawned("a", 1, 100, t0);
        assert_eq!(s.stop_all(t0), vec![Action::SendStop { node: "a".into() }]);
        assert_eq!(s.tick(t0 + Duration::from_secs(1)), vec![]);
        let actions = s.tick(t0 + Duration::from_secs(2));
        assert!(actions.contains(&Action::Signal { node: "a".into(), pid: 100, signal: Sig::Term }));
        let actions = s.tick(t0 + Duration::from_secs(3));
        assert!(actions.contains(&Action::Signal { node: "a".into(), pid: 100, signal: Sig::Kill }));
        s.exited("a", 1, ExitStatus::Signal(9), t0 + Duration::from_secs(3));
        let outcome = &s.summary()[0].outcome;
        assert_eq!(outcome, &Outcome::Stopped { status: ExitStatus::Signal(9), escalation: Some(Sig::Kill) });
        assert!(outcome.is_failure());
    }

    #[test]
    fn a_forced_stop_says_only_sigkill_was_sent() {
        let mut s = supervisor(ONE);
        let t0 = Instant::now();
        s.spawned("a", 1, 100, t0);
        s.stop_all(t0);
        assert_eq!(s.kill_all(t0), vec![Action::Signal { node: "a".into(), pid: 100, signal: Sig::Kill }]);
        assert_eq!(s.next_deadline(), Some(t0 + KILL_WAIT), "only the wait for the exit is left");
        s.exited("a", 1, ExitStatus::Signal(9), t0);
        let outcome = &s.summary()[0].outcome;
        assert_eq!(outcome, &Outcome::Killed { status: ExitStatus::Signal(9) });
        assert_eq!(outcome.to_string(), "killed with SIGKILL (the stop was forced)");
    }

    #[test]
    fn a_node_that_survives_sigkill_is_abandoned_so_the_run_can_end() {
        let mut s = supervisor(ONE);
        let t0 = Instant::now();
        s.spawned("a", 1, 100, t0);
        s.stop_all(t0);
        s.kill_all(t0);
        assert!(!s.all_finished());
        assert_eq!(s.tick(t0 + KILL_WAIT), vec![Action::CloseOutputs { node: "a".into() }]);
        assert!(s.all_finished());
        assert_eq!(s.summary()[0].outcome.to_string(), "did not exit within 5 s of SIGKILL; pid 100 abandoned");
        assert_eq!(s.exited("a", 1, ExitStatus::Signal(9), t0 + KILL_WAIT * 2), vec![], "a late exit is stale");
    }

    #[test]
    fn a_node_that_honours_stop_is_not_a_failure_and_is_not_restarted() {
        let mut s = supervisor("nodes:\n  - id: a\n    path: ./a\n    restart_policy: always\n");
        let t0 = Instant::now();
        s.spawned("a", 1, 100, t0);
        s.stop_all(t0);
        assert_eq!(s.exited("a", 1, ExitStatus::Code(0), t0), vec![Action::CloseOutputs { node: "a".into() }]);
        assert!(s.all_finished());
        assert!(!s.summary()[0].outcome.is_failure());
    }

    #[test]
    fn stale_exit_reports_are_ignored() {
        let mut s = supervisor(ONE);
        let now = Instant::now();
        s.spawned("a", 2, 100, now);
        assert_eq!(s.exited("a", 1, ExitStatus::Code(1), now), vec![]);
        assert!(matches!(s.state("a"), Some(NodeState::Running { instance: 2, .. })));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cap = rill_core::DEFAULT_MAX_RESTART_DELAY;
        assert_eq!(backoff(Duration::from_secs(1), 1, cap), Duration::from_secs(1));
        assert_eq!(backoff(Duration::from_secs(1), 3, cap), Duration::from_secs(4));
        assert_eq!(backoff(Duration::from_secs(1), 40, cap), cap);
        // `max_restart_delay`: 100, 200, 300, 300 ms.
        let waits: Vec<u128> =
            (1..=4).map(|k| backoff(Duration::from_millis(100), k, Duration::from_millis(300)).as_millis()).collect();
        assert_eq!(waits, [100, 200, 300, 300]);
    }
}

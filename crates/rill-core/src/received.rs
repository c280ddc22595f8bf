//! Checks for a [`Dataflow`] that arrives over the network instead of from a
//! file (the coordinator's `Start`, a daemon's `Spawn`): the same rules as
//! `rill check`, applied to the model, since a peer may send anything that
//! deserializes. What passes here cannot panic or wedge a daemon: no NUL
//! where it reaches a C string or a thread name, no zero timer interval, no
//! id that would become a wildcard in a key expression.

use std::collections::BTreeSet;

use crate::ids::{self, RESERVED};
use crate::model::{Dataflow, Distribute, InputSource, MAX_ARTIFACT_SIZE, artifact_id_problem, is_sha256_hex};

/// Longest dataflow name and largest `queue_size` accepted from a peer.
const MAX_NAME: usize = 128;
pub const MAX_QUEUE_SIZE: usize = 1 << 20;

/// Every problem of a received dataflow, as sentences; empty if it is valid.
pub fn received_problems(dataflow: &Dataflow) -> Vec<String> {
    let mut problems = Vec::new();
    let mut push = |problem: String| problems.push(problem);
    if dataflow.nodes.is_empty() {
        push("the dataflow has no nodes".into());
    }
    let mut ids = BTreeSet::new();
    for node in &dataflow.nodes {
        let id = &node.id;
        if !ids::is_valid(id) {
            push(format!("node id {id:?} is not valid ({})", ids::ID_HINT));
        } else if RESERVED.contains(&id.as_str()) {
            push(format!("node id `{id}` is reserved"));
        }
        if !ids.insert(id.as_str()) {
            push(format!("node id `{id}` is used twice"));
        }
        if node.path.trim().is_empty() || node.path.contains('\0') {
            push(format!("node `{id}`: `path` is empty or contains a NUL"));
        }
        let texts = node.args.iter().chain(node.env.values()).chain(node.build.iter());
        if texts.into_iter().any(|t| t.contains('\0')) {
            push(format!("node `{id}`: an argument, environment value or build command contains a NUL"));
        }
        if node.env.keys().any(|k| k.is_empty() || k.contains(['\0', '='])) {
            push(format!("node `{id}`: an environment variable name is empty or contains `=` or a NUL"));
        }
        let mut outputs = BTreeSet::new();
        for output in &node.outputs {
            if !ids::is_valid(output) || !outputs.insert(output.as_str()) {
                push(format!("node `{id}`: output {output:?} is not a valid, unique id"));
            }
        }
        if let Some(git) = &node.git
            && let Some(problem) = crate::model::git_repo_problem(&git.repo).or_else(|| git.rev.problem())
        {
            push(format!("node `{id}`: git source: {problem}"));
        }
        if node.git.is_some() && node.deploy.distribute != Distribute::Local {
            push(format!("node `{id}`: a `git` node is built where it runs: it needs `distribute: local`"));
        }
        for printed in node.printed.outputs() {
            if !outputs.contains(printed) {
                push(format!("node `{id}`: prints on output {printed:?}, which it does not declare"));
            }
        }
        if node.printed.stdout_as.is_some() && node.printed.stdout_as == node.printed.logs_as {
            push(format!("node `{id}`: `send_stdout_as` and `send_logs_as` name the same output"));
        }
        if let Some(machine) = &node.deploy.machine
            && !ids::is_valid(machine)
        {
            push(format!("node `{id}`: machine id {machine:?} is not valid ({})", ids::ID_HINT));
        }
        if node.deploy.labels.iter().any(|(k, v)| k.is_empty() || k.contains('\0') || v.contains('\0')) {
            push(format!("node `{id}`: a label is empty or contains a NUL"));
        }
        match (&node.deploy.artifact, node.deploy.distribute) {
            (None, _) | (Some(_), Distribute::Local) => {}
            (Some(artifact), _) => {
                if let Some(problem) = artifact_id_problem(&artifact.build_id) {
                    push(format!("node `{id}`: build id {problem}"));
                }
                if artifact_id_problem(id).is_some() {
                    push(format!("node `{id}`: this node id cannot name a shipped binary"));
                }
                if !is_sha256_hex(&artifact.sha256) {
                    push(format!("node `{id}`: artifact sha256 {:?} is not 64 lowercase hex digits", artifact.sha256));
                }
                if artifact.size > MAX_ARTIFACT_SIZE {
                    push(format!(
                        "node `{id}`: artifact of {} bytes is over the {MAX_ARTIFACT_SIZE} limit",
                        artifact.size
                    ));
                }
            }
        }
        for (input, spec) in &node.inputs {
            if !ids::is_valid(input) {
                push(format!("node `{id}`: input {input:?} is not a valid id"));
            }
            if spec.queue_size == 0 || spec.queue_size > MAX_QUEUE_SIZE {
                push(format!(
                    "node `{id}`: input `{input}` has queue_size {}, not 1..={MAX_QUEUE_SIZE}",
                    spec.queue_size
                ));
            }
            match &spec.source {
                InputSource::Timer { interval } if interval.is_zero() => {
                    push(format!("node `{id}`: input `{input}` is a timer with a zero interval"));
                }
                InputSource::Timer { .. } => {}
                InputSource::Node { node: source, output } => {
                    let found = dataflow.node(source).is_some_and(|n| n.outputs.iter().any(|o| o == output));
                    if !found {
                        push(format!(
                            "node `{id}`: input `{input}` refers to `{source}/{output}`, which does not exist"
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// Problems of a dataflow name received from a peer (`--name`, or in a spawn).
pub fn name_problem(name: &str) -> Option<String> {
    let valid = !name.is_empty() && name.len() <= MAX_NAME && ids::is_valid(name);
    (!valid).then(|| format!("dataflow name {name:?} is not valid: 1 to {MAX_NAME} letters, digits, '_', '-' or '.'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn flow() -> Dataflow {
        Dataflow::parse(
            "nodes:\n  - id: src\n    path: x\n    outputs: [out]\n  - id: sink\n    path: x\n    inputs: { in: src/out, t: rill/timer/millis/5 }\n",
            Path::new("t.yml"),
        )
        .expect("valid")
    }

    #[test]
    fn what_check_accepts_passes_and_absurd_values_are_named() {
        assert!(received_problems(&flow()).is_empty());
        let mut bad = flow();
        bad.nodes[0].id = "s\0rc".into();
        bad.nodes[0].outputs.push("a*".into());
        bad.nodes[1].deploy.machine = Some("robot/1".into());
        if let Some(input) = bad.nodes[1].inputs.get_mut("t") {
            input.source = InputSource::Timer { interval: Duration::ZERO };
        }
        if let Some(input) = bad.nodes[1].inputs.get_mut("in") {
            input.queue_size = 0;
        }
        let problems = received_problems(&bad).join("\n");
        for expected in [
            "node id \"s\\0rc\" is not valid",
            "output \"a*\"",
            "machine id \"robot/1\"",
            "zero interval",
            "queue_size 0",
            "refers to `src/out`",
        ] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
        assert!(name_problem("my-app").is_none());
        assert!(name_problem("a\0b").is_some() && name_problem("a*").is_some() && name_problem("").is_some());
    }

    #[test]
    fn git_sources_and_printed_outputs_from_a_peer_are_checked_as_check_would() {
        let mut bad = flow();
        bad.nodes[0].git =
            Some(crate::GitSource { repo: "--upload-pack=x".into(), rev: crate::GitRev::Tag("v1".into()) });
        bad.nodes[1].git = Some(crate::GitSource { repo: "../r".into(), rev: crate::GitRev::Branch("a..b".into()) });
        bad.nodes[0].printed.stdout_as = Some("nope".into());
        let problems = received_problems(&bad).join("\n");
        for expected in ["not a repository rill will clone", "`a..b` is not a valid git branch", "output \"nope\""] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }

    #[test]
    fn artifact_ids_that_could_leave_their_directory_are_refused() {
        for good in ["sink", "b-1f2e", "node.v2", "a_b"] {
            assert!(crate::artifact_id_problem(good).is_none(), "{good}");
        }
        let long = "a".repeat(129);
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "/etc/passwd", "a\0b", "%2e%2e", "a b", long.as_str()] {
            assert!(crate::artifact_id_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn a_shipped_binary_needs_a_sha256_a_safe_build_id_and_a_bounded_size() {
        let mut bad = flow();
        bad.nodes[0].deploy.distribute = crate::Distribute::Http;
        bad.nodes[0].deploy.artifact =
            Some(crate::Artifact { build_id: "..".into(), sha256: "ABC".into(), size: crate::MAX_ARTIFACT_SIZE + 1 });
        let problems = received_problems(&bad).join("\n");
        for expected in ["build id \"..\"", "sha256 \"ABC\"", "over the"] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
        let mut good = flow();
        good.nodes[0].deploy.distribute = crate::Distribute::Scp;
        good.nodes[0].deploy.artifact =
            Some(crate::Artifact { build_id: "b1".into(), sha256: "0".repeat(64), size: 10 });
        assert!(received_problems(&good).is_empty());
    }
}

//! Which daemon runs each node: a pure function of the dataflow and the
//! connected daemons.
//!
//! Rules, in priority order (as in the reference deployment guide):
//! 1. `deploy.machine`: the daemon with that machine id;
//! 2. `deploy.labels`: a daemon whose labels are a superset;
//! 3. neither: a daemon that connected without a machine id.
//!
//! Beyond the reference: when several daemons qualify, nodes are spread
//! over them (fewest nodes of this dataflow first, then daemon order)
//! instead of always taking the first.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Dataflow;

/// A connected daemon as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// Unique id the coordinator gave the connection.
    pub id: String,
    /// `--machine-id`, if the daemon was started with one.
    pub machine_id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Node id -> daemon id.
pub type Placement = BTreeMap<String, String>;

/// Why a node cannot be placed. `Display` gives the reference texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// No daemon is connected at all.
    NoDaemon {
        node: String,
    },
    /// `connected`: the machine ids of the daemons that are, for "did you mean".
    NoMachine {
        node: String,
        machine: String,
        connected: Vec<String>,
    },
    NoLabels {
        node: String,
        labels: BTreeMap<String, String>,
    },
    NoUnnamedDaemon {
        node: String,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::NoDaemon { node } => {
                write!(f, "node `{node}`: no daemon is connected (start one with `rill daemon` or `rill up`)")
            }
            PlacementError::NoMachine { node, machine, connected } => {
                let known = connected.iter().map(String::as_str);
                let suggestion = crate::suggest::did_you_mean(machine, known, "connected machine ids");
                let suggestion =
                    if connected.is_empty() { " (no connected daemon has one)".into() } else { suggestion };
                write!(f, "node `{node}`: no matching daemon for machine id \"{machine}\"{suggestion}")
            }
            PlacementError::NoLabels { node, labels } => {
                write!(f, "node `{node}`: no daemon matches labels {}", format_labels(labels))
            }
            PlacementError::NoUnnamedDaemon { node } => write!(
                f,
                "node `{node}`: no unnamed daemon is connected (start a daemon without --machine-id, or give the node `deploy.machine` or `deploy.labels`)"
            ),
        }
    }
}

impl std::error::Error for PlacementError {}

/// `{"gpu": "true", "arch": "arm64"}`, keys sorted.
pub fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Parses `k=v,k2=v2` (the `--labels` syntax). Empty input is no labels.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("label `{pair}` is not `key=value`"));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(format!("label `{pair}` has an empty key"));
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("label `{key}` is given twice"));
        }
    }
    Ok(labels)
}

/// Places every node; returns all problems if any node cannot be placed.
pub fn place(dataflow: &Dataflow, daemons: &[DaemonInfo]) -> Result<Placement, Vec<PlacementError>> {
    let mut placement = Placement::new();
    let mut load: BTreeMap<&str, usize> = daemons.iter().map(|d| (d.id.as_str(), 0)).collect();
    let mut errors = Vec::new();
    for node in &dataflow.nodes {
        let deploy = &node.deploy;
        let candidates: Vec<&DaemonInfo> = if let Some(machine) = &deploy.machine {
            daemons.iter().filter(|d| d.machine_id.as_deref() == Some(machine.as_str())).collect()
        } else if !deploy.labels.is_empty() {
            daemons.iter().filter(|d| deploy.labels.iter().all(|(k, v)| d.labels.get(k) == Some(v))).collect()
        } else {
            daemons.iter().filter(|d| d.machine_id.is_none()).collect()
        };
        // Least loaded first; `min_by_key` keeps the earliest on ties.
        let chosen = candidates.iter().min_by_key(|d| load.get(d.id.as_str()).copied().unwrap_or(0));
        match chosen {
            Some(daemon) => {
                *load.entry(daemon.id.as_str()).or_default() += 1;
                placement.insert(node.id.clone(), daemon.id.clone());
            }
            None => errors.push(match &deploy.machine {
                _ if daemons.is_empty() => PlacementError::NoDaemon { node: node.id.clone() },
                Some(machine) => PlacementError::NoMachine {
                    node: node.id.clone(),
                    machine: machine.clone(),
                    connected: daemons.iter().filter_map(|d| d.machine_id.clone()).collect(),
                },
                None if !deploy.labels.is_empty() => {
                    PlacementError::NoLabels { node: node.id.clone(), labels: deploy.labels.clone() }
                }
                None => PlacementError::NoUnnamedDaemon { node: node.id.clone() },
            }),
        }
    }
    if errors.is_empty() { Ok(placement) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn daemon(id: &str, machine: Option<&str>, labels: &[(&str, &str)]) -> DaemonInfo {
        DaemonInfo {
            id: id.into(),
            machine_id: machine.map(Into::into),
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        }
    }

    fn flow(yaml: &str) -> Dataflow {
        Dataflow::parse(yaml, Path::new("t.yml")).expect("valid")
    }

    #[test]
    fn machine_beats_labels_beats_unnamed() {
        let f = flow(
            "nodes:\n  - id: cam\n    path: x\n    deploy:\n      machine: robot\n      labels: { gpu: 'true' }\n  - id: ml\n    path: x\n    _unstable_deploy:\n      labels: { gpu: 'true' }\n  - id: ui\n    path: x\n",
        );
        let daemons = [
            daemon("d1", Some("robot"), &[]),
            daemon("d2", Some("gpu-server"), &[("gpu", "true"), ("arch", "x86_64")]),
            daemon("d3", None, &[]),
        ];
        let p = place(&f, &daemons).unwrap();
        assert_eq!(p["cam"], "d1", "machine wins over labels");
        assert_eq!(p["ml"], "d2", "label superset");
        assert_eq!(p["ui"], "d3", "no deploy: the unnamed daemon");
    }

    #[test]
    fn reference_error_texts_for_every_unplaceable_node() {
        let f = flow(
            "nodes:\n  - id: cam\n    path: x\n    deploy: { machine: robot }\n  - id: ml\n    path: x\n    deploy:\n      labels: { gpu: 'true' }\n  - id: ui\n    path: x\n",
        );
        let errors = place(&f, &[daemon("d1", Some("other"), &[("gpu", "false")])]).unwrap_err();
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(texts[0], "node `cam`: no matching daemon for machine id \"robot\" (connected machine ids: other)");
        assert_eq!(texts[1], "node `ml`: no daemon matches labels {\"gpu\": \"true\"}");
        assert!(texts[2].starts_with("node `ui`: no unnamed daemon is connected"), "{}", texts[2]);
    }

    #[test]
    fn a_misspelled_machine_gets_a_suggestion_and_no_daemon_says_so() {
        let f = flow("nodes:\n  - id: cam\n    path: x\n    deploy: { machine: robt }\n  - id: ui\n    path: x\n");
        let daemons = [daemon("d1", Some("robot"), &[]), daemon("d2", Some("gpu"), &[])];
        let texts: Vec<String> = place(&f, &daemons).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            texts[0],
            "node `cam`: no matching daemon for machine id \"robt\"; did you mean `robot`? (connected machine ids: gpu, robot)"
        );
        let texts: Vec<String> = place(&f, &[]).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), 2);
        assert!(texts.iter().all(|t| t.contains("no daemon is connected")), "{texts:?}");
    }

    #[test]
    fn labels_parse_and_bad_ones_are_explained() {
        let labels = parse_labels("gpu=true, arch=arm64").unwrap();
        assert_eq!(format_labels(&labels), "{\"arch\": \"arm64\", \"gpu\": \"true\"}");
        assert_eq!(parse_labels("").unwrap().len(), 0);
        assert_eq!(parse_labels("gpu").unwrap_err(), "label `gpu` is not `key=value`");
        assert_eq!(parse_labels("=x").unwrap_err(), "label `=x` has an empty key");
        assert_eq!(parse_labels("a=1,a=2").unwrap_err(), "label `a` is given twice");
    }

    #[test]
    fn equal_candidates_share_the_nodes() {
        let f = flow(
            "nodes:\n  - id: a\n    path: x\n    deploy: { labels: { fleet: w } }\n  - id: b\n    path: x\n    deploy: { labels: { fleet: w } }\n  - id: c\n    path: x\n    deploy: { labels: { fleet: w } }\n",
        );
        let daemons = [daemon("d1", Some("bot1"), &[("fleet", "w")]), daemon("d2", Some("bot2"), &[("fleet", "w")])];
        let p = place(&f, &daemons).unwrap();
        assert_eq!((p["a"].as_str(), p["b"].as_str(), p["c"].as_str()), ("d1", "d2", "d1"));
    }
}

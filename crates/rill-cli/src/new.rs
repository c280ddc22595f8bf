//! `rill new NAME`: a dataflow that runs with `rill run` at once: a talker
//! driven by a timer and a listener, as Rust nodes (a Cargo project that
//! depends on rill-node from the rill source this binary was built from)
//! or as Python scripts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

#[derive(clap::Args)]
pub struct NewArgs {
    /// The directory to create; its last part names the dataflow.
    path: PathBuf,
    /// The language of the nodes.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// The rill source tree (its root) whose rill-node the Rust nodes
    /// build against [default: the one this binary was built from].
    #[arg(long, value_name = "DIR")]
    rill_path: Option<PathBuf>,
}

/// The rill source this binary was built from (its root).
const BUILT_FROM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = args
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} does not end in a name", args.path.display()))?;
    check_name(name)?;
    if args.path.exists() {
        bail!("{} already exists: choose another name, or remove it first", args.path.display());
    }
    let files = match args.lang {
        Lang::Rust => rust_files(name, &rill_node_dir(args.rill_path.as_deref())?),
        Lang::Python => python_files(name),
    };
    for (file, text) in &files {
        let path = args.path.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let shown = args.path.display();
    println!("created {shown}: {}", files.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", "));
    match args.lang {
        Lang::Rust => println!("run it: rill run {shown}/dataflow.yml   (the first run builds the nodes)"),
        Lang::Python => println!(
            "run it: RILL_PYTHON=/path/to/python rill run {shown}/dataflow.yml   (a python with `rill`: see docs/python.md)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// A name that is a valid dataflow name and Cargo package name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64;
    match ok {
        true => Ok(()),
        false => bail!(
            "`{name}` cannot name a dataflow: use letters, digits, `-` and `_`, starting with a letter (at most 64)"
        ),
    }
}

/// rill-node's directory in `root`, or in the source this binary was built from.
fn rill_node_dir(root: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = root.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(BUILT_FROM));
    let node = root.join("crates/rill-node");
    match node.join("Cargo.toml").is_file() {
        true => Ok(node.canonicalize().unwrap_or(node)),
        false => bail!(
            "no rill source at {} (looked for crates/rill-node): pass --rill-path with the rill repository's root",
            root.display()
        ),
    }
}

const HEADER: &str = "# NAME: a talker sends a message every 100 ms (10 in all, then it ends,
# which closes the listener's input and ends the dataflow); the listener
# prints each one. Run it with: rill run dataflow.yml
";

/// The dataflow of both languages: `build` (a line, or empty) for each
/// node, and the talker's and listener's paths.
fn dataflow_yaml(name: &str, preamble: &str, build: &str, [talker, listener]: [&str; 2]) -> String {
    format!(
        "{}{preamble}nodes:
  - id: talker
{build}    path: {talker}
    env:
      COUNT: 10
    inputs:
      tick: rill/timer/millis/100
    outputs:
      - message

  - id: listener
{build}    path: {listener}
    inputs:
      message: talker/message
",
        HEADER.replace("NAME", name)
    )
}

fn rust_files(name: &str, rill_node: &Path) -> Vec<(&'static str, String)> {
    let dataflow = dataflow_yaml(
        name,
        "",
        "    build: cargo build --manifest-path nodes/Cargo.toml\n",
        ["nodes/target/debug/talker", "nodes/target/debug/listener"],
    );
    let cargo = format!(
        "[package]
name = \"{name}-nodes\"
version = \"0.1.0\"
edition = \"2024\"
publish = false

# A project of its own, also when created inside another Cargo workspace.
[workspace]

[dependencies]
rill-node = {{ path = {:?} }}
",
        rill_node.display().to_string()
    );
    let talker = "//! Sends `hello N` on every tick; after COUNT messages it ends.
use rill_node::{Event, Node};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = Node::from_env()?;
    let count: u64 = std::env::var(\"COUNT\").ok().and_then(|c| c.parse().ok()).unwrap_or(10);
    let mut sent = 0;
    while let Some(event) = node.next_event() {
        match event {
            Event::Input { .. } => {
                sent += 1;
                node.send_output(\"message\", format!(\"hello {sent}\").as_bytes())?;
                if sent == count {
                    break;
                }
            }
            Event::Stop => break,
            Event::InputClosed { .. } => {}
        }
    }
    Ok(())
}
"
    .to_owned();
    let listener = "//! Prints every message, and when its input closes.
use rill_node::{Event, Node};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut node = Node::from_env()?;
    while let Some(event) = node.next_event() {
        match event {
            Event::Input { id, data, .. } => println!(\"{id}: {}\", String::from_utf8_lossy(&data)),
            Event::InputClosed { id } => println!(\"{id} closed\"),
            Event::Stop => println!(\"stopping\"),
        }
    }
    Ok(())
}
"
    .to_owned();
    vec![
        ("dataflow.yml", dataflow),
        ("nodes/Cargo.toml", cargo),
        ("nodes/src/bin/talker.rs", talker),
        ("nodes/src/bin/listener.rs", listener),
        (".gitignore", "nodes/target/\n".to_owned()),
    ]
}

fn python_files(name: &str) -> Vec<(&'static str, String)> {
    let dataflow = dataflow_yaml(
        name,
        "# Python nodes run with RILL_PYTHON (default python3), which needs the\n\
         # `rill` package: see rill's docs/python.md.\n",
        "",
        ["talker.py", "listener.py"],
    );
    let talker = "\"\"\"Sends `hello N` on every tick; after COUNT messages it ends.\"\"\"
import os

import rill

node = rill.Node()
count = int(os.environ.get(\"COUNT\", \"10\"))
sent = 0
for event in node:
    if event.type == \"INPUT\":
        sent += 1
        node.send_output(\"message\", f\"hello {sent}\".encode())
        if sent == count:
            break
    elif event.type == \"STOP\":
        break
"
    .to_owned();
    let listener = "\"\"\"Prints every message, and when its input closes.\"\"\"
import rill

node = rill.Node()
for event in node:
    if event.type == \"INPUT\":
        print(f\"{event.id}: {bytes(event.data).decode()}\")
    elif event.type == \"INPUT_CLOSED\":
        print(f\"{event.id} closed\")
    elif event.type == \"STOP\":
        print(\"stopping\")
"
    .to_owned();
    vec![("dataflow.yml", dataflow), ("talker.py", talker), ("listener.py", listener)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dataflow_and_package_names_and_templates_are_valid_dataflows() {
        for good in ["demo", "robot-arm_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2fast", "a b", "../x", "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let node = rill_node_dir(None).unwrap();
        assert!(node.join("Cargo.toml").is_file());
        assert!(rill_node_dir(Some(Path::new("/nonexistent"))).unwrap_err().to_string().contains("--rill-path"));
        for files in [rust_files("demo", &node), python_files("demo")] {
            let (_, yaml) = &files[0];
            let dataflow = rill_core::Dataflow::parse(yaml, Path::new("dataflow.yml"));
            assert!(dataflow.is_ok(), "{yaml}");
        }
    }
}

//! `rill check` and `rill graph`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rill_core::{Dataflow, Diagnostic};

/// Loads a dataflow file and its directory (where relative paths start).
/// `None`: it is invalid, and its problems were printed.
pub fn load_dataflow(file: &Path) -> anyhow::Result<Option<(Dataflow, PathBuf)>> {
    let dataflow = match Dataflow::load_located(file) {
        Ok((dataflow, positions)) => {
            // (Fields it accepts and ignores: said, not fatal.)
            positions.warnings.iter().for_each(|w| eprintln!("{w}"));
            dataflow
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(None);
        }
    };
    let canonical = file.canonicalize().map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", file.display()))?;
    let base_dir = canonical.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    Ok(Some((dataflow, base_dir)))
}

/// Checks every file; all problems of all files are printed. Warnings
/// (valid, but likely to fail at run time) do not fail the check.
pub fn check(files: &[PathBuf], json: bool) -> ExitCode {
    let mut failed = false;
    for file in files {
        let result = Dataflow::load_located(file);
        failed |= result.is_err();
        let warnings = match &result {
            Ok((dataflow, positions)) => {
                let mut warnings = positions.warnings.clone();
                warnings.extend(missing_programs(file, dataflow, positions));
                warnings
            }
            Err(_) => Vec::new(),
        };
        if json {
            let diagnostics = |list: &[Diagnostic]| -> Vec<serde_json::Value> {
                list.iter()
                    .map(|d| {
                        serde_json::json!({"line": d.line, "column": d.column, "message": d.message, "hint": d.hint})
                    })
                    .collect()
            };
            let value = match &result {
                Ok((dataflow, _)) => serde_json::json!({
                    "file": file, "ok": true, "nodes": dataflow.nodes.len(), "errors": [], "warnings": diagnostics(&warnings),
                }),
                Err(errors) => serde_json::json!({
                    "file": file, "ok": false, "errors": diagnostics(&errors.0), "warnings": [],
                }),
            };
            println!("{value}");
            continue;
        }
        match result {
            Ok((dataflow, _)) => {
                for warning in &warnings {
                    eprintln!("{warning}");
                }
                println!("ok: {} ({})", file.display(), count(dataflow.nodes.len(), "node"));
            }
            Err(diagnostics) => eprintln!("{diagnostics}"),
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// "1 node", "3 nodes".
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// Nodes whose program `rill run` would not find right now, resolved the way
/// it does. Nodes placed on other machines are skipped: their paths are
/// resolved there; so are nodes with a `git` source.
fn missing_programs(file: &Path, dataflow: &Dataflow, positions: &rill_core::Positions) -> Vec<Diagnostic> {
    let base_dir = file.canonicalize().ok().and_then(|f| f.parent().map(Path::to_path_buf)).unwrap_or_default();
    dataflow
        .nodes
        .iter()
        .filter(|node| node.deploy.machine.is_none() && node.deploy.labels.is_empty())
        // (A `git` node's path is in its checkout, made when it is built.)
        .filter(|node| node.git.is_none())
        .filter_map(|node| {
            let problem = rill_daemon::spawn::resolve_program(&node.path, &base_dir).err()?;
            let hint = match &node.build {
                Some(build) => format!("`rill run` first runs its build step `{build}`, which must create it"),
                None => "build it first, or fix `path`; `rill run` will fail to start this node".to_owned(),
            };
            let (written_in, line, column) = positions.node_path(&node.id).unwrap_or((file, 0, 0));
            let message = format!("node `{}`: {problem}", node.id);
            Some(Diagnostic::warning(written_in, (line, column), message, Some(hint)))
        })
        .collect()
}

/// Prints the Mermaid graph of one file.
pub fn graph(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    match Dataflow::load(file) {
        Ok(dataflow) if json => {
            println!("{}", serde_json::json!({"file": file, "mermaid": dataflow.mermaid()}));
            Ok(ExitCode::SUCCESS)
        }
        Ok(dataflow) => {
            print!("{}", dataflow.mermaid());
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            Ok(ExitCode::FAILURE)
        }
    }
}

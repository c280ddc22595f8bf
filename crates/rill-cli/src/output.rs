//! `rill check` and `rill graph`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rill_core::Dataflow;

/// Loads a dataflow file and its directory (where relative paths start).
/// `None`: it is invalid, and its problems were printed.
pub fn load_dataflow(file: &Path) -> anyhow::Result<Option<(Dataflow, PathBuf)>> {
    let dataflow = match Dataflow::load(file) {
        Ok(dataflow) => dataflow,
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            return Ok(None);
        }
    };
    let canonical = file.canonicalize().map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", file.display()))?;
    let base_dir = canonical.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    Ok(Some((dataflow, base_dir)))
}

/// Checks every file; all problems of all files are printed.
pub fn check(files: &[PathBuf], json: bool) -> ExitCode {
    let mut failed = false;
    for file in files {
        let result = Dataflow::load(file);
        failed |= result.is_err();
        if json {
            let value = match &result {
                Ok(dataflow) => {
                    serde_json::json!({"file": file, "ok": true, "nodes": dataflow.nodes.len(), "errors": []})
                }
                Err(diagnostics) => serde_json::json!({
                    "file": file,
                    "ok": false,
                    "errors": diagnostics.0.iter().map(|d| serde_json::json!({
                        "line": d.line, "column": d.column, "message": d.message, "hint": d.hint,
                    })).collect::<Vec<_>>(),
                }),
            };
            println!("{value}");
            continue;
        }
        match result {
            Ok(dataflow) => println!("ok: {} ({} nodes)", file.display(), dataflow.nodes.len()),
            Err(diagnostics) => eprint!("{diagnostics}"),
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
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
            eprint!("{diagnostics}");
            Ok(ExitCode::FAILURE)
        }
    }
}

//! `rill new`, `rill doctor` and `rill completion`, as a user runs them.
use std::process::Command;
use std::time::Duration;

use crate::check;
use crate::support::{Running, rill};

fn run_new(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    rill().current_dir(dir).arg("new").args(args).output().expect("run rill new")
}

/// `rill run` of a created dataflow, unchanged: the listener gets the 10 messages, then the close.
fn runs_unchanged(dataflow: &std::path::Path, python: Option<&str>) {
    let mut cmd = rill();
    cmd.arg("run").arg(dataflow);
    if let Some(python) = python {
        cmd.env("RILL_PYTHON", python);
    }
    let run = Running::start(cmd).wait(Duration::from_secs(300));
    check!(run, run.code == Some(0), "the new dataflow runs and ends by itself");
    let expected: Vec<String> =
        (1..=10).map(|n| format!("message: hello {n}")).chain(["message closed".to_owned()]).collect();
    check!(run, run.node_lines("listener") == expected, "the listener's lines");
}

#[test]
fn rill_new_rust_makes_a_dataflow_that_builds_and_runs_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_new(dir.path(), &["hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("run it: rill run hello/dataflow.yml"), "{stdout}");
    let cargo = std::fs::read_to_string(dir.path().join("hello/nodes/Cargo.toml")).expect("Cargo.toml");
    let rill_node = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rill-node").canonicalize().unwrap();
    assert!(cargo.contains(&format!("rill-node = {{ path = {:?} }}", rill_node.display().to_string())), "{cargo}");
    // The versions this workspace builds with, so the build needs no
    // registry and no newer crate than CI has.
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    std::fs::copy(lock, dir.path().join("hello/nodes/Cargo.lock")).expect("copy Cargo.lock");
    runs_unchanged(&dir.path().join("hello/dataflow.yml"), None);

    let again = run_new(dir.path(), &["hello"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("hello already exists"));
    let bad = run_new(dir.path(), &["2fast"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`2fast` cannot name a dataflow"));
    let elsewhere = run_new(dir.path(), &["other", "--rill-path", "/nonexistent"]);
    assert_eq!(elsewhere.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&elsewhere.stderr).contains("no rill source at /nonexistent"));
    assert!(!dir.path().join("other").exists(), "nothing half-made");
}

#[test]
fn rill_new_python_makes_a_dataflow_that_runs_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_new(dir.path(), &["--lang", "python", "pyhello"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    runs_unchanged(&dir.path().join("pyhello/dataflow.yml"), Some(crate::python::python()));
}

#[test]
fn rill_doctor_names_every_check_and_passes_here() {
    let out = rill().args(["doctor", "--coordinator-port", "1"]).output().expect("run rill doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A named coordinator that does not answer fails, and says so.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("fail  coordinator")), "{stdout}");

    // With none named: what this machine needs passes.
    let home = tempfile::tempdir().expect("tempdir");
    let out = rill().env("XDG_CONFIG_HOME", home.path()).args(["doctor", "--json"]).output().expect("run");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(out.status.code(), Some(0), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report["ok"], true, "{report}");
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = checks.iter().filter_map(|c| c["check"].as_str()).collect();
    assert_eq!(
        names,
        [
            "kernel",
            "shared memory",
            "socket fd passing",
            "open files",
            "parent-death signal",
            "python nodes",
            "ssh client",
            "coordinator"
        ]
    );
    for c in &checks {
        let status = c["status"].as_str().unwrap_or("");
        assert!(["ok", "warn", "skip"].contains(&status), "{c}");
        assert!(status == "ok" || c["fix"].is_string(), "a problem says what to do: {c}");
    }
    let text = rill().env("XDG_CONFIG_HOME", home.path()).arg("doctor").output().expect("run");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.lines().any(|l| l.starts_with("ok    shared memory ")), "{text}");
    assert!(text.trim_end().ends_with("rill can run here"), "{text}");
}

#[test]
fn completion_scripts_complete_subcommands() {
    let script = rill().args(["completion", "bash"]).output().expect("run");
    assert_eq!(script.status.code(), Some(0));
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), &script.stdout).expect("write");
    let complete = |words: &str, cword: usize| {
        let probe = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _rill rill \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
            file.path().display()
        );
        let out = Command::new("bash").args(["-c", &probe]).output().expect("bash");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(complete("rill st", 1), "status start stop");
    assert!(complete("rill completion ''", 2).contains("bash elvish fish powershell zsh"));
    let zsh = rill().args(["completion", "zsh"]).output().expect("run");
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef rill"));
    let fish = rill().args(["completion", "fish"]).output().expect("run");
    assert!(String::from_utf8_lossy(&fish.stdout).contains("complete -c rill"));
    let bad = rill().args(["completion", "tcsh"]).output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
}

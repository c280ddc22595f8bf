//! `rill cluster` without hosts: the cluster file is checked before any
//! SSH runs (the multi-host tests are in tests/cluster-e2e).

use std::process::Command;

use crate::support::rill;

/// A stand-in for `ssh` (named as such) that records each call: the tests
/// here assert it is never called.
fn recorder(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("ssh-recorder");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$@\" >> {}/ssh-calls\nexit 255\n", dir.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn in_dir(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd: Command = rill();
    cmd.env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("RILL_SSH", recorder(dir))
        .args(args);
    cmd.output().unwrap()
}

#[test]
fn a_host_that_is_an_ssh_option_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let file = dir.path().join("cluster.yml");
    std::fs::write(
        &file,
        format!(
            "coordinator:\n  addr: 127.0.0.1\nmachines:\n  - id: ok\n    host: 10.0.0.2\n  - id: evil\n    host: \"-oProxyCommand=touch {}\"\n    user: -lroot\n",
            marker.display()
        ),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    for args in [vec!["cluster", "check", path], vec!["cluster", "check", path, "--ssh"], vec!["cluster", "up", path]] {
        let out = in_dir(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&format!("{path}:7:11: error: `host` of machine `evil` starts with `-`")), "{stderr}");
        assert!(stderr.contains(&format!("{path}:8:11: error: `user` of machine `evil` starts with `-`")), "{stderr}");
        assert!(stderr.contains("2 errors found"), "{stderr}");
    }
    assert!(!marker.exists(), "the ProxyCommand never ran");
    assert!(!dir.path().join("ssh-calls").exists(), "ssh was never called");
    assert!(!dir.path().join("state/rill").exists(), "no coordinator was started");
    let json = in_dir(dir.path(), &["cluster", "check", path, "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["errors"][0]["line"], 7);
}

#[test]
fn a_valid_cluster_file_checks_and_commands_without_a_cluster_say_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yml");
    std::fs::write(
        &file,
        "coordinator:\n  addr: 10.0.0.1\nmachines:\n  - id: a\n    host: h1\n  - id: b\n    host: h2\n",
    )
    .unwrap();
    let out = in_dir(dir.path(), &["cluster", "check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ok: {} (2 machines)", file.display()));
    for command in ["status", "down"] {
        let out = in_dir(dir.path(), &["cluster", command, file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("no cluster record for port 6013") && stderr.contains("rill cluster up"), "{stderr}");
    }
    // The preflight reports an unreachable machine by name (ssh is the recorder, which fails as ssh does).
    let out = in_dir(dir.path(), &["cluster", "check", file.to_str().unwrap(), "--ssh"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: machine a (h1): cannot reach h1 over SSH"), "{stderr}");
    let calls = std::fs::read_to_string(dir.path().join("ssh-calls")).unwrap();
    for needed in ["BatchMode=yes", "ConnectTimeout=10", "StrictHostKeyChecking=accept-new", "-- h1 sh -c"] {
        assert!(calls.contains(needed), "{calls}");
    }
}

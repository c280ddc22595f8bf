//! `distribute: http` on one machine: `rill start` uploads the node binary
//! to the coordinator, the daemon fetches it with its own credential,
//! checks its sha256 and runs it; a binary changed on the coordinator is
//! refused; the artifacts route refuses every id that tries to leave its
//! directory, and callers without the right credential. (`scp`, and hosts
//! that never had the binary, are in the cluster-e2e suite.)

use std::time::{Duration, Instant};

use rill_auth::dial::{DialError, http_get, http_put};

use crate::security::{coordinator, daemon};
use crate::support::{Processes, join_token, rill, rill_json, test_node, wait_status};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The HTTP status of a refused request (panics on success).
fn refused(result: Result<impl std::fmt::Debug, DialError>) -> u16 {
    match result {
        Err(DialError::Status { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn list_app(port: u16) -> serde_json::Value {
    let (code, list, stderr) = rill_json(&["list", "--json", "--coordinator-port", &port.to_string()]);
    assert_eq!(code, Some(0), "{stderr}");
    list["dataflows"].as_array().into_iter().flatten().rev().find(|d| d["name"] == "app").cloned().unwrap_or_default()
}

fn poll(procs: &Processes, what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_http_node_runs_the_uploaded_binary_a_changed_one_is_refused_and_no_id_escapes_the_store() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let port_text = port.to_string();
    let token = join_token(&procs, port, "m1", &[]);
    let cache = procs.dir.path().join("m1-cache");
    procs.start_command("daemon-m1", daemon(port, "m1", &token, &cache));
    wait_status(&procs, port, "m1 registers", Duration::from_secs(20), |s| crate::support::machines(s) == ["m1"]);

    // The sink's binary lives only beside the dataflow file.
    let bin = procs.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(test_node(), bin.join("sink-node")).unwrap();
    let flow = procs.dir.path().join("flow.yml");
    std::fs::write(
        &flow,
        format!(
            "nodes:\n  - id: src\n    path: {node}\n    args: count-send\n    inputs:\n      t: rill/timer/millis/50\n    \
             outputs: [out]\n    deploy:\n      machine: m1\n  - id: sink\n    path: ./bin/sink-node\n    args: print\n    \
             inputs:\n      in: src/out\n    deploy:\n      machine: m1\n      distribute: http\n",
            node = test_node()
        ),
    )
    .unwrap();
    let start =
        rill().args(["start"]).arg(&flow).args(["--name", "app", "--coordinator-port", &port_text]).output().unwrap();
    let stderr = String::from_utf8_lossy(&start.stderr);
    assert!(start.status.success(), "{stderr}\n{}", procs.logs());
    assert!(stderr.contains("Uploaded node `sink`"), "{stderr}");

    let sha = rill_auth::digest::sha256_file(&bin.join("sink-node")).unwrap();
    let fetched = cache.join("artifacts").join(&sha);
    poll(&procs, "the sink runs the fetched binary and receives", Duration::from_secs(30), || {
        let app = list_app(port);
        let pid = app["nodes"]["sink"]["pid"].as_u64();
        let exe = pid.and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());
        let logs = rill().args(["logs", "app", "--coordinator-port", &port_text]).output().unwrap();
        exe.as_ref() == Some(&fetched) && String::from_utf8_lossy(&logs.stdout).contains("[sink] input in")
    });

    // The route: no id leaves the store, whatever its spelling.
    let admin = crate::support::admin_dial(port);
    let state = crate::support::xdg_home().join(format!("data/rill/coordinator-{port}"));
    let store = state.join("artifacts");
    let build = std::fs::read_dir(&store).unwrap().flatten().next().expect("a build dir").file_name();
    let build = build.to_string_lossy().into_owned();
    let rt = runtime();
    let mut sink = Vec::new();
    let mut get = |dial: &rill_auth::dial::Dial, path: &str| {
        sink.clear();
        rt.block_on(http_get(dial, path, &mut sink, 1 << 30))
    };
    for path in [
        "/api/artifacts/../sink".to_owned(),
        "/api/artifacts/%2e%2e/admin.token".to_owned(),
        format!("/api/artifacts/{build}/.."),
        format!("/api/artifacts/{build}/%2e%2e%2f%2e%2e%2fadmin.token"),
        format!("/api/artifacts/{build}/..%2F..%2Fstore.redb"),
        format!("/api/artifacts/{build}/%2fetc%2fpasswd"),
        format!("/api/artifacts/{build}/..%5c..%5cadmin.token"),
        format!("/api/artifacts/{build}/sink%00"),
        "/api/artifacts/../../admin.token".to_owned(),
        "/api/artifacts/%2e%2e%2f%2e%2e/admin.token".to_owned(),
    ] {
        let status = refused(get(&admin, &path));
        assert!(status == 400 || status == 404, "{path}: {status}");
    }
    let mut body = std::io::Cursor::new(b"evil".to_vec());
    let put = rt.block_on(http_put(&admin, &format!("/api/artifacts/{build}/..%2F..%2Fadmin.token"), 4, &mut body));
    assert_eq!(refused(put), 400);
    assert_ne!(std::fs::read(state.join("admin.token")).unwrap(), b"evil");
    // Credentials: none is refused; a daemon's token reads but may not upload.
    let anonymous = rill_auth::dial::Dial { bearer: None, ..admin.clone() };
    assert_eq!(refused(get(&anonymous, &format!("/api/artifacts/{build}/sink"))), 401);
    let token_text = std::fs::read_to_string(&token).unwrap();
    let as_daemon = rill_auth::dial::Dial { bearer: Some(token_text.trim().to_owned()), ..admin.clone() };
    assert_eq!(
        get(&as_daemon, &format!("/api/artifacts/{build}/sink")).expect("a daemon may fetch"),
        std::fs::metadata(bin.join("sink-node")).unwrap().len()
    );
    let mut body = std::io::Cursor::new(b"evil".to_vec());
    assert_eq!(refused(rt.block_on(http_put(&as_daemon, &format!("/api/artifacts/{build}/sink"), 4, &mut body))), 401);

    // The binary is changed on the coordinator; the daemon's copy is gone:
    // the restarted sink is refused, not run.
    let stop = rill().args(["stop", "app", "--coordinator-port", &port_text]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    poll(&procs, "app stops", Duration::from_secs(20), || list_app(port)["status"] == "stopped");
    let stored = store.join(&build).join("sink");
    // Same size, one byte changed: only the hash can tell.
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    std::fs::remove_file(cache.join("artifacts").join(&sha)).unwrap();
    let restart = rill().args(["restart", "app", "--coordinator-port", &port_text]).output().unwrap();
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    poll(&procs, "the sink fails: its binary was refused", Duration::from_secs(30), || {
        let app = list_app(port);
        let sink = &app["nodes"]["sink"];
        sink["state"] == "failed" && sink["reason"].as_str().is_some_and(|r| r.contains("refused, not run"))
    });
    assert!(!cache.join("artifacts").join(&sha).exists(), "nothing of the changed binary is kept");
}

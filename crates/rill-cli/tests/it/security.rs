//! The security UAT suite (docs/uat-coverage.md maps each scenario of the
//! remote-execution UAT list here): join tokens, enrollment and binding,
//! expiry, TLS and credentials, and what a daemon may report. Coordinator
//! and daemons are separate processes; assertions are on what an operator
//! sees: CLI output and exit codes, `rill token list`, `rill status`, logs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::relay::Relay;
use crate::support::{Flow, Processes, free_port, join_token, machines, rill, rill_json, wait_status};

/// A coordinator with a redb store in the test's directory; its port.
pub(crate) fn coordinator(procs: &mut Processes, extra: &[&str]) -> u16 {
    let port = free_port();
    let store = format!("redb:{}", procs.dir.path().join("store.redb").display());
    let port_text = port.to_string();
    let mut args = vec!["coordinator", "--port", &port_text, "--store", &store];
    args.extend(extra);
    procs.start("coordinator", &args);
    wait_status(procs, port, "the coordinator answers", Duration::from_secs(15), |_| true);
    port
}

/// `rill daemon` for `machine` joining with the token in `token`, keeping
/// its identity in `cache`, connecting to `port`.
pub(crate) fn daemon(port: u16, machine: &str, token: &Path, cache: &Path) -> Command {
    let mut cmd = rill();
    cmd.args(["daemon", "--machine-id", machine, "--coordinator-port", &port.to_string()])
        .arg("--join-token-file")
        .arg(token)
        .arg("--cache-dir")
        .arg(cache);
    cmd
}

/// `rill token list --json`'s entry for `name`.
fn token(port: u16, name: &str) -> serde_json::Value {
    let (code, list, stderr) = rill_json(&["token", "list", "--json", "--coordinator-port", &port.to_string()]);
    assert_eq!(code, Some(0), "{stderr}");
    list["tokens"].as_array().into_iter().flatten().find(|t| t["name"] == name).cloned().unwrap_or_default()
}

/// Waits until token `name` is in `state`.
fn wait_token(procs: &Processes, port: u16, name: &str, state: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let token = token(port, name);
        if token["state"] == state {
            return token;
        }
        assert!(Instant::now() < deadline, "token {name} is not {state} after {limit:?}: {token}\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The secret part of a join token file.
fn secret_of(token_file: &Path) -> String {
    let text = std::fs::read_to_string(token_file).expect("token file");
    text.trim().split('.').nth(2).expect("rill1.NAME.SECRET.CA").to_owned()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            found.push(path);
        }
    }
    found
}

/// Pids whose command line contains `needle`.
fn cmdlines_containing(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok().map(|c| (e.file_name(), c)))
        .filter(|(_, cmdline)| cmdline.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(pid, _)| pid.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_token_is_shown_once_refused_twice_and_goes_unused_enrolled_revoked_without_leaking() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let port_text = port.to_string();
    let file = join_token(&procs, port, "edge", &[]);
    let secret = secret_of(&file);
    let out = rill().args(["token", "create", "edge", "--coordinator-port", &port_text]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a duplicate name is refused: {stderr}");
    assert!(stderr.contains("a token named edge exists already"), "{stderr}");
    assert_eq!(token(port, "edge")["state"], "unused");
    let human = rill().args(["token", "list", "--coordinator-port", &port_text]).output().expect("run");
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.lines().any(|l| l.starts_with("edge") && l.contains("unused")), "{human}");
    assert!(!human.contains(&secret), "the list never shows the secret");

    let cache = procs.dir.path().join("cache-edge");
    procs.start_command("daemon", daemon(port, "edge-1", &file, &cache));
    wait_status(&procs, port, "edge-1 enrolled", Duration::from_secs(15), |v| machines(v) == ["edge-1"]);
    let enrolled = token(port, "edge");
    assert_eq!(enrolled["state"], "enrolled", "{enrolled}");
    assert_eq!(enrolled["machine_id"], "edge-1", "{enrolled}");
    assert!(enrolled["key_fingerprint"].as_str().is_some_and(|k| k.starts_with("sha256:")), "{enrolled}");

    // The secret is in no command line, no log, and no file but the token file.
    assert_eq!(cmdlines_containing(&secret), Vec::<String>::new(), "a process shows the secret in its argv");
    let leaks: Vec<PathBuf> = [procs.dir.path().to_owned(), crate::support::xdg_home()]
        .iter()
        .flat_map(|dir| files_containing(dir, secret.as_bytes()))
        .filter(|path| path != &file)
        .collect();
    assert!(leaks.is_empty(), "the secret is in {leaks:?}\n{}", procs.logs());

    let revoke = |json: bool| {
        let mut args = vec!["token", "revoke", "edge", "--coordinator-port", &port_text];
        if json {
            args.push("--json");
        }
        let out = rill().args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(revoke(false).contains("revoked token edge; disconnected daemon edge-1-"), "the daemon is named");
    let again: serde_json::Value = serde_json::from_str(&revoke(true)).expect("json");
    assert_eq!(again["changed"], false, "revoking twice is fine and changes nothing: {again}");
    assert_eq!(procs.wait_exit("daemon", Duration::from_secs(15)), Some(6), "exit code 6: revoked\n{}", procs.logs());
    assert!(procs.log("daemon").contains("(revoked): token edge was revoked"), "{}", procs.logs());
    assert_eq!(token(port, "edge")["state"], "revoked");
    // A revoked token enrolls nothing.
    procs.start_command("again", daemon(port, "edge-2", &file, &procs.dir.path().join("cache-2")));
    assert_eq!(procs.wait_exit("again", Duration::from_secs(15)), Some(6), "{}", procs.logs());
    // A new token brings the revoked machine back, same cache dir, new key.
    let renewed = join_token(&procs, port, "edge-renewed", &[]);
    procs.start_command("renewed", daemon(port, "edge-1", &renewed, &cache));
    wait_status(&procs, port, "edge-1 back with a new token", Duration::from_secs(15), |v| machines(v) == ["edge-1"]);
    let renewed = token(port, "edge-renewed");
    assert_eq!(renewed["state"], "enrolled", "{renewed}");
    assert_ne!(renewed["key_fingerprint"], enrolled["key_fingerprint"], "a new key for the new token");
}

#[test]
fn an_unused_token_past_its_ttl_cannot_enroll() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let file = join_token(&procs, port, "brief", &["--ttl", "2s"]);
    wait_token(&procs, port, "brief", "expired", Duration::from_secs(10));
    procs.start_command("daemon", daemon(port, "late", &file, &procs.dir.path().join("cache")));
    assert_eq!(procs.wait_exit("daemon", Duration::from_secs(15)), Some(7), "exit code 7: expired\n{}", procs.logs());
    assert!(procs.log("daemon").contains("token brief has expired"), "{}", procs.logs());
    assert!(machines(&crate::support::status(port).unwrap_or_default()).is_empty());
}

#[test]
fn enrollment_binds_a_token_to_one_machine_and_its_cache_dir() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let file = join_token(&procs, port, "edge", &["--labels", "gpu=true"]);
    let cache = procs.dir.path().join("cache-a");
    procs.start_command("daemon", daemon(port, "edge", &file, &cache));
    let status = wait_status(&procs, port, "edge enrolled", Duration::from_secs(15), |v| machines(v) == ["edge"]);
    let shown = &status["daemons"][0];
    assert_eq!(shown["labels"]["gpu"], "true", "the token's labels are the daemon's: {shown}");
    assert_eq!(shown["version"], env!("CARGO_PKG_VERSION"), "{shown}");
    let platform = format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH);
    assert_eq!(shown["platform"], platform, "{shown}");
    let key = wait_token(&procs, port, "edge", "enrolled", Duration::from_secs(5))["key_fingerprint"].clone();

    // Restarted with the same cache dir: the same member, by certificate.
    procs.signal("daemon", libc::SIGTERM);
    assert_eq!(procs.wait_exit("daemon", Duration::from_secs(15)), Some(0), "{}", procs.logs());
    procs.start_command("daemon-again", daemon(port, "edge", &file, &cache));
    wait_status(&procs, port, "edge back", Duration::from_secs(15), |v| machines(v) == ["edge"]);
    assert_eq!(token(port, "edge")["key_fingerprint"], key, "the same key");

    // Another cache dir (another machine, or a temporary one): refused for good.
    procs.start_command("other", daemon(port, "edge", &file, &procs.dir.path().join("cache-b")));
    assert_eq!(procs.wait_exit("other", Duration::from_secs(15)), Some(8), "exit 8: already bound\n{}", procs.logs());
    assert!(procs.log("other").contains("already bound to another machine"), "{}", procs.logs());
    // The same identity twice at once: the second is refused, the first stays.
    procs.start_command("twin", daemon(port, "edge", &file, &cache));
    assert_eq!(
        procs.wait_exit("twin", Duration::from_secs(15)),
        Some(2),
        "exit 2: already_connected\n{}",
        procs.logs()
    );
    assert!(crate::support::alive(procs.pid("daemon-again")), "the first is unaffected\n{}", procs.logs());
    wait_status(&procs, port, "edge still there", Duration::from_secs(5), |v| machines(v) == ["edge"]);

    // Another token cannot take over an enrolled machine id (and its nodes).
    let thief = join_token(&procs, port, "thief", &[]);
    procs.start_command("thief", daemon(port, "edge", &thief, &procs.dir.path().join("cache-thief")));
    assert_eq!(procs.wait_exit("thief", Duration::from_secs(15)), Some(8), "{}", procs.logs());
    assert!(procs.log("thief").contains("machine edge is enrolled with token edge"), "{}", procs.logs());
    // The token and the (public) key are not enough: the enrolling daemon
    // proves it holds the private key.
    let joined: rill_auth::JoinToken = std::fs::read_to_string(&file).expect("token").parse().expect("token");
    let victim =
        rill_auth::enroll::DaemonKey::load_or_create(&cache.join("identity").join(&joined.ca.hex()[..16]).join("edge"))
            .expect("the enrolled key");
    let forger = rill_auth::enroll::DaemonKey::ephemeral().expect("key");
    let dial = rill_auth::dial::Dial {
        addr: format!("127.0.0.1:{port}"),
        tls: Some(rill_auth::tls::client_config(joined.ca, None).expect("TLS")),
        bearer: Some(joined.expose()),
    };
    let reply = first_reply(
        &dial,
        serde_json::json!({"type": "register",
        "protocol": rill_proto::coord::COORD_PROTOCOL_VERSION, "version": "0", "machine_id": "edge", "labels": {},
        "enroll_key": victim.public_hex(), "enroll_proof": forger.prove("edge", "edge", &joined.ca).expect("proof")}),
    );
    assert!(reply.contains("unauthorized") && reply.contains("did not prove it holds its key"), "{reply}");

    // A label the token does not grant cannot be claimed.
    let cam = join_token(&procs, port, "cam", &["--labels", "camera=true"]);
    let mut greedy = daemon(port, "cam", &cam, &procs.dir.path().join("cache-cam"));
    greedy.args(["--labels", "gpu=true"]);
    procs.start_command("greedy", greedy);
    assert_eq!(procs.wait_exit("greedy", Duration::from_secs(15)), Some(4), "{}", procs.logs());
    assert!(procs.log("greedy").contains("label gpu=true is not granted by token cam"), "{}", procs.logs());
}

#[test]
fn a_token_that_expires_while_connected_disconnects_its_daemon_for_good() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let file = join_token(&procs, port, "short", &["--ttl", "4s"]);
    procs.start_command("daemon", daemon(port, "edge", &file, &procs.dir.path().join("cache")));
    wait_status(&procs, port, "edge enrolled", Duration::from_secs(15), |v| machines(v) == ["edge"]);
    assert_eq!(procs.wait_exit("daemon", Duration::from_secs(20)), Some(7), "exit 7: expired\n{}", procs.logs());
    assert!(procs.log("daemon").contains("(expired): token short has expired"), "{}", procs.logs());
    assert_eq!(token(port, "short")["state"], "expired");
    wait_status(&procs, port, "edge gone", Duration::from_secs(10), |v| machines(v).is_empty());
}

#[test]
fn a_token_that_expires_while_its_daemon_is_cut_off_is_refused_when_it_returns() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let file = join_token(&procs, port, "short", &["--ttl", "6s"]);
    let relay = Relay::to(port);
    procs.start_command("daemon", daemon(relay.port, "edge", &file, &procs.dir.path().join("cache")));
    wait_status(&procs, port, "edge enrolled", Duration::from_secs(15), |v| machines(v) == ["edge"]);
    relay.partition();
    wait_token(&procs, port, "short", "expired", Duration::from_secs(15));
    relay.heal();
    assert_eq!(procs.wait_exit("daemon", Duration::from_secs(30)), Some(7), "exit 7: expired\n{}", procs.logs());
    assert!(procs.log("daemon").contains("token short has expired"), "{}", procs.logs());
}

/// Registers over a fresh daemon connection with `register`; the first reply.
fn first_reply(dial: &rill_auth::dial::Dial, register: serde_json::Value) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        let mut ws = rill_auth::dial::websocket(dial, "/api/daemon").await.expect("connect");
        ws.send(tokio_tungstenite::tungstenite::Message::Text(register.to_string().into())).await.expect("send");
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => text.to_string(),
            other => panic!("no reply: {other:?}"),
        }
    })
}

/// A fake coordinator on `listener` that answers the first daemon with
/// `reply` (JSON).
async fn answer_once(listener: tokio::net::TcpListener, reply: &str) {
    use futures_util::{SinkExt, StreamExt};
    let (tcp, _) = listener.accept().await.expect("the daemon connects");
    let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("websocket");
    let _register = ws.next().await;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(reply.into())).await.expect("send");
    let _ = ws.next().await;
}

#[test]
fn another_protocol_is_refused_and_stops_the_daemon_cleanly() {
    // A daemon told protocol_mismatch exits with its code, at once.
    let mut procs = Processes::new();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let fake = listener.local_addr().expect("addr").port().to_string();
    let made_up = format!("rill1.a.{}.{}", "1".repeat(64), "0".repeat(64));
    let mut cmd = rill();
    cmd.args(["daemon", "--machine-id", "a", "--coordinator-port", &fake, "--insecure-plaintext"]);
    cmd.env("RILL_JOIN_TOKEN", &made_up).arg("--cache-dir").arg(procs.dir.path().join("cache"));
    procs.start_command("daemon", cmd);
    let mismatch = r#"{"type":"error","code":"protocol_mismatch","message":"this coordinator speaks protocol 99"}"#;
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), answer_once(listener, mismatch)).await })
        .unwrap_or_else(|_| panic!("the daemon did not connect\n{}", procs.logs()));
    assert_eq!(procs.wait_exit("daemon", Duration::from_secs(15)), Some(3), "exit 3\n{}", procs.logs());
    assert!(procs.log("daemon").contains("(protocol_mismatch)"), "{}", procs.logs());

    // A daemon of another protocol is refused before it enrolls anything.
    let port = coordinator(&mut procs, &[]);
    let file = join_token(&procs, port, "old", &[]);
    let joined: rill_auth::JoinToken = std::fs::read_to_string(&file).expect("token").parse().expect("token");
    let dial = rill_auth::dial::Dial {
        addr: format!("127.0.0.1:{port}"),
        tls: Some(rill_auth::tls::client_config(joined.ca, None).expect("TLS")),
        bearer: Some(joined.expose()),
    };
    let key = rill_auth::enroll::DaemonKey::ephemeral().expect("key");
    let reply = first_reply(
        &dial,
        serde_json::json!({"type": "register", "protocol": 3, "version": "0.0.1",
        "machine_id": "old", "labels": {}, "enroll_key": key.public_hex(),
        "enroll_proof": key.prove("old", "old", &joined.ca).expect("proof")}),
    );
    assert!(reply.contains("protocol_mismatch"), "{reply}");
    assert_eq!(token(port, "old")["state"], "unused", "nothing was enrolled");
}

/// A TLS server with a CA of its own (someone posing as the coordinator):
/// it reports how many bytes of application data it received.
async fn impostor(listener: tokio::net::TcpListener) -> usize {
    use tokio::io::AsyncReadExt;
    let ca = rill_auth::ClusterCa::generate().expect("CA");
    let issued = ca.issue_server(&["127.0.0.1".into()]).expect("certificate");
    let config = rill_auth::tls::server_config(&ca, &issued).expect("TLS");
    let (tcp, _) = listener.accept().await.expect("the CLI connects");
    let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else { return 0 };
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut received)).await;
    received.len()
}

#[test]
fn tls_pins_the_cluster_ca_and_control_needs_the_admin_token() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let port_text = port.to_string();
    let status = crate::support::status(port).expect("status");
    let fingerprint = status["ca_fingerprint"].as_str().expect("fingerprint").to_owned();
    assert_eq!(status["transport"], "tls");
    assert!(procs.log("coordinator").contains(&format!("cluster CA fingerprint {fingerprint}")), "{}", procs.logs());
    let admin = crate::support::admin_dial(port).bearer.expect("admin token");

    // Elsewhere (no CLI config, no local state): the fingerprint and the
    // token, given, are enough.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let away = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rill"));
        cmd.args(args).env("XDG_DATA_HOME", elsewhere.path()).env("XDG_CONFIG_HOME", elsewhere.path());
        cmd
    };
    let pinned = ["status", "--coordinator-port", &port_text, "--coordinator-fingerprint", &fingerprint];
    let out = away(&pinned).env("RILL_TOKEN", &admin).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("transport TLS, cluster CA {fingerprint}")), "{stdout}");
    // No token: 401, and the CLI says where it looked.
    let out = away(&pinned).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the credential: no credential"), "{stderr}");
    assert!(stderr.contains("looked in --token-file, RILL_TOKEN"), "{stderr}");
    let out = away(&pinned).env("RILL_TOKEN", "ab".repeat(32)).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wrong admin token") && stderr.contains("sent the admin token from RILL_TOKEN"),
        "{stderr}"
    );

    // Someone else's server: refused in the handshake, before the token is
    // sent. (A worker thread serves it while this one waits for the CLI.)
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let impostor_port = listener.local_addr().expect("addr").port().to_string();
    let server = runtime.spawn(impostor(listener));
    let fooled = ["status", "--coordinator-port", &impostor_port, "--coordinator-fingerprint", &fingerprint];
    let out = away(&fooled).env("RILL_TOKEN", &admin).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not be verified") && stderr.contains("not from the pinned cluster CA"), "{stderr}");
    let received = runtime.block_on(server).expect("impostor");
    assert_eq!(received, 0, "the impostor received {received} bytes of application data");

    // Plaintext clients are refused with a reason.
    let out = away(&["status", "--coordinator-port", &port_text, "--insecure-plaintext"])
        .env("RILL_TOKEN", &admin)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serves HTTPS and WSS only"), "{stderr}");
    // Anonymous control and daemon routes: 401.
    for path in ["/api/control", "/api/daemon"] {
        let anonymous = rill_auth::dial::Dial { bearer: None, ..crate::support::admin_dial(port) };
        let refused = runtime.block_on(rill_auth::dial::websocket(&anonymous, path)).err().expect("refused");
        assert_eq!(refused.status(), Some(401), "{path}: {refused}");
    }
}

#[test]
fn an_insecure_plaintext_cluster_works_and_says_it_is_insecure() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &["--insecure-plaintext"]);
    let port_text = port.to_string();
    assert!(procs.log("coordinator").contains("WARNING: --insecure-plaintext"), "{}", procs.logs());
    // On the coordinator's machine, its daemon and the CLI follow it without a flag.
    procs.start("daemon", &["daemon", "--machine-id", "a", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "a registered", Duration::from_secs(15), |v| machines(v) == ["a"]);
    let out = rill().args(["status", "--coordinator-port", &port_text]).output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("transport plaintext"), "{}", procs.logs());
    // A fingerprint given explicitly means TLS: the token is not sent in clear.
    let fingerprint = format!("sha256:{}", "0".repeat(64));
    let out = rill()
        .args(["status", "--coordinator-port", &port_text, "--coordinator-fingerprint", &fingerprint])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("does not speak TLS"),
        "{:?} {stderr} {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        procs.logs()
    );
}

#[test]
fn a_daemon_cannot_report_on_another_daemons_nodes() {
    use futures_util::SinkExt;
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let port_text = port.to_string();
    procs.start("daemon-a", &["daemon", "--machine-id", "a", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "a registered", Duration::from_secs(15), |v| machines(v) == ["a"]);
    let flow = Flow::new("nodes:\n  - id: w\n    path: {node}\n    args: [wait-stop]\n    deploy: { machine: a }\n");
    let (code, started, stderr) = rill_json(&[
        "start",
        &flow.file.display().to_string(),
        "--name",
        "app",
        "--json",
        "--coordinator-port",
        &port_text,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let uuid = started["uuid"].as_str().expect("uuid").to_owned();
    procs.wait_log("daemon-a", "w runs", Duration::from_secs(20), |l| l.contains("[app/w] waiting"));
    // Daemon x (a real credential, another machine) lies about w.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _liar = runtime.block_on(async {
        use tokio_tungstenite::tungstenite::Message;
        let mut ws = rill_auth::dial::websocket(&crate::support::admin_dial(port), "/api/daemon").await.expect("x");
        let register = serde_json::json!({"type": "register", "protocol": rill_proto::coord::COORD_PROTOCOL_VERSION,
            "version": "0", "machine_id": "x", "labels": {}});
        let failed = serde_json::json!({"type": "node_status", "uuid": uuid, "node": "w",
            "status": {"state": "failed", "reason": "forged"}});
        let log = serde_json::json!({"type": "log", "uuid": uuid, "node": "w", "stream": "stdout", "line": "FORGED"});
        for msg in [register, failed, log] {
            ws.send(Message::Text(msg.to_string().into())).await.expect("send");
        }
        ws
    });
    procs.wait_log("coordinator", "the lie refused", Duration::from_secs(10), |l| {
        l.contains("refused a status from x-")
    });
    let (_, list, _) = rill_json(&["list", "--json", "--coordinator-port", &port_text]);
    assert_eq!(list["dataflows"][0]["status"], "running", "{list}");
    assert_eq!(list["dataflows"][0]["nodes"]["w"]["state"], "running", "{list}");
    let logs = rill().args(["logs", "app", "--coordinator-port", &port_text]).output().expect("run");
    assert!(!String::from_utf8_lossy(&logs.stdout).contains("FORGED"), "a forged line was kept");
}

/// A Zenoh peer that dials `endpoint` (trusting `ca_pem`, if given, so it
/// accepts the daemon, and presenting `identity` (key, certificate files),
/// if given) and counts what it gets on every rill key.
fn intruder(
    endpoint: &str,
    ca_pem: Option<&str>,
    identity: Option<(&Path, &Path)>,
) -> (zenoh::Session, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use zenoh::Wait;
    let mut config = zenoh::Config::default();
    let mut set = |key: &str, value: String| config.insert_json5(key, &value).expect(key);
    set("mode", "\"peer\"".into());
    set("scouting/multicast/enabled", "false".into());
    set("connect/endpoints", format!("[\"{endpoint}\"]"));
    set("connect/timeout_ms", "-1".into());
    set("connect/exit_on_failure", "false".into());
    if let Some(ca) = ca_pem {
        let path = std::env::temp_dir().join(format!("rill-intruder-ca-{}.pem", std::process::id()));
        std::fs::write(&path, ca).expect("CA file");
        let path = serde_json::to_string(&path.display().to_string()).expect("json");
        set("transport/link/tls/root_ca_certificate", path);
    }
    if let Some((key, cert)) = identity {
        let json = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("json");
        set("transport/link/tls/connect_private_key", json(key));
        set("transport/link/tls/connect_certificate", json(cert));
    }
    let session = zenoh::open(config).wait().expect("zenoh session");
    let got = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // In the background: it lives as long as the session.
    let counter = got.clone();
    session
        .declare_subscriber("rill/**")
        .callback(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .background()
        .wait()
        .expect("subscriber");
    (session, got)
}

#[test]
fn a_zenoh_peer_without_a_cluster_certificate_gets_nothing_from_the_data_plane() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let port_text = port.to_string();
    let data_port = free_port().to_string();
    procs.start(
        "daemon-a",
        &["daemon", "--machine-id", "a", "--coordinator-port", &port_text, "--data-port", &data_port],
    );
    procs.start("daemon-b", &["daemon", "--machine-id", "b", "--coordinator-port", &port_text]);
    wait_status(&procs, port, "two daemons", Duration::from_secs(15), |v| machines(v).len() == 2);
    let state = crate::support::xdg_home().join(format!("data/rill/coordinator-{port}"));
    // Trusting both CAs: whichever signed the daemon's certificate, the
    // intruder accepts it (it is the intruder's own side that must fail).
    let ca = ["data-ca.pem", "ca.pem"].map(|f| std::fs::read_to_string(state.join(f)).expect("a CA")).concat();
    // An enrolled daemon's certificate (from the cluster CA, on disk) opens
    // only the coordinator, not the data plane.
    let file = join_token(&procs, port, "c", &[]);
    let cache = procs.dir.path().join("cache-c");
    procs.start_command("daemon-c", daemon(port, "c", &file, &cache));
    wait_status(&procs, port, "three daemons", Duration::from_secs(15), |v| machines(v).len() == 3);
    let joined: rill_auth::JoinToken = std::fs::read_to_string(&file).expect("token").parse().expect("token");
    let enrolled = cache.join("identity").join(&joined.ca.hex()[..16]).join("c");
    // One without TLS, one with TLS that trusts the data CA but has no
    // certificate, one with the enrollment certificate.
    let endpoint = format!("tls/127.0.0.1:{data_port}");
    let (_plain, plain_got) = intruder(&format!("tcp/127.0.0.1:{data_port}"), None, None);
    let (_tls, tls_got) = intruder(&endpoint, Some(&ca), None);
    let identity = (enrolled.join("daemon.key"), enrolled.join("daemon.pem"));
    let (_member, member_got) = intruder(&endpoint, Some(&ca), Some((&identity.0, &identity.1)));
    let flow = Flow::new(
        "nodes:\n  - id: source\n    path: {node}\n    args: [flood, '8']\n    outputs: [out]\n    deploy: { machine: a }\n  - id: sink\n    path: {node}\n    args: [slow, '1']\n    inputs: { in: source/out }\n    deploy: { machine: b }\n",
    );
    let (code, _, stderr) =
        rill_json(&["start", &flow.file.display().to_string(), "--name", "app", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(0), "{stderr}");
    // The data flows between the daemons (over their mutual TLS) ...
    procs.wait_log("daemon-b", "the sink receives", Duration::from_secs(30), |l| {
        l.matches("[app/sink] seq").count() >= 500
    });
    // ... and not to the intruders, during all of that and a while more.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let count = |got: &std::sync::atomic::AtomicUsize| got.load(std::sync::atomic::Ordering::Relaxed);
        let got = (count(&plain_got), count(&tls_got), count(&member_got));
        assert_eq!(got, (0, 0, 0), "an intruder received data (plain, tls, enrolled cert)\n{}", procs.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nodes_do_not_inherit_the_daemons_credentials() {
    let mut procs = Processes::new();
    let port = coordinator(&mut procs, &[]);
    let port_text = port.to_string();
    let file = join_token(&procs, port, "edge", &[]);
    let token = std::fs::read_to_string(&file).expect("token");
    let mut cmd = rill();
    cmd.args(["daemon", "--machine-id", "edge", "--coordinator-port", &port_text])
        .arg("--cache-dir")
        .arg(procs.dir.path().join("cache"))
        .env("RILL_JOIN_TOKEN", token.trim())
        .env("RILL_TOKEN", "ab".repeat(32));
    procs.start_command("daemon", cmd);
    wait_status(&procs, port, "edge enrolled", Duration::from_secs(15), |v| machines(v) == ["edge"]);
    let flow =
        Flow::new("nodes:\n  - id: env\n    path: /usr/bin/env\n    build: env\n    deploy: { machine: edge }\n");
    let (code, _, stderr) =
        rill_json(&["start", &flow.file.display().to_string(), "--name", "app", "--coordinator-port", &port_text]);
    assert_eq!(code, Some(0), "{stderr}");
    procs.wait_log("daemon", "the node printed its environment", Duration::from_secs(20), |l| {
        l.contains("[app/env] RILL_NODE_ID=env")
    });
    let log = procs.log("daemon");
    assert!(
        !log.contains("RILL_JOIN_TOKEN") && !log.contains("RILL_TOKEN"),
        "a credential reached the node or its build:\n{log}"
    );
}

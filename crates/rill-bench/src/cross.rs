//! `rill-bench latency --cross`: the same ping/pong dataflow with ping on
//! daemon `a` and pong on daemon `b`, a coordinator and both daemons in this
//! process, data between them over the real bridge (Zenoh on loopback); the
//! baseline is a raw TCP ping-pong on loopback in the same run.

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rill_coordinator::client::ControlClient;
use rill_daemon::local::LocalEvent;
use rill_daemon::net::{ConnectionEvent, DaemonConfig};
use rill_proto::coord::{ControlRequest, ControlResponse};

/// Runs `yaml` (nodes placed on machines `a` and `b`) on two daemons and
/// collects the `RESULT` lines its nodes print (`expected` of them).
pub fn run(yaml: &str, expected: usize, plaintext: bool) -> anyhow::Result<Vec<serde_json::Value>> {
    let bin_dir = rill_bench::bin_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let results: Arc<Mutex<Vec<String>>> = Arc::default();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        // The default security: TLS, the CA pinned, the admin token.
        let identity = rill_auth::CoordinatorIdentity::ephemeral(&["127.0.0.1".into()])?;
        // (`--insecure-plaintext`: neither the control plane nor the data links.)
        let tls = match plaintext {
            true => None,
            false => Some(rill_auth::tls::client_config(identity.ca.fingerprint(), None)?),
        };
        let dial = rill_auth::dial::Dial { addr: addr.clone(), tls, bearer: Some(identity.admin.expose()) };
        let security = rill_coordinator::Security { identity: Arc::new(identity), plaintext };
        tokio::spawn(rill_coordinator::serve_on(listener, rill_coordinator::Store::Memory, Default::default(), security));
        for machine in ["a", "b"] {
            let config = DaemonConfig {
                machine_id: Some(machine.into()),
                labels: Default::default(),
                coordinator: Arc::new(rill_daemon::access::Access::fixed(dial.clone())),
                data_port: 0,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                artifact_dir: None,
            };
            let (results, failure) = (results.clone(), failure.clone());
            // No shutdown signal (the sender is dropped): the benchmark ends
            // with its runtime.
            let (_, shutdown) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(rill_daemon::net::run(config, shutdown, move |event| match event {
                ConnectionEvent::Local(LocalEvent::Log { line, stderr: false, .. }) => {
                    if let Some(json) = line.strip_prefix("RESULT ")
                        && let Ok(mut r) = results.lock()
                    {
                        r.push(json.to_owned());
                    }
                }
                ConnectionEvent::Local(LocalEvent::Log { node, line, stderr: true, .. }) => {
                    eprintln!("[{node}] {line}")
                }
                ConnectionEvent::Local(LocalEvent::Ended { success: false, summary, .. }) => {
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(summary);
                    }
                }
                _ => {}
            }));
        }
        let mut client = ControlClient::connect(&dial).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let ControlResponse::Status { daemons, .. } = client.request(&ControlRequest::Status).await?
                && daemons.len() == 2
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the two daemons did not register within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let descriptor = rill_core::Dataflow::parse(yaml, "bench.yml".as_ref()).map_err(|d| anyhow::anyhow!("{d}"))?;
        let start = ControlRequest::Start {
            descriptor,
            name: Some("bench".into()),
            base_dir: bin_dir.display().to_string(),
            dry_run: false, wait_ms: None };
        client.request(&start).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if results.lock().map(|r| r.len()).unwrap_or(0) >= expected {
                break;
            }
            if let Some(summary) = failure.lock().ok().and_then(|f| f.clone()) {
                bail!("the benchmark dataflow failed: {summary}");
            }
            if Instant::now() > deadline {
                bail!("no results within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = client.request(&ControlRequest::Stop { dataflow: "bench".into() }).await;
        Ok::<_, anyhow::Error>(())
    })?;
    // Leave the daemons' nodes a moment to stop before the runtime goes.
    std::thread::sleep(Duration::from_millis(300));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let lines = results.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    lines.iter().map(|l| serde_json::from_str(l).context("bad RESULT line")).collect()
}

/// p50 one-way latency (round trip / 2) of a raw TCP ping-pong on loopback.
pub fn tcp_baseline(size: usize, iters: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        rill_bench::echo(stream, size);
        Ok(())
    });
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let p50 = rill_bench::ping_pong(stream, size, iters)?;
    let _ = echo.join();
    Ok(p50)
}

/// p50 one-way latency of a ping-pong over TLS on loopback, with the
/// cluster's rustls settings (ring, TLS 1.3, a P-256 certificate from a
/// cluster CA): one hop of an encrypted link, and nothing else.
pub fn tls_baseline(size: usize, iters: usize) -> anyhow::Result<f64> {
    let ca = rill_auth::ClusterCa::generate()?;
    let issued = ca.issue_server(&["127.0.0.1".into()])?;
    let server = rill_auth::tls::server_config(&ca, &issued)?;
    let client = rill_auth::tls::client_config(ca.fingerprint(), None)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let conn = rustls::ServerConnection::new(server)?;
        rill_bench::echo(rustls::StreamOwned::new(conn, stream), size);
        Ok(())
    });
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let conn = rustls::ClientConnection::new(client, name)?;
    let p50 = rill_bench::ping_pong(rustls::StreamOwned::new(conn, stream), size, iters)?;
    let _ = echo.join();
    Ok(p50)
}

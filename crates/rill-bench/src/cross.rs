//! `rill-bench latency --cross`: the same ping/pong dataflow with ping on
//! daemon `a` and pong on daemon `b`, a coordinator and both daemons in this
//! process, data between them over the real bridge (Zenoh on loopback); the
//! baseline is a raw TCP ping-pong on loopback in the same run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rill_coordinator::client::ControlClient;
use rill_daemon::local::LocalEvent;
use rill_daemon::net::{ConnectionEvent, DaemonConfig};
use rill_proto::coord::{ControlRequest, ControlResponse};

/// Runs `yaml` (nodes placed on machines `a` and `b`) on two daemons and
/// collects the `RESULT` lines its nodes print (`expected` of them), each
/// with the `node` that printed it.
pub fn run(yaml: &str, expected: usize, plaintext: bool) -> anyhow::Result<Vec<serde_json::Value>> {
    run_tapped(yaml, expected, plaintext, None).map(|(results, _)| results)
}

/// What a tap read during [`run_tapped`].
#[derive(Debug, Default, Clone, Copy)]
pub struct TapSeen {
    pub samples: u64,
    /// Samples the tap skipped (it could not keep up).
    pub dropped: u64,
}

/// [`run`], with a tap on `tap`'s outputs (`node/output`, 64-byte
/// previews) from right after the start, read and counted as `rill topic
/// echo` would read it.
pub fn run_tapped(
    yaml: &str,
    expected: usize,
    plaintext: bool,
    tap: Option<&[String]>,
) -> anyhow::Result<(Vec<serde_json::Value>, TapSeen)> {
    let seen: Arc<Mutex<TapSeen>> = Arc::default();
    let bin_dir = rill_bench::bin_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let results: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
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
        tokio::spawn(rill_coordinator::serve_on(
            listener,
            rill_coordinator::Store::Memory,
            Default::default(),
            security,
        ));
        for machine in ["a", "b"] {
            let config = DaemonConfig {
                machine_id: Some(machine.into()),
                labels: Default::default(),
                coordinator: Arc::new(rill_daemon::access::Access::fixed(dial.clone())),
                data_port: 0,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                artifact_dir: None,
                source_dir: None,
            };
            let (results, failure) = (results.clone(), failure.clone());
            // No shutdown signal (the sender is dropped): the benchmark ends
            // with its runtime.
            let (_, shutdown) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(rill_daemon::net::run(config, shutdown, move |event| match event {
                ConnectionEvent::Local(LocalEvent::Log { node, line, stderr: false, .. }) => {
                    if let Some(json) = line.strip_prefix("RESULT ")
                        && let Ok(mut r) = results.lock()
                    {
                        r.push((node, json.to_owned()));
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
            dry_run: false,
            wait_ms: None,
        };
        client.request(&start).await?;
        if let Some(outputs) = tap {
            let mut tap_client = ControlClient::connect(&dial).await?;
            let every_us = rill_proto::tap::TAP_EVERY_US;
            let request =
                ControlRequest::Tap { dataflow: "bench".into(), outputs: outputs.to_vec(), preview: 64, every_us };
            tap_client.request(&request).await?;
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok(rill_coordinator::client::Frame::Tap(bytes)) = tap_client.next_frame().await {
                    if let (Ok(frame), Ok(mut seen)) = (rill_proto::tap::TapFrame::decode(&bytes), seen.lock()) {
                        seen.samples += frame.samples.len() as u64;
                        seen.dropped += frame.dropped;
                    }
                }
            });
        }
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
    let results = lines
        .iter()
        .map(|(node, line)| {
            let mut value: serde_json::Value = serde_json::from_str(line).context("bad RESULT line")?;
            value["node"] = serde_json::json!(node);
            Ok(value)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seen = *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok((results, seen))
}

/// The link between the two relays of [`relay_baseline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Tcp,
    /// TLS with the data plane's rustls settings (see [`tls_baseline`]).
    Tls,
}

/// p50 one-way latency (round trip / 2) of the floor of the bridge's
/// architecture, three hops each way: ping → Unix socket → relay → TCP or
/// TLS on loopback → relay → Unix socket → an echo process, and back. Each
/// relay is a thread that blocks on its sockets, as the daemons' bridge
/// threads do; the echo runs in a process of its own, as the pong node does.
pub fn relay_baseline(size: usize, iters: usize, link: Link) -> anyhow::Result<f64> {
    let (ping_end, near_unix) = UnixStream::pair()?;
    let (echo_end, far_unix) = UnixStream::pair()?;
    let mut echo = std::process::Command::new(std::env::current_exe()?)
        .args(["echo-server", &size.to_string()])
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(echo_end)))
        .spawn()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let tls = match link {
        Link::Tcp => None,
        Link::Tls => Some(loopback_tls()?),
    };
    let server = tls.as_ref().map(|(server, _)| server.clone());
    let far = std::thread::spawn(move || -> anyhow::Result<()> {
        let (stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        match server {
            None => relay(far_unix, stream, size, false),
            Some(config) => {
                relay(far_unix, rustls::StreamOwned::new(rustls::ServerConnection::new(config)?, stream), size, false)
            }
        }
        Ok(())
    });
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let near = match tls {
        None => std::thread::spawn(move || relay(near_unix, stream, size, true)),
        Some((_, client)) => {
            let stream = tls_client(client, stream)?;
            std::thread::spawn(move || relay(near_unix, stream, size, true))
        }
    };
    let p50 = rill_bench::ping_pong(ping_end, size, iters);
    // The ping's end is closed: each relay in turn sees the end.
    let _ = near.join();
    let _ = far.join();
    let _ = echo.wait();
    Ok(p50?)
}

/// Forwards `size`-byte messages between a Unix socket and the link, one
/// at a time each way (a ping-pong): the near relay reads the ping's Unix
/// socket first, the far one the link. Returns when either side ends.
fn relay(mut unix: UnixStream, mut link: impl Read + Write, size: usize, near: bool) {
    let mut buf = vec![0u8; size];
    let forward = |from: &mut dyn Read, to: &mut dyn Write, buf: &mut [u8]| {
        from.read_exact(buf).is_ok() && to.write_all(buf).is_ok() && to.flush().is_ok()
    };
    // The far relay first passes the ping on; then both answer in turn.
    if !near && !forward(&mut link, &mut unix, &mut buf) {
        return;
    }
    while forward(&mut unix, &mut link, &mut buf) && forward(&mut link, &mut unix, &mut buf) {}
}

/// MB/s of `count` messages of `size` bytes streamed one way over one
/// loopback hop (TCP, or TLS with the data plane's settings), from the
/// first write to the last byte read.
pub fn stream_baseline(size: usize, count: usize, link: Link) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let configs = match link {
        Link::Tcp => None,
        Link::Tls => Some(loopback_tls()?),
    };
    let server = configs.as_ref().map(|(server, _)| server.clone());
    let reader = std::thread::spawn(move || -> anyhow::Result<Instant> {
        let (stream, _) = listener.accept()?;
        let mut buf = vec![0u8; size];
        let mut read_all = |mut from: Box<dyn Read>| -> std::io::Result<()> {
            for _ in 0..count {
                from.read_exact(&mut buf)?;
            }
            Ok(())
        };
        match server {
            None => read_all(Box::new(stream))?,
            Some(config) => {
                read_all(Box::new(rustls::StreamOwned::new(rustls::ServerConnection::new(config)?, stream)))?
            }
        }
        Ok(Instant::now())
    });
    let stream = TcpStream::connect(addr)?;
    let payload = vec![1u8; size];
    let mut writer: Box<dyn Write> = match configs {
        None => Box::new(stream),
        Some((_, client)) => Box::new(tls_client(client, stream)?),
    };
    // (The TLS handshake completes with the first write, before the clock starts.)
    writer.write_all(&[])?;
    writer.flush()?;
    let start = Instant::now();
    for _ in 0..count {
        writer.write_all(&payload)?;
    }
    writer.flush()?;
    let end = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    drop(writer);
    Ok((size * count) as f64 / end.duration_since(start).as_secs_f64() / 1e6)
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
    let (server, client) = loopback_tls()?;
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
    let p50 = rill_bench::ping_pong(tls_client(client, stream)?, size, iters)?;
    let _ = echo.join();
    Ok(p50)
}

/// Server and client TLS settings as the cluster's (ring, TLS 1.3, a P-256
/// certificate from a fresh cluster CA) for a server on 127.0.0.1.
fn loopback_tls() -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
    let ca = rill_auth::ClusterCa::generate()?;
    let issued = ca.issue_server(&["127.0.0.1".into()])?;
    Ok((rill_auth::tls::server_config(&ca, &issued)?, rill_auth::tls::client_config(ca.fingerprint(), None)?))
}

/// The client end of a TLS connection to 127.0.0.1 over `stream`.
fn tls_client(
    config: Arc<rustls::ClientConfig>,
    stream: TcpStream,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    Ok(rustls::StreamOwned::new(rustls::ClientConnection::new(config, name)?, stream))
}

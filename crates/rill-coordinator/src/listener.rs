//! The coordinator's port: TCP, then TLS (unless `--insecure-plaintext`),
//! handed to axum with who the peer is (its address and, for an enrolled
//! daemon, its certificate's fingerprint).
//!
//! Handshakes run in their own tasks, each at most [`HANDSHAKE_LIMIT`], so
//! a client that connects and says nothing delays nobody else.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rill_auth::Fingerprint;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The fingerprint of the client certificate it presented (verified
    /// against the cluster CA), if any.
    pub client_cert: Option<Fingerprint>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, SecureListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, SecureListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A served connection.
pub type Conn = rill_auth::dial::MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

/// Connections that completed their handshake, for `axum::serve`.
pub struct SecureListener {
    ready: mpsc::Receiver<(Conn, Peer)>,
    local: SocketAddr,
}

impl SecureListener {
    /// Accepts on `listener` in a task of its own; `tls: None` serves
    /// plaintext. The task ends when this is dropped.
    pub fn start(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let Ok((tcp, addr)) = accepted else {
                    // Out of descriptors, most likely: give closing ones a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (tx, tls) = (tx.clone(), tls.clone());
                tokio::spawn(async move {
                    let conn = match tls {
                        None => Some((Conn::Plain(tcp), Peer { addr, client_cert: None })),
                        Some(config) => {
                            tokio::time::timeout(HANDSHAKE_LIMIT, handshake(tcp, addr, config)).await.ok().flatten()
                        }
                    };
                    if let Some(conn) = conn {
                        let _ = tx.send(conn).await;
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

/// A TLS handshake; a client that speaks plain HTTP gets a plain answer
/// saying why it will not be served, instead of a reset it cannot explain.
async fn handshake(tcp: TcpStream, addr: SocketAddr, config: Arc<rustls::ServerConfig>) -> Option<(Conn, Peer)> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plaintext(tcp).await;
        return None;
    }
    let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.ok()?;
    let client_cert = tls.get_ref().1.peer_certificates().and_then(|certs| certs.first()).map(|c| Fingerprint::of(c));
    Some((Conn::Tls(Box::new(tls)), Peer { addr, client_cert }))
}

/// The answer to a plaintext request on the TLS port.
pub const PLAINTEXT_REFUSED: &str = "this rill coordinator serves HTTPS and WSS only; plaintext clients are refused \
     (use the CLI, or https://; --insecure-plaintext exists for a whole cluster on a trusted network)";

async fn refuse_plaintext(mut tcp: TcpStream) {
    use tokio::io::AsyncReadExt;
    // Read the request first: closing a socket with unread data resets it,
    // and the client would never see the answer.
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while request.len() < 16 * 1024 && !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = format!("{PLAINTEXT_REFUSED}\n");
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
    // Until the client closes (bounded), so nothing it still sends resets the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl axum::serve::Listener for SecureListener {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task ended: it only does when this is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer { addr: self.local, client_cert: None })
    }
}

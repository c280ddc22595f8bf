//! Dialing the coordinator: TCP, then TLS checked against the pinned CA
//! (unless the cluster runs with `--insecure-plaintext`), then a WebSocket
//! upgrade that carries the bearer credential. The credential is sent only
//! after the server's certificate has been verified.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A TCP connection, encrypted (`T`: a client or server TLS stream) or, with
/// `--insecure-plaintext`, not.
pub enum MaybeTls<T, S = TcpStream> {
    Plain(S),
    Tls(Box<T>),
}

/// The CLI's and daemons' connection to the coordinator.
pub type Link = MaybeTls<tokio_rustls::client::TlsStream<Quiet>, Quiet>;

impl Link {
    /// This end's address (a daemon tells other daemons to reach it there).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            MaybeTls::Plain(tcp) => tcp.0.local_addr(),
            MaybeTls::Tls(tls) => tls.get_ref().0.0.local_addr(),
        }
    }
}

/// A TCP stream whose writes never raise SIGPIPE (`MSG_NOSIGNAL`): the CLI
/// lets SIGPIPE end it when its stdout reader goes away, and a coordinator
/// that closes the connection must be an error, not a silent death.
pub struct Quiet(pub TcpStream);

impl AsyncRead for Quiet {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Quiet {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let tcp = &self.get_mut().0;
        loop {
            std::task::ready!(tcp.poll_write_ready(cx))?;
            let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::net::send(tcp, buf, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin, S: AsyncRead + Unpin> AsyncRead for MaybeTls<T, S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin, S: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T, S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Ws = WebSocketStream<Link>;

/// How to reach the coordinator.
#[derive(Clone)]
pub struct Dial {
    /// `host:port` (`[v6]:port` for IPv6).
    pub addr: String,
    /// `None`: plaintext (`--insecure-plaintext`).
    pub tls: Option<Arc<ClientConfig>>,
    /// Sent as `Authorization: Bearer …` once the server is verified.
    pub bearer: Option<String>,
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bearer is a secret: never in a log.
        f.debug_struct("Dial").field("addr", &self.addr).field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

/// Why dialing failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The TLS handshake failed: the wrong coordinator (pin), a plaintext
    /// server, or a refused client certificate. Nothing secret was sent.
    /// `untrusted`: the server's certificate was refused (not from the
    /// pinned CA, or not for this name), rather than the link failing.
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String, untrusted: bool },
    /// The server answered the upgrade with an HTTP status (401: the
    /// credential; its body says why, and [`REFUSAL_HEADER`] what kind of
    /// refusal it is).
    #[error("{addr} answered {status}: {message}")]
    Status { addr: String, status: u16, message: String, code: Option<String> },
    #[error("WebSocket with {addr}: {reason}")]
    WebSocket { addr: String, reason: String },
    #[error("HTTP with {addr}: {reason}")]
    Http { addr: String, reason: String },
}

impl DialError {
    /// The HTTP status the server answered with, if it did.
    pub fn status(&self) -> Option<u16> {
        match self {
            DialError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The header of a 401 that names the refusal (`revoked`, `expired`, …).
pub const REFUSAL_HEADER: &str = "x-rill-error";

/// The host part of `host:port`, without IPv6 brackets.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// TCP, then TLS checked against the pin (unless plaintext); also returns
/// the URL scheme for WebSocket (`ws` or `wss`).
async fn connect(dial: &Dial) -> Result<(Link, &'static str), DialError> {
    let addr = dial.addr.clone();
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| DialError::Connect { addr: addr.clone(), reason: e.to_string() })?;
    let _ = tcp.set_nodelay(true);
    let (link, scheme) = match &dial.tls {
        None => (MaybeTls::Plain(Quiet(tcp)), "ws"),
        Some(config) => {
            let name = ServerName::try_from(host_of(&addr).to_owned()).map_err(|e| DialError::Tls {
                addr: addr.clone(),
                reason: format!("not a host name: {e}"),
                untrusted: true,
            })?;
            let tls =
                tokio_rustls::TlsConnector::from(config.clone()).connect(name, Quiet(tcp)).await.map_err(|e| {
                    DialError::Tls { addr: addr.clone(), reason: tls_reason(&e), untrusted: certificate_refused(&e) }
                })?;
            (MaybeTls::Tls(Box::new(tls)), "wss")
        }
    };
    Ok((link, scheme))
}

/// Opens a WebSocket to `path` (e.g. `/api/control`).
pub async fn websocket(dial: &Dial, path: &str) -> Result<Ws, DialError> {
    let addr = dial.addr.clone();
    let (link, scheme) = connect(dial).await?;
    let mut request = format!("{scheme}://{addr}{path}")
        .into_client_request()
        .map_err(|e| DialError::WebSocket { addr: addr.clone(), reason: e.to_string() })?;
    if let Some(bearer) = &dial.bearer {
        let value = format!("Bearer {bearer}")
            .parse()
            .map_err(|_| DialError::WebSocket { addr: addr.clone(), reason: "the credential is not ASCII".into() })?;
        request.headers_mut().insert("authorization", value);
    }
    match tokio_tungstenite::client_async(request, link).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let code = response.headers().get(REFUSAL_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            Err(DialError::Status {
                addr,
                status: response.status().as_u16(),
                message: body.trim().lines().next().unwrap_or("").to_owned(),
                code,
            })
        }
        Err(e) => Err(DialError::WebSocket { addr, reason: e.to_string() }),
    }
}

/// Longest response head (status line and headers) read.
const MAX_HEAD: usize = 16 * 1024;
/// Longest error or JSON body read into memory.
const MAX_TEXT: u64 = 64 * 1024;

/// `PUT path` with `len` bytes from `body`; returns the answer's body
/// (JSON) if the status is 2xx.
pub async fn http_put(
    dial: &Dial,
    path: &str,
    len: u64,
    body: &mut (impl AsyncRead + Unpin),
) -> Result<String, DialError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut link, _) = connect(dial).await?;
    let io = |e: io::Error| DialError::Http { addr: dial.addr.clone(), reason: e.to_string() };
    let sent = async {
        link.write_all(head(dial, "PUT", path, Some(len))?.as_bytes()).await.map_err(io)?;
        let copied = tokio::io::copy(&mut (&mut *body).take(len), &mut link).await.map_err(io)?;
        if copied != len {
            let short = format!("the file ended after {copied} of {len} bytes");
            return Err(io(io::Error::new(io::ErrorKind::UnexpectedEof, short)));
        }
        link.flush().await.map_err(io)
    }
    .await;
    if let Err(e) = sent {
        // The server may have refused early (401, 413) and closed: its
        // answer says why better than a broken pipe.
        return match read_head(dial, &mut link).await {
            Err(refused @ DialError::Status { .. }) => Err(refused),
            _ => Err(e),
        };
    }
    let (length, rest) = read_head(dial, &mut link).await?;
    let mut text = Vec::new();
    read_body(dial, &mut link, rest, length, MAX_TEXT, &mut text).await?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// `GET path` into `out`, at most `max` bytes; returns how many came.
pub async fn http_get(
    dial: &Dial,
    path: &str,
    out: &mut (impl AsyncWrite + Unpin),
    max: u64,
) -> Result<u64, DialError> {
    use tokio::io::AsyncWriteExt;
    let (mut link, _) = connect(dial).await?;
    let io = |e: io::Error| DialError::Http { addr: dial.addr.clone(), reason: e.to_string() };
    link.write_all(head(dial, "GET", path, None)?.as_bytes()).await.map_err(io)?;
    link.flush().await.map_err(io)?;
    let (length, rest) = read_head(dial, &mut link).await?;
    read_body(dial, &mut link, rest, length, max, out).await
}

/// A request head; the credential only ever goes over a verified link.
fn head(dial: &Dial, method: &str, path: &str, len: Option<u64>) -> Result<String, DialError> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(DialError::Http { addr: dial.addr.clone(), reason: format!("not a request path: {path:?}") });
    }
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n", dial.addr);
    if let Some(len) = len {
        head.push_str(&format!("content-length: {len}\r\n"));
    }
    if let Some(bearer) = &dial.bearer {
        if bearer.chars().any(|c| c.is_control()) {
            return Err(DialError::Http { addr: dial.addr.clone(), reason: "the credential is not printable".into() });
        }
        head.push_str(&format!("authorization: Bearer {bearer}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head)
}

/// Reads the response head. A 2xx gives its `content-length` (if any) and
/// the body bytes read with the head; any other status is an error with
/// the body's first line and the refusal kind.
async fn read_head(dial: &Dial, link: &mut Link) -> Result<(Option<u64>, Vec<u8>), DialError> {
    use tokio::io::AsyncReadExt;
    let addr = || dial.addr.clone();
    let bad = |reason: String| DialError::Http { addr: dial.addr.clone(), reason };
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("the response head is too long".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = link.read(&mut chunk).await.map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Err(bad("the connection closed before a response".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf[end + 4..].to_vec();
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("not an HTTP response".into()))?;
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
    // (Our server always sends a length; a chunked body is not read here.)
    let chunked = header("transfer-encoding").is_some();
    if (200..300).contains(&status) {
        if chunked {
            return Err(bad("a chunked response is not expected here".into()));
        }
        return Ok((length, rest));
    }
    let mut body = Vec::new();
    let _ = read_body(dial, link, rest, length, MAX_TEXT, &mut body).await;
    let message = String::from_utf8_lossy(&body).trim().lines().next().unwrap_or("").to_owned();
    Err(DialError::Status { addr: addr(), status, message, code: header(REFUSAL_HEADER) })
}

/// Copies the body (`length` bytes, else up to EOF) into `out`, refusing
/// more than `max`.
async fn read_body(
    dial: &Dial,
    link: &mut Link,
    rest: Vec<u8>,
    length: Option<u64>,
    max: u64,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<u64, DialError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bad = |reason: String| DialError::Http { addr: dial.addr.clone(), reason };
    if length.is_some_and(|len| len > max) {
        return Err(bad(format!("the response is {} bytes, more than the {max} expected", length.unwrap_or(0))));
    }
    // With a length, exactly that much is read: a TLS peer that then drops
    // the link without a close_notify does not spoil a complete body.
    let limit = length.unwrap_or(max.saturating_add(1));
    let mut body = io::Cursor::new(rest).chain(&mut *link).take(limit);
    let copied = tokio::io::copy(&mut body, out).await.map_err(|e| bad(e.to_string()))?;
    out.flush().await.map_err(|e| bad(e.to_string()))?;
    match length {
        Some(len) if copied != len => Err(bad(format!("the response ended after {copied} of {len} bytes"))),
        None if copied > max => Err(bad(format!("the response is more than the {max} bytes expected"))),
        _ => Ok(copied),
    }
}

/// What went wrong in a handshake, in words: rustls errors come wrapped in
/// `io::Error`; a plaintext server shows up as a corrupt record.
fn tls_reason(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        return format!("{text} (the server does not speak TLS: was it started with --insecure-plaintext?)");
    }
    text
}

/// Whether a handshake failed because this side refused the server's
/// certificate (trying again will not help).
fn certificate_refused(e: &io::Error) -> bool {
    let inner = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    matches!(inner, Some(rustls::Error::InvalidCertificate(_) | rustls::Error::General(_)))
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:6533"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6533"), "::1");
        assert_eq!(host_of("coord.example:1"), "coord.example");
    }
}

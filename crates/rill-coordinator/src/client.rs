//! The CLI's connection to `/api/control`.

use futures_util::{SinkExt, StreamExt};
use rill_auth::dial::{Dial, DialError, Ws};
use rill_proto::coord::{COORD_PROTOCOL_VERSION, ControlRequest, ControlResponse};
use tokio_tungstenite::tungstenite::Message;

/// What can go wrong talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the coordinator at {addr}: {reason} (is `rill coordinator` running there? see --coordinator-addr/--coordinator-port)"
    )]
    Connect { addr: String, reason: String },
    #[error(
        "nothing answered as a rill coordinator at {addr} within {} s (is something else listening on that port?)",
        CONNECT_LIMIT.as_secs()
    )]
    Silent { addr: String },
    /// The TLS handshake failed (nothing secret was sent).
    #[error("the coordinator at {addr} could not be verified: {reason}")]
    Tls { addr: String, reason: String },
    /// 401: the credential was missing or wrong.
    #[error("the coordinator at {addr} refused the credential: {message}")]
    Unauthorized { addr: String, message: String },
    #[error("the coordinator closed the connection")]
    Closed,
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("unreadable reply from the coordinator: {0}")]
    BadReply(String),
}

impl From<DialError> for ClientError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::Connect { addr, reason } => ClientError::Connect { addr, reason },
            DialError::Tls { addr, reason, .. } => ClientError::Tls { addr, reason },
            DialError::Status { addr, status: 401, message, .. } => ClientError::Unauthorized { addr, message },
            DialError::Status { addr, status, message, .. } => {
                ClientError::Connect { addr, reason: format!("it answered HTTP {status}: {message}") }
            }
            DialError::WebSocket { addr, reason } | DialError::Http { addr, reason } => {
                ClientError::Connect { addr, reason }
            }
        }
    }
}

/// How long connecting and the protocol check may take: a port that
/// accepts but never answers (not a coordinator, or a stopped one) must not
/// hang the CLI.
pub const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A control connection that has passed the protocol check.
pub struct ControlClient {
    ws: Ws,
}

impl ControlClient {
    /// Connects (TLS checked against the pinned CA, then the admin token)
    /// and checks the protocol version, within [`CONNECT_LIMIT`].
    pub async fn connect(dial: &Dial) -> Result<Self, ClientError> {
        tokio::time::timeout(CONNECT_LIMIT, Self::connect_now(dial))
            .await
            .map_err(|_| ClientError::Silent { addr: dial.addr.clone() })?
    }

    async fn connect_now(dial: &Dial) -> Result<Self, ClientError> {
        let ws = rill_auth::dial::websocket(dial, "/api/control").await?;
        let mut client = Self { ws };
        match client.request(&ControlRequest::Hello { protocol: COORD_PROTOCOL_VERSION }).await? {
            ControlResponse::Hello { .. } => Ok(client),
            other => Err(ClientError::BadReply(format!("{other:?}"))),
        }
    }

    /// Sends one request and returns its reply; an `Error` reply is an `Err`.
    pub async fn request(&mut self, request: &ControlRequest) -> Result<ControlResponse, ClientError> {
        self.send(request).await?;
        self.next().await
    }

    /// Sends a request whose replies come with [`ControlClient::next`].
    pub async fn send(&mut self, request: &ControlRequest) -> Result<(), ClientError> {
        let text = serde_json::to_string(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
        self.ws.send(Message::Text(text.into())).await.map_err(|_| ClientError::Closed)
    }

    /// The next reply; an `Error` reply is an `Err`.
    pub async fn next(&mut self) -> Result<ControlResponse, ClientError> {
        loop {
            if let Frame::Reply(reply) = self.next_frame().await? {
                return Ok(reply);
            }
        }
    }

    /// The next reply or binary tap frame (after `Tap`); an `Error` reply
    /// is an `Err`.
    pub async fn next_frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(reply))) => {
                    let reply: ControlResponse =
                        serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
                    return match reply {
                        ControlResponse::Error { message, .. } => Err(ClientError::Refused(message)),
                        other => Ok(Frame::Reply(other)),
                    };
                }
                Some(Ok(Message::Binary(bytes))) => return Ok(Frame::Tap(bytes.to_vec())),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(ClientError::Closed),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Closes the connection (the coordinator unwires a tap at once).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// What a control connection receives.
#[derive(Debug)]
pub enum Frame {
    Reply(ControlResponse),
    /// A tap frame ([`rill_proto::tap::TapFrame`], not decoded yet).
    Tap(Vec<u8>),
}

//! The CLI's connection to `/api/control`.

use futures_util::{SinkExt, StreamExt};
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
    #[error("the coordinator closed the connection")]
    Closed,
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("unreadable reply from the coordinator: {0}")]
    BadReply(String),
}

/// How long connecting and the protocol check may take: a port that
/// accepts but never answers (not a coordinator, or a stopped one) must not
/// hang the CLI.
pub const CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A control connection that has passed the protocol check.
pub struct ControlClient {
    ws: Ws,
}

impl ControlClient {
    /// Connects to `host:port` and checks the protocol version, within
    /// [`CONNECT_LIMIT`].
    pub async fn connect(addr: &str) -> Result<Self, ClientError> {
        tokio::time::timeout(CONNECT_LIMIT, Self::connect_now(addr))
            .await
            .map_err(|_| ClientError::Silent { addr: addr.to_owned() })?
    }

    async fn connect_now(addr: &str) -> Result<Self, ClientError> {
        let url = format!("ws://{addr}/api/control");
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .map_err(|e| ClientError::Connect { addr: addr.to_owned(), reason: e.to_string() })?;
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
            match self.ws.next().await {
                Some(Ok(Message::Text(reply))) => {
                    let reply: ControlResponse =
                        serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
                    return match reply {
                        ControlResponse::Error { message, .. } => Err(ClientError::Refused(message)),
                        other => Ok(other),
                    };
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Err(ClientError::Closed),
                Some(Ok(_)) => continue,
            }
        }
    }
}

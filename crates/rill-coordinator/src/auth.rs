//! Who may use which route. `/api/health` is open; `/api/control` needs the
//! admin token; `/api/daemon` needs the admin token (a daemon on the
//! coordinator's own machine, run by its user, who can read that token
//! anyway), a join token, or a daemon certificate.
//!
//! Refusals are HTTP 401 before the WebSocket upgrade, with a one-line
//! body the client shows.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rill_auth::{CoordinatorIdentity, Fingerprint, Secret, SecretHash};
use rill_proto::coord::ErrorCode;

/// The coordinator's identity and transport.
#[derive(Clone)]
pub struct Security {
    pub identity: Arc<CoordinatorIdentity>,
    /// `--insecure-plaintext`: no TLS (credentials are still required).
    pub plaintext: bool,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key or token in a log.
        write!(f, "Security({}, CA {})", self.transport(), self.fingerprint())
    }
}

impl Security {
    /// What `rill status` shows as the transport.
    pub fn transport(&self) -> &'static str {
        if self.plaintext { "plaintext" } else { "tls" }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.ca.fingerprint()
    }

    /// The TLS server configuration, unless plaintext.
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, rill_auth::AuthError> {
        if self.plaintext {
            return Ok(None);
        }
        rill_auth::tls::server_config(&self.identity.ca, &self.identity.server).map(Some)
    }

    fn admin_hash(&self) -> SecretHash {
        self.identity.admin.hash()
    }
}

/// A 401 with the reason as its body and its kind in
/// [`rill_auth::dial::REFUSAL_HEADER`] (a daemon exits with a code per kind).
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let header = [(rill_auth::dial::REFUSAL_HEADER, self.code.name())];
        (StatusCode::UNAUTHORIZED, header, format!("{}\n", self.message)).into_response()
    }
}

/// The bearer credential of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

fn is_admin(security: &Security, headers: &HeaderMap) -> bool {
    bearer(headers).and_then(Secret::from_hex).is_some_and(|secret| security.admin_hash().matches(&secret))
}

/// Lets the admin in.
pub fn control(security: &Security, headers: &HeaderMap) -> Result<(), Refusal> {
    match bearer(headers) {
        None => Err(Refusal::new(ErrorCode::Unauthorized, "no credential: the control API needs the admin token")),
        Some(_) if is_admin(security, headers) => Ok(()),
        Some(_) => Err(Refusal::new(ErrorCode::Unauthorized, "wrong admin token")),
    }
}

/// How a daemon proved who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum DaemonCredential {
    /// The admin token (a daemon on the coordinator's machine).
    Admin,
    /// A join token, not enrolled with yet or enrolling again with the
    /// same key: the daemon sends its key and gets a certificate.
    Join { token: TokenRef },
    /// The certificate issued under this token.
    Certificate { token: TokenRef },
}

/// The token a daemon came in with: its name and the hash of its secret,
/// so a token minted again under the same name (after a revoke) is not
/// mistaken for the one the daemon holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRef {
    pub name: String,
    pub hash: String,
}

impl TokenRef {
    pub fn of(record: &crate::tokens::TokenRecord) -> Self {
        Self { name: record.name.clone(), hash: record.hash.clone() }
    }
}

impl From<crate::tokens::Refused> for Refusal {
    fn from(refused: crate::tokens::Refused) -> Self {
        Refusal { code: refused.code, message: refused.message }
    }
}

/// Lets a daemon in: its certificate if it presents one this cluster
/// issued, else its bearer credential.
pub fn daemon(
    security: &Security,
    headers: &HeaderMap,
    certificate: Option<&Fingerprint>,
    tokens: &crate::tokens::Tokens,
    now_ms: u64,
) -> Result<DaemonCredential, Refusal> {
    if let Some(cert) = certificate {
        match tokens.by_cert(cert, now_ms) {
            Ok(record) => return Ok(DaemonCredential::Certificate { token: TokenRef::of(record) }),
            // Enrolled but no longer allowed: the refusal says why.
            Err(refused) if refused.code != ErrorCode::Unauthorized => return Err(refused.into()),
            // Unknown (say, the store was lost), and nothing else offered.
            Err(refused) if bearer(headers).is_none() => return Err(refused.into()),
            // Unknown, with a bearer credential too: that one decides.
            Err(_) => {}
        }
    }
    match bearer(headers) {
        None => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "no credential: a daemon needs a join token (`rill token create`, then --join-token-file) \
             or the certificate it enrolled with",
        )),
        Some(_) if is_admin(security, headers) => Ok(DaemonCredential::Admin),
        Some(text) if text.starts_with("rill1.") => {
            let token: rill_auth::JoinToken =
                text.parse().map_err(|e: rill_auth::AuthError| Refusal::new(ErrorCode::Unauthorized, e.to_string()))?;
            if token.ca != security.fingerprint() {
                return Err(Refusal::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "this join token is for another cluster (CA {}, this one is {})",
                        token.ca,
                        security.fingerprint()
                    ),
                ));
            }
            let record = tokens.check(&token.name, &token.secret, now_ms)?;
            Ok(DaemonCredential::Join { token: TokenRef::of(record) })
        }
        Some(_) => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "unknown credential: not a join token or admin token of this cluster",
        )),
    }
}

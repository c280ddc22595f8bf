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
    Admin,
}

/// Lets a daemon in.
pub fn daemon(security: &Security, headers: &HeaderMap) -> Result<DaemonCredential, Refusal> {
    match bearer(headers) {
        None => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "no credential: a daemon needs a join token (`rill token create`, then --join-token-file) \
             or the certificate it enrolled with",
        )),
        Some(_) if is_admin(security, headers) => Ok(DaemonCredential::Admin),
        Some(_) => Err(Refusal::new(
            ErrorCode::Unauthorized,
            "unknown credential: not a join token or admin token of this cluster",
        )),
    }
}

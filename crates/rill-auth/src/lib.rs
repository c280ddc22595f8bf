//! The cluster's identity: a cluster CA (ECDSA P-256, rcgen with ring) that
//! signs the coordinator's server certificate and the certificate of every
//! enrolled daemon; SHA-256 fingerprints that clients pin it by; admin and
//! join tokens (random secrets of which only hashes are stored); and the
//! rustls configurations that check peers against the pinned CA.

pub mod ca;
pub mod config;
#[cfg(feature = "dial")]
pub mod dial;
pub mod digest;
pub mod enroll;
pub mod files;
pub mod fingerprint;
pub mod identity;
pub mod tls;
pub mod token;

pub use ca::{ClusterCa, Issued};
pub use fingerprint::Fingerprint;
pub use identity::CoordinatorIdentity;
pub use token::{JoinToken, Secret, SecretHash};

/// What can go wrong with the cluster's identity.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    File { path: std::path::PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    BadFile { path: std::path::PathBuf, what: String },
    #[error("not a join token ({0}); it looks like rill1.NAME.SECRET.FINGERPRINT, as `rill token create` printed it")]
    BadToken(&'static str),
    #[error("not a fingerprint ({0}): expected sha256: and 64 hex digits, as `rill status` shows it")]
    BadFingerprint(String),
    #[error("not a P-256 public key ({0} bytes; expected 65, uncompressed)")]
    BadPublicKey(usize),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no randomness from the system")]
    Random,
}

/// `n` random bytes from the system's generator.
pub(crate) fn random<const N: usize>() -> Result<[u8; N], AuthError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| AuthError::Random)?;
    Ok(bytes)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of lower- or upper-case hex, if it is that.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

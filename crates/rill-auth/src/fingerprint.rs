//! SHA-256 fingerprints (`sha256:` and 64 hex digits) of certificates and keys.

use std::fmt;
use std::str::FromStr;

use crate::AuthError;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of DER bytes (a certificate, a public key).
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// The 64 hex digits, without the `sha256:` prefix (for join tokens).
    pub fn hex(&self) -> String {
        crate::hex(&self.0)
    }

    /// From 64 hex digits without the prefix.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes: [u8; 32] = crate::unhex(hex)?.try_into().ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<Self, AuthError> {
        let hex = text.trim().strip_prefix("sha256:").ok_or_else(|| AuthError::BadFingerprint(text.to_owned()))?;
        Self::from_hex(hex).ok_or_else(|| AuthError::BadFingerprint(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_as_sha256_hex() {
        let fp = Fingerprint::of(b"abc");
        let text = fp.to_string();
        assert_eq!(text, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(text.parse::<Fingerprint>().ok(), Some(fp));
        assert_eq!(Fingerprint::from_hex(&fp.hex()), Some(fp));
        for bad in
            ["ba7816bf", "sha256:xyz", "sha1:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", ""]
        {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }
}

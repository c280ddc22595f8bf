//! Secrets and the tokens that carry them. A secret is 32 random bytes; the
//! coordinator keeps only its SHA-256 ([`SecretHash`]) and compares in
//! constant time. A join token also names itself and carries the cluster
//! CA's fingerprint, so a daemon given only the token and an address checks
//! the coordinator before it sends the secret (as k3s and kubeadm tokens do).

use std::fmt;
use std::str::FromStr;

use crate::{AuthError, Fingerprint};

/// A random credential. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl Secret {
    pub fn generate() -> Result<Self, AuthError> {
        crate::random().map(Self)
    }

    /// What the coordinator stores instead of the secret.
    pub fn hash(&self) -> SecretHash {
        SecretHash(Fingerprint::of(&self.0))
    }

    /// The 64 hex digits that are the secret in tokens and files.
    pub fn expose(&self) -> String {
        crate::hex(&self.0)
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        Some(Self(crate::unhex(hex.trim())?.try_into().ok()?))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The SHA-256 of a secret, as stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SecretHash(Fingerprint);

impl SecretHash {
    /// Whether `secret` is the one this is the hash of (constant time).
    pub fn matches(&self, secret: &Secret) -> bool {
        let (a, b) = (self.0.hex(), secret.hash().0.hex());
        a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn hex(&self) -> String {
        self.0.hex()
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        Fingerprint::from_hex(hex).map(Self)
    }
}

/// A token lifetime as `rill token create --ttl` takes it: a whole number
/// with a unit (`90s`, `30m`, `24h`, `7d`), or `none` (never expires).
/// `Ok(None)` is `none`.
pub fn parse_ttl(text: &str) -> Result<Option<std::time::Duration>, String> {
    let text = text.trim();
    if text == "none" {
        return Ok(None);
    }
    let bad = || format!("--ttl {text:?}: use a whole number with a unit (90s, 30m, 24h, 7d) or `none`");
    let unit = text.chars().last().ok_or_else(bad)?;
    let secs_per = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let count: u64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("--ttl {text:?}: a token that is expired at once cannot enroll anything"));
    }
    let secs = count.checked_mul(secs_per).ok_or_else(bad)?;
    Ok(Some(std::time::Duration::from_secs(secs)))
}

/// Longest token name.
pub const MAX_NAME: usize = 64;

/// Why `name` cannot name a token, if it cannot.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Some(format!("a token name has 1 to {MAX_NAME} characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Some(format!("a token name has only letters, digits, `-` and `_` (not {c:?})"));
    }
    None
}

/// What a daemon needs to join: `rill1.NAME.SECRET.CA-FINGERPRINT`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub name: String,
    pub secret: Secret,
    pub ca: Fingerprint,
}

impl JoinToken {
    /// A new token `name` for the cluster whose CA has fingerprint `ca`.
    pub fn mint(name: &str, ca: Fingerprint) -> Result<Self, AuthError> {
        Ok(Self { name: name.to_owned(), secret: Secret::generate()?, ca })
    }

    /// The token as the operator copies it (it contains the secret).
    pub fn expose(&self) -> String {
        format!("rill1.{}.{}.{}", self.name, self.secret.expose(), self.ca.hex())
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}, {:?}, {})", self.name, self.secret, self.ca)
    }
}

impl FromStr for JoinToken {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<Self, AuthError> {
        let mut parts = text.trim().split('.');
        if parts.next() != Some("rill1") {
            return Err(AuthError::BadToken("it does not start with rill1."));
        }
        let (Some(name), Some(secret), Some(ca), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::BadToken("it does not have four parts"));
        };
        if name_problem(name).is_some() {
            return Err(AuthError::BadToken("its name is not one rill makes"));
        }
        let secret = Secret::from_hex(secret).ok_or(AuthError::BadToken("its secret is not 64 hex digits"))?;
        let ca = Fingerprint::from_hex(ca).ok_or(AuthError::BadToken("its fingerprint is not 64 hex digits"))?;
        Ok(Self { name: name.to_owned(), secret, ca })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_round_trips_and_only_its_hash_matches_it() {
        let ca = Fingerprint::of(b"ca");
        let token = JoinToken::mint("edge-1", ca).unwrap();
        let text = token.expose();
        assert!(text.starts_with("rill1.edge-1.") && text.ends_with(&ca.hex()), "{text}");
        let parsed: JoinToken = text.parse().unwrap();
        assert_eq!(parsed, token);
        let stored = token.secret.hash();
        assert!(stored.matches(&parsed.secret));
        assert!(!stored.matches(&Secret::generate().unwrap()), "another secret");
        assert_eq!(SecretHash::from_hex(&stored.hex()), Some(stored));
        assert!(!format!("{token:?}").contains(&token.secret.expose()), "Debug hides the secret");
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let ca = Fingerprint::of(b"ca").hex();
        let secret = "ab".repeat(32);
        for (text, why) in [
            (format!("rill2.a.{secret}.{ca}"), "rill1."),
            (format!("rill1.a.{secret}"), "four parts"),
            (format!("rill1.a b.{secret}.{ca}"), "name"),
            (format!("rill1.a.{}.{ca}", "ab".repeat(31)), "secret"),
            (format!("rill1.a.{secret}.xyz"), "fingerprint"),
        ] {
            let err = text.parse::<JoinToken>().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn token_names_are_restricted() {
        assert_eq!(name_problem("edge_1-a"), None);
        assert!(name_problem("").is_some());
        assert!(name_problem("a.b").is_some_and(|p| p.contains("'.'")));
        assert!(name_problem(&"a".repeat(MAX_NAME + 1)).is_some());
    }

    #[test]
    fn ttls_have_units_or_are_none() {
        use std::time::Duration;
        assert_eq!(super::parse_ttl("24h"), Ok(Some(Duration::from_secs(86_400))));
        assert_eq!(super::parse_ttl("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(super::parse_ttl("7d"), Ok(Some(Duration::from_secs(7 * 86_400))));
        assert_eq!(super::parse_ttl("none"), Ok(None));
        for bad in ["", "24", "1.5h", "-1h", "0s", "h"] {
            assert!(super::parse_ttl(bad).is_err(), "{bad}");
        }
    }
}

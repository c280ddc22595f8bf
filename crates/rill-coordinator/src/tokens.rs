//! Join tokens: minted by `rill token create` (only the hash is kept),
//! bound at first use to the enrolling daemon's key and certificate, and
//! checked at every connection: a revoked or expired token can neither
//! enroll nor stay connected.

use std::collections::BTreeMap;

use rill_auth::{Fingerprint, JoinToken, Secret, SecretHash};
use rill_proto::coord::{ErrorCode, TokenInfo, TokenState};
use serde::{Deserialize, Serialize};

/// Most tokens kept (unused, enrolled, expired and revoked together: none
/// is removed); a create beyond it is refused.
pub const MAX_TOKENS: usize = 10_000;

/// Most labels a token may grant, and the longest key or value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_LEN: usize = 256;

/// Why these labels cannot be granted (they came over the network).
fn labels_problem(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.len() > MAX_LABELS {
        return Some(format!("a token grants at most {MAX_LABELS} labels"));
    }
    let bad = |text: &str| text.len() > MAX_LABEL_LEN || text.chars().any(char::is_control);
    labels.iter().find(|(k, v)| k.is_empty() || bad(k) || bad(v)).map(|(k, _)| {
        format!(
            "label {k:?}: keys are not empty; keys and values have at most {MAX_LABEL_LEN} bytes, no control characters"
        )
    })
}

/// A token as stored: no secret, only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub hash: String,
    pub created_ms: u64,
    /// Unix ms after which it is expired; `None`: never.
    pub expires_ms: Option<u64>,
    /// The only labels a daemon enrolled with it may claim; `None`: any.
    pub labels: Option<BTreeMap<String, String>>,
    pub revoked: bool,
    pub bound: Option<Binding>,
}

/// The daemon a token was first used by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Binding {
    pub machine_id: String,
    /// Fingerprint of its public key (the raw P-256 point).
    pub key: String,
    /// Fingerprint of the certificate issued to it.
    pub cert: String,
    pub enrolled_ms: u64,
}

impl TokenRecord {
    pub fn state(&self, now_ms: u64) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if self.expires_ms.is_some_and(|at| now_ms >= at) {
            TokenState::Expired
        } else if self.bound.is_some() {
            TokenState::Enrolled
        } else {
            TokenState::Unused
        }
    }

    pub fn info(&self, now_ms: u64) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            state: self.state(now_ms),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            labels: self.labels.clone(),
            machine_id: self.bound.as_ref().map(|b| b.machine_id.clone()),
            key_fingerprint: self.bound.as_ref().map(|b| b.key.clone()),
        }
    }

    /// Refuses a token that may not be used now.
    fn usable(&self, now_ms: u64) -> Result<(), Refused> {
        match self.state(now_ms) {
            TokenState::Revoked => Err(Refused::new(ErrorCode::Revoked, format!("token {} was revoked", self.name))),
            TokenState::Expired => Err(Refused::new(ErrorCode::Expired, format!("token {} has expired", self.name))),
            TokenState::Unused | TokenState::Enrolled => Ok(()),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub code: ErrorCode,
    pub message: String,
}

impl Refused {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Every token of the cluster, by name.
#[derive(Debug, Default)]
pub struct Tokens {
    records: BTreeMap<String, TokenRecord>,
}

impl Tokens {
    pub fn restore(records: Vec<TokenRecord>) -> Self {
        Self { records: records.into_iter().map(|r| (r.name.clone(), r)).collect() }
    }

    /// A new token; the secret is in the returned token only. Also returns
    /// the revoked or expired token of that name it replaced.
    pub fn create(
        &mut self,
        name: &str,
        ttl_ms: Option<u64>,
        labels: Option<BTreeMap<String, String>>,
        ca: Fingerprint,
        now_ms: u64,
    ) -> Result<(JoinToken, TokenRecord, Option<TokenRecord>), Refused> {
        if let Some(problem) = rill_auth::token::name_problem(name) {
            return Err(Refused::new(ErrorCode::BadRequest, problem));
        }
        if let Some(problem) = labels.as_ref().and_then(labels_problem) {
            return Err(Refused::new(ErrorCode::BadRequest, problem));
        }
        // The name of a revoked or expired token is free again: a machine
        // that left the cluster can rejoin under its own name.
        let replaces = self.records.get(name).map(|r| r.state(now_ms));
        if matches!(replaces, Some(TokenState::Unused | TokenState::Enrolled)) {
            return Err(Refused::new(
                ErrorCode::NameInUse,
                format!("a token named {name} exists already (see `rill token list`): pick another name"),
            ));
        }
        if replaces.is_none() && self.records.len() >= MAX_TOKENS {
            return Err(Refused::new(ErrorCode::BadRequest, format!("this cluster has {MAX_TOKENS} tokens already")));
        }
        let token = JoinToken::mint(name, ca).map_err(|e| Refused::new(ErrorCode::Internal, e.to_string()))?;
        let record = TokenRecord {
            name: name.to_owned(),
            hash: token.secret.hash().hex(),
            created_ms: now_ms,
            expires_ms: ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
            labels,
            revoked: false,
            bound: None,
        };
        let replaced = self.records.insert(name.to_owned(), record.clone());
        Ok((token, record, replaced))
    }

    /// Undoes a create whose record could not be stored: the token it
    /// replaced, if any, is back.
    pub fn forget(&mut self, name: &str, replaced: Option<TokenRecord>) {
        match replaced {
            Some(old) => self.records.insert(name.to_owned(), old),
            None => self.records.remove(name),
        };
    }

    pub fn list(&self, now_ms: u64) -> Vec<TokenInfo> {
        self.records.values().map(|r| r.info(now_ms)).collect()
    }

    /// Revokes `name` (again is fine); the changed record, if it changed.
    pub fn revoke(&mut self, name: &str) -> Result<Option<TokenRecord>, Refused> {
        let record = self.records.get_mut(name).ok_or_else(|| {
            Refused::new(ErrorCode::NotFound, format!("no token named {name} (see `rill token list`)"))
        })?;
        if record.revoked {
            return Ok(None);
        }
        record.revoked = true;
        Ok(Some(record.clone()))
    }

    /// The token `name` whose secret is `secret`, if it may be used now.
    pub fn check(&self, name: &str, secret: &Secret, now_ms: u64) -> Result<&TokenRecord, Refused> {
        let unknown = || Refused::new(ErrorCode::Unauthorized, "unknown join token: not one of this cluster's");
        let record = self.records.get(name).ok_or_else(unknown)?;
        let hash = SecretHash::from_hex(&record.hash).ok_or_else(unknown)?;
        if !hash.matches(secret) {
            return Err(unknown());
        }
        record.usable(now_ms)?;
        Ok(record)
    }

    /// The token an enrolled daemon's certificate was issued under, if it
    /// may be used now.
    pub fn by_cert(&self, cert: &Fingerprint, now_ms: u64) -> Result<&TokenRecord, Refused> {
        let cert = cert.to_string();
        let record =
            self.records.values().find(|r| r.bound.as_ref().is_some_and(|b| b.cert == cert)).ok_or_else(|| {
                Refused::new(ErrorCode::Unauthorized, "this certificate is not enrolled in this cluster")
            })?;
        record.usable(now_ms)?;
        Ok(record)
    }

    /// Checks that `name` may enroll the key `key` as `machine_id`: unused,
    /// or bound to this very key (the same daemon enrolling again).
    pub fn may_enroll(&self, name: &str, machine_id: &str, key: &Fingerprint, now_ms: u64) -> Result<(), Refused> {
        let record = self.records.get(name).ok_or_else(|| Refused::new(ErrorCode::Unauthorized, "unknown token"))?;
        record.usable(now_ms)?;
        // A machine id enrolled under another live token is that machine's:
        // a second token cannot take it over (and its nodes with it).
        let holder = self.records.values().find(|r| {
            r.name != name
                && r.state(now_ms) == TokenState::Enrolled
                && r.bound.as_ref().is_some_and(|b| b.machine_id == machine_id)
        });
        if let Some(holder) = holder {
            return Err(Refused::new(
                ErrorCode::AlreadyBound,
                format!(
                    "machine {machine_id} is enrolled with token {}: revoke that token first, or pick another --machine-id",
                    holder.name
                ),
            ));
        }
        match &record.bound {
            Some(bound) if bound.key != key.to_string() => Err(Refused::new(
                ErrorCode::AlreadyBound,
                format!(
                    "token {name} is already bound to another machine ({}, key {}): mint a new token for this one",
                    bound.machine_id, bound.key
                ),
            )),
            Some(bound) if bound.machine_id != machine_id => Err(Refused::new(
                ErrorCode::AlreadyBound,
                format!("token {name} is bound to machine {}, not {machine_id}", bound.machine_id),
            )),
            _ => Ok(()),
        }
    }

    /// Binds `name` to the enrolling key `key` and its new certificate,
    /// if it may enroll it ([`Tokens::may_enroll`]).
    pub fn enroll(
        &mut self,
        name: &str,
        binding: Binding,
        key: &Fingerprint,
        now_ms: u64,
    ) -> Result<TokenRecord, Refused> {
        self.may_enroll(name, &binding.machine_id, key, now_ms)?;
        let record =
            self.records.get_mut(name).ok_or_else(|| Refused::new(ErrorCode::Unauthorized, "unknown token"))?;
        record.bound = Some(binding);
        Ok(record.clone())
    }

    pub fn get(&self, name: &str) -> Option<&TokenRecord> {
        self.records.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Fingerprint {
        Fingerprint::of(b"ca")
    }

    #[test]
    fn a_token_goes_unused_enrolled_revoked_and_unused_expired() {
        let mut tokens = Tokens::default();
        let (token, record, _) = tokens.create("edge", Some(1000), None, ca(), 0).unwrap();
        assert!(!record.hash.contains(&token.secret.expose()), "only the hash is kept");
        assert_eq!(tokens.create("edge", None, None, ca(), 0).unwrap_err().code, ErrorCode::NameInUse);
        assert_eq!(tokens.list(10)[0].state, TokenState::Unused);
        tokens.check("edge", &token.secret, 10).unwrap();
        let key = Fingerprint::of(b"key");
        let binding = |key: &Fingerprint, cert: &[u8]| Binding {
            machine_id: "m".into(),
            key: key.to_string(),
            cert: Fingerprint::of(cert).to_string(),
            enrolled_ms: 10,
        };
        tokens.enroll("edge", binding(&key, b"c"), &key, 10).unwrap();
        let other_key = Fingerprint::of(b"other");
        let second = tokens.enroll("edge", binding(&other_key, b"d"), &other_key, 10).unwrap_err();
        assert_eq!(second.code, ErrorCode::AlreadyBound, "the second of two keys loses");
        tokens.create("thief", None, None, ca(), 0).unwrap();
        let taken = tokens.may_enroll("thief", "m", &other_key, 10).unwrap_err();
        assert!(taken.code == ErrorCode::AlreadyBound && taken.message.contains("enrolled with token edge"), "{taken}");
        assert_eq!(tokens.list(10)[0].state, TokenState::Enrolled);
        tokens.may_enroll("edge", "m", &key, 20).expect("the same key enrolls again");
        let other = tokens.may_enroll("edge", "m", &Fingerprint::of(b"other"), 20).unwrap_err();
        assert_eq!(other.code, ErrorCode::AlreadyBound, "{other}");
        assert!(tokens.by_cert(&Fingerprint::of(b"c"), 20).is_ok());
        assert_eq!(tokens.by_cert(&Fingerprint::of(b"c"), 1000).unwrap_err().code, ErrorCode::Expired);
        assert!(tokens.revoke("edge").unwrap().is_some());
        assert!(tokens.revoke("edge").unwrap().is_none(), "revoke is idempotent");
        assert_eq!(tokens.list(20)[0].state, TokenState::Revoked);
        assert_eq!(tokens.check("edge", &token.secret, 20).unwrap_err().code, ErrorCode::Revoked);
        let (unused, ..) = tokens.create("late", Some(5), None, ca(), 0).unwrap();
        assert_eq!(tokens.check("late", &unused.secret, 5).unwrap_err().code, ErrorCode::Expired);
        let wrong = Secret::generate().unwrap();
        assert_eq!(tokens.check("late", &wrong, 0).unwrap_err().code, ErrorCode::Unauthorized);
        assert_eq!(tokens.revoke("nope").unwrap_err().code, ErrorCode::NotFound);
        let nul: BTreeMap<String, String> = [("gpu\0".to_owned(), "true".to_owned())].into();
        assert_eq!(tokens.create("x", None, Some(nul), ca(), 0).unwrap_err().code, ErrorCode::BadRequest);
        assert_eq!(tokens.create("a b", None, None, ca(), 0).unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn the_name_of_a_revoked_or_expired_token_can_be_taken_again_and_given_back() {
        let mut tokens = Tokens::default();
        let (old, ..) = tokens.create("robot", None, None, ca(), 0).unwrap();
        tokens.revoke("robot").unwrap();
        let (new, _, replaced) = tokens.create("robot", None, None, ca(), 10).unwrap();
        assert!(replaced.is_some_and(|r| r.revoked), "the revoked record is what was replaced");
        assert_eq!(tokens.check("robot", &old.secret, 10).unwrap_err().code, ErrorCode::Unauthorized);
        tokens.check("robot", &new.secret, 10).expect("the new token works");
        assert_eq!(tokens.list(10).len(), 1);
        // A store failure puts the revoked one back.
        tokens.revoke("robot").unwrap();
        let (_, _, replaced) = tokens.create("robot", None, None, ca(), 20).unwrap();
        tokens.forget("robot", replaced);
        assert_eq!(tokens.list(20)[0].state, TokenState::Revoked);
        tokens.create("late", Some(5), None, ca(), 0).unwrap();
        tokens.create("late", None, None, ca(), 5).expect("an expired name is free");
        assert_eq!(tokens.create("late", None, None, ca(), 5).unwrap_err().code, ErrorCode::NameInUse);
    }
}

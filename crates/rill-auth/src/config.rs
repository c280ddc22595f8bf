//! The CLI's credentials file (`~/.config/rill/config.json`, 0600): per
//! coordinator address, the CA fingerprint to pin and the admin token, and
//! which coordinator commands use when given no address. `rill up` (and
//! later `rill cluster up`) write it, so every command works with no flags.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{AuthError, files};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// `host:port` of the coordinator commands use by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub coordinators: BTreeMap<String, Coordinator>,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coordinator {
    /// The cluster CA's fingerprint, `sha256:…` (empty for a plaintext one).
    pub fingerprint: String,
    /// The admin token (64 hex digits).
    pub token: String,
    /// Started with `--insecure-plaintext`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("fingerprint", &self.fingerprint)
            .field("plaintext", &self.plaintext)
            .finish_non_exhaustive()
    }
}

impl CliConfig {
    /// The file at `path`; none yet is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = files::read_private(path)?;
        serde_json::from_str(&text)
            .map_err(|e| AuthError::BadFile { path: path.to_owned(), what: format!("not a rill CLI config: {e}") })
    }

    /// Writes it (0600, its directory 0700), whole.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        if let Some(dir) = path.parent() {
            files::private_dir(dir)?;
        }
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| AuthError::BadFile { path: path.to_owned(), what: e.to_string() })?;
        files::write_private(path, format!("{text}\n").as_bytes())
    }

    /// Forgets `addr`; it stops being the default.
    pub fn forget(&mut self, addr: &str) {
        self.coordinators.remove(addr);
        if self.current.as_deref() == Some(addr) {
            self.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_round_trips_privately_and_a_missing_one_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("rill/config.json");
        assert_eq!(CliConfig::load(&path).unwrap(), CliConfig::default());
        let mut config = CliConfig { current: Some("127.0.0.1:6533".into()), ..CliConfig::default() };
        config.coordinators.insert(
            "127.0.0.1:6533".into(),
            Coordinator { fingerprint: "sha256:00".into(), token: "ab".into(), plaintext: false },
        );
        config.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(CliConfig::load(&path).unwrap(), config);
        assert!(!format!("{config:?}").contains("ab\""), "the token is not in Debug");
        config.forget("127.0.0.1:6533");
        assert_eq!(config, CliConfig::default());
        std::fs::write(&path, "{\"current\": 1}").unwrap();
        let err = CliConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a rill CLI config"), "{err}");
    }
}

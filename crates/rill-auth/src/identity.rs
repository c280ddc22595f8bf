//! The coordinator's identity in its state directory: the cluster CA
//! (`ca.pem`, `ca.key`), the data-plane CA (`data-ca.pem`, `data-ca.key`)
//! and the admin credential (`admin.token`), all 0600
//! in a 0700 directory, made at first start. The server certificate is
//! issued anew at every start for the names the coordinator serves, so a
//! changed address needs no manual step.

use std::path::{Path, PathBuf};

use crate::{AuthError, ClusterCa, Issued, Secret, files};

/// The admin credential's file in the state directory.
pub const ADMIN_TOKEN: &str = "admin.token";
/// Present while the coordinator runs with `--insecure-plaintext`, so
/// clients on its machine talk to it the same way without being told.
pub const PLAINTEXT_MARK: &str = "insecure-plaintext";

/// Records in `dir` whether the coordinator serves plaintext.
pub fn mark_transport(dir: &Path, plaintext: bool) -> Result<(), AuthError> {
    let path = dir.join(PLAINTEXT_MARK);
    match plaintext {
        true => files::write_private(&path, b"this coordinator runs with --insecure-plaintext\n"),
        false => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(AuthError::File { path, source: e }),
            _ => Ok(()),
        },
    }
}

/// Whether the coordinator whose state is `dir` serves plaintext.
pub fn serves_plaintext(dir: &Path) -> bool {
    dir.join(PLAINTEXT_MARK).exists()
}

pub struct CoordinatorIdentity {
    pub ca: ClusterCa,
    /// Signs the daemons' data-plane certificates, and only those.
    pub data_ca: ClusterCa,
    pub server: Issued,
    pub admin: Secret,
    /// Whether the CA was made at this start (a new cluster).
    pub created: bool,
    pub dir: PathBuf,
}

impl CoordinatorIdentity {
    /// Loads (or makes) the CA and admin token in `dir` and issues a server
    /// certificate for `names`.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Self, AuthError> {
        let (ca, created) = ClusterCa::load_or_create(dir)?;
        let (data_ca, _) = ClusterCa::load_or_create_kind(dir, crate::ca::CaKind::DataPlane)?;
        let admin = load_or_create_admin(dir)?;
        let server = ca.issue_server(names)?;
        Ok(Self { ca, data_ca, server, admin, created, dir: dir.to_owned() })
    }
}

impl CoordinatorIdentity {
    /// An identity that lives only in memory (benchmarks, unit tests).
    pub fn ephemeral(names: &[String]) -> Result<Self, AuthError> {
        let ca = ClusterCa::generate()?;
        let data_ca = ClusterCa::generate_kind(crate::ca::CaKind::DataPlane)?;
        let server = ca.issue_server(names)?;
        Ok(Self { ca, data_ca, server, admin: Secret::generate()?, created: true, dir: PathBuf::new() })
    }
}

/// The admin token in `dir`, made if there is none.
pub fn load_or_create_admin(dir: &Path) -> Result<Secret, AuthError> {
    let path = dir.join(ADMIN_TOKEN);
    if path.exists() {
        return read_admin(&path);
    }
    let secret = Secret::generate()?;
    files::write_private(&path, format!("{}\n", secret.expose()).as_bytes())?;
    Ok(secret)
}

/// An admin token file (as the coordinator writes it, or `--token-file`).
pub fn read_admin(path: &Path) -> Result<Secret, AuthError> {
    let text = files::read_private(path)?;
    Secret::from_hex(&text).ok_or_else(|| AuthError::BadFile {
        path: path.to_owned(),
        what: "not an admin token (64 hex digits, as the coordinator wrote it)".into(),
    })
}

/// Replaces the admin token in `dir` (rotation); the old one stops working
/// when the coordinator restarts.
pub fn rotate_admin(dir: &Path) -> Result<Secret, AuthError> {
    let secret = Secret::generate()?;
    files::private_dir(dir)?;
    files::write_private(&dir.join(ADMIN_TOKEN), format!("{}\n", secret.expose()).as_bytes())?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_made_once_and_the_admin_token_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("coordinator-1");
        let first = CoordinatorIdentity::load_or_create(&dir, &["127.0.0.1".into()]).unwrap();
        assert!(first.created);
        let again = CoordinatorIdentity::load_or_create(&dir, &["127.0.0.1".into()]).unwrap();
        assert!(!again.created);
        assert_eq!(again.admin, first.admin);
        assert_eq!(again.ca.fingerprint(), first.ca.fingerprint());
        assert_eq!(read_admin(&dir.join(ADMIN_TOKEN)).unwrap(), first.admin);
        let rotated = rotate_admin(&dir).unwrap();
        assert_ne!(rotated, first.admin);
        std::fs::write(dir.join(ADMIN_TOKEN), "nope").unwrap();
        let err = read_admin(&dir.join(ADMIN_TOKEN)).unwrap_err().to_string();
        assert!(err.contains("not an admin token"), "{err}");
    }
}

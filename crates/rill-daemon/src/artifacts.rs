//! Node binaries shipped by `rill start` (`distribute: scp|http`), kept in
//! this daemon's artifact directory under their SHA-256 and run only if
//! their content still has it.
//!
//! - `scp`: the CLI pushed the file here over SSH before the start; it is
//!   verified, never fetched.
//! - `http`: fetched from the coordinator (`GET /api/artifacts/{build}/{node}`
//!   with this daemon's credential) unless a file with that hash is here
//!   already; written to a temporary file, verified, then renamed into place.
//!
//! The directory is bounded: after each binary is prepared, the oldest ones
//! that no running share uses are removed until it holds at most
//! [`KEEP_BYTES`], and temporary files of pushes or fetches that broke off
//! go after an hour.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rill_auth::digest::sha256_file;
use rill_core::{Artifact, Distribute};

/// Bytes of shipped binaries kept when no share uses them.
pub const KEEP_BYTES: u64 = 2 << 30;
/// Longest a download may take.
const FETCH_LIMIT: Duration = Duration::from_secs(300);
/// A temporary file this old belongs to a push or fetch that broke off.
const STALE_PART: Duration = Duration::from_secs(3600);
/// Makes every fetch's temporary file name unique within this daemon.
static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This daemon's shipped binaries.
#[derive(Clone, Debug)]
pub struct Artifacts {
    dir: PathBuf,
    dialer: Arc<dyn crate::access::Dialer>,
    /// Hash -> shares using it (never pruned while above zero).
    in_use: Arc<Mutex<HashMap<String, usize>>>,
}

/// A share's hold on its binaries: released when the share ends.
pub struct InUse {
    artifacts: Artifacts,
    hashes: Vec<String>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut in_use = self.artifacts.in_use.lock().unwrap_or_else(|p| p.into_inner());
        for hash in &self.hashes {
            if let Some(count) = in_use.get_mut(hash) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    in_use.remove(hash);
                }
            }
        }
    }
}

impl Artifacts {
    /// Creates `dir` if it can (so that pushes as the daemon's user find it).
    pub fn new(dir: PathBuf, dialer: Arc<dyn crate::access::Dialer>) -> Self {
        let _ = std::fs::create_dir_all(&dir);
        Self { dir, dialer, in_use: Arc::default() }
    }

    /// Marks `hashes` as used by a share until the returned guard drops.
    pub fn hold(&self, hashes: Vec<String>) -> InUse {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        for hash in &hashes {
            *in_use.entry(hash.clone()).or_default() += 1;
        }
        InUse { artifacts: self.clone(), hashes }
    }

    /// The verified binary of `node`, fetched first if it must be (blocking:
    /// call it on the share's thread). The error says why it cannot run.
    pub fn prepare(&self, node: &str, distribute: Distribute, artifact: &Artifact) -> Result<PathBuf, String> {
        let path = self.dir.join(&artifact.sha256);
        if path.exists() {
            match sha256_file(&path) {
                Ok(found) if found == artifact.sha256 => {
                    self.prune();
                    return executable(path);
                }
                Ok(found) if distribute == Distribute::Scp => {
                    return Err(format!(
                        "the binary pushed for node `{node}` ({}) has sha256 {found}, not {}: refused, not run",
                        path.display(),
                        artifact.sha256
                    ));
                }
                // A damaged copy: fetched again below.
                Ok(_) | Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        match distribute {
            Distribute::Local => Err(format!("node `{node}` is not shipped (distribute: local)")),
            Distribute::Scp => Err(format!(
                "node `{node}`'s binary (sha256 {}) was not pushed to this machine's {}: `rill start` pushes it over \
                 SSH to the machines of the cluster file (`--cluster FILE`, or the one `rill cluster up` recorded)",
                artifact.sha256,
                self.dir.display()
            )),
            Distribute::Http => {
                self.fetch(node, artifact, &path)?;
                self.prune();
                executable(path)
            }
        }
    }

    /// Downloads `artifact` to `path`, verified.
    fn fetch(&self, node: &str, artifact: &Artifact, path: &Path) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let n = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let part = self.dir.join(format!(".{}.part-{}-{n}", artifact.sha256, std::process::id()));
        let url = format!("/api/artifacts/{}/{node}", artifact.build_id);
        let dial = self
            .dialer
            .attempt()
            .map_err(|e| format!("cannot reach the coordinator for node `{node}`'s binary: {e}"))?
            .dial;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot fetch node `{node}`'s binary: {e}"))?;
        let fetched = runtime.block_on(async {
            let mut file = tokio::fs::File::create(&part).await.map_err(|e| e.to_string())?;
            let get = rill_auth::dial::http_get(&dial, &url, &mut file, artifact.size);
            match tokio::time::timeout(FETCH_LIMIT, get).await {
                Ok(Ok(got)) => Ok(got),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no complete answer within {} s", FETCH_LIMIT.as_secs())),
            }
        });
        let checked = fetched.and_then(|got| {
            if got != artifact.size {
                return Err(format!("got {got} bytes, expected {}", artifact.size));
            }
            let found = sha256_file(&part).map_err(|e| e.to_string())?;
            if found != artifact.sha256 {
                return Err(format!(
                    "its sha256 is {found}, but `rill start` built {}: refused, not run (was it changed on the coordinator?)",
                    artifact.sha256
                ));
            }
            std::fs::rename(&part, path).map_err(|e| e.to_string())
        });
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&part);
            return Err(format!("node `{node}`'s binary from the coordinator ({url}): {e}"));
        }
        Ok(())
    }

    /// Removes the oldest binaries no share uses while over [`KEEP_BYTES`],
    /// and temporary files older than [`STALE_PART`].
    fn prune(&self) {
        let in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = std::time::SystemTime::now();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_PART));
            if name.starts_with('.') && (name.contains(".part-") || name.contains(".push-")) && stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = entries
            .flatten()
            .filter(|e| rill_core::is_sha256_hex(&e.file_name().to_string_lossy()))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().unwrap_or(std::time::UNIX_EPOCH), e.path(), meta.len()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        files.sort();
        for (_, path, size) in files {
            if total <= KEEP_BYTES {
                break;
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !in_use.contains_key(&name) && std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(size);
            }
        }
    }
}

/// Makes the file executable (a push already made it 0755: then nothing to
/// do, which matters when another user pushed it).
fn executable(path: PathBuf) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode & 0o555 == 0o555 {
        return Ok(path);
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoCoordinator;

    impl crate::access::Dialer for NoCoordinator {
        fn addr(&self) -> &str {
            "127.0.0.1:9"
        }
        fn attempt(&self) -> Result<crate::access::Attempt, crate::access::AccessProblem> {
            Ok(rill_auth::dial::Dial { addr: "127.0.0.1:9".into(), tls: None, bearer: None }.into())
        }
        fn enrolled(&self, _: &str) -> Result<(), crate::access::AccessProblem> {
            Ok(())
        }
    }

    fn artifact(sha256: &str) -> Artifact {
        Artifact { build_id: "b1".into(), sha256: sha256.into(), size: 11 }
    }

    #[test]
    fn a_pushed_binary_runs_only_with_its_hash_and_a_missing_one_says_how_it_gets_there() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path().to_owned(), Arc::new(NoCoordinator));
        let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        let missing = artifacts.prepare("sink", Distribute::Scp, &artifact(sha)).unwrap_err();
        assert!(missing.contains("was not pushed") && missing.contains("--cluster"), "{missing}");
        std::fs::write(dir.path().join(sha), b"hello world").unwrap();
        let path = artifacts.prepare("sink", Distribute::Scp, &artifact(sha)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        std::fs::write(dir.path().join(sha), b"hello w0rld").unwrap();
        let tampered = artifacts.prepare("sink", Distribute::Scp, &artifact(sha)).unwrap_err();
        assert!(tampered.contains("refused, not run"), "{tampered}");
    }

    #[test]
    fn an_http_binary_that_cannot_be_fetched_fails_with_the_reason_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path().to_owned(), Arc::new(NoCoordinator));
        let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        // A damaged cached copy is removed and fetched again (which fails here).
        std::fs::write(dir.path().join(sha), b"damaged").unwrap();
        let failed = artifacts.prepare("sink", Distribute::Http, &artifact(sha)).unwrap_err();
        assert!(failed.contains("/api/artifacts/b1/sink") && failed.contains("cannot connect"), "{failed}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn binaries_in_use_are_never_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(dir.path().to_owned(), Arc::new(NoCoordinator));
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let big = std::fs::File::create(dir.path().join(&a)).unwrap();
        big.set_len(KEEP_BYTES).unwrap();
        big.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000)).unwrap();
        std::fs::write(dir.path().join(&b), b"x").unwrap();
        let held = artifacts.hold(vec![a.clone()]);
        artifacts.prune();
        assert!(dir.path().join(&a).exists(), "in use, so kept even over the bound");
        assert!(!dir.path().join(&b).exists(), "not in use, and the store is over the bound");
        std::fs::write(dir.path().join(&b), b"x").unwrap();
        drop(held);
        artifacts.prune();
        assert!(
            !dir.path().join(&a).exists() && dir.path().join(&b).exists(),
            "oldest unused first, until under the bound"
        );
    }
}

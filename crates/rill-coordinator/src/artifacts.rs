//! Node binaries uploaded by `rill start` for `distribute: http`, served to
//! the daemons that run them: `<state>/artifacts/<build_id>/<node_id>`.
//!
//! Ids are checked before any path is made of them
//! ([`rill_core::artifact_id_problem`]: no `..`, `/`, `\`, NUL), so a request
//! cannot name a file outside this directory. Uploads are written to a
//! temporary file (removed if the upload fails or is cancelled), hashed
//! while they arrive, and renamed into place when complete. The store is
//! bounded: after each upload the oldest builds that no active dataflow uses
//! and that are older than [`YOUNG`] (uploaded for a start that has not come
//! yet) are removed until it holds at most `limit` bytes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use rill_core::{MAX_ARTIFACT_SIZE, artifact_id_problem};
use tokio::io::AsyncWriteExt;

/// Default bound of the store (`rill coordinator --artifact-store-mib`).
pub const DEFAULT_LIMIT: u64 = 4 << 30;
/// A build written this recently is never pruned: its `rill start` may still
/// be uploading its other nodes, or on its way.
pub const YOUNG: std::time::Duration = std::time::Duration::from_secs(600);

/// A temporary file, removed when dropped unless it was kept.
struct Part(Option<PathBuf>);

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why an upload or download failed; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0}")]
    BadId(String),
    #[error("no artifact {build_id}/{node_id}")]
    NotFound { build_id: String, node_id: String },
    #[error("an artifact may be at most {MAX_ARTIFACT_SIZE} bytes")]
    TooLarge,
    #[error("this coordinator keeps no state directory, so it cannot store artifacts")]
    NoStore,
    #[error("the upload broke off: {0}")]
    Body(String),
    #[error("artifact store: {0}")]
    Io(#[from] std::io::Error),
}

/// Where uploads live, and how much they may take.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: Option<PathBuf>,
    limit: u64,
}

impl ArtifactStore {
    /// `dir: None`: a coordinator without a state directory refuses uploads.
    pub fn new(dir: Option<PathBuf>, limit: u64) -> Self {
        Self { dir, limit }
    }

    /// The file of `build_id/node_id`, once both ids are checked.
    fn path(&self, build_id: &str, node_id: &str) -> Result<PathBuf, ArtifactError> {
        for id in [build_id, node_id] {
            if let Some(problem) = artifact_id_problem(id) {
                return Err(ArtifactError::BadId(problem));
            }
        }
        let dir = self.dir.as_ref().ok_or(ArtifactError::NoStore)?;
        Ok(dir.join(build_id).join(node_id))
    }

    /// Stores an upload; returns its SHA-256 (hex) and size. `keep`: builds
    /// that active dataflows use, never pruned.
    pub async fn put<E: std::fmt::Display>(
        &self,
        build_id: &str,
        node_id: &str,
        mut body: impl Stream<Item = Result<impl AsRef<[u8]>, E>> + Unpin,
        keep: &BTreeSet<String>,
    ) -> Result<(String, u64), ArtifactError> {
        let path = self.path(build_id, node_id)?;
        let build_dir = path.parent().map(Path::to_path_buf).ok_or(ArtifactError::NoStore)?;
        tokio::fs::create_dir_all(&build_dir).await?;
        let part = build_dir.join(format!(".{node_id}.part-{}", uuid::Uuid::new_v4().simple()));
        // Removed however this ends (an error, or the request cancelled).
        let mut guard = Part(Some(part.clone()));
        let written = async {
            let mut file = tokio::fs::File::create(&part).await?;
            let mut digest = rill_auth::digest::Sha256::default();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ArtifactError::Body(e.to_string()))?;
                let chunk = chunk.as_ref();
                size += chunk.len() as u64;
                if size > MAX_ARTIFACT_SIZE {
                    return Err(ArtifactError::TooLarge);
                }
                digest.update(chunk);
                file.write_all(chunk).await?;
            }
            file.sync_all().await?;
            Ok::<_, ArtifactError>((digest.finish_hex(), size))
        }
        .await;
        match written {
            Ok(done) => {
                tokio::fs::rename(&part, &path).await?;
                guard.0 = None;
                let (dir, limit, current) = (self.dir.clone(), self.limit, build_id.to_owned());
                let mut keep = keep.clone();
                keep.insert(current);
                if let Some(dir) = dir {
                    let _ = tokio::task::spawn_blocking(move || prune(&dir, limit, &keep)).await;
                }
                Ok(done)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens `build_id/node_id` for reading; returns it with its size.
    pub async fn open(&self, build_id: &str, node_id: &str) -> Result<(tokio::fs::File, u64), ArtifactError> {
        let path = self.path(build_id, node_id)?;
        let not_found = || ArtifactError::NotFound { build_id: build_id.to_owned(), node_id: node_id.to_owned() };
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(not_found());
        }
        Ok((file, meta.len()))
    }
}

/// Removes whole builds, oldest first, until the store holds at most
/// `limit` bytes; builds in `keep` and those written within [`YOUNG`] stay
/// whatever their size. Returns the builds removed.
pub fn prune(dir: &Path, limit: u64, keep: &BTreeSet<String>) -> Vec<String> {
    prune_at(dir, limit, keep, std::time::SystemTime::now())
}

fn prune_at(dir: &Path, limit: u64, keep: &BTreeSet<String>, now: std::time::SystemTime) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut builds: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
    let mut total = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_dir() {
            continue;
        }
        let size: u64 = std::fs::read_dir(entry.path())
            .map(|files| files.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        total += size;
        builds.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), name, size));
    }
    builds.sort();
    let mut removed = Vec::new();
    for (modified, name, size) in builds {
        if total <= limit {
            break;
        }
        let young = now.duration_since(modified).map_or(true, |age| age < YOUNG);
        if keep.contains(&name) || young {
            continue;
        }
        if std::fs::remove_dir_all(dir.join(&name)).is_ok() {
            total = total.saturating_sub(size);
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<&'static [u8], std::io::Error>> + Unpin {
        futures_util::stream::iter(parts.iter().map(|p| Ok(*p)).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn an_upload_is_hashed_stored_and_read_back_and_no_id_leaves_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(Some(dir.path().to_owned()), DEFAULT_LIMIT);
        let (sha, size) = store.put("b1", "sink", chunks(&[b"hello ", b"world"]), &BTreeSet::new()).await.unwrap();
        assert_eq!(size, 11);
        assert_eq!(sha, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        assert_eq!(std::fs::read(dir.path().join("b1/sink")).unwrap(), b"hello world");
        let (_, len) = store.open("b1", "sink").await.unwrap();
        assert_eq!(len, 11);
        for (build, node) in
            [("..", "x"), ("b1", ".."), ("a/b", "x"), ("b1", "/etc/passwd"), ("b1", "a\\b"), ("b\0", "x")]
        {
            assert!(matches!(store.open(build, node).await, Err(ArtifactError::BadId(_))), "{build:?}/{node:?}");
            let put = store.put(build, node, chunks(&[b"x"]), &BTreeSet::new()).await;
            assert!(matches!(put, Err(ArtifactError::BadId(_))), "{build:?}/{node:?}");
        }
        assert!(matches!(store.open("b1", "other").await, Err(ArtifactError::NotFound { .. })));
        let nothing = ArtifactStore::new(None, DEFAULT_LIMIT);
        assert!(matches!(nothing.open("b1", "sink").await, Err(ArtifactError::NoStore)));
    }

    #[tokio::test]
    async fn a_broken_upload_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::new(Some(dir.path().to_owned()), DEFAULT_LIMIT);
        let broken = futures_util::stream::iter(vec![Ok(&b"part"[..]), Err("connection reset")]);
        let put = store.put("b1", "sink", broken, &BTreeSet::new()).await;
        assert!(matches!(put, Err(ArtifactError::Body(_))), "{put:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("b1")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn pruning_removes_the_oldest_builds_not_in_use_until_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        for (k, build) in ["old", "used", "mid", "new"].iter().enumerate() {
            std::fs::create_dir(dir.path().join(build)).unwrap();
            std::fs::write(dir.path().join(build).join("n"), vec![0u8; 100]).unwrap();
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + k as u64);
            std::fs::File::open(dir.path().join(build)).unwrap().set_modified(time).unwrap();
        }
        let keep: BTreeSet<String> = ["used".to_owned()].into();
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000) + YOUNG;
        // 400 bytes held, 250 allowed: `old` goes, `used` is kept, then `mid`.
        assert_eq!(prune_at(dir.path(), 250, &keep, now + std::time::Duration::from_secs(2)), ["old", "mid"]);
        assert!(dir.path().join("used/n").exists() && dir.path().join("new/n").exists());
        assert!(prune_at(dir.path(), 250, &keep, now + std::time::Duration::from_secs(2)).is_empty());
        // Written within YOUNG: kept, as its start may not have come yet.
        assert!(prune_at(dir.path(), 0, &BTreeSet::new(), now).is_empty());
    }
}

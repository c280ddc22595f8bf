//! Node sources from git (`git:` with `branch`, `tag` or `rev`): cloned
//! with the system's `git` into a cache keyed by repository and commit,
//! `<cache>/<sha256 of the repository, 16 hex>/<commit>`, checked out
//! detached. A checkout that is there is used again without cloning (a
//! branch or tag is still looked up, with `git ls-remote`, since it may
//! have moved). A clone is made under a temporary name and renamed into
//! place when complete, so an interrupted one is never used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rill_core::{GitRev, GitSource};

/// Why a node's source could not be had.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git ({0}); install git to build nodes with a `git` source")]
    Missing(std::io::Error),
    #[error("`git {command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{repo} has no {what}")]
    NoSuchRef { repo: String, what: String },
    #[error("cannot use the source cache {dir}: {source}")]
    Cache { dir: PathBuf, source: std::io::Error },
}

/// A node's source, ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub dir: PathBuf,
    /// The full commit id checked out.
    pub commit: String,
    /// It was in the cache already.
    pub reused: bool,
}

/// The checkout of `source` (a relative path repository is taken from
/// `base_dir`) under `cache`, cloning it if it is not there yet.
pub fn checkout(cache: &Path, source: &GitSource, base_dir: &Path) -> Result<Checkout, GitError> {
    let repo = repository(&source.repo, base_dir);
    let mut key = rill_auth::digest::Sha256::default();
    key.update(repo.as_bytes());
    let repo_dir = cache.join(&key.finish_hex()[..16]);
    let cache_error = |source| GitError::Cache { dir: repo_dir.clone(), source };
    std::fs::create_dir_all(&repo_dir).map_err(cache_error)?;
    let known = match &source.rev {
        GitRev::Branch(name) => Some(remote_commit(&repo, &format!("refs/heads/{name}"), &source.rev)?),
        GitRev::Tag(name) => Some(remote_commit(&repo, &format!("refs/tags/{name}"), &source.rev)?),
        GitRev::Rev(id) if id.len() == 40 => Some(id.to_ascii_lowercase()),
        GitRev::Rev(_) => None,
    };
    if let Some(commit) = &known
        && repo_dir.join(commit).join(".git").is_dir()
    {
        return Ok(Checkout { dir: repo_dir.join(commit), commit: commit.clone(), reused: true });
    }
    let temp = repo_dir.join(format!(".clone-{}-{}", std::process::id(), unique()));
    let result = clone_at(&repo, &temp, known.as_deref(), &source.rev, &repo_dir);
    // (Gone after a rename; left by a failure: removed.)
    let _ = std::fs::remove_dir_all(&temp);
    result
}

/// Clones into `temp`, checks out the commit and renames it into place.
fn clone_at(repo: &str, temp: &Path, known: Option<&str>, rev: &GitRev, repo_dir: &Path) -> Result<Checkout, GitError> {
    let temp_text = temp.to_string_lossy();
    git(None, &["clone", "--quiet", "--no-checkout", "--", repo, &temp_text])?;
    let commit = match known {
        Some(commit) => commit.to_owned(),
        None => {
            let spec = match rev {
                GitRev::Branch(name) => format!("refs/remotes/origin/{name}^{{commit}}"),
                GitRev::Tag(name) => format!("refs/tags/{name}^{{commit}}"),
                GitRev::Rev(id) => format!("{id}^{{commit}}"),
            };
            let found = git(Some(temp), &["rev-parse", "--verify", "--quiet", "--end-of-options", &spec]);
            found
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| GitError::NoSuchRef { repo: repo.to_owned(), what: rev.describe() })?
        }
    };
    git(Some(temp), &["checkout", "--quiet", "--detach", &commit])?;
    let dir = repo_dir.join(&commit);
    if dir.join(".git").is_dir() {
        // Another build got there first.
        return Ok(Checkout { dir, commit, reused: true });
    }
    match std::fs::rename(temp, &dir) {
        Ok(()) => Ok(Checkout { dir, commit, reused: false }),
        // Another build renamed its clone into place meanwhile.
        Err(_) if dir.join(".git").is_dir() => Ok(Checkout { dir, commit, reused: true }),
        Err(source) => Err(GitError::Cache { dir, source }),
    }
}

/// The commit `reference` names in `repo` (a tag: the commit it points to).
fn remote_commit(repo: &str, reference: &str, rev: &GitRev) -> Result<String, GitError> {
    let peeled = format!("{reference}^{{}}");
    let listed = git(None, &["ls-remote", "--", repo, reference, &peeled])?;
    let mut found = None;
    for line in listed.lines() {
        let Some((commit, name)) = line.split_once('\t') else { continue };
        // An annotated tag's own object comes first, then what it points to.
        if name == peeled || (name == reference && found.is_none()) {
            found = Some(commit.to_owned());
        }
    }
    found.ok_or_else(|| GitError::NoSuchRef { repo: repo.to_owned(), what: rev.describe() })
}

/// A local path repository, relative to the dataflow's directory; a URL
/// (`scheme://` or `host:path`) as it is.
fn repository(repo: &str, base_dir: &Path) -> String {
    let url = repo.contains("://") || repo.split_once(':').is_some_and(|(host, _)| !host.contains('/'));
    if url { repo.to_owned() } else { base_dir.join(repo).to_string_lossy().into_owned() }
}

/// Runs git (in `dir`) without prompts (ssh in batch mode too), without
/// transports that run commands, and giving up on an HTTP transfer slower
/// than 1 KB/s for a minute; its stdout, trimmed.
fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    let output = command
        .args(["-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never", "-c", "advice.detachedHead=false"])
        .args(["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=30")
        .stdin(Stdio::null())
        .output()
        .map_err(GitError::Missing)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(GitError::Failed { command: args.join(" "), stderr });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A number for temporary names, unique within this process.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with `file` = "one" at tag v1 and "two" on main.
    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(dir.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        run(&["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(dir.path().join("file"), "one").unwrap();
        run(&["add", "file"]);
        run(&["commit", "--quiet", "-m", "one"]);
        run(&["tag", "-a", "v1", "-m", "first"]);
        std::fs::write(dir.path().join("file"), "two").unwrap();
        run(&["commit", "--quiet", "-am", "two"]);
        dir
    }

    #[test]
    fn a_tag_a_branch_and_a_short_rev_check_out_their_commit_once() {
        let (origin, cache) = (repo(), tempfile::tempdir().unwrap());
        let source = |rev| GitSource { repo: origin.path().to_string_lossy().into_owned(), rev };
        let read = |c: &Checkout| std::fs::read_to_string(c.dir.join("file")).unwrap();
        let tag = checkout(cache.path(), &source(GitRev::Tag("v1".into())), Path::new("/")).unwrap();
        assert_eq!((read(&tag), tag.reused), ("one".to_owned(), false));
        assert!(tag.dir.ends_with(&tag.commit) && tag.commit.len() == 40);
        let again = checkout(cache.path(), &source(GitRev::Tag("v1".into())), Path::new("/")).unwrap();
        assert_eq!((again.dir, again.reused), (tag.dir.clone(), true));
        let main = checkout(cache.path(), &source(GitRev::Branch("main".into())), Path::new("/")).unwrap();
        assert_eq!(read(&main), "two");
        let short = checkout(cache.path(), &source(GitRev::Rev(tag.commit[..8].into())), Path::new("/")).unwrap();
        assert_eq!((short.commit, short.reused), (tag.commit.clone(), true));
        let missing = checkout(cache.path(), &source(GitRev::Tag("v9".into())), Path::new("/")).unwrap_err();
        assert!(missing.to_string().ends_with("has no tag v9"), "{missing}");
        let relative = GitSource { repo: "repo".into(), rev: GitRev::Tag("v1".into()) };
        let base = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(origin.path(), base.path().join("repo")).unwrap();
        assert_eq!(read(&checkout(cache.path(), &relative, base.path()).unwrap()), "one", "relative to the dataflow");
        let leftovers = std::fs::read_dir(tag.dir.parent().unwrap()).unwrap().flatten();
        assert!(
            leftovers.into_iter().all(|e| !e.file_name().to_string_lossy().starts_with(".clone")),
            "no temporary clones"
        );
    }
}

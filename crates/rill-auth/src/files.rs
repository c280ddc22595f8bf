//! Private files: directories 0700, files 0600, written whole (a temporary
//! file renamed into place, so a crash never leaves half a key).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::AuthError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::File { path: path.to_owned(), source }
}

/// Creates `dir` (and its parents) if missing and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), AuthError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Writes `contents` to `path` with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads `path`, refusing a file that others may read or write: a secret
/// there may already be known.
pub fn read_private(path: &Path) -> Result<String, AuthError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let what = format!("mode {mode:o} lets others read it; make it 0600 (chmod 600) or remove it");
        return Err(AuthError::BadFile { path: path.to_owned(), what });
    }
    std::fs::read_to_string(path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_written_0600_in_0700_dirs_and_open_ones_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let file = dir.join("key");
        write_private(&file, b"secret").unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_private(&file).unwrap(), "secret");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_private(&file).unwrap_err().to_string();
        assert!(err.contains("mode 644 lets others read it"), "{err}");
    }
}

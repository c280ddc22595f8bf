//! SHA-256 of contents, as lowercase hex: what shipped node binaries are
//! named and checked by (the coordinator hashes uploads as they arrive,
//! the CLI and daemons hash files).

use std::io::Read;
use std::path::Path;

/// A SHA-256 fed piece by piece.
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256 {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest, lowercase hex.
    pub fn finish_hex(self) -> String {
        crate::hex(self.0.finish().as_ref())
    }
}

/// The SHA-256 of a file, lowercase hex (read in 256 KiB pieces).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut digest = Sha256::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(digest.finish_hex());
        }
        digest.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_and_its_pieces_hash_alike() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello world").unwrap();
        let expected = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        assert_eq!(sha256_file(&dir.path().join("f")).unwrap(), expected);
        let mut pieces = Sha256::default();
        pieces.update(b"hello ");
        pieces.update(b"world");
        assert_eq!(pieces.finish_hex(), expected);
    }
}

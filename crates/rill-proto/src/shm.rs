//! Shared-memory regions: anonymous memfds, so nothing is ever left behind in
//! `/dev/shm` — the kernel frees a region when its last fd and mapping go,
//! also when a process is killed.
//!
//! A region's size is sealed right after it is set (no shrink, no grow), and
//! a receiver checks the seals and the size before mapping: a peer that
//! names a larger region than its memfd, or shrinks it later, would
//! otherwise kill the reader with SIGBUS.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A mapped memfd region. The creator keeps the fd (to pass it to each
/// receiver once); a receiver closes it right after mapping, the mapping
/// suffices.
#[derive(Debug)]
pub struct Region {
    fd: Option<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; concurrent access is ordered by the
// protocol (a sender writes only regions no receiver holds).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

/// Why a received region was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("shared region is {actual} bytes, the message says {claimed}")]
    TooSmall { actual: u64, claimed: u64 },
    #[error("shared region is not sealed against shrinking")]
    NotSealed,
    #[error("shared region: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rustix::io::Errno> for RegionError {
    fn from(e: rustix::io::Errno) -> Self {
        RegionError::Io(e.into())
    }
}

impl Region {
    /// Creates a writable region of `len` bytes (sealed at that size), its
    /// pages allocated at once: the cost of fresh memory is paid, and can
    /// be measured, here rather than page by page while it is filled.
    pub fn create(len: usize) -> std::io::Result<Self> {
        let fd = rustix::fs::memfd_create("rill-shm", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let mut region = Self::map(&fd, len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::POPULATE)?;
        region.fd = Some(fd);
        Ok(region)
    }

    /// Maps a region received from a peer, read-only, after checking that
    /// it is sealed and holds at least `len` bytes.
    pub fn open(fd: OwnedFd, len: usize) -> Result<Self, RegionError> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(RegionError::NotSealed);
        }
        let actual = rustix::fs::fstat(&fd)?.st_size as u64;
        if actual < len as u64 {
            return Err(RegionError::TooSmall { actual, claimed: len as u64 });
        }
        Ok(Self::map(&fd, len, ProtFlags::READ, MapFlags::empty())?)
    }

    fn map(fd: &OwnedFd, len: usize, prot: ProtFlags, flags: MapFlags) -> std::io::Result<Self> {
        if len == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty shared region"));
        }
        // SAFETY: a fresh shared mapping of a memfd we hold; unmapped in Drop.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED | flags, fd, 0)? };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(Self { fd: None, ptr, len })
    }

    /// The memfd, for regions this process created.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `len` bytes.
    pub fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: in bounds (min), mapping lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len.min(self.len)) }
    }

    /// The first `len` bytes, writable.
    ///
    /// # Safety
    /// Only for regions this process created, that no receiver holds, and
    /// that nothing else borrows while the slice lives (the sender's pool
    /// lends a region to one `Sample` at a time).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, len: usize) -> &mut [u8] {
        // SAFETY: in bounds; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len.min(self.len)) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(region: &Region) -> OwnedFd {
        region.fd().and_then(|fd| fd.try_clone_to_owned().ok()).expect("creator has the fd")
    }

    #[test]
    fn a_receiver_reads_what_the_creator_wrote() {
        let region = Region::create(8192).unwrap();
        // SAFETY: just created, nobody else holds it.
        unsafe { region.bytes_mut(5) }.copy_from_slice(b"hello");
        let seen = Region::open(dup(&region), 8192).unwrap();
        assert_eq!(seen.bytes(5), b"hello");
    }

    #[test]
    fn a_region_larger_than_its_memfd_is_refused() {
        let region = Region::create(4096).unwrap();
        let err = Region::open(dup(&region), 1 << 20).unwrap_err();
        assert!(matches!(err, RegionError::TooSmall { actual: 4096, claimed: 1048576 }), "{err}");
    }

    #[test]
    fn an_unsealed_memfd_is_refused_and_a_sealed_one_cannot_shrink() {
        let fd = rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(Region::open(fd, 4096), Err(RegionError::NotSealed)));
        let region = Region::create(4096).unwrap();
        assert!(rustix::fs::ftruncate(region.fd().unwrap(), 0).is_err(), "sealed against shrinking");
    }
}

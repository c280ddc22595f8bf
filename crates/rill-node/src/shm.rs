//! Shared-memory regions: anonymous memfds, so nothing is ever left behind in
//! `/dev/shm` — the kernel frees a region when its last fd and mapping go,
//! also when a process is killed.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

/// A mapped memfd region. The creator keeps the fd (the daemon gets it
/// once); a receiver closes it right after mapping, the mapping suffices.
#[derive(Debug)]
pub(crate) struct Region {
    fd: Option<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; concurrent access is ordered by the
// protocol (a sender writes only regions no receiver holds).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Creates a writable region of `len` bytes.
    pub(crate) fn create(len: usize) -> std::io::Result<Self> {
        let fd = rustix::fs::memfd_create("rill-shm", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        let mut region = Self::map(&fd, len, ProtFlags::READ | ProtFlags::WRITE)?;
        region.fd = Some(fd);
        Ok(region)
    }

    /// Maps a region received from the daemon, read-only.
    pub(crate) fn open(fd: OwnedFd, len: usize) -> std::io::Result<Self> {
        Self::map(&fd, len, ProtFlags::READ)
    }

    fn map(fd: &OwnedFd, len: usize, prot: ProtFlags) -> std::io::Result<Self> {
        // SAFETY: a fresh shared mapping of a memfd we hold; unmapped in Drop.
        let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(Self { fd: None, ptr, len })
    }

    /// The memfd, for regions this node created.
    pub(crate) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first `len` bytes.
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: in bounds (min), mapping lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len.min(self.len)) }
    }

    /// The first `len` bytes, writable. Only for regions this node created
    /// and that no receiver holds.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn bytes_mut(&self, len: usize) -> &mut [u8] {
        // SAFETY: see above; the pool hands a region to one Sample at a time.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len.min(self.len)) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

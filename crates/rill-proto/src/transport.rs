//! Packets with attached file descriptors over a `SOCK_SEQPACKET` Unix socket.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketFlags, SocketType,
};

/// Most descriptors one packet carries (a batch may introduce several regions).
pub const MAX_FDS: usize = 16;

/// A connected pair of packet sockets (close-on-exec), for daemon and node.
pub fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// Sends one packet. `nonblocking` turns a full socket into `Err(WOULDBLOCK)`.
pub fn send_packet(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>], nonblocking: bool) -> Result<(), Errno> {
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    let iov = [IoSlice::new(bytes)];
    if fds.is_empty() {
        loop {
            match rustix::net::send(fd, bytes, flags) {
                Err(Errno::INTR) => continue,
                other => return other.map(|_| ()),
            }
        }
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::NOBUFS);
    }
    loop {
        match rustix::net::sendmsg(fd, &iov, &mut control, flags) {
            Err(Errno::INTR) => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// Receives one packet into `buf`; returns its length (0 = peer closed) and
/// the descriptors it carried.
pub fn recv_packet(fd: BorrowedFd<'_>, buf: &mut [u8], nonblocking: bool) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match rustix::net::recvmsg(fd, &mut iov, &mut control, flags) {
            Err(Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(Errno::MSGSIZE);
    }
    Ok((msg.bytes, fds))
}

/// A duration as the kernel's timespec (poll, epoll timeouts).
pub fn timespec(d: std::time::Duration) -> rustix::time::Timespec {
    rustix::time::Timespec { tv_sec: d.as_secs() as i64, tv_nsec: i64::from(d.subsec_nanos()) }
}

/// Waits until `fd` is readable or `timeout` passes; true if readable.
pub fn wait_readable(fd: impl AsFd, timeout: Option<std::time::Duration>) -> Result<bool, Errno> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let ts = timeout.map(timespec);
    loop {
        match poll(&mut fds, ts.as_ref()) {
            Err(Errno::INTR) => continue,
            Ok(n) => return Ok(n > 0),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_keep_boundaries_and_carry_fds() {
        let (a, b) = socket_pair().unwrap();
        let (x, _y) = socket_pair().unwrap();
        send_packet(a.as_fd(), b"one", &[], false).unwrap();
        send_packet(a.as_fd(), b"two!", &[x.as_fd()], false).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = recv_packet(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"one"[..], 0));
        let (n, fds) = recv_packet(b.as_fd(), &mut buf, false).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"two!"[..], 1));
        assert_eq!(recv_packet(b.as_fd(), &mut buf, true).unwrap_err(), Errno::WOULDBLOCK);
        drop(a);
        assert_eq!(recv_packet(b.as_fd(), &mut buf, false).unwrap().0, 0);
    }
}

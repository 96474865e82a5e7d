//! The few Unix-socket system calls the vsock worker makes, non-blocking and without
//! `SIGPIPE`: accept, connect to `<uds_path>_<port>`, scatter/gather send and receive
//! straight from and into guest memory, shutdown, and a zero-timeout hang-up check.
//!
//! Every socket here is created `SOCK_NONBLOCK | SOCK_CLOEXEC`; nothing here ever blocks the
//! device thread. Sends use `MSG_NOSIGNAL`, so a client that went away is an `EPIPE` result,
//! never a signal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Largest path a `sockaddr_un` holds (without the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

fn cvt(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Accepts one pending connection of `listener` as a non-blocking socket.
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with null address pointers only returns a new descriptor (or -1).
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connects a new non-blocking stream socket to the Unix socket at `path`. Fails at once
/// (never waits) when nobody listens there or the listener's backlog is full (`EAGAIN`).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_SOCKET_PATH || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // SAFETY: a zeroed sockaddr_un is valid; we fill the family and a NUL-terminated path
    // that fits (checked above).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Sends from the buffers `iov` points to; returns the bytes the socket took.
///
/// # Safety
///
/// Every iovec must describe readable memory that stays valid for the call (for guest
/// memory: bounds-checked ranges of a mapping the caller keeps alive).
pub unsafe fn send_iov(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    if iov.is_empty() {
        return Ok(0);
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len();
    // SAFETY: the kernel only reads the iovec array and the memory it describes, which the
    // caller guarantees is valid.
    cvt(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
}

/// Receives into the buffers `iov` points to; returns the bytes read (0: end of stream).
///
/// # Safety
///
/// Every iovec must describe writable memory that stays valid for the call and that no
/// Rust reference covers (for guest memory: bounds-checked ranges of a mapping the caller
/// keeps alive, owned by the device until it publishes them).
pub unsafe fn recv_iov(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    if iov.is_empty() {
        return Ok(0);
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len();
    // SAFETY: the kernel reads the iovec array and writes only the memory it describes,
    // which the caller guarantees is valid and writable.
    cvt(unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) })
}

/// Sends `buf`; returns the bytes the socket took.
pub fn send_bytes(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let iov = [libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec describes `buf`, which is borrowed for the call.
    unsafe { send_iov(fd, &iov) }
}

/// Receives into `buf`; returns the bytes read (0: end of stream).
pub fn recv_bytes(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec describes `buf`, which is mutably borrowed for the call.
    unsafe { recv_iov(fd, &iov) }
}

/// Shuts down one or both directions of a socket (`libc::SHUT_RD`, `SHUT_WR`, `SHUT_RDWR`);
/// errors (a peer already gone) are ignored.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown on a descriptor we own; no memory is passed.
    let _ = unsafe { libc::shutdown(fd, how) };
}

/// Whether the peer of a stream socket closed both directions (`POLLHUP`), as opposed to
/// only shutting its sending side. One zero-timeout `poll`.
pub fn peer_hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Whether an error only means "not now" on a non-blocking socket.
pub fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_socket_pair_carries_bytes_and_reports_hang_up() {
        let (a, b) = UnixStream::pair().expect("pair");
        assert_eq!(send_bytes(a.as_raw_fd(), b"abc").expect("send"), 3);
        let mut buf = [0u8; 8];
        assert_eq!(recv_bytes(b.as_raw_fd(), &mut buf).expect("recv"), 3);
        assert_eq!(&buf[..3], b"abc");
        b.set_nonblocking(true).expect("nonblocking");
        let e = recv_bytes(b.as_raw_fd(), &mut buf).expect_err("nothing to read");
        assert!(would_block(&e));
        // A half close is not a hang-up; a full close is.
        a.shutdown(std::net::Shutdown::Write).expect("shutdown");
        assert_eq!(recv_bytes(b.as_raw_fd(), &mut buf).expect("eof"), 0);
        assert!(!peer_hung_up(b.as_raw_fd()));
        drop(a);
        assert!(peer_hung_up(b.as_raw_fd()));
        // Writing to a closed peer is an error, not SIGPIPE.
        assert!(send_bytes(b.as_raw_fd(), b"x").is_err());
    }

    #[test]
    fn connecting_where_nobody_listens_fails_at_once() {
        let e = connect(Path::new("/nonexistent/ringfence-vsock-test_52")).expect_err("refused");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let long = "/tmp/".to_string() + &"x".repeat(200);
        let e = connect(Path::new(&long)).expect_err("too long");
        assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    }
}

//! Thin, safe wrappers over the socket system calls the netstack needs.
//!
//! This module owns every `unsafe` FFI call of the crate. Each wrapper takes
//! borrowed file descriptors and Rust slices, so callers can never pass a
//! dangling pointer or a length that does not match its buffer. Nothing here
//! keeps state; all sockets are non-blocking and `CLOEXEC`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEEK_OFF` (socket(7)); the value is the same on every Linux architecture we target.
const SO_PEEK_OFF: libc::c_int = 42;

/// Socket type requested from [`socket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SockKind {
    /// `SOCK_STREAM` / TCP.
    Stream,
    /// `SOCK_DGRAM` / UDP.
    Datagram,
    /// `SOCK_DGRAM` / `IPPROTO_ICMP(V6)`: an unprivileged "ping" socket.
    Ping,
    /// `SOCK_RAW` / `IPPROTO_ICMP(V6)`: needs CAP_NET_RAW.
    RawIcmp,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A connected pair of non-blocking, close-on-exec Unix `SOCK_SEQPACKET` sockets: message
/// boundaries are kept (one datagram per message) and, unlike `SOCK_DGRAM`, one end reads EOF
/// once the other is closed. Carries the embedder's UDP flows.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a live array of two ints for socketpair(2) to fill.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Opens a non-blocking, close-on-exec socket of `kind` for the address family of `v6`.
pub(crate) fn socket(v6: bool, kind: SockKind) -> io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let icmp = if v6 {
        libc::IPPROTO_ICMPV6
    } else {
        libc::IPPROTO_ICMP
    };
    let (ty, proto) = match kind {
        SockKind::Stream => (libc::SOCK_STREAM, libc::IPPROTO_TCP),
        SockKind::Datagram => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
        SockKind::Ping => (libc::SOCK_DGRAM, icmp),
        SockKind::RawIcmp => (libc::SOCK_RAW, icmp),
    };
    // SAFETY: plain syscall with integer arguments; the returned fd is checked before use.
    let fd =
        cvt(unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `sockaddr_storage` plus the length that is valid in it.
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

fn to_raw(addr: &SocketAddr) -> RawAddr {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    RawAddr {
        storage,
        len: len as libc::socklen_t,
    }
}

fn from_raw(raw: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match raw.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned for it.
            let sin = unsafe { &*(raw as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6; storage is aligned for it.
            let sin6 = unsafe { &*(raw as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Starts a non-blocking connect. `Ok(true)` = connected at once, `Ok(false)` = in progress.
pub(crate) fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<bool> {
    let raw = to_raw(addr);
    // SAFETY: `raw.storage` is a valid sockaddr of `raw.len` bytes living across the call.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &raw.storage as *const _ as *const libc::sockaddr,
            raw.len,
        )
    };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Binds `fd` to `addr`.
pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let raw = to_raw(addr);
    // SAFETY: `raw.storage` is a valid sockaddr of `raw.len` bytes living across the call.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &raw.storage as *const _ as *const libc::sockaddr,
            raw.len,
        )
    })?;
    Ok(())
}

/// Marks `fd` as a listening socket.
pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed, open fd.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// Accepts one pending connection (non-blocking, close-on-exec) and returns it with the peer.
pub(crate) fn accept(fd: BorrowedFd<'_>) -> io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a writable buffer of the size the kernel is told.
    let new = cvt(unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: `new` was just returned by accept4 and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(new) };
    let peer =
        from_raw(&storage).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
    Ok((owned, peer))
}

/// Returns the local address `fd` is bound to.
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage/len describe a writable buffer of the size the kernel is told.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    from_raw(&storage).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int whose size is passed alongside.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: value/len describe a writable c_int; the kernel writes at most `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &mut value as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(value)
}

/// Sets `SO_REUSEADDR` (listening sockets of published ports).
pub(crate) fn set_reuseaddr(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
}

/// Sets `IPV6_V6ONLY` so a v6 listener does not also claim the v4 port.
pub(crate) fn set_v6only(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
}

/// Sets the peek offset (`SO_PEEK_OFF`); `MSG_PEEK` reads then start there and advance it.
pub(crate) fn set_peek_off(fd: BorrowedFd<'_>, off: u32) -> io::Result<()> {
    let off = i32::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    setsockopt_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF, off)
}

/// Sets `SO_RCVLOWAT`: poll(2) reports readable only once this many bytes are queued
/// (or on EOF/error). Non-blocking reads still return whatever is there.
pub(crate) fn set_rcvlowat(fd: BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    let v = i32::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, v)
}

/// Sets `TCP_NODELAY`: the guest already did its own segment coalescing.
pub(crate) fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Makes the next `close` send a RST instead of a FIN (`SO_LINGER` with timeout 0).
pub(crate) fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value points to a live `linger` whose size is passed alongside.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &lg as *const libc::linger as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Reads and clears the pending socket error (`SO_ERROR`); `Ok(0)` means none.
pub(crate) fn take_error(fd: BorrowedFd<'_>) -> io::Result<i32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
}

/// Size of the socket's send buffer in bytes (`SO_SNDBUF`, as the kernel reports it).
pub(crate) fn send_buffer_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).map(|v| v.max(0) as u32)
}

/// Bytes queued in the send buffer, not yet acknowledged by the peer (`SIOCOUTQ`).
pub(crate) fn send_queue_len(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one c_int through the pointer, which is live.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCOUTQ,
            &mut value as *mut libc::c_int,
        )
    })?;
    Ok(value.max(0) as u32)
}

/// Shuts down the write half (our FIN to the host peer).
pub(crate) fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed, open fd.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })?;
    Ok(())
}

/// Sends the gathered `bufs` (pointing into guest memory) as one write; returns bytes accepted.
pub(crate) fn send_vectored(
    fd: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    to: Option<&SocketAddr>,
) -> io::Result<usize> {
    let raw = to.map(to_raw);
    // SAFETY: all-zero msghdr is valid; we fill in pointers below.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    if let Some(raw) = &raw {
        msg.msg_name = &raw.storage as *const _ as *mut libc::c_void;
        msg.msg_namelen = raw.len;
    }
    // IoSlice is ABI-compatible with iovec (guaranteed by std on Unix).
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len();
    // SAFETY: msg points to `bufs.len()` valid iovecs borrowed for the call and, if set, a
    // sockaddr that lives in `raw` until after the call returns.
    cvt_size(unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Result of [`recv_vectored`].
pub(crate) struct Received {
    /// Bytes written into the buffers.
    pub len: usize,
    /// The datagram was longer than the buffers (`MSG_TRUNC` in msg_flags).
    pub truncated: bool,
    /// Source address, when the socket reports one.
    pub from: Option<SocketAddr>,
}

/// Receives into `bufs` (guest RX buffers). `peek` leaves the data queued (`MSG_PEEK`).
pub(crate) fn recv_vectored(
    fd: BorrowedFd<'_>,
    bufs: &mut [IoSliceMut<'_>],
    peek: bool,
) -> io::Result<Received> {
    // SAFETY: all-zero sockaddr_storage and msghdr are valid; pointers are set below.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut storage as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // IoSliceMut is ABI-compatible with iovec (guaranteed by std on Unix).
    msg.msg_iov = bufs.as_mut_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len();
    let mut flags = libc::MSG_DONTWAIT;
    if peek {
        flags |= libc::MSG_PEEK;
    }
    // SAFETY: msg points to `bufs.len()` writable iovecs and a sockaddr_storage, all live
    // and exclusively borrowed for the duration of the call.
    let len = cvt_size(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) })?;
    let from = if msg.msg_namelen > 0 {
        from_raw(&storage)
    } else {
        None
    };
    Ok(Received {
        len,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        from,
    })
}

/// Drops `len` bytes from the head of a TCP receive queue without copying them
/// (`recv(MSG_TRUNC)` with a NULL buffer; the peek offset moves back by the same amount).
pub(crate) fn discard(fd: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: with MSG_TRUNC on a TCP socket the kernel does not write through the buffer
    // pointer, so NULL is allowed (tcp(7)).
    cvt_size(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    })
}

/// Drops `len` bytes from the head of a stream socket's receive queue by reading them into
/// a scratch buffer on the stack: for sockets (AF_UNIX) where [`discard`]'s `MSG_TRUNC`
/// does not work. Bounded: stops at `len`, at a would-block or at EOF.
pub(crate) fn discard_by_reading(fd: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let mut scratch = [0u8; 16 * 1024];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(scratch.len());
        // SAFETY: `scratch` is a live, writable buffer of at least `want` bytes.
        let n = cvt_size(unsafe {
            libc::recv(
                fd.as_raw_fd(),
                scratch.as_mut_ptr().cast(),
                want,
                libc::MSG_DONTWAIT,
            )
        });
        match n {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if done > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Whether `fd` is readable and writable right now (one `poll(2)` with a zero timeout;
/// errors and hang-ups count as both, so the caller goes on to read the error).
pub(crate) fn ready_now(fd: BorrowedFd<'_>) -> (bool, bool) {
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    }];
    match poll(&mut p, 0) {
        Ok(1) => {
            let r = p[0].revents;
            let failed = r & (libc::POLLERR | libc::POLLHUP) != 0;
            (
                failed || r & libc::POLLIN != 0,
                failed || r & libc::POLLOUT != 0,
            )
        }
        _ => (false, false),
    }
}

/// Whether the peer of stream socket `fd` has closed its side (`POLLRDHUP`, or a hang-up or
/// error), from one `poll(2)` with a zero timeout.
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    }];
    match poll(&mut p, 0) {
        Ok(1) => p[0].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0,
        _ => false,
    }
}

/// Polls `fds` once with `timeout_ms` (used by tests and by start-up probes).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
    cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) })
        .map(|n| n as usize)
}

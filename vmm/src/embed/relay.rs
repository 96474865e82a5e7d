//! The embedding API's `Forward` ([`VmHandle::forward`]): the guest's connections to a
//! [`GuestListener`] carried to a host TCP address the embedder chose.
//!
//! One accept thread per forward takes the guest's connections from the listener; each gets
//! a relay thread that connects to the host address (non-blocking, so dropping the
//! [`Forwarded`] interrupts it) and then moves bytes both ways in one `poll(2)` loop, through
//! a 64 KiB buffer per direction: guest socket pair -> buffer -> host socket and back, so each
//! byte is copied once in user space. EOF from one side becomes `shutdown(SHUT_WR)` on the
//! other (half-close); the relay ends, closing both, once both directions have ended or
//! either side fails. At most [`MAX_RELAYS`] connections are relayed at once; later ones wait
//! in the listener's backlog ([`LISTEN_BACKLOG`](super::LISTEN_BACKLOG)), beyond which the
//! guest sees a reset.
//!
//! This module never touches the datapath: to the netstack these are ordinary embedder flows.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestListener, NetHandleError};
use crate::handle::VmHandle;

/// How many connections one [`Forwarded`] relays at once; the guest's further connections
/// wait in the listener's backlog until one ends.
///
/// ```
/// assert!(ringfence::embed::relay::MAX_RELAYS <= ringfence::embed::LISTEN_BACKLOG);
/// ```
pub const MAX_RELAYS: usize = 64;
/// How long a relay waits for its connection to the host address.
const HOST_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How often the accept thread looks at the stop flag while the guest is quiet.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Bytes buffered per direction of a relayed connection.
const RELAY_BUF: usize = 64 * 1024;
/// Reads per direction before the relay looks at the other direction again.
const READS_PER_TURN: usize = 16;

/// What the threads of one forward share.
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// Readable once the forward is dropped: wakes relays blocked in `poll`.
    stop_evt: EventFd,
    connections: AtomicU64,
    connect_failures: AtomicU64,
    active: AtomicUsize,
    to_host: AtomicU64,
    to_guest: AtomicU64,
}

/// A running forward from [`VmHandle::forward`]: guest connections to a
/// [`GuestListener`]'s port are carried to a host address.
///
/// Dropping it stops accepting, closes the connections still in flight (both sides, without
/// waiting for them to finish), gives the listener's port back and returns once every thread
/// of the forward is joined. Keep it alive as long as connections should be carried.
///
/// ```no_run
/// use ringfence::embed::Proto;
/// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
/// let web = vm.forward(vm.listen(Proto::Tcp, 80)?, "127.0.0.1:8080".parse()?)?;
/// vm.wait();
/// println!(
///     "port {} -> {}: {} connections ({} active), {} failed, {} bytes up, {} down",
///     web.port(),
///     web.host_addr(),
///     web.connections(),
///     web.active(),
///     web.connect_failures(),
///     web.bytes_to_host(),
///     web.bytes_to_guest(),
/// );
/// drop(web); // closes whatever is still in flight
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Forwarded {
    shared: Arc<Shared>,
    port: u16,
    host_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Forwarded {
    /// The guest-side port whose connections are forwarded.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the connections go.
    pub fn host_addr(&self) -> SocketAddr {
        self.host_addr
    }

    /// Guest connections carried so far (the connection to the host address succeeded).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Guest connections closed because the host address could not be reached (refused,
    /// unreachable, no answer within 10 s) or no relay thread could be started.
    pub fn connect_failures(&self) -> u64 {
        self.shared.connect_failures.load(Ordering::Relaxed)
    }

    /// Connections being relayed now.
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Bytes carried from the guest to the host address so far.
    pub fn bytes_to_host(&self) -> u64 {
        self.shared.to_host.load(Ordering::Relaxed)
    }

    /// Bytes carried from the host address to the guest so far.
    pub fn bytes_to_guest(&self) -> u64 {
        self.shared.to_guest.load(Ordering::Relaxed)
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Never read: it stays readable, so every relay's poll returns from now on.
        let _ = self.shared.stop_evt.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl VmHandle {
    /// Carries every connection the guest makes to `listener`'s port (from
    /// [`listen`](VmHandle::listen)) to `host_addr`, a TCP address on the host or beyond: the
    /// embedding API's `Forward`. ringfence makes the host connection itself; the guest's
    /// policy is not asked, since the embedder chose the address. Bytes go both ways until
    /// either side closes (a half-close is passed on), then both connections are closed. A
    /// host address that cannot be reached closes the guest's connection and is counted
    /// ([`Forwarded::connect_failures`]).
    ///
    /// Fails with [`NetHandleError::Stopped`] if this VM or the listener's VM has stopped.
    ///
    /// ```no_run
    /// use ringfence::embed::Proto;
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// // The guest's connections to host.ringfence.internal:5432 reach the host's database.
    /// let db = vm.forward(vm.listen(Proto::Tcp, 5432)?, "127.0.0.1:5432".parse()?)?;
    /// // ...
    /// println!("{} connections carried", db.connections());
    /// # Ok(()) }
    /// ```
    pub fn forward(
        &self,
        listener: GuestListener,
        host_addr: SocketAddr,
    ) -> Result<Forwarded, NetHandleError> {
        self.guest_net_checked()?;
        if host_addr.port() == 0 {
            return Err(NetHandleError::PortZero);
        }
        // The listener's own VM must still be there to hand over connections.
        listener.net.run(Box::new(|_| {}))?;
        let port = listener.port();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stop_evt: EventFd::new(EFD_NONBLOCK).map_err(NetHandleError::SocketPair)?,
            connections: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            to_host: AtomicU64::new(0),
            to_guest: AtomicU64::new(0),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("forward-{port}"))
                .spawn(move || accept_loop(listener, host_addr, &shared))
                .map_err(|source| NetHandleError::Thread {
                    what: "forward accept",
                    source,
                })?
        };
        Ok(Forwarded {
            shared,
            port,
            host_addr,
            thread: Some(thread),
        })
    }
}

/// The accept thread: one relay thread per guest connection, until the forward is dropped
/// or the VM stops; then joins its relays (which end at once after a drop).
fn accept_loop(listener: GuestListener, host_addr: SocketAddr, shared: &Arc<Shared>) {
    let port = listener.port();
    let mut relays: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        reap(&mut relays);
        if relays.len() >= MAX_RELAYS {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let guest = match listener.accept_timeout(ACCEPT_POLL) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            // The VM stopped: no more connections will come.
            Err(_) => break,
        };
        let relay_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("relay-{port}"))
            .spawn(move || relay(guest, host_addr, port, &relay_shared));
        match spawned {
            Ok(t) => relays.push(t),
            Err(e) => {
                // The closure, and the guest's connection in it, is dropped: closed.
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("ringfence: forward of guest port {port}: no relay thread: {e}");
            }
        }
    }
    for t in relays {
        let _ = t.join();
    }
}

/// Joins the relays that have ended.
fn reap(relays: &mut Vec<JoinHandle<()>>) {
    let mut i = 0;
    while i < relays.len() {
        if relays[i].is_finished() {
            let _ = relays.swap_remove(i).join();
        } else {
            i += 1;
        }
    }
}

/// One guest connection: connect to `host_addr`, then carry bytes until both directions end.
fn relay(guest: UnixStream, host_addr: SocketAddr, port: u16, shared: &Shared) {
    let host = match connect(host_addr, &shared.stop_evt) {
        Ok(h) => h,
        Err(e) => {
            // Dropping `guest` closes the guest's connection. A connect cut short by the
            // forward's drop is not the host address's failure.
            if !shared.stop.load(Ordering::SeqCst) {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("ringfence: forward of guest port {port} to {host_addr}: {e}");
            }
            return;
        }
    };
    shared.connections.fetch_add(1, Ordering::Relaxed);
    shared.active.fetch_add(1, Ordering::Relaxed);
    // A reset or a closed socket on either side just ends the relay: both are closed.
    let _ = carry(&guest, &host, shared);
    shared.active.fetch_sub(1, Ordering::Relaxed);
}

/// A non-blocking connect to `addr` that a readable `stop` interrupts.
fn connect(addr: SocketAddr, stop: &EventFd) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            let deadline = Instant::now() + HOST_CONNECT_WAIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {HOST_CONNECT_WAIT:?}"),
                    ));
                }
                let mut fds = [
                    pollfd(socket.as_raw_fd(), libc::POLLOUT),
                    pollfd(stop.as_raw_fd(), libc::POLLIN),
                ];
                match netstack::poll(&mut fds, left.as_millis().clamp(1, 60_000) as i32) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                if fds[1].revents != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "the forward was dropped",
                    ));
                }
                if fds[0].revents != 0 {
                    break;
                }
            }
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    let _ = socket.set_tcp_nodelay(true);
    Ok(TcpStream::from(socket))
}

/// One direction of a relayed connection: bytes read from one side, not yet written to the
/// other.
struct Half {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source has ended (EOF).
    eof: bool,
    /// The destination was shut down for writing (after `eof` and an empty buffer).
    shut: bool,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: vec![0; RELAY_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            shut: false,
        }
    }

    /// Whether to wait for the source to be readable.
    fn wants_read(&self) -> bool {
        !self.eof && self.start == self.end
    }

    /// Whether to wait for the destination to be writable.
    fn wants_write(&self) -> bool {
        self.start < self.end
    }

    /// Moves what it can from `src` to `dst` without blocking, counting written bytes in
    /// `moved`; propagates EOF as a half-close. Fails on a socket error of either side.
    fn pump(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        moved: &AtomicU64,
    ) -> io::Result<()> {
        for _ in 0..READS_PER_TURN {
            while self.start < self.end {
                match send_nosignal(dst, &self.buf[self.start..self.end]) {
                    Ok(n) => {
                        self.start += n;
                        moved.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.start = 0;
            self.end = 0;
            if self.eof {
                if !self.shut {
                    self.shut = true;
                    shutdown_write(dst)?;
                }
                return Ok(());
            }
            match recv(src, &mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Carries bytes between `guest` and `host` until both directions have ended, either side
/// fails, or the forward is dropped.
fn carry(guest: &UnixStream, host: &TcpStream, shared: &Shared) -> io::Result<()> {
    guest.set_nonblocking(true)?;
    host.set_nonblocking(true)?;
    let (g, h) = (guest.as_fd(), host.as_fd());
    let mut up = Half::new();
    let mut down = Half::new();
    loop {
        up.pump(g, h, &shared.to_host)?;
        down.pump(h, g, &shared.to_guest)?;
        if up.shut && down.shut {
            return Ok(());
        }
        let guest_events = interest(up.wants_read(), down.wants_write());
        let host_events = interest(down.wants_read(), up.wants_write());
        let mut fds = [
            pollfd(g.as_raw_fd(), guest_events),
            pollfd(h.as_raw_fd(), host_events),
            pollfd(shared.stop_evt.as_raw_fd(), libc::POLLIN),
        ];
        // A side with nothing to wait for is left out: its POLLHUP would wake us for nothing.
        for p in &mut fds[..2] {
            if p.events == 0 {
                p.fd = -1;
            }
        }
        match netstack::poll(&mut fds, -1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if fds[2].revents != 0 {
            let _ = guest.shutdown(Shutdown::Both);
            let _ = host.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

fn interest(read: bool, write: bool) -> libc::c_short {
    (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 })
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and `fd` is
    // an open socket borrowed for it.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(2)` with `MSG_NOSIGNAL`: a peer that closed gives `EPIPE`, never a SIGPIPE that
/// would kill an embedding program that does not ignore it.
fn send_nosignal(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call, and `fd` is
    // an open socket borrowed for it.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed for the call; shutdown(2) closes no descriptor.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) } < 0 {
        let e = io::Error::last_os_error();
        // The peer already closed its side: nothing more to tell it.
        if e.raw_os_error() != Some(libc::ENOTCONN) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn shared() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            stop_evt: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            connections: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            to_host: AtomicU64::new(0),
            to_guest: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_relay_carries_both_ways_and_passes_the_half_close_on() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("read to the guest's EOF");
            s.write_all(&got).expect("echo");
            got.len()
        });
        let (mut guest, ours) = UnixStream::pair().expect("pair");
        let shared = Arc::new(shared());
        let relay_thread = {
            let shared = shared.clone();
            std::thread::spawn(move || relay(ours, addr, 1, &shared))
        };
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        guest.write_all(&sent).expect("write");
        guest.shutdown(Shutdown::Write).expect("half-close");
        let mut back = Vec::new();
        guest.read_to_end(&mut back).expect("read the echo");
        assert_eq!(echo.join().expect("echo thread"), sent.len());
        assert!(back == sent);
        relay_thread.join().expect("relay");
        assert_eq!(shared.connections.load(Ordering::Relaxed), 1);
        assert_eq!(shared.to_host.load(Ordering::Relaxed), sent.len() as u64);
        assert_eq!(shared.to_guest.load(Ordering::Relaxed), sent.len() as u64);
        assert_eq!(shared.active.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_refused_host_connect_closes_the_guest_side_and_is_counted() {
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let (mut guest, ours) = UnixStream::pair().expect("pair");
        let shared = shared();
        relay(ours, addr, 1, &shared);
        let mut b = [0u8; 1];
        assert_eq!(guest.read(&mut b).expect("EOF"), 0);
        assert_eq!(shared.connect_failures.load(Ordering::Relaxed), 1);
        assert_eq!(shared.connections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_stop_ends_an_idle_relay() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        let (mut guest, ours) = UnixStream::pair().expect("pair");
        let shared = Arc::new(shared());
        let relay_thread = {
            let shared = shared.clone();
            std::thread::spawn(move || relay(ours, addr, 1, &shared))
        };
        let (_held, _) = server.accept().expect("accept");
        shared.stop.store(true, Ordering::SeqCst);
        shared.stop_evt.write(1).expect("stop");
        relay_thread.join().expect("the relay ends");
        let mut b = [0u8; 1];
        assert_eq!(guest.read(&mut b).expect("EOF"), 0);
    }
}

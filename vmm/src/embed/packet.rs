//! UDP between the embedder and the guest, over Unix `SOCK_SEQPACKET` socket pairs (one
//! message per datagram, no host port): [`VmHandle::listen_packet`] (a UDP service at the
//! gateway) and [`VmHandle::dial_guest_packet`] (datagrams to a guest UDP port). Each guest
//! 4-tuple is one flow and one socket pair ([`GuestPacketConn`]), as the netstack keeps one
//! host socket per UDP flow; a flow idle for the netstack's UDP timeout, or a stopped VM,
//! ends it, and the embedder's end then reads 0 bytes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{GuestNet, NetHandleError, Proto, LISTEN_BACKLOG};
use crate::handle::VmHandle;
use crate::vm::Vm;

/// One UDP flow between the embedder and the guest: each `send` is one datagram to the
/// guest, each `recv` one datagram from it; `recv` returns 0 once the flow has ended (UDP
/// idle timeout, or the VM stopped).
#[derive(Debug)]
pub struct GuestPacketConn {
    // A SOCK_SEQPACKET socket; UnixDatagram's send/recv/timeouts are the plain syscalls.
    socket: UnixDatagram,
}

impl GuestPacketConn {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let socket = UnixDatagram::from(fd);
        socket.set_nonblocking(false)?;
        Ok(GuestPacketConn { socket })
    }

    /// Sends `datagram` to the guest.
    pub fn send(&self, datagram: &[u8]) -> io::Result<usize> {
        self.socket.send(datagram)
    }

    /// Receives the guest's next datagram into `buf` (a longer one is cut to fit); 0 when the
    /// flow has ended.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf)
    }

    /// How long `recv` may block (`None`: forever).
    pub fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(limit)
    }

    /// Non-blocking mode for `send` and `recv`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.socket.set_nonblocking(nonblocking)
    }

    /// A second handle on the same flow (e.g. one thread reads, one writes).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(GuestPacketConn {
            socket: self.socket.try_clone()?,
        })
    }
}

impl AsFd for GuestPacketConn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for GuestPacketConn {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A UDP service the guest reaches at the gateway address (or `host.ringfence.internal`)
/// on one port, from [`VmHandle::listen_packet`]. Each new guest flow (source address and
/// port) arrives as a blocking [`GuestPacketConn`]: `recv` gets the guest's datagrams, `send`
/// answers it. Dropping the listener stops the service.
#[derive(Debug)]
pub struct GuestPacketListener {
    accepted: Receiver<OwnedFd>,
    port: u16,
    net: GuestNet,
}

impl GuestPacketListener {
    /// Waits for the next guest flow. Fails with [`NetHandleError::Stopped`] once the VM has
    /// stopped.
    pub fn accept(&self) -> Result<GuestPacketConn, NetHandleError> {
        let fd = self.accepted.recv().map_err(|_| NetHandleError::Stopped)?;
        GuestPacketConn::new(fd).map_err(NetHandleError::SocketPair)
    }

    /// Like [`accept`](Self::accept), but returns `Ok(None)` after `limit`.
    pub fn accept_timeout(
        &self,
        limit: Duration,
    ) -> Result<Option<GuestPacketConn>, NetHandleError> {
        match self.accepted.recv_timeout(limit) {
            Ok(fd) => GuestPacketConn::new(fd)
                .map(Some)
                .map_err(NetHandleError::SocketPair),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(NetHandleError::Stopped),
        }
    }

    /// The guest-side UDP port the service is on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for GuestPacketListener {
    fn drop(&mut self) {
        let port = self.port;
        self.net.release(Proto::Udp, port);
        // A stopped VM has nothing to remove.
        let _ = self.net.run(Box::new(move |stack| {
            stack.remove_guest_udp_service(port);
        }));
    }
}

impl GuestNet {
    fn listen_packet(&self, port: u16) -> Result<GuestPacketListener, NetHandleError> {
        if port == 0 {
            return Err(NetHandleError::PortZero);
        }
        self.claim(Proto::Udp, port)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(LISTEN_BACKLOG);
        let listener = GuestPacketListener {
            accepted: rx,
            port,
            net: self.clone(),
        };
        self.run(Box::new(move |stack| stack.add_guest_udp_service(port, tx)))?;
        Ok(listener)
    }

    fn dial_packet(&self, port: u16) -> Result<GuestPacketConn, NetHandleError> {
        if port == 0 {
            return Err(NetHandleError::PortZero);
        }
        let (ours, theirs) = netstack::seqpacket_pair().map_err(NetHandleError::SocketPair)?;
        let ours = GuestPacketConn::new(ours).map_err(NetHandleError::SocketPair)?;
        self.run(Box::new(move |stack| {
            // On failure `theirs` is dropped here: the embedder's end reads 0 bytes.
            if let Err(e) = stack.connect_guest_udp(theirs, port, Instant::now()) {
                eprintln!("ringfence: dial_guest_packet to port {port}: {e}");
            }
        }))?;
        Ok(ours)
    }
}

impl Vm {
    /// Like [`VmHandle::listen_packet`], registered before the guest runs.
    pub fn listen_packet(&mut self, port: u16) -> Result<GuestPacketListener, NetHandleError> {
        if !self.has_user_net() {
            return Err(NetHandleError::NoUserNet);
        }
        self.guest_net().listen_packet(port)
    }
}

impl VmHandle {
    /// Serves UDP `port` on the gateway addresses to this guest only (the embedding API's
    /// `ListenPacket`): no host port is opened and the guest's policy does not apply. Each
    /// guest flow arrives from the listener as a [`GuestPacketConn`].
    ///
    /// ```no_run
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let metrics = vm.listen_packet(8125)?;
    /// let flow = metrics.accept()?;
    /// let mut datagram = [0u8; 1500];
    /// let n = flow.recv(&mut datagram)?;
    /// flow.send(b"ok")?;
    /// # Ok(()) }
    /// ```
    pub fn listen_packet(&self, port: u16) -> Result<GuestPacketListener, NetHandleError> {
        self.guest_net_checked()?.listen_packet(port)
    }

    /// A UDP flow into the guest's `port`, from the gateway address: datagrams sent on the
    /// returned socket reach the guest, its answers come back on it. Not subject to the
    /// guest's policy.
    ///
    /// ```no_run
    /// # fn f(vm: &ringfence::VmHandle) -> Result<(), Box<dyn std::error::Error>> {
    /// let dns = vm.dial_guest_packet(53)?;
    /// dns.send(b"...query...")?;
    /// # Ok(()) }
    /// ```
    pub fn dial_guest_packet(&self, port: u16) -> Result<GuestPacketConn, NetHandleError> {
        self.guest_net_checked()?.dial_packet(port)
    }
}

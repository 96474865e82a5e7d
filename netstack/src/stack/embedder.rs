//! Connections between the guest and the program embedding the VMM, carried over Unix
//! socket pairs instead of host TCP sockets, so no host port is ever opened for them.
//!
//! Both directions reuse the ordinary TCP translation (a [`TcpConn`] whose host fd is one end
//! of a `socketpair(2)`; the embedder holds the other):
//!
//! - [`Netstack::connect_guest`]: a flow INTO the guest, opened exactly like an accepted
//!   published-port connection (state `SynSent`, our SYN from the gateway address).
//! - [`Netstack::add_guest_service`]: when the guest connects to the gateway (or
//!   `host.ringfence.internal`) on a service's port, the flow starts as a completed host
//!   connect whose socket is a fresh pair, the other end handed to the service's queue.
//!
//! UDP works the same way over Unix `SOCK_SEQPACKET` socket pairs ([`crate::seqpacket_pair`];
//! one pair per guest 4-tuple, each datagram one message): [`Netstack::connect_guest_udp`]
//! and [`Netstack::add_guest_udp_service`]; such flows end after the UDP idle timeout like
//! any other, which the embedder sees as EOF on its socket.
//!
//! These flows are the embedder's own, so the flow gate is not asked about them and a
//! policy change never cuts them. They never touch the per-packet path: only opening a flow
//! differs from a host TCP flow.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{SyncSender, TrySendError};

use super::*;
use crate::gate::Verdict;
use crate::udp::UdpFlow;

/// First source port of embedder connections into the guest (the IANA dynamic range).
const EMBEDDER_PORT_BASE: u16 = 49152;

/// Why a connection between the embedder and the guest could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    /// The guest port is 0.
    #[error("guest port 0 is not a port; give 1-65535")]
    PortZero,
    /// The per-VM connection limit is reached.
    #[error("the VM has {open} TCP connections, its limit: close some or raise max_connections")]
    TooManyConnections {
        /// Connections open now.
        open: usize,
    },
    /// The socket pair could not be created.
    #[error("cannot create a socket pair: {0} (out of file descriptors?)")]
    SocketPair(#[source] std::io::Error),
}

/// Why a [`ServiceQueue`] did not take a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRefusal {
    /// The queue is full: the guest's connection is reset.
    Full,
    /// The receiving side is gone: the port stops being a service.
    Gone,
}

/// Where a guest service ([`Netstack::add_guest_service`]) hands its connections: called on
/// the device thread, so it must never block (a bounded channel's `try_send`).
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use netstack::{ServiceQueue, ServiceRefusal};
///
/// /// Takes one connection, then refuses.
/// struct One(Option<UnixStream>);
///
/// impl ServiceQueue for One {
///     fn offer(&mut self, stream: UnixStream) -> Result<(), ServiceRefusal> {
///         if self.0.is_some() {
///             return Err(ServiceRefusal::Full);
///         }
///         self.0 = Some(stream);
///         Ok(())
///     }
/// }
///
/// let (a, b) = UnixStream::pair()?;
/// let mut queue = One(None);
/// assert_eq!(queue.offer(a), Ok(()));
/// assert_eq!(queue.offer(b), Err(ServiceRefusal::Full));
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait ServiceQueue: Send {
    /// Queues `stream` (the embedder's end of the connection's socket pair, blocking mode).
    fn offer(&mut self, stream: UnixStream) -> Result<(), ServiceRefusal>;
}

impl ServiceQueue for SyncSender<UnixStream> {
    fn offer(&mut self, stream: UnixStream) -> Result<(), ServiceRefusal> {
        self.try_send(stream).map_err(|e| match e {
            TrySendError::Full(_) => ServiceRefusal::Full,
            TrySendError::Disconnected(_) => ServiceRefusal::Gone,
        })
    }
}

impl Netstack {
    /// Opens a TCP connection into the guest's `guest_port` carried over `stream` (one end
    /// of a Unix socket pair; the caller keeps the other). The guest sees it come from the
    /// gateway address. If nothing listens there, the guest resets it and `stream` reads
    /// EOF. Not judged by the flow gate: the caller is the embedder.
    pub fn connect_guest(
        &mut self,
        stream: UnixStream,
        guest_port: u16,
        now: Instant,
    ) -> Result<(), EmbedderError> {
        stream
            .set_nonblocking(true)
            .map_err(EmbedderError::SocketPair)?;
        self.open_into_guest(OwnedFd::from(stream), true, guest_port, None, now)
    }

    /// Opens a TCP connection into the guest's `guest_port` for `stream`, a host TCP
    /// connection the embedder accepted on a listener of its own (the embedding API's
    /// `expose`): carried like a published port's connection (zero-copy), but not judged by
    /// the flow gate.
    pub fn connect_guest_tcp(
        &mut self,
        stream: std::net::TcpStream,
        guest_port: u16,
        now: Instant,
    ) -> Result<(), EmbedderError> {
        stream
            .set_nonblocking(true)
            .map_err(EmbedderError::SocketPair)?;
        let peer = stream.peer_addr().ok();
        let _ = sys::set_nodelay(stream.as_fd());
        self.open_into_guest(OwnedFd::from(stream), false, guest_port, peer, now)
    }

    fn open_into_guest(
        &mut self,
        fd: OwnedFd,
        unix_stream: bool,
        guest_port: u16,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(), EmbedderError> {
        if guest_port == 0 {
            return Err(EmbedderError::PortZero);
        }
        if self.flows.tcp_len() >= self.core.cfg.limits.max_tcp_connections
            || !self.flows.has_room()
        {
            self.core.refuse_over_limit("embedder flows");
            return Err(EmbedderError::TooManyConnections {
                open: self.flows.tcp_len(),
            });
        }
        let key = self.embedder_key(KeyProto::Tcp, guest_port);
        let isn = self.isn(&key);
        let mut conn = TcpConn::new(key, fd, TcpState::SynSent, isn, now);
        conn.embedder = true;
        conn.unix_stream = unix_stream;
        conn.ingress_peer = peer;
        conn.our_wscale = 7;
        conn.syn_pending = true;
        self.insert_tcp(conn);
        Ok(())
    }

    /// Whether the guest's policy lets the guest open a `proto` flow to `dst` now (the
    /// embedding API's `dial_out` asks before connecting on the guest's behalf). A
    /// destination on the gateway means the host's loopback, as for the guest's own flows;
    /// the returned address is where to connect. A denial returns the verdict (with the
    /// deciding rule's index, if a rule decided).
    pub fn judge_egress(&self, proto: FlowProto, dst: SocketAddr) -> Result<SocketAddr, Verdict> {
        let verdict =
            self.gate
                .decide(&self.flow_info(Direction::Egress, proto, dst.ip(), dst.port()));
        if !verdict.allow {
            return Err(verdict);
        }
        Ok(SocketAddr::new(
            self.core.addrs.host_target(dst.ip()),
            dst.port(),
        ))
    }

    /// Makes `port` on the gateway addresses a service of the embedder: each connection the
    /// guest opens to it is handed to `accepted` as the host end of a socket pair (in
    /// blocking mode). `accepted` is any [`ServiceQueue`], e.g. a `SyncSender<UnixStream>`.
    /// A full queue refuses the connection (the guest gets a RST); a dropped
    /// receiver removes the service. Replaces an earlier service on the same port. Reachable
    /// whatever the policy says: it is the embedder's own.
    pub fn add_guest_service(&mut self, port: u16, accepted: impl ServiceQueue + 'static) {
        self.services.insert(port, Box::new(accepted));
    }

    /// Stops serving `port` (later connections go to the host's loopback as before, judged by
    /// the policy). Returns whether a service was there.
    pub fn remove_guest_service(&mut self, port: u16) -> bool {
        self.services.remove(&port).is_some()
    }

    /// A guest SYN to the gateway on a service port: open the flow over a new socket pair.
    /// Returns `false` when `port` is not (or no longer) a service.
    pub(super) fn open_service_flow(
        &mut self,
        ip: &IpInfo,
        seg: &Segment,
        key: FlowKey,
        now: Instant,
    ) -> bool {
        let Some(accepted) = self.services.get_mut(&seg.dst_port) else {
            return false;
        };
        if self.flows.tcp_len() >= self.core.cfg.limits.max_tcp_connections
            || !self.flows.has_room()
        {
            self.core.refuse_over_limit("embedder flows");
            tcp::push_rst_for(&mut self.core, ip, seg);
            return true;
        }
        let Ok((ours, theirs)) = UnixStream::pair() else {
            self.core.metrics.drop_host_error += 1;
            tcp::push_rst_for(&mut self.core, ip, seg);
            return true;
        };
        if ours.set_nonblocking(true).is_err() {
            self.core.metrics.drop_host_error += 1;
            tcp::push_rst_for(&mut self.core, ip, seg);
            return true;
        }
        match accepted.offer(theirs) {
            Ok(()) => {}
            Err(ServiceRefusal::Full) => {
                self.core.refuse_over_limit("embedder flows");
                tcp::push_rst_for(&mut self.core, ip, seg);
                return true;
            }
            Err(ServiceRefusal::Gone) => {
                // The embedder dropped its listener: the port is no longer a service.
                self.services.remove(&seg.dst_port);
                return false;
            }
        }
        let isn = self.isn(&key);
        let mut conn = tcp::open_over(&self.core, key, OwnedFd::from(ours), seg, isn, now);
        conn.embedder = true;
        conn.unix_stream = true;
        self.insert_tcp(conn);
        true
    }

    /// Opens a UDP flow into the guest's `guest_port` over `socket` (one end of a
    /// [`crate::seqpacket_pair`]; the caller keeps the other): each message the caller sends
    /// reaches the guest as a datagram from the gateway address, and the guest's replies
    /// come back as messages. Not judged by the flow gate.
    pub fn connect_guest_udp(
        &mut self,
        socket: OwnedFd,
        guest_port: u16,
        now: Instant,
    ) -> Result<(), EmbedderError> {
        if guest_port == 0 {
            return Err(EmbedderError::PortZero);
        }
        if !self.flows.has_room_for_other() {
            self.core.refuse_over_limit("embedder flows");
            return Err(EmbedderError::TooManyConnections {
                open: self.flows.len(),
            });
        }
        let key = self.embedder_key(KeyProto::Udp, guest_port);
        let flow = UdpFlow::over_embedder_socket(key, socket, now);
        match self.insert_udp_flow(flow) {
            Some(_) => Ok(()),
            None => Err(EmbedderError::TooManyConnections {
                open: self.flows.len(),
            }),
        }
    }

    /// Makes UDP `port` on the gateway addresses a service of the embedder: the first
    /// datagram of each new guest 4-tuple hands `accepted` one end of a
    /// [`crate::seqpacket_pair`] (non-blocking) that carries that flow's datagrams both ways
    /// as messages. A full queue drops the datagram (the guest gets ICMP "prohibited"); a
    /// dropped receiver removes the service. Reachable whatever the policy says.
    pub fn add_guest_udp_service(&mut self, port: u16, accepted: SyncSender<OwnedFd>) {
        self.udp_services.insert(port, accepted);
    }

    /// Stops serving UDP `port`. Returns whether a service was there.
    pub fn remove_guest_udp_service(&mut self, port: u16) -> bool {
        self.udp_services.remove(&port).is_some()
    }

    /// Whether a new guest UDP flow to `dst:port` is for an embedder service.
    pub(super) fn is_udp_service_target(&self, dst: &IpAddr, port: u16) -> bool {
        !self.udp_services.is_empty()
            && self.udp_services.contains_key(&port)
            && self.core.addrs.is_gateway(dst)
    }

    /// A new guest UDP flow to a service port: a socket pair, one end to the service.
    pub(super) fn open_udp_service_flow(&mut self, key: FlowKey, now: Instant) -> Option<u64> {
        let port = key.remote.port();
        let accepted = self.udp_services.get(&port)?;
        if !self.flows.has_room_for_other() {
            self.core.refuse_over_limit("embedder flows");
            return None;
        }
        let Ok((ours, theirs)) = sys::seqpacket_pair() else {
            self.core.metrics.drop_host_error += 1;
            return None;
        };
        match accepted.try_send(theirs) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.core.refuse_over_limit("embedder flows");
                return None;
            }
            Err(TrySendError::Disconnected(_)) => {
                self.udp_services.remove(&port);
                return None;
            }
        }
        self.insert_udp_flow(UdpFlow::over_embedder_socket(key, ours, now))
    }

    /// Whether a guest SYN to `dst` may be for an embedder service.
    pub(super) fn is_service_target(&self, dst: &IpAddr) -> bool {
        !self.services.is_empty() && self.core.addrs.is_gateway(dst)
    }

    /// A flow key from the gateway to the guest's `guest_port` whose source port no flow
    /// uses yet (embedder connections take ports from [`EMBEDDER_PORT_BASE`] up; at most
    /// 1024 are tried, after which the last one tried is used).
    fn embedder_key(&mut self, proto: KeyProto, guest_port: u16) -> FlowKey {
        let guest = SocketAddr::new(IpAddr::V4(self.core.addrs.guest4), guest_port);
        let mut key = FlowKey {
            proto,
            guest,
            remote: SocketAddr::new(IpAddr::V4(self.core.addrs.gateway4), EMBEDDER_PORT_BASE),
        };
        for _ in 0..1024 {
            self.embedder_port = self.embedder_port.wrapping_add(1);
            let port = EMBEDDER_PORT_BASE + self.embedder_port % (u16::MAX - EMBEDDER_PORT_BASE);
            key.remote.set_port(port);
            if self.flows.lookup(&key).is_none() {
                break;
            }
        }
        key
    }

    /// The gateway's IPv4 address, as the guest sees the embedder's connections come from.
    pub fn gateway4(&self) -> Ipv4Addr {
        self.core.addrs.gateway4
    }
}

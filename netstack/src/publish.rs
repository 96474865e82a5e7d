//! Port publishing: host listeners whose accepted connections are opened into the guest.
//!
//! Owns the listening sockets. Each accepted connection becomes a TCP flow in state
//! `SynSent`: we send a SYN to the guest from the gateway address (source port = the
//! host peer's port when free) and the guest's SYN-ACK completes it; from then on it is
//! an ordinary translated connection. A published UDP port is one host socket: each new
//! peer becomes a UDP flow into the guest (from the gateway, source port = the peer's
//! port) whose replies leave through the same socket to that peer. Bind failures surface
//! from `Netstack::new`.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use crate::config::{PortProto, PublishedPort};
use crate::error::NetError;
use crate::sys::{self, SockKind};

/// One published-port listener.
pub(crate) struct Listener {
    pub fd: OwnedFd,
    pub port: PublishedPort,
    /// Address actually bound (resolves port 0).
    pub local: SocketAddr,
    /// UDP: a datagram may be waiting.
    pub readable: bool,
    /// UDP: on the core's ready list.
    pub queued: bool,
}

/// Binds and listens on every published port.
pub(crate) fn bind_all(ports: &[PublishedPort]) -> Result<Vec<Listener>, NetError> {
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        let udp = p.proto == PortProto::Udp;
        let err = |source| NetError::PublishBind {
            bind: p.bind,
            guest_port: p.guest_port,
            proto: if udp { "udp" } else { "tcp" },
            source,
        };
        let kind = if udp {
            SockKind::Datagram
        } else {
            SockKind::Stream
        };
        let fd = sys::socket(p.bind.is_ipv6(), kind).map_err(err)?;
        sys::set_reuseaddr(fd.as_fd()).map_err(err)?;
        if p.bind.is_ipv6() {
            sys::set_v6only(fd.as_fd()).map_err(err)?;
        }
        sys::bind(fd.as_fd(), &p.bind).map_err(err)?;
        if !udp {
            sys::listen(fd.as_fd(), 128).map_err(err)?;
        }
        let local = sys::local_addr(fd.as_fd()).map_err(err)?;
        out.push(Listener {
            fd,
            port: p.clone(),
            local,
            readable: false,
            queued: false,
        });
    }
    Ok(out)
}

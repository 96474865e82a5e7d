//! UDP flows: one connected host socket per guest 4-tuple, closed after an idle timeout.
//!
//! Guest datagrams go to the host socket with `sendmsg()` straight from guest memory;
//! host datagrams are received with `recvmsg()` straight into the guest's RX buffers
//! behind the Ethernet/IP/UDP headers we build (one kernel copy each way, none by us).
//! A datagram larger than the guest's buffers (MSG_TRUNC) is dropped and counted.
//! DNS flows (guest -> gateway:53) are ordinary UDP flows whose host socket talks to the
//! upstream resolver; [`crate::dns`] decides which queries get there.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use smoltcp::wire::IpProtocol;

use crate::checksum::Checksum;
use crate::core::{Core, RxMeta};
use crate::flow_key::FlowKey;
use crate::frame::build::{
    capacity, checksum_range, emit_eth_ip, eth_ip_len, max_frame, scatter, tail_iovecs,
};
use crate::frame::{GuestFrame, MAX_SEGS};
use crate::sys::{self, SockKind};

/// One UDP flow.
pub(crate) struct UdpFlow {
    pub key: FlowKey,
    pub fd: OwnedFd,
    pub last_activity: Instant,
    /// The host socket may hold a datagram.
    pub host_readable: bool,
    /// Read interest registered with the event loop.
    pub registered: bool,
    pub queued: bool,
    /// Replies are DNS answers from the upstream resolver.
    pub dns: bool,
    /// Published UDP port: `fd` is a duplicate of the listener socket and guest datagrams
    /// go to this peer. Such a flow never registers its fd (the listener reads).
    pub peer: Option<SocketAddr>,
    /// The host end is the embedder's (a Unix datagram socket pair): not judged by the
    /// policy, never cut by a change.
    pub embedder: bool,
}

impl UdpFlow {
    /// Opens the host socket for a new flow, connected to `host_dst` (the real
    /// destination, host loopback for the gateway, or the DNS upstream).
    pub(crate) fn open(key: FlowKey, host_dst: SocketAddr, now: Instant) -> io::Result<Self> {
        let fd = sys::socket(host_dst.is_ipv6(), SockKind::Datagram)?;
        sys::connect(fd.as_fd(), &host_dst)?;
        Ok(Self::with_socket(key, fd, now, false))
    }

    /// A flow whose host socket is `fd`, one end of a connected Unix datagram socket pair
    /// the embedder holds the other end of.
    pub(crate) fn over_embedder_socket(key: FlowKey, fd: OwnedFd, now: Instant) -> Self {
        Self::with_socket(key, fd, now, true)
    }

    fn with_socket(key: FlowKey, fd: OwnedFd, now: Instant, embedder: bool) -> Self {
        UdpFlow {
            key,
            fd,
            last_activity: now,
            host_readable: false,
            registered: false,
            queued: false,
            dns: false,
            peer: None,
            embedder,
        }
    }

    /// A flow for `peer` of a published UDP port, answering through `listener_fd`.
    pub(crate) fn published(
        key: FlowKey,
        listener_fd: OwnedFd,
        peer: SocketAddr,
        now: Instant,
    ) -> Self {
        UdpFlow {
            key,
            fd: listener_fd,
            last_activity: now,
            host_readable: false,
            registered: false,
            queued: false,
            dns: false,
            peer: Some(peer),
            embedder: false,
        }
    }

    /// Sends `len` payload bytes at `off` of the guest frame to the host.
    pub(crate) fn send_from_guest(
        &mut self,
        core: &mut Core,
        frame: &GuestFrame<'_, '_>,
        off: usize,
        len: usize,
        now: Instant,
    ) {
        self.last_activity = now;
        let mut iov = [IoSlice::new(&[]); MAX_SEGS];
        let Some(n) = frame.payload_iovecs(off, len, &mut iov) else {
            core.metrics.drop_too_fragmented += 1;
            return;
        };
        if let Some(g) = core.cfg.tls.placeholders.clone() {
            let mut pieces: [&[u8]; MAX_SEGS] = [&[]; MAX_SEGS];
            for (p, s) in pieces.iter_mut().zip(&iov[..n]) {
                *p = s;
            }
            // A datagram is a message of its own: no bytes before it count.
            if g.finds(&[], &pieces[..n]) {
                core.placeholder_violation(self.key.remote, "udp");
                return;
            }
        }
        match sys::send_vectored(self.fd.as_fd(), &iov[..n], self.peer.as_ref()) {
            Ok(sent) => core.metrics.bytes_guest_to_host += sent as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => core.metrics.drop_host_busy += 1,
            Err(_) => core.metrics.drop_host_error += 1,
        }
    }

    /// Whether [`next_frame`](Self::next_frame) may produce something.
    pub(crate) fn wants_output(&self) -> bool {
        self.host_readable && self.peer.is_none()
    }

    /// Receives the next host datagram into `bufs` behind our headers. Returns the frame
    /// length, or `None` if nothing is pending. The payload (for DNS attribution) is
    /// returned as its offset in the frame.
    pub(crate) fn next_frame(
        &mut self,
        core: &mut Core,
        bufs: &mut [IoSliceMut<'_>],
        now: Instant,
    ) -> Option<(usize, RxMeta, usize)> {
        let from = self.key.remote;
        let to = self.key.guest;
        let hdr_len = eth_ip_len(&from.ip()) + 8;
        // The UDP length field is 16 bits too.
        let room = core
            .cfg
            .max_rx_frame
            .min(capacity(bufs))
            .min(max_frame(&from.ip()))
            .min(eth_ip_len(&from.ip()) + 65535);
        if room < hdr_len {
            return None;
        }
        // A few truncated datagrams in a row are skipped; more wait for the next call.
        for _ in 0..8 {
            let res = {
                let mut iov: [IoSliceMut<'_>; MAX_SEGS] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                let n = tail_iovecs(bufs, hdr_len, room - hdr_len, &mut iov);
                sys::recv_vectored(self.fd.as_fd(), &mut iov[..n], false)
            };
            match res {
                Ok(r) if r.truncated => {
                    core.metrics.drop_too_big += 1;
                    continue;
                }
                Ok(r) => {
                    self.last_activity = now;
                    let len = r.len;
                    write_udp_header(core, from, to, bufs, len);
                    core.metrics.bytes_host_to_guest += len as u64;
                    let meta = RxMeta {
                        csum_valid: true,
                        gso: None,
                    };
                    return Some((hdr_len + len, meta, hdr_len));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return None;
                }
                Err(_) => {
                    // ICMP errors (e.g. port unreachable) surface here; nothing to deliver.
                    core.metrics.drop_host_error += 1;
                    return None;
                }
            }
        }
        None
    }
}

/// Writes Ethernet/IP/UDP headers for `len` payload bytes already in `bufs`.
pub(crate) fn write_udp_header(
    core: &Core,
    from: SocketAddr,
    to: SocketAddr,
    bufs: &mut [IoSliceMut<'_>],
    len: usize,
) {
    let mut hdr = [0u8; 14 + 40 + 8];
    let ep = core.to_guest(from.ip(), to.ip());
    let ip_len = emit_eth_ip(&mut hdr, &ep, IpProtocol::Udp, 8 + len);
    let udp_len = (8 + len) as u16;
    hdr[ip_len..ip_len + 2].copy_from_slice(&from.port().to_be_bytes());
    hdr[ip_len + 2..ip_len + 4].copy_from_slice(&to.port().to_be_bytes());
    hdr[ip_len + 4..ip_len + 6].copy_from_slice(&udp_len.to_be_bytes());
    if core.cfg.rx_checksum {
        let mut ck = Checksum::new();
        ck.add_pseudo(&from.ip(), &to.ip(), 17, u32::from(udp_len));
        ck.add(&hdr[ip_len..ip_len + 8]);
        checksum_range(&mut ck, bufs, ip_len + 8, len);
        let mut c = ck.finish();
        if c == 0 {
            // RFC 768: a computed zero is sent as all ones.
            c = 0xffff;
        }
        hdr[ip_len + 6..ip_len + 8].copy_from_slice(&c.to_be_bytes());
    }
    scatter(bufs, 0, &hdr[..ip_len + 8]);
}

//! The `user` backend: the device's frames go to and from the userspace [`Netstack`]
//! (design §6), which turns them into host socket operations.
//!
//! TX frames are handed to the netstack as slices of guest memory (no copy here; the netstack
//! copies only headers it parses). RX frames are written by the netstack straight into the
//! guest's RX buffers; the device writes the virtio-net header from the frame's [`RxMeta`].
//! The netstack's host sockets are polled by the device's io_uring loop: this adapter keeps the
//! netstack's persistent interest set (applied from its change list) and reports all of it on
//! every iteration, which the loop turns into one-shot polls re-armed while wanted — the
//! level-triggered semantics the netstack asks for.

use std::time::Instant;

use netstack::{InterestSet, Netstack, RxMeta, TxMeta};

use super::{BackendError, FdInterest, NetBackend, RxBuf, RxFrame, TxFrame};
use crate::net::features::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
};
use crate::net::header::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Ethernet header length (the netstack never builds VLAN-tagged frames).
const ETH_HDR_LEN: usize = 14;
/// Offset of the checksum field in a TCP header.
const TCP_CSUM_OFFSET: u16 = 16;

/// Adapts a [`Netstack`] to the [`NetBackend`] trait.
pub struct UserBackend {
    stack: Netstack,
    fds: InterestSet,
    /// `fds` as the list [`NetBackend::interests`] hands out.
    wanted: Vec<FdInterest>,
    features: u64,
}

impl std::fmt::Debug for UserBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserBackend")
            .field("fds", &self.fds.len())
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

impl UserBackend {
    /// Wraps `stack`. Its frame size and checksum duty for the guest direction are set when
    /// the guest activates the device, from the features it negotiated; the device should
    /// announce the netstack's MTU (`NetConfig::mtu` of the device = [`Netstack::mtu`]).
    pub fn new(stack: Netstack) -> Self {
        Self {
            stack,
            fds: InterestSet::new(),
            wanted: Vec::new(),
            features: 0,
        }
    }

    /// The wrapped netstack.
    pub fn stack(&self) -> &Netstack {
        &self.stack
    }

    /// The wrapped netstack, mutably (e.g. to swap its policy gate).
    pub fn stack_mut(&mut self) -> &mut Netstack {
        &mut self.stack
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }

    /// The virtio-net header that tells the guest what `meta` says about a frame.
    fn rx_header(&self, meta: &RxMeta) -> VirtioNetHdr {
        let mut h = VirtioNetHdr::default();
        if meta.csum_valid && self.has(VIRTIO_NET_F_GUEST_CSUM) {
            h.flags = VIRTIO_NET_HDR_F_DATA_VALID;
        }
        if let Some(g) = meta.gso {
            let bit = if g.ipv6 {
                VIRTIO_NET_F_GUEST_TSO6
            } else {
                VIRTIO_NET_F_GUEST_TSO4
            };
            if self.has(bit) {
                h.gso_type = if g.ipv6 {
                    VIRTIO_NET_HDR_GSO_TCPV6
                } else {
                    VIRTIO_NET_HDR_GSO_TCPV4
                };
                h.gso_size = g.segment_size;
                h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                h.csum_start = g.l4_offset;
                h.csum_offset = TCP_CSUM_OFFSET;
            }
        }
        h
    }
}

impl NetBackend for UserBackend {
    fn name(&self) -> &str {
        "user"
    }

    fn activate(&mut self, features: u64) -> Result<(), BackendError> {
        self.features = features;
        let tso = self.has(VIRTIO_NET_F_GUEST_TSO4) || self.has(VIRTIO_NET_F_GUEST_TSO6);
        let max_rx_frame = if tso {
            // An IPv4 total length or IPv6 payload length of 65535 behind the Ethernet header.
            usize::from(u16::MAX) + ETH_HDR_LEN
        } else {
            usize::from(self.stack.mtu()) + ETH_HDR_LEN
        };
        self.stack
            .set_guest_rx_offloads(max_rx_frame, !self.has(VIRTIO_NET_F_GUEST_CSUM));
        Ok(())
    }

    fn send(&mut self, frame: &TxFrame<'_>) -> Result<(), BackendError> {
        let meta = TxMeta {
            csum_partial: frame.header.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0,
            gso_size: frame.header.is_gso().then_some(frame.header.gso_size),
        };
        self.stack
            .handle_guest_frame(frame.frame, meta, Instant::now());
        Ok(())
    }

    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError> {
        Ok(self
            .stack
            .next_guest_frame(buf.frame, Instant::now())
            .map(|(len, meta)| RxFrame::Frame {
                len,
                header: self.rx_header(&meta),
            }))
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.stack
            .metrics()
            .counters()
            .into_iter()
            .map(|(name, v)| (format!("netstack_{name}"), v))
            .collect()
    }

    fn rx_frame_len(&mut self) -> Option<usize> {
        self.stack.next_guest_frame_len()
    }

    fn rx_pending(&self) -> Option<bool> {
        Some(self.stack.has_pending_guest_frames())
    }

    fn interests(&mut self, _rx_space: bool, out: &mut Vec<FdInterest>) {
        if self.fds.apply(self.stack.take_interest_changes()) {
            // Rebuilt only when something changed, in the set's order, which is stable
            // while the set is: an unchanged list lets the event loop skip its per-fd work.
            self.wanted.clear();
            self.wanted.extend(
                self.fds
                    .iter()
                    .map(|(token, fd, readable, writable)| FdInterest {
                        fd,
                        token,
                        readable,
                        writable,
                    }),
            );
        }
        out.extend_from_slice(&self.wanted);
    }

    fn on_fd_ready(&mut self, token: u64, readable: bool, writable: bool) {
        self.stack
            .on_fd_ready(token, readable, writable, Instant::now());
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        self.stack.next_deadline()
    }

    fn on_timer(&mut self, now: Instant) {
        self.stack.on_timer(now);
    }
}

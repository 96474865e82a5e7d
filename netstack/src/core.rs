//! State shared by every protocol handler: addresses, counters, the queue of control
//! frames for the guest, pending fd-interest changes and the ready list of flows.
//!
//! Owns no sockets and no flows; it is the "context" protocol handlers borrow next to the
//! flow they work on, so the borrow checker never sees two mutable paths to one flow.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::RawFd;

use smoltcp::wire::{EthernetAddress, IpProtocol};

use crate::config::{Addressing, NetConfig};
use crate::frame::build::{control_frame, Endpoints};
use crate::log_gate::LogGate;
use crate::metrics::NetMetrics;

/// Most control frames queued for the guest; beyond this, new ones are dropped (counted).
const CTRL_QUEUE_MAX: usize = 4096;

/// What the event loop must change about one host fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterestOp {
    /// Start watching `fd` under `token`.
    Add,
    /// Change the events watched for `token`.
    Modify,
    /// Stop watching `token`. The fd may already be closed (and even reused), so remove by
    /// token, not by fd number.
    Remove,
}

/// One change to the set of host fds the event loop polls. Interest is level-triggered
/// and persistent: keep reporting readiness for the given events until told otherwise.
/// Report POLLHUP/POLLERR as readable (and writable while write interest is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdInterest {
    /// Add, modify or remove.
    pub op: InterestOp,
    /// The host fd.
    pub fd: RawFd,
    /// Opaque token to pass back to [`crate::Netstack::on_fd_ready`].
    pub token: u64,
    /// Watch for readability.
    pub readable: bool,
    /// Watch for writability.
    pub writable: bool,
}

/// Metadata for a frame handed to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// The L4 checksum is valid or was deliberately not computed
    /// ([`NetConfig::rx_checksum`] = false): the device may set VIRTIO_NET_HDR_F_DATA_VALID.
    pub csum_valid: bool,
    /// Set when the frame is a large TCP segment that the guest must treat as GSO
    /// (only when `max_rx_frame` exceeds one MTU, i.e. GUEST_TSO was negotiated).
    pub gso: Option<RxGso>,
}

/// GSO description of a large TCP frame to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxGso {
    /// IPv6 (TCPV6) or IPv4 (TCPV4).
    pub ipv6: bool,
    /// Segment size (the guest's MSS).
    pub segment_size: u16,
    /// Offset of the L4 header in the frame (csum_start).
    pub l4_offset: u16,
}

/// Metadata for a frame from the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxMeta {
    /// The guest left the L4 checksum partial (VIRTIO_NET_HDR_F_NEEDS_CSUM). We never
    /// verify guest L4 checksums (guest memory is not a lossy medium), so this is
    /// informational.
    pub csum_partial: bool,
    /// GSO segment size if the frame is a TSO super-segment (treated as one big segment).
    pub gso_size: Option<u16>,
}

/// Queue of fully built control frames, with a free list so buffers are reused.
#[derive(Default)]
pub(crate) struct CtrlQueue {
    frames: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

impl CtrlQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        self.frames.pop_front()
    }
    /// Length of the frame [`pop`](Self::pop) would return.
    pub(crate) fn front_len(&self) -> Option<usize> {
        self.frames.front().map(Vec::len)
    }
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if self.free.len() < 64 {
            self.free.push(buf);
        }
    }
    /// Puts a frame back at the head (the guest's buffers were too small for it).
    pub(crate) fn push_front(&mut self, buf: Vec<u8>) {
        self.frames.push_front(buf);
    }
    fn take_buf(&mut self) -> Option<Vec<u8>> {
        if self.frames.len() >= CTRL_QUEUE_MAX {
            return None;
        }
        Some(self.free.pop().unwrap_or_default())
    }
}

/// Shared context of the netstack.
pub(crate) struct Core {
    pub cfg: NetConfig,
    pub addrs: Addressing,
    pub metrics: NetMetrics,
    pub ctrl: CtrlQueue,
    pub interest: Vec<FdInterest>,
    /// Flow tokens with something to send to the guest (may be stale; checked on pop).
    pub ready: VecDeque<u64>,
    /// The guest's MAC, as last seen on its frames.
    pub guest_mac: EthernetAddress,
    /// The guest's IPv6 address, learned from its traffic.
    pub guest6: Option<Ipv6Addr>,
    /// Log lines about flows refused at a limit (a flood costs a few dozen lines).
    pub limit_log: LogGate,
    /// Log lines about control frames dropped at a full queue.
    pub ctrl_log: LogGate,
    /// Log lines about placeholders of secrets on plaintext flows.
    pub secret_log: LogGate,
    /// Behave as on kernels without `SO_PEEK_OFF` for TCP (testkit only).
    pub no_peek_off: bool,
    /// Byte budget shared by the TCP out-of-order queues of all connections.
    pub ooo_budget: crate::ooo_budget::OooBudget,
    /// Guest-initiated TCP connections not yet established (host connect in progress, or
    /// SYN-ACK sent and not acknowledged): capped by `Limits::max_half_open_tcp`.
    pub tcp_half_open: usize,
}

impl Core {
    /// Counts and logs a secret's placeholder found on a plaintext flow to `dst`.
    pub fn placeholder_violation(&mut self, dst: std::net::SocketAddr, proto: &str) {
        self.metrics.secret_plaintext_violations += 1;
        if let Some(total) = self.secret_log.admit() {
            tracing::warn!(
                %dst,
                proto,
                total,
                "netstack: a secret's placeholder on a plaintext flow (not through the TLS proxy): cut"
            );
        }
    }

    pub(crate) fn new(cfg: NetConfig, addrs: Addressing) -> Self {
        Core {
            guest_mac: addrs.guest_mac,
            cfg,
            addrs,
            metrics: NetMetrics::default(),
            ctrl: CtrlQueue::default(),
            interest: Vec::new(),
            ready: VecDeque::new(),
            guest6: None,
            limit_log: LogGate::new(),
            ctrl_log: LogGate::new(),
            secret_log: LogGate::new(),
            no_peek_off: false,
            ooo_budget: crate::ooo_budget::OooBudget::default(),
            tcp_half_open: 0,
        }
    }

    /// Endpoints of a frame from `src` (gateway side) to the guest address `dst`.
    pub(crate) fn to_guest(&self, src: IpAddr, dst: IpAddr) -> Endpoints {
        Endpoints {
            src_mac: self.addrs.gateway_mac,
            dst_mac: self.guest_mac,
            src,
            dst,
        }
    }

    /// Queues a control frame built by `fill` (L4 message of `l4_len` bytes).
    pub(crate) fn push_ctrl(
        &mut self,
        ep: &Endpoints,
        proto: IpProtocol,
        l4_len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let Some(mut buf) = self.ctrl.take_buf() else {
            return self.ctrl_overflowed();
        };
        control_frame(&mut buf, ep, proto, l4_len, fill);
        self.ctrl.frames.push_back(buf);
    }

    /// Queues a raw, already complete frame (ARP replies).
    pub(crate) fn push_raw(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        let Some(mut buf) = self.ctrl.take_buf() else {
            return self.ctrl_overflowed();
        };
        buf.clear();
        buf.resize(len, 0);
        fill(&mut buf);
        self.ctrl.frames.push_back(buf);
    }

    /// Counts a control frame dropped at a full queue (a guest that sends requests faster
    /// than it reads the answers) and logs it through [`Core::ctrl_log`].
    fn ctrl_overflowed(&mut self) {
        self.metrics.drop_ctrl_overflow += 1;
        if let Some(total) = self.ctrl_log.admit() {
            tracing::warn!(
                total,
                limit = CTRL_QUEUE_MAX,
                "netstack: control frame for the guest dropped, queue full"
            );
        }
    }

    /// Counts a new flow refused because a limit was reached (`what` names the limit) and
    /// logs it through [`Core::limit_log`]: the first 8, then every power of two.
    pub(crate) fn refuse_over_limit(&mut self, what: &'static str) {
        self.metrics.flows_over_limit += 1;
        if let Some(total) = self.limit_log.admit() {
            tracing::warn!(
                limit = what,
                total,
                "netstack: new flow refused, limit reached"
            );
        }
    }

    /// Records an interest change.
    pub(crate) fn interest(&mut self, op: InterestOp, fd: RawFd, token: u64, r: bool, w: bool) {
        self.interest.push(FdInterest {
            op,
            fd,
            token,
            readable: r,
            writable: w,
        });
    }
}

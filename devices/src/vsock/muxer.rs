//! The connection table between guest ports and host Unix sockets, as Firecracker's vsock
//! muxer defines it: host clients on `uds_path` (`CONNECT <port>\n` → REQUEST → `OK <n>\n`),
//! guest REQUESTs to `<uds_path>_<port>`, and RSTs for everything that belongs to no
//! connection.
//!
//! The muxer owns the listener, the clients still writing their CONNECT line, the
//! connections (keyed by ports, and by a never-reused id that is also their poll token), the
//! queue of RSTs for packets that belong to nothing, and the RX ready list (connections with
//! something for the guest, served round robin, one packet each). Everything is bounded:
//! [`MuxerLimits::max_connections`] connections, [`MAX_PENDING_CLIENTS`] clients before their
//! CONNECT line, [`MAX_QUEUED_RSTS`] RSTs waiting for RX buffers (more are dropped and
//! counted), and per connection `buf_alloc` buffered bytes.
//!
//! The muxer never touches a virtqueue: the worker hands it validated TX packets and RX
//! chains, and asks it which descriptors to poll and when its next deadline is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::{Conn, ConnKey, Emit, State, Verdict};
use super::connect_line::{LineBuffer, LineError, LineState};
use super::metrics::{BadPacket, VsockMetrics};
use super::packet::{Header, Op, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::queue_io::{RxChain, TxPacket};
use super::sys;
use crate::net::backend::FdInterest;

/// Most host clients that connected but have not finished their CONNECT line.
pub const MAX_PENDING_CLIENTS: usize = 128;
/// Most RSTs (for packets that belong to no connection) waiting for RX buffers.
pub const MAX_QUEUED_RSTS: usize = 1024;
/// Most clients accepted per readiness report of the listener.
const ACCEPT_BURST: usize = 32;
/// How long accepting pauses after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);
/// First host-side port of host-initiated connections (Firecracker's range
/// `[1 << 30, 1 << 31)`, allocated round robin).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// The poll token of the listener; clients and connections use ids from 1 on.
const LISTENER_TOKEN: u64 = 0;

/// Limits and timeouts of the muxer.
#[derive(Debug, Clone)]
pub struct MuxerLimits {
    /// Credit advertised per connection (and its most buffered guest → host bytes).
    pub buf_alloc: u32,
    /// Most open connections.
    pub max_connections: usize,
    /// How long the guest has to answer a host-initiated REQUEST.
    pub request_timeout: Duration,
    /// How long a closing connection waits for its flush or the guest's RST.
    pub shutdown_timeout: Duration,
    /// How long a host client has to send its CONNECT line.
    pub connect_line_timeout: Duration,
}

/// A host client before its CONNECT line is complete.
#[derive(Debug)]
struct PendingClient {
    sock: OwnedFd,
    line: LineBuffer,
    deadline: Instant,
}

/// The connection table of one device activation.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    limits: MuxerLimits,
    listener: Option<UnixListener>,
    pending: HashMap<u64, PendingClient>,
    conns: HashMap<u64, Conn>,
    by_key: HashMap<ConnKey, u64>,
    local_ports: HashSet<u32>,
    local_port_last: u32,
    next_id: u64,
    rsts: VecDeque<Header>,
    ready: VecDeque<u64>,
    accept_paused_until: Option<Instant>,
    metrics: Arc<VsockMetrics>,
    scratch: Vec<libc::iovec>,
}

// SAFETY: the only non-Send field is `scratch`, iovecs that are filled and used within one
// call and never dereferenced across calls; moving the muxer between threads moves nothing
// they point to.
unsafe impl Send for Muxer {}

impl Muxer {
    /// A muxer for the guest `guest_cid`, serving `listener` (bound at `uds_path`).
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: Option<UnixListener>,
        limits: MuxerLimits,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        Self {
            guest_cid,
            uds_path,
            limits,
            listener,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_key: HashMap::new(),
            local_ports: HashSet::new(),
            local_port_last: FIRST_LOCAL_PORT - 1,
            next_id: 1,
            rsts: VecDeque::new(),
            ready: VecDeque::new(),
            accept_paused_until: None,
            metrics,
            scratch: Vec::with_capacity(super::queue_io::MAX_CHAIN_SEGMENTS),
        }
    }

    /// Closes every connection and client and gives the listener back (for the next
    /// activation).
    pub fn into_listener(mut self) -> Option<UnixListener> {
        let open = self.conns.len() as u64;
        VsockMetrics::sub(&self.metrics.connections_open, open);
        self.conns.clear();
        self.pending.clear();
        self.listener.take()
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether something waits for an RX buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.rsts.is_empty() || !self.ready.is_empty()
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn mark_ready(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.in_ready && c.wants_rx() {
                c.in_ready = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Queues an RST answering a guest packet `h` (mirrors its addresses, so the guest's
    /// transport finds the socket it belongs to).
    fn queue_rst_reply(&mut self, h: &Header) {
        if h.op == Op::Rst.code() {
            return;
        }
        self.queue_rst(Header {
            src_cid: h.dst_cid,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: Op::Rst.code(),
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn queue_rst(&mut self, h: Header) {
        if self.rsts.len() >= MAX_QUEUED_RSTS {
            VsockMetrics::add(&self.metrics.control_dropped, 1);
            return;
        }
        self.rsts.push_back(h);
    }

    /// Removes a connection; with `rst`, queues an RST for the guest.
    fn close(&mut self, id: u64, rst: bool) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.by_key.remove(&c.key);
        if c.host_initiated {
            self.local_ports.remove(&c.key.local_port);
        }
        VsockMetrics::sub(&self.metrics.connections_open, 1);
        // A slot freed: accepting may resume.
        self.accept_paused_until = None;
        if rst {
            self.queue_rst(Header::host_to_guest(
                self.guest_cid,
                c.key.local_port,
                c.key.peer_port,
                Op::Rst,
                0,
                0,
            ));
        }
        // Dropping `c` closes the host socket.
    }

    /// After anything changed a connection: ends it if finished, arms its shutdown deadline,
    /// puts it on the ready list if it has something for the guest.
    fn settle(&mut self, id: u64, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.finished() {
            self.close(id, true);
            return;
        }
        if c.state == State::Closing && c.deadline.is_none() {
            c.deadline = Some(now + self.limits.shutdown_timeout);
        }
        self.mark_ready(id);
    }

    /// The descriptors to poll now.
    pub fn interests(&self, now: Instant, out: &mut Vec<FdInterest>) {
        out.clear();
        let accepting = self.accept_paused_until.is_none_or(|t| now >= t);
        if let Some(l) = self.listener.as_ref().filter(|_| accepting) {
            out.push(FdInterest {
                fd: l.as_raw_fd(),
                token: LISTENER_TOKEN,
                readable: true,
                writable: false,
            });
        }
        for (&id, p) in &self.pending {
            out.push(FdInterest {
                fd: p.sock.as_raw_fd(),
                token: id,
                readable: true,
                writable: false,
            });
        }
        for (&id, c) in &self.conns {
            let (readable, writable) = (c.wants_read(), c.wants_write());
            if readable || writable {
                out.push(FdInterest {
                    fd: c.sock.as_raw_fd(),
                    token: id,
                    readable,
                    writable,
                });
            }
        }
        // A stable order keeps the event loop's "same list as last time" fast path.
        out.sort_unstable_by_key(|i| i.token);
    }

    /// The earliest deadline (request, shutdown, CONNECT line, accept back-off).
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.deadline);
        let pending = self.pending.values().map(|p| p.deadline);
        conns.chain(pending).chain(self.accept_paused_until).min()
    }

    /// Expires what is due at `now`.
    pub fn on_timers(&mut self, now: Instant) {
        let late_clients: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late_clients {
            // Counted before the client can see its socket close.
            VsockMetrics::add(&self.metrics.connect_line_timeouts, 1);
            self.pending.remove(&id);
        }
        let late: Vec<(u64, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&id, c)| (id, c.is_request_pending()))
            .collect();
        for (id, request) in late {
            let counter = if request {
                &self.metrics.request_timeouts
            } else {
                &self.metrics.shutdown_timeouts
            };
            VsockMetrics::add(counter, 1);
            self.close(id, true);
        }
        if self.accept_paused_until.is_some_and(|t| now >= t) {
            self.accept_paused_until = None;
        }
    }

    /// A polled descriptor is ready.
    pub fn on_ready(&mut self, token: u64, readable: bool, writable: bool, now: Instant) {
        if token == LISTENER_TOKEN {
            self.accept_clients(now);
            return;
        }
        if self.pending.contains_key(&token) {
            self.read_connect_line(token, now);
            return;
        }
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if writable && !c.on_writable(&self.metrics) {
            self.close(token, true);
            return;
        }
        if readable {
            c.on_readable();
        }
        self.settle(token, now);
    }

    fn accept_clients(&mut self, now: Instant) {
        let Some(fd) = self.listener.as_ref().map(|l| l.as_raw_fd()) else {
            return;
        };
        for _ in 0..ACCEPT_BURST {
            let sock = match sys::accept(fd) {
                Ok(s) => s,
                Err(e) if sys::would_block(&e) => return,
                Err(e) => {
                    // Out of descriptors (or memory): the listener stays readable, so pause
                    // instead of spinning on it.
                    tracing::warn!(error = %e, "virtio-vsock: cannot accept a host client");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING_CLIENTS
                || self.conns.len() >= self.limits.max_connections
            {
                VsockMetrics::add(&self.metrics.connection_limit, 1);
                continue;
            }
            let id = self.alloc_id();
            self.pending.insert(
                id,
                PendingClient {
                    sock,
                    line: LineBuffer::default(),
                    deadline: now + self.limits.connect_line_timeout,
                },
            );
            // Clients usually write their line right after connecting: try it now and save
            // a poll round.
            self.read_connect_line(id, now);
        }
    }

    fn read_connect_line(&mut self, id: u64, now: Instant) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        // Every outcome is counted before the client can see its socket close.
        let n = match sys::recv_bytes(p.sock.as_raw_fd(), p.line.spare()) {
            Ok(0) => {
                VsockMetrics::add(&self.metrics.connect_lines_bad, 1);
                self.pending.remove(&id);
                return;
            }
            Ok(n) => n,
            Err(e) if sys::would_block(&e) => return,
            Err(_) => {
                VsockMetrics::add(&self.metrics.host_io_errors, 1);
                self.pending.remove(&id);
                return;
            }
        };
        match p.line.take(n) {
            Ok(LineState::Incomplete) => {}
            Err(why) => {
                VsockMetrics::add(&self.metrics.connect_lines_bad, 1);
                self.pending.remove(&id);
                let why = match why {
                    LineError::TooLong => "no newline within 32 bytes",
                    LineError::NotText => "not text",
                    LineError::Syntax => "not CONNECT <port>",
                    LineError::BadPort => "bad port",
                };
                tracing::debug!(why, "virtio-vsock: closed a host client");
            }
            Ok(LineState::Connect { port, rest }) => {
                if let Some(p) = self.pending.remove(&id) {
                    self.open_host_initiated(id, p.sock, port, rest, now);
                }
            }
        }
    }

    fn open_host_initiated(
        &mut self,
        id: u64,
        sock: OwnedFd,
        peer_port: u32,
        prefix: Vec<u8>,
        now: Instant,
    ) {
        if self.conns.len() >= self.limits.max_connections {
            VsockMetrics::add(&self.metrics.connection_limit, 1);
            return;
        }
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            VsockMetrics::add(&self.metrics.connection_limit, 1);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let deadline = now + self.limits.request_timeout;
        let conn = Conn::host_initiated(key, sock, self.limits.buf_alloc, prefix, deadline);
        self.local_ports.insert(local_port);
        self.by_key.insert(key, id);
        self.conns.insert(id, conn);
        VsockMetrics::add(&self.metrics.host_connects, 1);
        VsockMetrics::add(&self.metrics.connections_open, 1);
        self.mark_ready(id);
    }

    /// The next host-side port in `[1 << 30, 1 << 31)` not in use with `peer_port`.
    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.limits.max_connections {
            self.local_port_last =
                ((self.local_port_last.wrapping_add(1)) & !(1 << 31)) | (1 << 30);
            let port = self.local_port_last;
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.local_ports.contains(&port) && !self.by_key.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// Applies one validated guest packet.
    pub fn on_guest_packet(&mut self, pkt: &TxPacket, now: Instant) {
        let h = pkt.header;
        if h.src_cid != self.guest_cid {
            self.count_bad(BadPacket::WrongSrcCid, &h);
            return;
        }
        if h.dst_cid != HOST_CID {
            self.count_bad(BadPacket::WrongDstCid, &h);
            self.queue_rst_reply(&h);
            return;
        }
        if h.type_ != TYPE_STREAM {
            self.count_bad(BadPacket::BadType, &h);
            self.queue_rst_reply(&h);
            return;
        }
        let Some(op) = h.operation() else {
            self.count_bad(BadPacket::BadOp, &h);
            self.queue_rst_reply(&h);
            return;
        };
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        let Some(&id) = self.by_key.get(&key) else {
            match op {
                Op::Request => self.open_guest_initiated(key, &h),
                Op::Rst => VsockMetrics::add(&self.metrics.rst_received, 1),
                _ => {
                    self.count_bad(BadPacket::UnknownConnection, &h);
                    self.queue_rst_reply(&h);
                }
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let verdict = if c.state == State::Closing && op == Op::Rw {
            Verdict::Reset(None)
        } else {
            c.on_guest_packet(&h, op, &pkt.iov, &mut self.scratch, &self.metrics)
        };
        match verdict {
            Verdict::Keep => self.settle(id, now),
            Verdict::Close => self.close(id, false),
            Verdict::Reset(reason) => {
                if let Some(r) = reason {
                    self.count_bad(r, &h);
                }
                self.close(id, true);
            }
        }
    }

    fn count_bad(&self, reason: BadPacket, h: &Header) {
        self.metrics.bad(reason);
        if let Some(total) = self.metrics.bad_log.admit() {
            tracing::warn!(
                reason = reason.name(),
                src_cid = h.src_cid,
                dst_cid = h.dst_cid,
                src_port = h.src_port,
                dst_port = h.dst_port,
                op = h.op,
                bad_so_far = total,
                "virtio-vsock: guest packet not carried (rate-limited log)"
            );
        }
    }

    /// A guest REQUEST for no existing connection: connect to `<uds_path>_<port>`.
    fn open_guest_initiated(&mut self, key: ConnKey, h: &Header) {
        if self.conns.len() >= self.limits.max_connections {
            VsockMetrics::add(&self.metrics.connection_limit, 1);
            VsockMetrics::add(&self.metrics.guest_refused, 1);
            self.queue_rst_reply(h);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let sock = match sys::connect(std::path::Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(port = key.local_port, error = %e, "virtio-vsock: guest connection refused");
                VsockMetrics::add(&self.metrics.guest_refused, 1);
                self.queue_rst_reply(h);
                return;
            }
        };
        let id = self.alloc_id();
        self.by_key.insert(key, id);
        self.conns.insert(
            id,
            Conn::guest_initiated(key, sock, self.limits.buf_alloc, h),
        );
        VsockMetrics::add(&self.metrics.guest_connections, 1);
        VsockMetrics::add(&self.metrics.connections_open, 1);
        self.mark_ready(id);
    }

    /// Writes the next packet for the guest into `chain`; returns its length, or `None` if
    /// nothing is waiting.
    pub fn fill_rx(&mut self, chain: &RxChain, now: Instant) -> Option<u32> {
        // Each ready connection gets one turn; one that had nothing leaves the list, so the
        // bound is never reached in practice (it only rules out a spin).
        for _ in 0..=self.ready.len() + 1 {
            if let Some(h) = self.rsts.pop_front() {
                chain.iov.write_at(0, &h.to_bytes());
                VsockMetrics::add(&self.metrics.rst_sent, 1);
                return Some(HDR_LEN as u32);
            }
            let id = self.ready.pop_front()?;
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.in_ready = false;
            match c.emit(self.guest_cid, chain, &mut self.scratch, &self.metrics) {
                Emit::Packet(len) => {
                    self.settle(id, now);
                    return Some(len);
                }
                Emit::Nothing => self.settle(id, now),
                // The RST goes out on the next turn of the loop.
                Emit::Reset => self.close(id, true),
            }
        }
        None
    }
}

//! State of one translated TCP connection, the parsed guest segment, and the segment
//! header writer. Owns sequence-number bookkeeping; does no socket I/O except the two
//! queries that derive our advertised window.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use crate::checksum::Checksum;
use crate::core::Core;
use crate::flow_key::FlowKey;
use crate::frame::build::{checksum_range, emit_eth_ip, scatter};
use crate::frame::parse::{Drop, IpInfo};
use crate::frame::GuestFrame;
use crate::ipaddr::sip;
use crate::sys;

/// First retransmission timeout (the guest is one memory copy away; RFC 6298's 1 s floor
/// is meant for real networks).
pub(crate) const RTO_INITIAL: Duration = Duration::from_millis(200);
/// Upper bound of the doubled retransmission timeout.
pub(crate) const RTO_MAX: Duration = Duration::from_secs(10);
/// First wait before a window update the guest did not react to is sent again; doubles
/// per try.
pub(crate) const WND_UPDATE_RTO: Duration = RTO_INITIAL;
/// Longest wait between window probes to a guest whose window stays zero. The guest is
/// local and a probe is one small frame; smoltcp answers at most one per second anyway.
pub(crate) const PERSIST_MAX: Duration = Duration::from_secs(1);
/// How many times a window update is re-sent before we rely on the guest.
pub(crate) const WND_UPDATE_TRIES: u32 = 6;
/// How often (in window computations) `SO_SNDBUF` is re-read.
const SNDBUF_REFRESH: u32 = 32;
/// How many data segments reuse the last computed window.
const DATA_WND_REFRESH: u32 = 16;
/// How long to wait before looking at a draining host socket's window again.
const WND_RECHECK: Duration = Duration::from_millis(1);
/// Window-scale shift we announce when the guest announces one (max window 8 MiB).
const OUR_WSCALE: u8 = 7;

/// Signed distance from `b` to `a` in sequence space.
pub(crate) fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// Connection state, from our point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TcpState {
    /// Guest SYN received; host `connect()` in progress.
    Connecting,
    /// Host connected; SYN-ACK sent to the guest, waiting for its ACK.
    SynAckSent,
    /// Published port: host connection accepted, our SYN sent to the guest.
    SynSent,
    /// TLS port: the guest's handshake is complete and its first bytes are held for the
    /// ClientHello check ([`super::sni_gate`]); the host connect has not started, or has not
    /// finished, or the held bytes are still being written.
    Holding,
    /// Data flows both ways (until the FINs).
    Established,
}

/// One TCP connection translated between the guest and a host socket.
pub(crate) struct TcpConn {
    pub key: FlowKey,
    pub fd: OwnedFd,
    pub state: TcpState,
    /// Next sequence number expected from the guest (everything before went to the host).
    pub rcv_nxt: u32,
    /// The guest's FIN was consumed and the host socket's write side shut down.
    pub guest_fin: bool,
    /// Our initial sequence number towards the guest.
    pub isn: u32,
    /// Oldest byte sent to the guest and not yet acknowledged.
    pub snd_una: u32,
    /// Next sequence number we send to the guest.
    pub snd_nxt: u32,
    /// Highest sequence number sent so far: after a rewind, ACKs up to here are still
    /// valid (the guest may acknowledge the first transmission late).
    pub snd_max: u32,
    /// Sequence number of our FIN, once sent (it never moves: the stream has ended).
    pub fin_seq: Option<u32>,
    /// The guest's receive window in bytes (already scaled).
    pub guest_wnd: u32,
    pub guest_wscale: u8,
    /// Our window-scale shift (0 if the guest did not offer scaling).
    pub our_wscale: u8,
    pub guest_mss: u16,
    /// The host peer closed its side (a peek returned 0).
    pub host_eof: bool,
    pub fin_sent: bool,
    pub fin_acked: bool,
    /// The host socket may have unread data (cleared when a peek would block).
    pub host_readable: bool,
    /// A peek found nothing beyond the in-flight bytes and `SO_RCVLOWAT` could not be
    /// raised: readiness of the socket means nothing until the guest ACKs.
    pub peek_exhausted: bool,
    /// Current `SO_RCVLOWAT` (1 = kernel default). Raised to in-flight + 1 when a peek
    /// finds nothing new, so poll(2) wakes us for new data only, not for the bytes the
    /// guest has yet to acknowledge.
    pub lowat: u32,
    /// We advertised a short window and wait for the host socket to drain.
    pub want_write: bool,
    /// The host socket was writable but our window had not grown: look again then
    /// (polling for writability would fire again at once while anything is queued).
    pub wnd_recheck_at: Option<Instant>,
    pub ack_pending: bool,
    /// A SYN or SYN-ACK must be (re)sent.
    pub syn_pending: bool,
    pub dup_acks: u8,
    pub rto: Duration,
    pub rto_at: Option<Instant>,
    pub retries: u32,
    pub last_activity: Instant,
    pub connect_deadline: Option<Instant>,
    /// Interest currently registered with the event loop (read, write).
    pub registered: (bool, bool),
    /// `fd` was replaced since it was registered (a flow handed to the TLS proxy): the
    /// registration must name the new descriptor.
    pub fd_replaced: bool,
    /// The flow was handed to the TLS proxy (`fd` is our end of its socket pair).
    pub to_proxy: bool,
    /// The last bytes sent to the host, to find a secret's placeholder split between
    /// segments (empty unless the VM has secrets).
    pub guard_tail: Vec<u8>,
    /// Already on the core's ready list.
    pub queued: bool,
    /// `SO_PEEK_OFF` works on this socket.
    pub peek_off: bool,
    /// For published-port connections: the host peer that connected (ingress).
    pub ingress_peer: Option<SocketAddr>,
    /// Counted in `Core::tcp_half_open` (guest-initiated, not yet established).
    pub half_open: bool,
    /// DNS over TCP to the gateway: per-query checks of the guest's stream.
    pub dns: Option<Box<super::DnsStream>>,
    /// TLS port: the guest's first bytes, held until its ClientHello is judged.
    pub hello: Option<Box<super::sni_gate::HelloHold>>,
    /// The server name the guest's ClientHello named and the policy allowed (re-judged on
    /// policy changes).
    pub server_name: Option<Box<str>>,
    /// The flow is the embedder's own: not judged by the policy, never cut by a change.
    pub embedder: bool,
    /// The host end is a Unix socket (pair): acknowledged bytes are discarded by reading,
    /// as `MSG_TRUNC` needs TCP.
    pub unix_stream: bool,
    /// Cached `SO_SNDBUF` and how many more window computations may use it.
    pub sndbuf: u32,
    pub wnd_calls: u32,
    /// Last advertised window field and data segments sent with it since.
    pub last_wnd: u16,
    pub data_since_wnd: u32,
    /// Right edge of the receive window we advertised (`ack + window`, never moved left):
    /// out-of-order data is accepted only before it.
    pub wnd_edge: u32,
    /// Guest payload that arrived after a hole, waiting for it (copied; bounded).
    pub ooo: Option<Box<super::ooo::OooQueue>>,
    /// The last window we advertised was shorter than one guest MSS.
    pub small_wnd_sent: bool,
    /// A window of at least one MSS followed a short one: arm the window-update timer.
    pub wnd_reopened: bool,
    /// When to re-send the window update if the guest stays silent (see
    /// [`super::host::on_timer`]), and how many times it was re-sent.
    pub wnd_update_at: Option<Instant>,
    pub wnd_update_tries: u32,
    /// Persist timer: the guest's window is zero with nothing in flight. A reordered stale
    /// zero-window ACK can arrive after the guest's window update, and the guest says
    /// nothing more; so we probe (a segment one byte behind `snd_nxt`, which the guest must
    /// answer with an ACK carrying its window).
    pub persist_at: Option<Instant>,
    pub persist_tries: u32,
    /// A window probe must be sent.
    pub probe_pending: bool,
}

impl TcpConn {
    /// A connection in `state` with everything else at its starting value.
    pub(crate) fn new(key: FlowKey, fd: OwnedFd, state: TcpState, isn: u32, now: Instant) -> Self {
        TcpConn {
            key,
            fd,
            state,
            rcv_nxt: 0,
            guest_fin: false,
            isn,
            snd_una: isn,
            snd_nxt: isn,
            snd_max: isn,
            fin_seq: None,
            guest_wnd: 0,
            guest_wscale: 0,
            our_wscale: 0,
            guest_mss: 536,
            host_eof: false,
            fin_sent: false,
            fin_acked: false,
            host_readable: false,
            peek_exhausted: false,
            lowat: 1,
            want_write: false,
            wnd_recheck_at: None,
            ack_pending: false,
            syn_pending: false,
            dup_acks: 0,
            rto: RTO_INITIAL,
            rto_at: None,
            retries: 0,
            last_activity: now,
            connect_deadline: None,
            registered: (false, false),
            fd_replaced: false,
            to_proxy: false,
            guard_tail: Vec::new(),
            queued: false,
            peek_off: false,
            ingress_peer: None,
            half_open: false,
            dns: None,
            hello: None,
            server_name: None,
            embedder: false,
            unix_stream: false,
            sndbuf: 0,
            wnd_calls: 0,
            last_wnd: 0,
            data_since_wnd: u32::MAX / 2,
            wnd_edge: 0,
            ooo: None,
            small_wnd_sent: false,
            wnd_reopened: false,
            wnd_update_at: None,
            wnd_update_tries: 0,
            persist_at: None,
            persist_tries: 0,
            probe_pending: false,
        }
    }

    /// Records the options of the guest's SYN / SYN-ACK.
    pub(crate) fn take_guest_options(&mut self, seg: &Segment, mtu: u16) {
        let ip_overhead: u16 = if self.key.guest.is_ipv6() { 60 } else { 40 };
        let default_mss = if self.key.guest.is_ipv6() { 1220 } else { 536 };
        self.guest_mss = seg
            .mss
            .unwrap_or(default_mss)
            .clamp(64, mtu.saturating_sub(ip_overhead));
        match seg.wscale {
            Some(ws) => {
                self.guest_wscale = ws.min(14);
                self.our_wscale = OUR_WSCALE;
            }
            None => {
                self.guest_wscale = 0;
                self.our_wscale = 0;
            }
        }
        // RFC 7323 §2.2: the window in a SYN is never scaled.
        self.guest_wnd = u32::from(seg.window);
    }

    /// Payload bytes sent to the guest and not yet acknowledged.
    pub(crate) fn data_in_flight(&self) -> u32 {
        let fin = u32::from(self.fin_sent && !self.fin_acked);
        self.snd_nxt.wrapping_sub(self.snd_una).saturating_sub(fin)
    }

    /// How much more we may send within the guest's window.
    pub(crate) fn window_avail(&self) -> u32 {
        self.guest_wnd
            .saturating_sub(self.snd_nxt.wrapping_sub(self.snd_una))
    }

    /// Events the host fd must be watched for (read, write).
    pub(crate) fn desired_interest(&self) -> (bool, bool) {
        match self.state {
            TcpState::Connecting => (false, true),
            TcpState::SynSent | TcpState::SynAckSent => (false, false),
            TcpState::Holding => (false, self.hello.as_ref().is_some_and(|h| h.wants_write())),
            TcpState::Established => (
                !self.host_eof
                    && !self.host_readable
                    && !self.peek_exhausted
                    && self.window_avail() > 0,
                self.want_write && !self.guest_fin,
            ),
        }
    }

    /// Whether [`super::next_frame`] would emit payload (rather than only a control segment:
    /// SYN, ACK, window probe, FIN).
    pub(crate) fn has_data_to_send(&self) -> bool {
        self.state == TcpState::Established
            && self.host_readable
            && !self.host_eof
            && self.window_avail() > 0
    }

    /// Whether [`super::next_frame`] has something to emit.
    pub(crate) fn wants_output(&self) -> bool {
        if self.syn_pending || self.ack_pending || self.probe_pending {
            return true;
        }
        self.state == TcpState::Established
            && ((self.host_readable && !self.host_eof && self.window_avail() > 0)
                || (self.host_eof && !self.fin_sent))
    }

    /// The window we advertise (field value, already shifted) and remember whether it
    /// is short enough that we must watch the host socket for writability.
    ///
    /// Costs one `SIOCOUTQ` ioctl; `SO_SNDBUF` (which the kernel autotunes) is re-read
    /// every [`SNDBUF_REFRESH`] calls.
    pub(crate) fn advertised_window(&mut self) -> u16 {
        if let Some(room) = self.hello.as_ref().map(|h| h.room()) {
            return self.hold_window(room);
        }
        let fd = self.fd.as_fd();
        if self.wnd_calls == 0 {
            self.sndbuf = sys::send_buffer_size(fd).unwrap_or(0);
            self.wnd_calls = SNDBUF_REFRESH;
        }
        self.wnd_calls -= 1;
        let (free, queued) = match sys::send_queue_len(fd) {
            Ok(queued) => ((self.sndbuf / 2).saturating_sub(queued), Some(queued)),
            Err(_) => (0, None),
        };
        let max = 65535u32 << self.our_wscale;
        let wnd = free.min(max);
        // Only a queue that can drain can open the window further: with nothing queued,
        // the socket is writable at once and waiting for that would turn every event-loop
        // round into another identical ACK (a small SO_SNDBUF never reaches two large MSS).
        if wnd < u32::from(self.guest_mss) * 2 && queued != Some(0) {
            self.want_write = true;
        }
        if !self.advertise(wnd) && self.small_wnd_sent {
            self.small_wnd_sent = false;
            self.wnd_reopened = true;
        }
        self.last_wnd
    }

    /// Records `wnd` as the window sent to the guest; a short one (below one MSS) is noted so
    /// that the reopening that follows reaches the guest. Returns whether it was short.
    fn advertise(&mut self, wnd: u32) -> bool {
        self.last_wnd = (wnd >> self.our_wscale) as u16;
        self.data_since_wnd = 0;
        self.note_window();
        let short = wnd < u32::from(self.guest_mss);
        if short {
            self.small_wnd_sent = true;
            self.wnd_reopened = false;
            self.wnd_update_at = None;
        }
        short
    }

    /// The window while the guest's first bytes are held: the room left in the hold. A short
    /// one is noted so that the window the host socket gives afterwards is re-sent until the
    /// guest reacts.
    fn hold_window(&mut self, room: u32) -> u16 {
        self.advertise(room.min(65535u32 << self.our_wscale));
        self.last_wnd
    }

    /// Moves [`Self::wnd_edge`] to `rcv_nxt` + the last advertised window if that is
    /// further right.
    fn note_window(&mut self) {
        let edge = self
            .rcv_nxt
            .wrapping_add(u32::from(self.last_wnd) << self.our_wscale);
        let ahead = seq_diff(edge, self.wnd_edge) > 0;
        let stale = seq_diff(self.wnd_edge, self.rcv_nxt) < 0;
        if ahead || stale {
            self.wnd_edge = edge;
        }
    }

    /// Arms or stops the persist timer after the guest's window changed: armed while the
    /// window is closed and nothing is in flight (in-flight data has the retransmission
    /// timer, whose resends draw fresh ACKs).
    pub(crate) fn update_persist(&mut self, now: Instant) {
        let closed = self.state == TcpState::Established
            && self.window_avail() == 0
            && self.snd_nxt == self.snd_una;
        if !closed {
            self.persist_at = None;
            self.persist_tries = 0;
        } else if self.persist_at.is_none() {
            self.persist_at = Some(now + RTO_INITIAL);
        }
    }

    /// Starts the window-update timer if the window just reopened (called after a
    /// segment carrying our window was built).
    pub(crate) fn arm_window_update(&mut self, now: Instant) {
        if self.wnd_reopened {
            self.wnd_reopened = false;
            self.wnd_update_tries = 0;
            self.wnd_update_at = Some(now + WND_UPDATE_RTO);
        }
    }

    /// The window for a data segment to the guest: the last computed value, refreshed
    /// every [`DATA_WND_REFRESH`] segments. Bulk host->guest traffic then costs no extra
    /// syscalls per segment; the guest->host direction gets exact windows from the pure
    /// ACKs, which always recompute.
    pub(crate) fn data_window(&mut self) -> u16 {
        self.data_since_wnd += 1;
        if self.data_since_wnd > DATA_WND_REFRESH {
            return self.advertised_window();
        }
        self.note_window();
        self.last_wnd
    }

    /// The window for a SYN / SYN-ACK, which is never scaled (RFC 7323 §2.2).
    pub(crate) fn advertised_window_unscaled(&mut self) -> u16 {
        let shift = std::mem::replace(&mut self.our_wscale, 0);
        let w = self.advertised_window();
        self.our_wscale = shift;
        w
    }

    /// The host socket became writable (or a recheck is due) after we advertised a short
    /// window: announce the window if it grew; otherwise look again after
    /// [`WND_RECHECK`], so a draining socket costs neither an ACK storm (a 64 KiB MSS on a
    /// small send buffer keeps the window "short" for the whole upload) nor a busy poll.
    pub(crate) fn window_maybe_opened(&mut self, now: Instant) {
        self.wnd_recheck_at = None;
        let before = self.last_wnd;
        let wnd = self.advertised_window();
        if wnd > before {
            self.ack_pending = true;
        } else if self.want_write {
            self.want_write = false;
            self.wnd_recheck_at = Some(now + WND_RECHECK);
        }
    }

    /// Moves `snd_nxt` forward by `n` (data or a SYN/FIN sent), keeping `snd_max`.
    pub(crate) fn advance_snd_nxt(&mut self, n: u32) {
        self.snd_nxt = self.snd_nxt.wrapping_add(n);
        if seq_diff(self.snd_nxt, self.snd_max) > 0 {
            self.snd_max = self.snd_nxt;
        }
    }

    /// Rewinds sending to the oldest unacknowledged byte (retransmission).
    pub(crate) fn rewind(&mut self) {
        if self.snd_nxt == self.snd_una {
            return;
        }
        self.snd_nxt = self.snd_una;
        if self.fin_sent && !self.fin_acked {
            self.fin_sent = false;
        }
        // Data before the EOF must go out again first; the peek that reaches the end
        // of the stream will report the EOF again.
        self.host_eof = false;
        if self.peek_off {
            // A failure leaves the old offset; the next peek then skips bytes and the
            // guest's ACKs will show a hole, which times out into a reset at worst.
            let _ = sys::set_peek_off(self.fd.as_fd(), 0);
        }
        self.host_readable = true;
        self.peek_exhausted = false;
        self.dup_acks = 0;
    }

    /// Endpoint addresses of segments to the guest (remote -> guest).
    pub(crate) fn guest_bound(&self) -> (SocketAddr, SocketAddr) {
        (self.key.remote, self.key.guest)
    }
}

/// A TCP segment from the guest, parsed from the header copy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub window: u16,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
    /// Offset of the payload in the frame.
    pub payload_off: usize,
    pub payload_len: usize,
}

impl Segment {
    /// Parses the TCP header at `ip.l4_off` (checksum not verified: guest memory is not a
    /// lossy medium, and with NEEDS_CSUM the field is only partial anyway).
    pub(crate) fn parse(frame: &GuestFrame<'_, '_>, ip: &IpInfo) -> Result<Self, Drop> {
        let hdr = frame.header();
        if ip.l4_len < 20 || ip.l4_off + 20 > hdr.len() {
            return Err(Drop::Malformed);
        }
        let view = TcpPacket::new_unchecked(&hdr[ip.l4_off..]);
        let doff = usize::from(view.header_len());
        if doff < 20 || doff > ip.l4_len || ip.l4_off + doff > hdr.len() {
            return Err(Drop::Malformed);
        }
        let pkt = TcpPacket::new_unchecked(&hdr[ip.l4_off..ip.l4_off + doff]);
        let repr = TcpRepr::parse(
            &pkt,
            &sip(ip.src),
            &sip(ip.dst),
            &ChecksumCapabilities::ignored(),
        )
        .map_err(|_| Drop::Malformed)?;
        Ok(Segment {
            src_port: repr.src_port,
            dst_port: repr.dst_port,
            seq: repr.seq_number.0 as u32,
            ack: repr.ack_number.map(|a| a.0 as u32),
            syn: repr.control == TcpControl::Syn,
            fin: repr.control == TcpControl::Fin,
            rst: repr.control == TcpControl::Rst,
            window: repr.window_len,
            mss: repr.max_seg_size,
            wscale: repr.window_scale,
            payload_off: ip.l4_off + doff,
            payload_len: ip.l4_len - doff,
        })
    }

    /// Sequence space the segment occupies (payload + SYN + FIN).
    pub(crate) fn seq_len(&self) -> u32 {
        self.payload_len as u32 + u32::from(self.syn) + u32::from(self.fin)
    }
}

/// Flags and options of a segment we build.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub window: u16,
    /// Options of a SYN / SYN-ACK: (our MSS, our window scale if any).
    pub syn_opts: Option<(u16, Option<u8>)>,
}

/// Largest Ethernet + IP + TCP header we build.
pub(crate) const MAX_HDR: usize = 14 + 40 + 60;

/// Writes Ethernet/IP/TCP headers for a segment whose `payload_len` bytes are already in
/// `bufs` right behind the headers; returns the header length.
pub(crate) fn write_header(
    core: &Core,
    from: SocketAddr,
    to: SocketAddr,
    h: &Header,
    bufs: &mut [IoSliceMut<'_>],
    payload_len: usize,
) -> usize {
    let mut hdr = [0u8; MAX_HDR];
    let n = build_header(core, from, to, h, payload_len, &mut hdr);
    if core.cfg.rx_checksum {
        let ip_len = crate::frame::build::eth_ip_len(&from.ip());
        let mut ck = Checksum::new();
        ck.add_pseudo(&from.ip(), &to.ip(), 6, (n - ip_len + payload_len) as u32);
        ck.add(&hdr[ip_len..n]);
        checksum_range(&mut ck, bufs, n, payload_len);
        hdr[ip_len + 16..ip_len + 18].copy_from_slice(&ck.finish().to_be_bytes());
    }
    scatter(bufs, 0, &hdr[..n]);
    n
}

/// Builds the headers into `hdr` with the TCP checksum field zero; returns their length.
fn build_header(
    core: &Core,
    from: SocketAddr,
    to: SocketAddr,
    h: &Header,
    payload_len: usize,
    hdr: &mut [u8; MAX_HDR],
) -> usize {
    let repr = TcpRepr {
        src_port: from.port(),
        dst_port: to.port(),
        control: h.control,
        seq_number: TcpSeqNumber(h.seq as i32),
        ack_number: h.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: h.window,
        window_scale: h.syn_opts.and_then(|o| o.1),
        max_seg_size: h.syn_opts.map(|o| o.0),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let tcp_len = repr.header_len();
    let ep = core.to_guest(from.ip(), to.ip());
    let ip_len = emit_eth_ip(hdr, &ep, IpProtocol::Tcp, tcp_len + payload_len);
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut hdr[ip_len..ip_len + tcp_len]),
        &sip(from.ip()),
        &sip(to.ip()),
        &ChecksumCapabilities::ignored(),
    );
    ip_len + tcp_len
}

/// Queues a payload-less segment (final ACK, RST) as a control frame.
pub(crate) fn push_segment(core: &mut Core, from: SocketAddr, to: SocketAddr, h: &Header) {
    let mut hdr = [0u8; MAX_HDR];
    let n = build_header(core, from, to, h, 0, &mut hdr);
    let ip_len = crate::frame::build::eth_ip_len(&from.ip());
    let mut ck = Checksum::new();
    ck.add_pseudo(&from.ip(), &to.ip(), 6, (n - ip_len) as u32);
    ck.add(&hdr[ip_len..n]);
    hdr[ip_len + 16..ip_len + 18].copy_from_slice(&ck.finish().to_be_bytes());
    core.push_raw(n, |buf| buf.copy_from_slice(&hdr[..n]));
}

/// Queues a RST answering guest segment `seg` that matches no flow (RFC 793 p.36 / 9293
/// §3.10.7.1): if it carried an ACK, the RST takes that as its sequence number; otherwise
/// it acknowledges everything the segment occupied.
pub(crate) fn push_rst_for(core: &mut Core, ip: &IpInfo, seg: &Segment) {
    let from = SocketAddr::new(ip.dst, seg.dst_port);
    let to = SocketAddr::new(ip.src, seg.src_port);
    let h = match seg.ack {
        Some(ack) => Header {
            control: TcpControl::Rst,
            seq: ack,
            ack: None,
            window: 0,
            syn_opts: None,
        },
        None => Header {
            control: TcpControl::Rst,
            seq: 0,
            ack: Some(seg.seq.wrapping_add(seg.seq_len())),
            window: 0,
            syn_opts: None,
        },
    };
    core.metrics.rst_to_guest += 1;
    push_segment(core, from, to, &h);
}

//! TCP by L2<->L4 translation (design §6): there is no TCP stack in the middle.
//!
//! # Data path
//!
//! A guest SYN is judged by the flow gate, then opens a non-blocking `connect()` to the
//! real destination (the gateway address maps to host loopback). Only when the kernel
//! says the connect finished do we answer the guest with a SYN-ACK; a refused, denied or
//! timed-out connect becomes a RST. From then on the host kernel's socket *is* the
//! connection; we only translate sequence numbers, flags and windows.
//!
//! **Guest -> host.** The TCP payload of a guest frame is passed to `sendmsg()` as iovecs
//! that point straight into the guest's TX buffers: zero copies in userspace, one copy
//! by the kernel into its socket buffer. We acknowledge to the guest exactly the bytes
//! `sendmsg()` accepted; whatever it did not take is dropped and the guest retransmits
//! it (counted as `drop_host_busy`). A guest segment that arrives after a hole is answered at
//! once with a duplicate ACK (so the guest's fast retransmit fills the hole) and its payload
//! is *copied* into the connection's out-of-order queue ([`ooo`]): the guest's buffers are
//! gone when we return, and dropping it would make the guest resend its whole window
//! (go-back-N). That is the only copy in userspace, on the rare path only; the queue is
//! bounded per connection and across connections, and only takes data inside the window we
//! advertised. When in-order data fills the hole, the queued bytes that are now contiguous go
//! to the socket in one `sendmsg()`; whatever it does not take stays queued until the socket
//! is writable again, and the guest is ACKed only for what the socket accepted.
//! The window we advertise is the free space of the host socket's send buffer
//! (half of `SO_SNDBUF`, the part the kernel grants to payload, minus `SIOCOUTQ`); when it
//! is exhausted we advertise zero, watch the socket for writability and send a window
//! update when it drains. That update can be lost or overtaken by an older zero-window ACK,
//! and a guest without zero-window probes (smoltcp 0.12) would then wait forever; so after a
//! window shorter than one MSS reopens, the update is re-sent while the guest stays silent
//! (200 ms, doubling, at most 6 times; any guest data cancels it). The same race the other
//! way round (a reordered stale zero-window ACK from the guest after its window update) is
//! covered by a persist timer: while the guest's window is zero with nothing in flight we
//! send it window probes (a segment one byte behind `snd_nxt`, which it must answer with an
//! ACK carrying its window; 200 ms, doubling up to [`conn::PERSIST_MAX`], 1 s).
//! ACKs to the guest are coalesced: a segment only marks the flow "ACK pending", and one
//! ACK per flow goes out when the device asks for RX frames
//! (normally right after it processed a whole TX batch), unless data to the guest carries
//! it first.
//!
//! **Host -> guest.** When the host socket is readable and the guest's window is open,
//! `recvmsg(MSG_PEEK)` reads the next bytes straight into the guest's RX buffers behind
//! the Ethernet/IP/TCP headers we build (again zero userspace copies; the kernel copies
//! once from its socket buffer). The data stays queued in the host socket until the
//! guest ACKs it: `SO_PEEK_OFF` makes each peek continue where the last one ended, and
//! an ACK from the guest drops the acknowledged bytes with `recv(MSG_TRUNC)` and a NULL
//! buffer, which frees them without copying (the alternative, reading into a scratch
//! buffer, would cost one extra copy per byte; MSG_TRUNC costs nothing but is Linux-only).
//! A retransmission (timeout or three duplicate ACKs) simply rewinds the peek offset to
//! zero. Because unacknowledged bytes stay queued, the socket is always "readable" for
//! poll(2) while anything is in flight; when a peek finds nothing new we raise
//! `SO_RCVLOWAT` to the in-flight amount + 1, so the event loop wakes us for new bytes
//! (or EOF/errors) only, and lower it again as ACKs arrive. If the kernel lacks `SO_PEEK_OFF` for TCP (before 6.10), each peek instead
//! starts with a discard iovec covering the bytes already in flight: correct, but it
//! copies in-flight bytes again per segment, so the in-flight amount is then capped.
//! We respect the guest's advertised window (scaled by its window-scale option) and its
//! MSS, or send larger segments flagged as GSO when the device negotiated GUEST_TSO.
//!
//! **Copies per payload byte:** guest->host 1 (kernel, into the socket), host->guest 1
//! (kernel, out of the socket into guest memory). Headers are built on our stack and
//! copied into the guest buffer (54-74 bytes per segment).
//!
//! **DNS over TCP** to the gateway is relayed to the upstream resolver, but the start of
//! every query (up to its question) is held and checked by the flow gate before it leaves,
//! and every answer is peeked whole and judged (rebind protection, attribution) before
//! any byte of it is sent to the guest ([`dns_stream`]).
//!
//! **TLS ports** (`NetConfig::tls`): the SYN is judged by address as always, but the guest
//! gets its SYN-ACK at once, before any host connect; its first bytes are copied into a
//! bounded hold (16 KiB, ACKed as they arrive) until the ClientHello is complete, the
//! server name is judged, and only then is the host connection opened and the held bytes
//! written to it, first and in order ([`sni_gate`]). From then on the flow is the zero-copy
//! path above. Denied, malformed, oversized or late ClientHellos get a RST. With an
//! interception proxy (`TlsInspection::handoff`), an allowed flow it wants is instead carried
//! over one end of a Unix socket pair (as embedder flows are) and the proxy gets the other
//! end: the held ClientHello is the first thing it reads.
//!
//! **Closing.** A guest FIN becomes `shutdown(SHUT_WR)` once all data before it was
//! accepted; a host EOF (peek returns 0) becomes a FIN to the guest after all queued
//! data. The flow is forgotten when both FINs are acknowledged (the guest keeps its
//! own TIME_WAIT). A guest RST closes the host socket with `SO_LINGER{0}` so the peer sees
//! a RST; a host RST or error becomes a RST to the guest. Idle flows are reset after
//! [`crate::Limits::tcp_idle_timeout`].

mod conn;
mod dns_stream;
mod guest;
mod host;
mod ooo;
mod sni_gate;

pub(crate) use conn::{push_rst_for, Segment, TcpConn, TcpState};
pub(crate) use dns_stream::{judge_next_answer, AnswerStep, DnsStream};
pub(crate) use guest::{on_guest_segment, open_from_guest, open_held, open_over};
pub(crate) use host::deadline;
pub(crate) use host::{next_frame, on_ready, on_timer, Produced};

use crate::core::{Core, InterestOp};
use std::os::fd::AsRawFd;

/// What the caller must do with a flow after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// Keep it.
    Keep,
    /// Both sides closed cleanly: forget it.
    Close,
    /// Abort: RST to the guest and to the host peer, then forget it.
    Reset,
    /// The guest reset it: RST to the host peer only, then forget it.
    GuestReset,
}

/// Brings the flow's fd interest and ready-list membership up to date.
pub(crate) fn sync(core: &mut Core, token: u64, conn: &mut TcpConn) {
    if conn.half_open && !matches!(conn.state, TcpState::Connecting | TcpState::SynAckSent) {
        conn.half_open = false;
        core.tcp_half_open -= 1;
    }
    let want = conn.desired_interest();
    if want != conn.registered || conn.fd_replaced {
        conn.fd_replaced = false;
        core.interest(
            InterestOp::Modify,
            conn.fd.as_raw_fd(),
            token,
            want.0,
            want.1,
        );
        conn.registered = want;
    }
    if !conn.queued && conn.wants_output() {
        conn.queued = true;
        core.ready.push_back(token);
    }
}

/// Queues the ACK of the guest's FIN for a flow that is being forgotten.
pub(crate) fn push_final_ack(core: &mut Core, conn: &TcpConn) {
    let (from, to) = conn.guest_bound();
    let h = conn::Header {
        control: smoltcp::wire::TcpControl::None,
        seq: conn.snd_nxt,
        ack: Some(conn.rcv_nxt),
        window: 0,
        syn_opts: None,
    };
    conn::push_segment(core, from, to, &h);
}

/// Queues a RST|ACK that aborts the guest side of `conn`.
pub(crate) fn push_rst_to_guest(core: &mut Core, conn: &TcpConn) {
    let (from, to) = conn.guest_bound();
    let h = conn::Header {
        control: smoltcp::wire::TcpControl::Rst,
        seq: conn.snd_nxt,
        ack: Some(conn.rcv_nxt),
        window: 0,
        syn_opts: None,
    };
    core.metrics.rst_to_guest += 1;
    conn::push_segment(core, from, to, &h);
}

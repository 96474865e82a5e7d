//! Segments from the guest: opening the host connection for a SYN, completing
//! handshakes, processing ACKs (dropping acknowledged bytes from the host socket) and
//! writing payload to the host socket straight from guest memory.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use smoltcp::wire::TcpControl;

use super::conn::{push_segment, seq_diff, Header, Segment, TcpConn, TcpState, RTO_INITIAL};
use super::dns_stream::DnsStreamError;
use super::ooo::{OooQueue, Refused};
use super::sni_gate::{self, HelloHold};
use super::After;
use crate::core::Core;
use crate::flow_key::FlowKey;
use crate::frame::{GuestFrame, MAX_SEGS};
use crate::gate::FlowGate;
use crate::sys::{self, SockKind};

/// Starts the host connect for a guest SYN (gate and limits already passed).
pub(crate) fn open_from_guest(
    core: &Core,
    key: FlowKey,
    target: SocketAddr,
    seg: &Segment,
    isn: u32,
    now: Instant,
) -> io::Result<TcpConn> {
    let fd = sys::socket(target.is_ipv6(), SockKind::Stream)?;
    sys::connect(fd.as_fd(), &target)?;
    Ok(open_over(core, key, fd, seg, isn, now))
}

/// A flow for a guest SYN to a TLS port (gate and limits already passed): the socket is
/// made but not connected; the guest gets its SYN-ACK at once and its first bytes are held
/// until the ClientHello is judged ([`super::sni_gate`]). `domain` is the name the address
/// was learned from, for the log.
pub(crate) fn open_held(
    core: &Core,
    key: FlowKey,
    target: SocketAddr,
    domain: Option<String>,
    seg: &Segment,
    isn: u32,
    now: Instant,
) -> io::Result<TcpConn> {
    let fd = sys::socket(target.is_ipv6(), SockKind::Stream)?;
    let mut conn = TcpConn::new(key, fd, TcpState::SynAckSent, isn, now);
    conn.rcv_nxt = seg.seq.wrapping_add(1);
    conn.take_guest_options(seg, core.cfg.mtu);
    conn.syn_pending = true;
    let deadline = now + core.cfg.tls.hello_timeout;
    conn.hello = Some(Box::new(HelloHold::new(target, domain, deadline)));
    Ok(conn)
}

/// A flow for a guest SYN over `fd`, a stream socket whose connect was started (or, for a
/// socket pair, is already complete: it reports writable at once).
pub(crate) fn open_over(
    core: &Core,
    key: FlowKey,
    fd: OwnedFd,
    seg: &Segment,
    isn: u32,
    now: Instant,
) -> TcpConn {
    let mut conn = TcpConn::new(key, fd, TcpState::Connecting, isn, now);
    conn.rcv_nxt = seg.seq.wrapping_add(1);
    conn.take_guest_options(seg, core.cfg.mtu);
    conn.connect_deadline = Some(now + core.cfg.limits.connect_timeout);
    conn
}

/// Handles one guest segment for an existing connection.
pub(crate) fn on_guest_segment(
    core: &mut Core,
    gate: &dyn FlowGate,
    conn: &mut TcpConn,
    frame: &GuestFrame<'_, '_>,
    seg: &Segment,
    now: Instant,
) -> After {
    conn.last_activity = now;
    if seg.rst {
        return if rst_acceptable(conn, seg) {
            After::GuestReset
        } else {
            After::Keep
        };
    }
    match conn.state {
        TcpState::Connecting => {
            // The guest sent its SYN again: look at the connect ourselves instead of only
            // waiting for the readiness report, so a completion we were never told about
            // costs the guest one SYN retransmission, not the whole connect timeout.
            if seg.syn {
                let (readable, writable) = sys::ready_now(conn.fd.as_fd());
                return super::host::on_ready(core, conn, readable, writable, now);
            }
            return After::Keep;
        }
        TcpState::SynSent => {
            if seg.syn && seg.ack == Some(conn.isn.wrapping_add(1)) {
                conn.rcv_nxt = seg.seq.wrapping_add(1);
                conn.take_guest_options(seg, core.cfg.mtu);
                establish(core, conn, conn.isn.wrapping_add(1));
                conn.ack_pending = true;
            }
            return After::Keep;
        }
        TcpState::SynAckSent => {
            if seg.syn {
                // Our SYN-ACK was lost or is late: send it again.
                conn.syn_pending = true;
                return After::Keep;
            }
            match seg.ack {
                Some(a) if a == conn.isn.wrapping_add(1) => establish(core, conn, a),
                _ => return After::Keep,
            }
        }
        TcpState::Established | TcpState::Holding => {
            if seg.syn {
                // RFC 5961 §4: answer a SYN in a synchronized state with a challenge ACK.
                conn.ack_pending = true;
                return After::Keep;
            }
        }
    }
    if let Some(ack) = seg.ack {
        on_ack(core, conn, seg, ack, now);
    }
    if deliver(core, gate, conn, frame, seg, now).is_err() {
        return After::Reset;
    }
    if seg.fin {
        let fin_seq = seg.seq.wrapping_add(seg.payload_len as u32);
        if conn.hello.is_some() {
            if sni_gate::on_guest_fin(core, conn).is_some() {
                return After::Reset;
            }
        } else if !conn.guest_fin && fin_seq == conn.rcv_nxt {
            pass_fin(conn);
        }
        conn.ack_pending = true;
    }
    if seg.payload_len > 0 || seg.fin {
        // The guest is sending: it saw an open window.
        conn.wnd_update_at = None;
    }
    conn.arm_window_update(now);
    if conn.guest_fin && conn.fin_acked {
        return After::Close;
    }
    After::Keep
}

/// Everything before the guest's FIN reached the host socket: passes the FIN on.
fn pass_fin(conn: &mut TcpConn) {
    let _ = sys::shutdown_write(conn.fd.as_fd());
    conn.rcv_nxt = conn.rcv_nxt.wrapping_add(1);
    conn.guest_fin = true;
    conn.ooo = None;
}

/// Copies the payload of a segment that arrived after a hole into the connection's
/// out-of-order queue, within the window we advertised and the queue's bounds; drops it
/// otherwise (the guest retransmits it).
fn queue_out_of_order(
    core: &mut Core,
    conn: &mut TcpConn,
    frame: &GuestFrame<'_, '_>,
    seg: &Segment,
) {
    let end = seg.seq.wrapping_add(seg.payload_len as u32);
    // DNS streams are checked query by query as they flow, held TLS bytes are judged in
    // order, and flows scanned for placeholders are scanned in order; none of them queues.
    if conn.dns.is_some()
        || conn.hello.is_some()
        || scans_placeholders(core, conn)
        || conn.guest_fin
        || seq_diff(end, conn.wnd_edge) > 0
    {
        core.metrics.drop_out_of_window += 1;
        return;
    }
    let budget = &core.ooo_budget;
    let q = conn
        .ooo
        .get_or_insert_with(|| Box::new(OooQueue::new(budget)));
    match q.insert(
        conn.rcv_nxt,
        frame,
        seg.payload_off,
        seg.seq,
        seg.payload_len,
    ) {
        Ok(n) => {
            core.metrics.tcp_ooo_queued += n as u64;
            if seg.fin {
                q.fin_at = Some(end);
            }
        }
        Err(Refused::Full) => core.metrics.tcp_ooo_dropped += 1,
    }
    if q.is_empty() && q.fin_at.is_none() {
        conn.ooo = None;
    }
}

/// Writes the queued out-of-order bytes that are now contiguous with `rcv_nxt` to the
/// host socket; what it does not take stays queued and the socket is watched for
/// writability. Passes on a queued FIN once everything before it went out.
pub(crate) fn flush_ooo(core: &mut Core, conn: &mut TcpConn) -> io::Result<()> {
    let Some(q) = conn.ooo.as_mut() else {
        return Ok(());
    };
    let (sent, short) = q.flush(conn.fd.as_fd(), &mut conn.rcv_nxt)?;
    core.metrics.bytes_guest_to_host += sent as u64;
    core.metrics.tcp_ooo_flushed += sent as u64;
    if sent > 0 {
        conn.ack_pending = true;
    }
    if short {
        conn.want_write = true;
    }
    if q.is_empty() {
        let fin_next = q.fin_at == Some(conn.rcv_nxt);
        if fin_next && !conn.guest_fin {
            pass_fin(conn);
            conn.ack_pending = true;
        } else if q.fin_at.is_none() {
            conn.ooo = None;
        }
    }
    Ok(())
}

fn establish(core: &Core, conn: &mut TcpConn, una: u32) {
    conn.state = if conn.hello.is_some() {
        TcpState::Holding
    } else {
        TcpState::Established
    };
    conn.snd_una = una;
    conn.snd_nxt = una;
    conn.snd_max = una;
    conn.rto_at = None;
    conn.retries = 0;
    conn.rto = RTO_INITIAL;
    if conn.hello.is_none() {
        host_connected(core, conn);
    }
}

/// The host socket is connected and the guest side established: peeks may start.
pub(crate) fn host_connected(core: &Core, conn: &mut TcpConn) {
    // DNS over TCP peeks whole answers to judge them before any byte is sent, so its
    // peeks always start at the oldest unacknowledged byte (no SO_PEEK_OFF).
    conn.peek_off =
        conn.dns.is_none() && !core.no_peek_off && sys::set_peek_off(conn.fd.as_fd(), 0).is_ok();
    super::dns_stream::answers_start(conn);
    // The host may already have sent data: try a peek.
    conn.host_readable = true;
}

/// RFC 5961 §3: only a RST inside the receive window (or, before we know the guest's
/// sequence numbers, one that acknowledges our SYN) is honoured.
fn rst_acceptable(conn: &TcpConn, seg: &Segment) -> bool {
    match conn.state {
        TcpState::SynSent => seg.ack == Some(conn.isn.wrapping_add(1)),
        _ => {
            let d = seq_diff(seg.seq, conn.rcv_nxt);
            (-1..=(1 << 30)).contains(&d)
        }
    }
}

fn on_ack(core: &mut Core, conn: &mut TcpConn, seg: &Segment, ack: u32, now: Instant) {
    let acked = ack.wrapping_sub(conn.snd_una);
    // Up to the highest byte ever sent: after a rewind the guest may still acknowledge
    // the first transmission of bytes we are about to send again.
    let outstanding = conn.snd_max.wrapping_sub(conn.snd_una);
    if acked > outstanding {
        if (acked as i32) > 0 {
            // Acknowledges something we never sent: re-synchronize the guest.
            conn.ack_pending = true;
        }
        return;
    }
    let new_wnd = u32::from(seg.window) << conn.guest_wscale;
    if acked > 0 {
        let mut data = acked;
        if conn.fin_seq.is_some_and(|f| ack == f.wrapping_add(1)) {
            conn.fin_acked = true;
            conn.fin_sent = true;
            data -= 1;
        }
        if data > 0 {
            // Frees the acknowledged bytes in the kernel without copying them.
            let freed = if conn.unix_stream {
                sys::discard_by_reading(conn.fd.as_fd(), data as usize)
            } else {
                sys::discard(conn.fd.as_fd(), data as usize)
            };
            if freed.is_err() {
                core.metrics.drop_host_error += 1;
            }
        }
        conn.snd_una = ack;
        if seq_diff(ack, conn.snd_nxt) > 0 {
            // A late ACK of the first transmission overtook the retransmission: go on
            // from there. The kernel moved SO_PEEK_OFF back by the bytes discarded.
            conn.snd_nxt = ack;
        }
        if conn.peek_exhausted || conn.lowat > 1 {
            // The in-flight amount shrank: look for new data (the next would-block peek
            // lowers SO_RCVLOWAT to match).
            conn.peek_exhausted = false;
            conn.host_readable = true;
        }
        conn.dup_acks = 0;
        conn.retries = 0;
        conn.rto = RTO_INITIAL;
        conn.rto_at = (conn.snd_nxt != conn.snd_una).then(|| now + conn.rto);
    } else if outstanding > 0 && seg.payload_len == 0 && !seg.fin && new_wnd == conn.guest_wnd {
        conn.dup_acks = conn.dup_acks.saturating_add(1);
        if conn.dup_acks == 3 {
            core.metrics.retransmits += 1;
            conn.rewind();
        }
    }
    conn.guest_wnd = new_wnd;
    conn.update_persist(now);
}

/// Writes the segment's new payload to the host socket from guest memory.
fn deliver(
    core: &mut Core,
    gate: &dyn FlowGate,
    conn: &mut TcpConn,
    frame: &GuestFrame<'_, '_>,
    seg: &Segment,
    now: Instant,
) -> Result<(), io::Error> {
    if seg.payload_len == 0 {
        return Ok(());
    }
    let d = seq_diff(seg.seq, conn.rcv_nxt);
    if d > 0 {
        // A hole before this segment: keep a copy if it fits the bounds, and send a
        // duplicate ACK at once, not coalesced: the guest's fast retransmit counts them
        // (RFC 5681 §3.2) and fills the hole.
        queue_out_of_order(core, conn, frame, seg);
        push_dup_ack(core, conn);
        return Ok(());
    }
    let skip = d.unsigned_abs() as usize;
    conn.ack_pending = true;
    if skip >= seg.payload_len || conn.guest_fin {
        return Ok(());
    }
    let len = seg.payload_len - skip;
    if conn.hello.is_some() {
        let off = seg.payload_off + skip;
        return match sni_gate::consume(core, gate, conn, frame, off, len, now) {
            Ok(taken) => {
                conn.rcv_nxt = conn.rcv_nxt.wrapping_add(taken as u32);
                Ok(())
            }
            Err(refusal) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("TLS flow refused: {refusal:?}"),
            )),
        };
    }
    if let Some(dns) = conn.dns.as_mut() {
        let mut scratch = Vec::new();
        let fd = conn.fd.as_fd();
        return match dns.consume(fd, gate, frame, seg.payload_off + skip, len, &mut scratch) {
            Ok(taken) => {
                conn.rcv_nxt = conn.rcv_nxt.wrapping_add(taken as u32);
                core.metrics.bytes_guest_to_host += taken as u64;
                Ok(())
            }
            Err(DnsStreamError::Denied) => {
                core.metrics.flows_denied += 1;
                Err(io::Error::from(io::ErrorKind::PermissionDenied))
            }
            Err(DnsStreamError::Host(e)) => Err(e),
        };
    }
    let mut iov = [IoSlice::new(&[]); MAX_SEGS];
    let Some(n) = frame.payload_iovecs(seg.payload_off + skip, len, &mut iov) else {
        core.metrics.drop_too_fragmented += 1;
        return Ok(());
    };
    let guard = core
        .cfg
        .tls
        .placeholders
        .clone()
        .filter(|_| scans_placeholders(core, conn));
    let mut pieces: [&[u8]; MAX_SEGS] = [&[]; MAX_SEGS];
    for (p, s) in pieces.iter_mut().zip(&iov[..n]) {
        *p = s;
    }
    if let Some(g) = &guard {
        if g.finds(&conn.guard_tail, &pieces[..n]) {
            core.placeholder_violation(conn.key.remote, "tcp");
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
    }
    match sys::send_vectored(conn.fd.as_fd(), &iov[..n], None) {
        Ok(sent) => {
            if let Some(g) = &guard {
                g.advance(&mut conn.guard_tail, &pieces[..n], sent);
            }
            conn.rcv_nxt = conn.rcv_nxt.wrapping_add(sent as u32);
            core.metrics.bytes_guest_to_host += sent as u64;
            if sent < len {
                core.metrics.drop_host_busy += 1;
                conn.want_write = true;
            } else if conn.ooo.is_some() {
                // The hole may be filled: queued data is next.
                flush_ooo(core, conn)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            core.metrics.drop_host_busy += 1;
            conn.want_write = true;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether the guest's bytes on `conn` are scanned for secrets' placeholders: when the VM has
/// secrets, on every flow but those the TLS proxy serves (it judges placeholders itself).
fn scans_placeholders(core: &Core, conn: &TcpConn) -> bool {
    core.cfg.tls.placeholders.is_some() && !conn.to_proxy
}

/// Queues an immediate ACK for `rcv_nxt` (duplicate ACK after a hole).
fn push_dup_ack(core: &mut Core, conn: &mut TcpConn) {
    let (from, to) = conn.guest_bound();
    let h = Header {
        control: TcpControl::None,
        seq: conn.snd_nxt,
        ack: Some(conn.rcv_nxt),
        window: conn.advertised_window(),
        syn_opts: None,
    };
    push_segment(core, from, to, &h);
}

//! Host side of a TCP connection: readiness of the host socket, timers, and building the
//! next segment for the guest (SYN/SYN-ACK, data peeked straight into guest buffers, FIN,
//! pure ACK).

use std::io::{self, IoSliceMut};
use std::os::fd::AsFd;
use std::time::Instant;

use smoltcp::wire::TcpControl;

use super::conn::{
    write_header, Header, TcpConn, TcpState, MAX_HDR, PERSIST_MAX, RTO_INITIAL, RTO_MAX,
    WND_UPDATE_RTO, WND_UPDATE_TRIES,
};
use super::After;
use crate::core::{Core, RxGso, RxMeta};
use crate::frame::build::{capacity, eth_ip_len, max_frame, tail_iovecs};
use crate::frame::MAX_SEGS;
use crate::sys;

/// Result of asking a connection for its next frame.
pub(crate) enum Produced {
    /// A frame of this length was written into the buffers.
    Frame(usize, RxMeta),
    /// Nothing to send now.
    Idle,
    /// The host socket failed: reset the flow.
    Reset,
}

/// Reacts to readiness of the host socket.
pub(crate) fn on_ready(
    core: &mut Core,
    conn: &mut TcpConn,
    readable: bool,
    writable: bool,
    now: Instant,
) -> After {
    conn.last_activity = now;
    match conn.state {
        TcpState::Connecting => {
            if !(readable || writable) {
                return After::Keep;
            }
            match sys::take_error(conn.fd.as_fd()) {
                Ok(0) => {
                    let _ = sys::set_nodelay(conn.fd.as_fd());
                    conn.state = TcpState::SynAckSent;
                    conn.syn_pending = true;
                    conn.connect_deadline = None;
                    After::Keep
                }
                _ => {
                    core.metrics.connect_failures += 1;
                    After::Reset
                }
            }
        }
        TcpState::SynSent | TcpState::SynAckSent => After::Keep,
        TcpState::Holding => super::sni_gate::on_ready(core, conn, readable, writable),
        TcpState::Established => {
            if readable {
                conn.host_readable = true;
            }
            if writable && conn.want_write {
                conn.want_write = false;
                return host_drained(core, conn, now);
            }
            After::Keep
        }
    }
}

/// The host socket drained (it became writable, or a window recheck is due): queued
/// out-of-order data goes first (it may set `want_write` again), then the guest hears of
/// the window if it grew; a guest FIN that thereby got through may end the flow.
fn host_drained(core: &mut Core, conn: &mut TcpConn, now: Instant) -> After {
    if super::guest::flush_ooo(core, conn).is_err() {
        return After::Reset;
    }
    conn.window_maybe_opened(now);
    if conn.guest_fin && conn.fin_acked {
        return After::Close;
    }
    After::Keep
}

/// Fires due timers: connect timeout, retransmission, idle timeout.
pub(crate) fn on_timer(core: &mut Core, conn: &mut TcpConn, now: Instant) -> After {
    if conn.connect_deadline.is_some_and(|d| d <= now) {
        core.metrics.connect_failures += 1;
        return After::Reset;
    }
    if super::sni_gate::on_timer(core, conn, now) != After::Keep {
        return After::Reset;
    }
    if now.saturating_duration_since(conn.last_activity) >= core.cfg.limits.tcp_idle_timeout {
        return After::Reset;
    }
    if conn.wnd_recheck_at.is_some_and(|d| d <= now) {
        // What writability would have done.
        let after = host_drained(core, conn, now);
        if after != After::Keep {
            return after;
        }
    }
    if conn.rto_at.is_some_and(|d| d <= now) {
        conn.retries += 1;
        if conn.retries > core.cfg.limits.max_retransmits {
            return After::Reset;
        }
        core.metrics.retransmits += 1;
        match conn.state {
            TcpState::SynSent | TcpState::SynAckSent => conn.syn_pending = true,
            TcpState::Established => conn.rewind(),
            TcpState::Connecting | TcpState::Holding => {}
        }
        conn.rto = (conn.rto * 2).min(RTO_MAX);
        conn.rto_at = Some(now + conn.rto);
        // A retransmission cannot go out into a closed window: probe it instead.
        conn.update_persist(now);
    }
    if conn.persist_at.is_some_and(|d| d <= now) {
        conn.persist_at = None;
        conn.update_persist(now);
        if conn.persist_at.is_some() {
            // Still closed: probe, and back off (doubling, up to PERSIST_MAX).
            conn.probe_pending = true;
            conn.persist_tries = conn.persist_tries.saturating_add(1);
            core.metrics.tcp_window_probes += 1;
            let wait = RTO_INITIAL
                .saturating_mul(1 << conn.persist_tries.min(8))
                .min(PERSIST_MAX);
            conn.persist_at = Some(now + wait);
        }
    }
    if conn.wnd_update_at.is_some_and(|d| d <= now) {
        // We reopened a short window and the guest has sent nothing since: the update
        // may have been lost or overtaken by an older zero-window ACK, and a guest that
        // sends no window probes would wait forever. A pure ACK with the current
        // window is harmless as a duplicate.
        conn.wnd_update_tries += 1;
        conn.ack_pending = true;
        core.metrics.tcp_window_update_resends += 1;
        conn.wnd_update_at = (conn.wnd_update_tries < WND_UPDATE_TRIES)
            .then(|| now + WND_UPDATE_RTO * (1 << conn.wnd_update_tries));
    }
    After::Keep
}

/// Earliest instant [`on_timer`] has work for this connection.
pub(crate) fn deadline(core: &Core, conn: &TcpConn) -> Instant {
    let mut d = conn.last_activity + core.cfg.limits.tcp_idle_timeout;
    let hello = conn
        .hello
        .as_ref()
        .filter(|h| h.reading())
        .map(|h| h.deadline);
    for t in [
        hello,
        conn.connect_deadline,
        conn.rto_at,
        conn.wnd_update_at,
        conn.persist_at,
        conn.wnd_recheck_at,
    ]
    .into_iter()
    .flatten()
    {
        d = d.min(t);
    }
    d
}

/// Builds the next segment for the guest into `bufs`.
pub(crate) fn next_frame(
    core: &mut Core,
    conn: &mut TcpConn,
    bufs: &mut [IoSliceMut<'_>],
    now: Instant,
) -> Produced {
    let p = build_next(core, conn, bufs, now);
    conn.arm_window_update(now);
    p
}

fn build_next(
    core: &mut Core,
    conn: &mut TcpConn,
    bufs: &mut [IoSliceMut<'_>],
    now: Instant,
) -> Produced {
    if capacity(bufs) < MAX_HDR {
        return Produced::Idle;
    }
    let (from, to) = conn.guest_bound();
    if conn.syn_pending {
        conn.syn_pending = false;
        let mss = core.cfg.mtu - if to.is_ipv6() { 60 } else { 40 };
        let wscale = (conn.our_wscale > 0).then_some(conn.our_wscale);
        let window = conn.advertised_window_unscaled();
        let (control, ack) = match conn.state {
            TcpState::SynSent => (TcpControl::Syn, None),
            _ => (TcpControl::Syn, Some(conn.rcv_nxt)),
        };
        let h = Header {
            control,
            seq: conn.isn,
            ack,
            window,
            syn_opts: Some((mss, wscale)),
        };
        conn.snd_nxt = conn.isn;
        conn.advance_snd_nxt(1);
        conn.rto_at = Some(now + conn.rto);
        let n = write_header(core, from, to, &h, bufs, 0);
        return frame(n, None);
    }
    // A held connection (no host connection yet) only ever sends pure ACKs: it has no host
    // data and no EOF, so it falls through to them.
    if !matches!(conn.state, TcpState::Established | TcpState::Holding) {
        return Produced::Idle;
    }
    if conn.host_readable && !conn.host_eof && conn.window_avail() > 0 {
        match peek_data(core, conn, bufs, now) {
            Ok(Some(p)) => return p,
            Ok(None) => {}
            Err(_) => return Produced::Reset,
        }
    }
    if conn.host_eof && !conn.fin_sent {
        let window = conn.advertised_window();
        let h = Header {
            control: TcpControl::Fin,
            seq: conn.snd_nxt,
            ack: Some(conn.rcv_nxt),
            window,
            syn_opts: None,
        };
        conn.fin_seq = Some(conn.snd_nxt);
        conn.advance_snd_nxt(1);
        conn.fin_sent = true;
        conn.ack_pending = false;
        conn.rto_at.get_or_insert(now + conn.rto);
        let n = write_header(core, from, to, &h, bufs, 0);
        return frame(n, None);
    }
    if conn.ack_pending || conn.probe_pending {
        // A window probe is the same pure ACK one byte behind what the guest expects: out of
        // its window, so it must answer with an ACK carrying its current window (RFC 9293
        // §3.8.6.1).
        let seq = if conn.probe_pending {
            conn.snd_nxt.wrapping_sub(1)
        } else {
            conn.snd_nxt
        };
        conn.ack_pending = false;
        conn.probe_pending = false;
        let window = conn.advertised_window();
        let h = Header {
            control: TcpControl::None,
            seq,
            ack: Some(conn.rcv_nxt),
            window,
            syn_opts: None,
        };
        let n = write_header(core, from, to, &h, bufs, 0);
        return frame(n, None);
    }
    Produced::Idle
}

fn frame(n: usize, gso: Option<RxGso>) -> Produced {
    Produced::Frame(
        n,
        RxMeta {
            csum_valid: true,
            gso,
        },
    )
}

/// Peeks the next bytes of the host stream into the guest buffers behind the headers.
/// `Ok(None)`: nothing to send (would block, or EOF noted in `conn.host_eof`).
fn peek_data(
    core: &mut Core,
    conn: &mut TcpConn,
    bufs: &mut [IoSliceMut<'_>],
    now: Instant,
) -> io::Result<Option<Produced>> {
    let (from, to) = conn.guest_bound();
    let hdr_len = eth_ip_len(&from.ip()) + 20;
    let one_mtu = usize::from(core.cfg.mtu) + 14;
    let seg_limit = if core.cfg.max_rx_frame > one_mtu {
        core.cfg.max_rx_frame - hdr_len
    } else {
        usize::from(conn.guest_mss)
    };
    let room = core
        .cfg
        .max_rx_frame
        .min(capacity(bufs))
        .min(max_frame(&from.ip()))
        - hdr_len;
    let mut max = (conn.window_avail() as usize).min(room).min(seg_limit);
    let in_flight = conn.data_in_flight() as usize;
    if !conn.peek_off {
        // Without SO_PEEK_OFF every peek re-reads the in-flight bytes into a discard
        // buffer; cap the in-flight amount to keep that bounded.
        const FALLBACK_MAX_IN_FLIGHT: usize = 256 * 1024;
        max = max.min(FALLBACK_MAX_IN_FLIGHT.saturating_sub(in_flight));
    }
    if let Some(room) = super::dns_stream::answer_room(conn) {
        // DNS over TCP: only bytes of answers already judged go to the guest.
        max = max.min(room as usize);
    }
    if max == 0 {
        return Ok(None);
    }
    let got = {
        let mut iov: [IoSliceMut<'_>; MAX_SEGS + 1] =
            std::array::from_fn(|_| IoSliceMut::new(&mut []));
        let mut scratch = Vec::new();
        let first = if conn.peek_off {
            0
        } else {
            scratch.resize(in_flight, 0u8);
            iov[0] = IoSliceMut::new(&mut scratch);
            1
        };
        let n = tail_iovecs(bufs, hdr_len, max, &mut iov[first..]);
        match sys::recv_vectored(conn.fd.as_fd(), &mut iov[..first + n], true) {
            // Without a peek offset, a peek that only re-reads the in-flight bytes means
            // "nothing new", exactly like EAGAIN with an offset.
            Ok(r) if !conn.peek_off && in_flight > 0 && r.len <= in_flight => {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
            Ok(r) => Ok(r.len - if conn.peek_off { 0 } else { in_flight }),
            Err(e) => Err(e),
        }
    };
    match got {
        Ok(0) => {
            conn.host_eof = true;
            Ok(None)
        }
        Ok(len) => {
            let window = conn.data_window();
            let h = Header {
                control: TcpControl::Psh,
                seq: conn.snd_nxt,
                ack: Some(conn.rcv_nxt),
                window,
                syn_opts: None,
            };
            let n = write_header(core, from, to, &h, bufs, len);
            conn.advance_snd_nxt(len as u32);
            conn.ack_pending = false;
            conn.rto_at.get_or_insert(now + conn.rto);
            core.metrics.bytes_host_to_guest += len as u64;
            let gso = (len > usize::from(conn.guest_mss)).then(|| RxGso {
                ipv6: from.is_ipv6(),
                segment_size: conn.guest_mss,
                l4_offset: eth_ip_len(&from.ip()) as u16,
            });
            Ok(Some(frame(n + len, gso)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            conn.host_readable = false;
            if in_flight > 0 {
                core.metrics.tcp_readable_nothing_new += 1;
            }
            // While bytes are in flight the socket stays readable for poll(2) even with
            // nothing new behind them. Ask the kernel to wake us only for new bytes
            // (SO_RCVLOWAT = in flight + 1); if that fails, wait for the guest's next ACK
            // instead of spinning.
            let want = in_flight as u32 + 1;
            if in_flight > 0 && want == conn.lowat {
                // Woken again with the low mark already there and nothing new: the kernel
                // also reports a socket readable, whatever SO_RCVLOWAT says, when its
                // receive memory is nearly full or its window is down to one MSS, which
                // the bytes in flight cause (and it caps the mark at half the buffer).
                // Nothing can move until the guest acknowledges and we discard: wait for
                // its ACK (`on_ack` lifts this) instead of a readiness that would fire on
                // every loop round (measured with 4 parallel 256 MiB downloads: 12.7k such
                // wake-ups for 4.3k frames).
                conn.peek_exhausted = true;
            } else if want != conn.lowat {
                match sys::set_rcvlowat(conn.fd.as_fd(), want) {
                    Ok(()) => conn.lowat = want,
                    Err(_) => conn.peek_exhausted = in_flight > 0,
                }
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

//! DNS over TCP to the gateway (RFC 7766): the stream is relayed to the upstream resolver
//! like any translated connection, but every query's question is checked by the flow
//! gate before any byte of that query leaves.
//!
//! Owns the framing state. The bytes of a message up to the end of its question are held
//! in a small per-flow buffer (at most [`HOLD_MAX`] bytes, ACKed to the guest as soon as
//! they are held, so a stub resolver that writes the length prefix separately does not
//! stall); once the question is complete and allowed they are sent, and the rest of the
//! message goes straight from guest memory. A denied query resets the connection.
//!
//! Answers (resolver -> guest) get the same check as answers over UDP: rebind protection
//! and domain attribution. Such a flow peeks without `SO_PEEK_OFF` (every peek starts at
//! the oldest unacknowledged byte), so before any byte of an answer is peeked into the
//! guest's buffers the whole message is peeked into a scratch buffer and judged
//! ([`judge_next_answer`]); only bytes of judged messages are ever sent to the guest. A
//! refused or unreadable answer resets the connection (the guest sees no byte of it).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

use super::conn::{seq_diff, TcpConn, TcpState};
use crate::dns;
use crate::frame::GuestFrame;
use crate::gate::FlowGate;
use crate::sys;

/// Largest prefix of a message held back (2-byte length + header + one question).
const HOLD_MAX: usize = 2 + 12 + 255 + 4 + 8;

/// Framing state of the guest -> resolver direction.
#[derive(Debug, Default)]
pub(crate) struct DnsStream {
    /// Bytes of the current message not yet seen (0 = next byte starts a message).
    remaining: usize,
    /// Start of the current message, held until its question is complete.
    held: Vec<u8>,
    /// Resolver -> guest: sequence number (towards the guest) up to which the answers have
    /// been judged and allowed; set when the host connection is up.
    answers_to: Option<u32>,
}

/// What [`judge_next_answer`] found in the resolver's stream.
#[derive(Debug)]
pub(crate) enum AnswerStep {
    /// Nothing to judge now (bytes of judged answers are still to be sent, the stream is
    /// not established, or an answer is incomplete): go on with the flow as usual.
    Go,
    /// The next answer was judged and allowed: its name and A/AAAA addresses.
    Allowed(String, Vec<IpAddr>),
    /// The next answer points where the policy forbids (rebind protection): reset.
    Refused,
    /// The next answer cannot be read, so cannot be judged: reset (fails closed).
    Unreadable,
}

/// Largest DNS-over-TCP message plus its length prefix.
const MSG_MAX: usize = 2 + 65535;

/// Bytes of judged answers the guest may be sent beyond `snd_nxt`; `None` for a flow that
/// is not DNS over TCP (no limit).
pub(crate) fn answer_room(conn: &TcpConn) -> Option<u32> {
    let to = conn.dns.as_ref()?.answers_to.unwrap_or(conn.snd_nxt);
    Some(seq_diff(to, conn.snd_nxt).max(0) as u32)
}

/// Marks the start of the resolver's stream (the host connection is up). Such a flow must
/// peek without `SO_PEEK_OFF` so the judging peeks here do not move the data peeks' offset.
pub(crate) fn answers_start(conn: &mut TcpConn) {
    let first = conn.isn.wrapping_add(1);
    if let Some(d) = conn.dns.as_mut() {
        d.answers_to.get_or_insert(first);
    }
}

/// When every judged byte has been sent to the guest, peeks the resolver's next whole
/// answer into `scratch` and judges it with `gate`. An allowed answer becomes sendable.
/// Sets `host_eof` when the resolver closed after its last whole answer.
pub(crate) fn judge_next_answer(
    conn: &mut TcpConn,
    gate: &dyn FlowGate,
    scratch: &mut Vec<u8>,
) -> AnswerStep {
    if conn.state != TcpState::Established || !conn.host_readable || conn.host_eof {
        return AnswerStep::Go;
    }
    let Some(to) = conn.dns.as_ref().and_then(|d| d.answers_to) else {
        return AnswerStep::Go;
    };
    if seq_diff(to, conn.snd_nxt) > 0 {
        return AnswerStep::Go;
    }
    // Bytes in the socket before the first unjudged one (all sent, not yet acknowledged).
    let base = seq_diff(to, conn.snd_una).max(0) as usize;
    let got = match peek(conn, scratch, base + 2) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return wait(conn, base + 2),
        Err(_) => return AnswerStep::Unreadable,
    };
    if got == 0 && base == 0 {
        // The resolver closed and everything before was acknowledged: the FIN may go.
        conn.host_eof = true;
        return AnswerStep::Go;
    }
    if got < base + 2 {
        return incomplete(conn, got > base, base + 2);
    }
    let mlen = usize::from(u16::from_be_bytes([scratch[base], scratch[base + 1]]));
    let want = base + 2 + mlen;
    if want > base + MSG_MAX {
        return AnswerStep::Unreadable;
    }
    match peek(conn, scratch, want) {
        Ok(n) if n >= want => {}
        Ok(_) => return incomplete(conn, true, want),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return wait(conn, want),
        Err(_) => return AnswerStep::Unreadable,
    }
    let step = match dns::judge_answer(&scratch[base + 2..want], gate) {
        None => AnswerStep::Unreadable,
        Some((_, _, false)) => AnswerStep::Refused,
        Some((name, addrs, true)) => AnswerStep::Allowed(name, addrs),
    };
    if matches!(step, AnswerStep::Allowed(..)) {
        if let Some(d) = conn.dns.as_mut() {
            d.answers_to = Some(to.wrapping_add((2 + mlen) as u32));
        }
    }
    step
}

/// Peeks up to `want` bytes from the head of the socket into `scratch`.
fn peek(conn: &TcpConn, scratch: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    scratch.clear();
    scratch.resize(want, 0);
    let mut iov = [IoSliceMut::new(&mut scratch[..])];
    sys::recv_vectored(conn.fd.as_fd(), &mut iov, true).map(|r| r.len)
}

/// An answer is not complete yet. If the resolver already closed after part of it
/// (`started`), it never will be: unreadable, the stream is reset. Otherwise sleep until
/// the socket holds `want` bytes.
fn incomplete(conn: &mut TcpConn, started: bool, want: usize) -> AnswerStep {
    if started && sys::peer_closed(conn.fd.as_fd()) {
        return AnswerStep::Unreadable;
    }
    wait(conn, want)
}

/// Sleeps until the socket holds `want` bytes (or closes).
fn wait(conn: &mut TcpConn, want: usize) -> AnswerStep {
    conn.host_readable = false;
    let want = u32::try_from(want).unwrap_or(u32::MAX);
    if want == conn.lowat {
        // Woken with the mark already there and still short: the resolver closed in the
        // middle of an answer (or the kernel reports readiness for memory pressure). Wait
        // for the guest's next ACK or the idle timeout rather than spin.
        conn.peek_exhausted = true;
    } else {
        match sys::set_rcvlowat(conn.fd.as_fd(), want) {
            Ok(()) => conn.lowat = want,
            Err(_) => conn.peek_exhausted = true,
        }
    }
    AnswerStep::Go
}

/// Why a DNS-over-TCP stream must be reset.
#[derive(Debug)]
pub(crate) enum DnsStreamError {
    /// The gate denied a queried name, or a message is malformed.
    Denied,
    /// The host socket failed or took only part of what we had to send.
    Host(io::Error),
}

impl DnsStream {
    /// Consumes `len` in-order payload bytes at `off` of the guest frame. Returns how many
    /// were consumed (held or forwarded), which is what the guest is ACKed for.
    pub(crate) fn consume(
        &mut self,
        fd: BorrowedFd<'_>,
        gate: &dyn FlowGate,
        frame: &GuestFrame<'_, '_>,
        off: usize,
        len: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<usize, DnsStreamError> {
        let mut pos = 0;
        while pos < len {
            if self.remaining == 0 {
                // Hold bytes until the question is complete.
                let want = (HOLD_MAX - self.held.len()).min(len - pos);
                if !frame.copy_range(off + pos, want, scratch) {
                    return Err(DnsStreamError::Denied);
                }
                self.held.extend_from_slice(scratch);
                pos += want;
                if self.held.len() < 2 {
                    continue;
                }
                let mlen = usize::from(u16::from_be_bytes([self.held[0], self.held[1]]));
                let body = &self.held[2..self.held.len().min(2 + mlen)];
                match dns::parse_query(body) {
                    Some(q) => {
                        if !gate.decide_dns(&q.name).allow {
                            return Err(DnsStreamError::Denied);
                        }
                    }
                    None if body.len() >= mlen || self.held.len() >= HOLD_MAX => {
                        return Err(DnsStreamError::Denied);
                    }
                    None => continue,
                }
                // Allowed: release the held bytes (beyond this message's end they belong
                // to the next message, which is not checked yet: hand them back).
                let this_msg = (2 + mlen).min(self.held.len());
                let extra = self.held.len() - this_msg;
                pos -= extra;
                self.held.truncate(this_msg);
                let sent = sys::send_vectored(fd, &[IoSlice::new(&self.held)], None)
                    .map_err(DnsStreamError::Host)?;
                if sent != self.held.len() {
                    return Err(DnsStreamError::Host(io::Error::from(
                        io::ErrorKind::WouldBlock,
                    )));
                }
                self.remaining = 2 + mlen - this_msg;
                self.held.clear();
                continue;
            }
            // Inside an allowed message: forward straight from guest memory.
            let take = self.remaining.min(len - pos);
            let mut iov = [IoSlice::new(&[]); crate::frame::MAX_SEGS];
            let Some(n) = frame.payload_iovecs(off + pos, take, &mut iov) else {
                return Err(DnsStreamError::Denied);
            };
            let sent = sys::send_vectored(fd, &iov[..n], None).map_err(DnsStreamError::Host)?;
            self.remaining -= sent;
            pos += sent;
            if sent < take {
                break;
            }
        }
        Ok(pos)
    }
}

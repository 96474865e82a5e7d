//! DNS over TCP to the gateway (RFC 7766): the stream is relayed to the upstream resolver
//! like any translated connection, but every query's question is checked by the flow
//! gate before any byte of that query leaves.
//!
//! Owns the framing state. The bytes of a message up to the end of its question are held
//! in a small per-flow buffer (at most [`HOLD_MAX`] bytes, ACKed to the guest as soon as
//! they are held, so a stub resolver that writes the length prefix separately does not
//! stall); once the question is complete and allowed they are sent, and the rest of the
//! message goes straight from guest memory. A denied query resets the connection.
//! Answers are not yet checked on this path (rebind protection and domain attribution
//! apply to UDP answers only).

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

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

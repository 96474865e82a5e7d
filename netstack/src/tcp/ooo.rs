//! Bounded queue of out-of-order guest payload for one connection (the byte budget all
//! connections share is [`crate::ooo_budget`]).
//!
//! In-order guest data goes to the host socket straight from guest memory. A segment
//! that arrives after a hole cannot: its bytes must wait for the hole, and the guest's
//! buffers are released as soon as we return. So out-of-order payload is *copied* here
//! (the rare path), bounded per connection ([`MAX_BYTES_PER_CONN`], [`MAX_SEGS_PER_CONN`])
//! and across connections ([`OooBudget`]); beyond the bounds it is dropped and the guest
//! retransmits it. When the hole is filled, [`OooQueue::flush`] writes the contiguous
//! queued bytes to the host socket in one `sendmsg()`, keeping whatever it did not take.

use super::conn::seq_diff;
use crate::frame::{GuestFrame, MAX_SEGS};
use crate::ooo_budget::OooBudget;
use crate::sys;
use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

/// Most out-of-order payload bytes one connection may hold.
pub(crate) const MAX_BYTES_PER_CONN: usize = 256 * 1024;
/// Most out-of-order pieces one connection may hold.
pub(crate) const MAX_SEGS_PER_CONN: usize = 16;
/// One queued piece: `data[start..]` are the bytes at sequence number `seq`.
#[derive(Debug)]
struct Piece {
    seq: u32,
    data: Vec<u8>,
    start: usize,
}

impl Piece {
    fn end(&self) -> u32 {
        self.seq.wrapping_add((self.data.len() - self.start) as u32)
    }
}

/// Why an out-of-order segment was not (fully) queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The per-connection or global bound is reached.
    Full,
}

/// Out-of-order payload of one connection: non-overlapping pieces sorted by sequence
/// number, all beyond the connection's `rcv_nxt`.
#[derive(Debug)]
pub(crate) struct OooQueue {
    pieces: Vec<Piece>,
    /// Bytes charged to `budget` (whole pieces; released when a piece is gone).
    held: usize,
    budget: OooBudget,
    /// Sequence number of a FIN that arrived out of order.
    pub fin_at: Option<u32>,
}

impl Drop for OooQueue {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

impl OooQueue {
    /// An empty queue charging `budget`.
    pub(crate) fn new(budget: &OooBudget) -> Self {
        OooQueue {
            pieces: Vec::new(),
            held: 0,
            budget: budget.clone(),
            fin_at: None,
        }
    }

    /// Whether nothing is queued (a FIN may still be noted).
    pub(crate) fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Copies the parts of `len` payload bytes at frame offset `off` (sequence `seq`,
    /// beyond `rcv_nxt`) that are not queued yet. Returns how many new pieces were
    /// queued, or [`Refused::Full`] if a bound stopped at least one part.
    pub(crate) fn insert(
        &mut self,
        rcv_nxt: u32,
        frame: &GuestFrame<'_, '_>,
        off: usize,
        seq: u32,
        len: usize,
    ) -> Result<usize, Refused> {
        // In-order writes may have overtaken queued bytes since the last flush.
        self.trim(rcv_nxt);
        let mut gaps: [(u32, u32); MAX_SEGS_PER_CONN + 1] = [(0, 0); MAX_SEGS_PER_CONN + 1];
        let mut n_gaps = 0;
        // Walk the sorted pieces and collect the uncovered parts of [seq, seq + len).
        let mut cur = seq;
        let end = seq.wrapping_add(len as u32);
        for p in &self.pieces {
            if seq_diff(cur, end) >= 0 {
                break;
            }
            if seq_diff(p.end(), cur) <= 0 {
                continue;
            }
            if seq_diff(p.seq, cur) > 0 {
                let gap_end = if seq_diff(p.seq, end) < 0 { p.seq } else { end };
                gaps[n_gaps] = (cur, gap_end);
                n_gaps += 1;
            }
            if seq_diff(p.end(), cur) > 0 {
                cur = p.end();
            }
        }
        if seq_diff(end, cur) > 0 {
            gaps[n_gaps] = (cur, end);
            n_gaps += 1;
        }
        let mut queued = 0;
        for &(a, b) in &gaps[..n_gaps] {
            let n = b.wrapping_sub(a) as usize;
            if self.pieces.len() >= MAX_SEGS_PER_CONN
                || self.held + n > MAX_BYTES_PER_CONN
                || !self.budget.take(n)
            {
                return Err(Refused::Full);
            }
            let mut data = Vec::with_capacity(n);
            let from = off + a.wrapping_sub(seq) as usize;
            if !frame.copy_range(from, n, &mut data) {
                self.budget.give(n);
                return Ok(queued);
            }
            self.held += n;
            let at = self
                .pieces
                .iter()
                .position(|p| seq_diff(p.seq, a) > 0)
                .unwrap_or(self.pieces.len());
            self.pieces.insert(
                at,
                Piece {
                    seq: a,
                    data,
                    start: 0,
                },
            );
            queued += 1;
        }
        Ok(queued)
    }

    /// Forgets queued bytes before `rcv_nxt` (they reached the host in order).
    fn trim(&mut self, rcv_nxt: u32) {
        while let Some(p) = self.pieces.first_mut() {
            if seq_diff(p.end(), rcv_nxt) <= 0 {
                let gone = self.pieces.remove(0);
                self.held -= gone.data.len();
                self.budget.give(gone.data.len());
                continue;
            }
            let behind = seq_diff(rcv_nxt, p.seq);
            if behind > 0 {
                p.start += behind as usize;
                p.seq = rcv_nxt;
            }
            break;
        }
    }

    /// Writes the queued bytes contiguous with `*rcv_nxt` to the host socket in one
    /// `sendmsg()` and advances `*rcv_nxt` by what the socket accepted; the rest stays
    /// queued. Returns the bytes written and whether the socket took less than offered.
    pub(crate) fn flush(
        &mut self,
        fd: BorrowedFd<'_>,
        rcv_nxt: &mut u32,
    ) -> io::Result<(usize, bool)> {
        self.trim(*rcv_nxt);
        let mut iov = [IoSlice::new(&[]); MAX_SEGS];
        let mut n = 0;
        let mut offered = 0usize;
        let mut next = *rcv_nxt;
        for p in &self.pieces {
            if p.seq != next || n == iov.len() {
                break;
            }
            iov[n] = IoSlice::new(&p.data[p.start..]);
            n += 1;
            offered += p.data.len() - p.start;
            next = p.end();
        }
        if n == 0 {
            return Ok((0, false));
        }
        let sent = match sys::send_vectored(fd, &iov[..n], None) {
            Ok(sent) => sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        *rcv_nxt = rcv_nxt.wrapping_add(sent as u32);
        self.trim(*rcv_nxt);
        Ok((sent, sent < offered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// A frame whose payload (at offset 0) is `data`, split into two guest buffers.
    fn with_frame<R>(data: &[u8], f: impl FnOnce(&GuestFrame<'_, '_>) -> R) -> R {
        let mid = data.len() / 2;
        let segs = [IoSlice::new(&data[..mid]), IoSlice::new(&data[mid..])];
        f(&GuestFrame::new(&segs))
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn overlapping_pieces_are_queued_once_and_flushed_in_order() {
        let budget = OooBudget::default();
        let mut q = OooQueue::new(&budget);
        let stream = bytes(3000, 7);
        let base = u32::MAX - 1000; // wraps inside the stream
        let at = |off: usize| base.wrapping_add(off as u32);
        // [2000, 2500) then [1500, 2800) overlapping it on both sides.
        with_frame(&stream[2000..2500], |f| q.insert(base, f, 0, at(2000), 500)).unwrap();
        let n = with_frame(&stream[1500..2800], |f| {
            q.insert(base, f, 0, at(1500), 1300)
        });
        assert_eq!(n, Ok(2), "only the two uncovered parts are copied");
        assert_eq!(budget.in_use(), 1300);
        // An exact duplicate adds nothing.
        let n = with_frame(&stream[2000..2500], |f| q.insert(base, f, 0, at(2000), 500));
        assert_eq!(n, Ok(0));
        // Nothing contiguous with rcv_nxt yet: no write.
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let mut rcv_nxt = base;
        assert_eq!(q.flush(a.as_fd(), &mut rcv_nxt).unwrap(), (0, false));
        // The hole [0, 1500) reaches the host in order; the queue follows in one write.
        a.write_all(&stream[..1500]).unwrap();
        rcv_nxt = at(1500);
        assert_eq!(q.flush(a.as_fd(), &mut rcv_nxt).unwrap(), (1300, false));
        assert_eq!(rcv_nxt, at(2800));
        assert!(q.is_empty());
        assert_eq!(budget.in_use(), 0);
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, stream[..2800]);
    }

    #[test]
    fn bounds_per_connection_and_across_connections() {
        let budget = OooBudget::default();
        let piece = bytes(100, 1);
        let mut q = OooQueue::new(&budget);
        // Pieces 200 bytes apart: 16 fit, the 17th is refused.
        for i in 0..MAX_SEGS_PER_CONN as u32 {
            let r = with_frame(&piece, |f| q.insert(0, f, 0, 1000 + i * 200, 100));
            assert_eq!(r, Ok(1));
        }
        let r = with_frame(&piece, |f| q.insert(0, f, 0, 100_000, 100));
        assert_eq!(r, Err(Refused::Full));
        assert_eq!(budget.in_use(), 1600);
        drop(q);
        assert_eq!(budget.in_use(), 0, "a dropped queue returns its bytes");

        // Bytes: 256 KiB per connection.
        let big = bytes(64 * 1024, 2);
        let mut q = OooQueue::new(&budget);
        for i in 0..4u32 {
            let r = with_frame(&big, |f| q.insert(0, f, 0, 1 + i * 65536, 65536));
            assert_eq!(r, Ok(1));
        }
        let r = with_frame(&piece, |f| q.insert(0, f, 0, 1 + 4 * 65536, 100));
        assert_eq!(r, Err(Refused::Full));

        // Across connections: a small global budget refuses a second queue.
        let small = OooBudget::with_limit(150);
        let mut q1 = OooQueue::new(&small);
        let mut q2 = OooQueue::new(&small);
        assert_eq!(with_frame(&piece, |f| q1.insert(0, f, 0, 10, 100)), Ok(1));
        assert_eq!(
            with_frame(&piece, |f| q2.insert(0, f, 0, 10, 100)),
            Err(Refused::Full)
        );
        drop(q1);
        assert_eq!(with_frame(&piece, |f| q2.insert(0, f, 0, 10, 100)), Ok(1));
    }

    #[test]
    fn a_partial_write_keeps_the_rest() {
        let budget = OooBudget::default();
        let mut q = OooQueue::new(&budget);
        let data = bytes(4 * 65536, 3);
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        // Four 64 KiB pieces from sequence 1 on (more than the socket takes at once).
        const P: usize = 65536;
        for i in 0..4usize {
            let chunk = &data[i * P..(i + 1) * P];
            let r = with_frame(chunk, |f| q.insert(0, f, 0, 1 + (i * P) as u32, P));
            assert_eq!(r, Ok(1));
        }
        let mut rcv_nxt = 1u32;
        let (mut total, mut shorts) = (0usize, 0);
        let mut got = Vec::new();
        for _ in 0..1000 {
            let (sent, short) = q.flush(a.as_fd(), &mut rcv_nxt).unwrap();
            total += sent;
            shorts += usize::from(short);
            // Drain what the socket took so the next flush can continue.
            let mut buf = vec![0u8; 1 << 20];
            b.set_nonblocking(true).unwrap();
            while let Ok(n) = b.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if q.is_empty() {
                break;
            }
        }
        assert!(shorts > 0, "the socket always took everything");
        assert_eq!(total, 4 * P);
        assert_eq!(rcv_nxt, 1 + 4 * P as u32);
        assert!(got == data, "flushed bytes differ");
        assert_eq!(budget.in_use(), 0);
    }
}

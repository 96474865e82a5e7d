//! Bounded queue of out-of-order guest payload for one connection, and the byte budget
//! all connections share.
//!
//! In-order guest data goes to the host socket straight from guest memory. A segment
//! that arrives after a hole cannot: its bytes must wait for the hole, and the guest's
//! buffers are released as soon as we return. So out-of-order payload is *copied* here
//! (the rare path), bounded per connection ([`MAX_BYTES_PER_CONN`], [`MAX_SEGS_PER_CONN`])
//! and across connections ([`OooBudget`]); beyond the bounds it is dropped and the guest
//! retransmits it. When the hole is filled, [`OooQueue::flush`] writes the contiguous
//! queued bytes to the host socket in one `sendmsg()`, keeping whatever it did not take.

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::guest::seq_diff;
use crate::frame::{GuestFrame, MAX_SEGS};
use crate::sys;

/// Most out-of-order payload bytes one connection may hold.
pub(crate) const MAX_BYTES_PER_CONN: usize = 256 * 1024;
/// Most out-of-order pieces one connection may hold.
pub(crate) const MAX_SEGS_PER_CONN: usize = 16;
/// Most out-of-order payload bytes all connections of one netstack may hold together.
pub(crate) const MAX_BYTES_TOTAL: usize = 4 * 1024 * 1024;

/// Byte budget shared by the out-of-order queues of one netstack (kept in `Core`).
/// Every queue returns what it took when it is dropped, so closing or resetting a flow
/// frees its share without any bookkeeping by the caller.
#[derive(Clone, Debug)]
pub(crate) struct OooBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Default for OooBudget {
    fn default() -> Self {
        Self::with_limit(MAX_BYTES_TOTAL)
    }
}

impl OooBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn with_limit(limit: usize) -> Self {
        OooBudget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Bytes currently held by all queues.
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit under the limit.
    fn take(&self, n: usize) -> bool {
        // One thread owns the netstack; the atomic only makes the budget `Send`.
        let used = self.used.load(Ordering::Relaxed);
        if used + n > self.limit {
            return false;
        }
        self.used.store(used + n, Ordering::Relaxed);
        true
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

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
        debug_assert!(self.pieces.iter().all(|p| seq_diff(p.seq, rcv_nxt) > 0));
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

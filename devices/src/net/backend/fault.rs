//! A test-only fault hook at the device boundary (design §8): a [`NetBackend`] wrapper that
//! reorders and duplicates frames in both directions, driven by a seeded generator, so
//! end-to-end tests can prove transfers stay byte-exact when the path misbehaves.
//!
//! It owns nothing but the frames it is perturbing. Guest → backend: with probability
//! `reorder` a frame is copied and held (the guest's iovecs die when `send` returns) and
//! handed to the inner backend right after the next frame; with probability `dup` a frame is
//! sent twice. Backend → guest: every frame the inner backend produces is first written into a
//! private buffer, then either copied into the guest's buffers, stashed to be handed out after
//! the next frame (waiting up to [`MAX_HOLD`] for one), or also kept to be handed out a second
//! time (header included). At most one
//! frame per direction is held, never for long: a held frame goes out with the next frame, or
//! when its short deadline passes (reported through `next_deadline`), so nothing is lost.
//!
//! It copies every RX frame and every held TX frame: it must never be enabled outside tests.
//! The VMM enables it only through `RINGFENCE_TEST_FAULTS` and says so on stderr; the counters
//! are printed on stderr when the backend is dropped.

mod spec;
#[cfg(test)]
mod tests;

pub use spec::{FaultRates, FaultSpec, FaultSpecError};

use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spec::FaultRng;

use super::{BackendError, FdInterest, NetBackend, RxBuf, RxFrame, TxFrame};
use crate::net::header::{VirtioNetHdr, VNET_HDR_LEN};

/// How long a held frame waits for a next frame before it goes out anyway.
pub const MAX_HOLD: Duration = Duration::from_millis(2);

/// Live fault counters, shared between the backend (on the device thread) and observers.
#[derive(Debug, Default)]
pub struct FaultCounters {
    tx_reordered: AtomicU64,
    tx_duplicated: AtomicU64,
    tx_released_late: AtomicU64,
    rx_reordered: AtomicU64,
    rx_duplicated: AtomicU64,
    rx_released_late: AtomicU64,
    tx_lost: AtomicU64,
    rx_lost: AtomicU64,
}

impl FaultCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> FaultStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultStats {
            tx_reordered: get(&self.tx_reordered),
            tx_duplicated: get(&self.tx_duplicated),
            tx_released_late: get(&self.tx_released_late),
            rx_reordered: get(&self.rx_reordered),
            rx_duplicated: get(&self.rx_duplicated),
            rx_released_late: get(&self.rx_released_late),
            tx_lost: get(&self.tx_lost),
            rx_lost: get(&self.rx_lost),
        }
    }
}

/// What the fault hook did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Guest frames delivered after the frame that followed them.
    pub tx_reordered: u64,
    /// Guest frames delivered twice.
    pub tx_duplicated: u64,
    /// Held guest frames released by their deadline (delayed, not reordered).
    pub tx_released_late: u64,
    /// Frames for the guest handed out after the frame that followed them.
    pub rx_reordered: u64,
    /// Frames for the guest handed out twice.
    pub rx_duplicated: u64,
    /// Stashed frames for the guest handed out with no frame overtaking them.
    pub rx_released_late: u64,
    /// Guest frames lost.
    pub tx_lost: u64,
    /// Frames for the guest lost.
    pub rx_lost: u64,
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tx_reordered={} tx_duplicated={} tx_released_late={} tx_lost={} rx_reordered={} rx_duplicated={} rx_released_late={} rx_lost={}",
            self.tx_reordered,
            self.tx_duplicated,
            self.tx_released_late,
            self.tx_lost,
            self.rx_reordered,
            self.rx_duplicated,
            self.rx_released_late,
            self.rx_lost
        )
    }
}

/// A guest frame copied out of guest memory: the virtio-net header followed by the frame.
#[derive(Debug)]
struct HeldTx {
    wire: Vec<u8>,
    header: VirtioNetHdr,
    due: Instant,
}

impl HeldTx {
    fn copy(frame: &TxFrame<'_>, due: Instant) -> Self {
        let mut wire = Vec::with_capacity(VNET_HDR_LEN + frame.frame_len);
        wire.extend_from_slice(&frame.header.to_bytes());
        for s in frame.frame {
            wire.extend_from_slice(s);
        }
        HeldTx {
            wire,
            header: frame.header,
            due,
        }
    }
}

/// Where a frame for the guest goes, as the inner backend said.
#[derive(Debug, Clone, Copy)]
enum RxLayout {
    /// The bytes start with the virtio-net header (`RxFrame::WithHeader`).
    WithHeader,
    /// The bytes are the frame; the device writes this header (`RxFrame::Frame`).
    Frame(VirtioNetHdr),
}

/// A frame for the guest, copied out of the inner backend.
#[derive(Debug, Clone)]
struct RxCopy {
    layout: RxLayout,
    bytes: Vec<u8>,
    /// The length the inner backend reported (more than `bytes` if it truncated).
    len: usize,
}

impl RxCopy {
    /// Copies the frame into the guest's buffers and says what was written.
    fn write_to(&self, buf: RxBuf<'_>) -> RxFrame {
        match self.layout {
            RxLayout::WithHeader => {
                let n = scatter(&self.bytes, buf.with_header);
                RxFrame::WithHeader { len: n }
            }
            RxLayout::Frame(header) => {
                scatter(&self.bytes, buf.frame);
                RxFrame::Frame {
                    len: self.len,
                    header,
                }
            }
        }
    }
}

/// Copies `bytes` into `dst` in order; returns how many fitted.
fn scatter(bytes: &[u8], dst: &mut [IoSliceMut<'_>]) -> usize {
    let mut off = 0;
    for s in dst.iter_mut() {
        if off == bytes.len() {
            break;
        }
        let n = s.len().min(bytes.len() - off);
        s[..n].copy_from_slice(&bytes[off..off + n]);
        off += n;
    }
    off
}

/// Wraps a backend and reorders and duplicates its frames (tests only; see the module doc).
pub struct FaultBackend {
    inner: Box<dyn NetBackend>,
    spec: FaultSpec,
    rng: FaultRng,
    counters: Arc<FaultCounters>,
    tx_held: Option<HeldTx>,
    /// A frame for the guest held back to be handed out after the next one.
    rx_stash: Option<RxCopy>,
    /// When `rx_stash` goes out even if no frame overtook it.
    rx_stash_due: Instant,
    /// Whether a frame overtook `rx_stash` (it goes out on the next `recv`).
    rx_stash_overtaken: bool,
    /// A frame for the guest to hand out a second time.
    rx_dup: Option<RxCopy>,
    /// When the worker should come back for `rx_stash`/`rx_dup` if nothing else wakes it.
    rx_wake: Option<Instant>,
    scratch_full: Vec<u8>,
    scratch_frame: Vec<u8>,
}

impl fmt::Debug for FaultBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultBackend")
            .field("inner", &self.inner.name())
            .field("spec", &self.spec)
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl FaultBackend {
    /// Wraps `inner`, perturbing its frames as `spec` says.
    pub fn new(inner: Box<dyn NetBackend>, spec: FaultSpec) -> Self {
        FaultBackend {
            inner,
            rng: FaultRng::new(spec.seed),
            spec,
            counters: Arc::new(FaultCounters::default()),
            tx_held: None,
            rx_stash: None,
            rx_stash_due: Instant::now(),
            rx_stash_overtaken: false,
            rx_dup: None,
            rx_wake: None,
            scratch_full: Vec::new(),
            scratch_frame: Vec::new(),
        }
    }

    /// The counters, readable from any thread while the backend runs.
    pub fn counters(&self) -> Arc<FaultCounters> {
        self.counters.clone()
    }

    /// Hands a held guest frame to the inner backend; keeps it for a retry if it is full.
    fn release_tx(&mut self, held: HeldTx, now: Instant) -> bool {
        let with_header = [IoSlice::new(&held.wire)];
        let frame = [IoSlice::new(&held.wire[VNET_HDR_LEN..])];
        let tx = TxFrame {
            with_header: &with_header,
            frame: &frame,
            frame_len: held.wire.len() - VNET_HDR_LEN,
            header: held.header,
        };
        match self.inner.send(&tx) {
            Ok(()) => true,
            Err(BackendError::WouldBlock) => {
                self.tx_held = Some(HeldTx {
                    due: now + MAX_HOLD,
                    ..held
                });
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "fault hook: held guest frame dropped by the backend");
                false
            }
        }
    }

    /// The inner backend's next frame that is not lost.
    fn recv_inner(&mut self, frame_capacity: usize) -> Result<Option<RxCopy>, BackendError> {
        loop {
            let next = self.recv_inner_once(frame_capacity)?;
            if next.is_none() || !self.rng.chance(self.spec.rx.loss_pct) {
                return Ok(next);
            }
            FaultCounters::bump(&self.counters.rx_lost);
        }
    }

    /// Lets the inner backend write its next frame into private buffers and copies it out.
    fn recv_inner_once(&mut self, frame_capacity: usize) -> Result<Option<RxCopy>, BackendError> {
        self.scratch_full.resize(VNET_HDR_LEN + frame_capacity, 0);
        self.scratch_frame.resize(frame_capacity, 0);
        let mut full = [IoSliceMut::new(&mut self.scratch_full)];
        let mut frame = [IoSliceMut::new(&mut self.scratch_frame)];
        let got = self.inner.recv(RxBuf {
            with_header: &mut full,
            frame: &mut frame,
            frame_capacity,
        })?;
        Ok(got.map(|f| match f {
            RxFrame::WithHeader { len } => RxCopy {
                layout: RxLayout::WithHeader,
                bytes: self.scratch_full[..len.min(self.scratch_full.len())].to_vec(),
                len,
            },
            RxFrame::Frame { len, header } => RxCopy {
                layout: RxLayout::Frame(header),
                bytes: self.scratch_frame[..len.min(frame_capacity)].to_vec(),
                len,
            },
        }))
    }

    /// Makes sure the worker comes back to `recv` by `at`.
    fn wake_rx_by(&mut self, at: Instant) {
        self.rx_wake = Some(self.rx_wake.filter(|w| *w <= at).unwrap_or(at));
    }

    /// Whether a stashed (reordered) or duplicated frame waits to go to the guest.
    fn holds_rx(&self) -> bool {
        self.rx_stash.is_some() || self.rx_dup.is_some()
    }
}

impl NetBackend for FaultBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn activate(&mut self, features: u64) -> Result<(), BackendError> {
        self.inner.activate(features)
    }

    fn send(&mut self, frame: &TxFrame<'_>) -> Result<(), BackendError> {
        if self.rng.chance(self.spec.tx.loss_pct) {
            FaultCounters::bump(&self.counters.tx_lost);
            return Ok(());
        }
        let now = Instant::now();
        if self.tx_held.is_none() && self.rng.chance(self.spec.tx.reorder_pct) {
            self.tx_held = Some(HeldTx::copy(frame, now + MAX_HOLD));
            return Ok(());
        }
        let sent = self.inner.send(frame);
        if sent.is_ok() && self.rng.chance(self.spec.tx.dup_pct) && self.inner.send(frame).is_ok() {
            FaultCounters::bump(&self.counters.tx_duplicated);
        }
        if let Some(held) = self.tx_held.take() {
            if self.release_tx(held, now) && sent.is_ok() {
                FaultCounters::bump(&self.counters.tx_reordered);
            }
        }
        sent
    }

    fn ring_tx_fd(&self) -> Option<RawFd> {
        // Every guest frame must pass through `send`.
        None
    }

    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError> {
        if let Some(copy) = self.rx_dup.take() {
            FaultCounters::bump(&self.counters.rx_duplicated);
            return Ok(Some(copy.write_to(buf)));
        }
        if self.rx_stash_overtaken {
            self.rx_stash_overtaken = false;
            if let Some(copy) = self.rx_stash.take() {
                FaultCounters::bump(&self.counters.rx_reordered);
                return Ok(Some(copy.write_to(buf)));
            }
        }
        let capacity = buf.frame_capacity;
        let mut next = self.recv_inner(capacity)?;
        if let Some(copy) =
            next.take_if(|_| self.rx_stash.is_none() && self.rng.chance(self.spec.rx.reorder_pct))
        {
            self.rx_stash = Some(copy);
            self.rx_stash_due = Instant::now() + MAX_HOLD;
            self.wake_rx_by(self.rx_stash_due);
            next = self.recv_inner(capacity)?;
        }
        let Some(copy) = next else {
            // Nothing to overtake a stashed frame: it waits for one until its deadline.
            if self.rx_stash.is_some() && self.rx_stash_due <= Instant::now() {
                if let Some(copy) = self.rx_stash.take() {
                    FaultCounters::bump(&self.counters.rx_released_late);
                    return Ok(Some(copy.write_to(buf)));
                }
            }
            return Ok(None);
        };
        if self.rx_stash.is_some() {
            self.rx_stash_overtaken = true;
        }
        if self.rng.chance(self.spec.rx.dup_pct) {
            self.rx_dup = Some(copy.clone());
            self.wake_rx_by(Instant::now() + MAX_HOLD);
        }
        Ok(Some(copy.write_to(buf)))
    }

    fn counters(&self) -> Vec<(String, u64)> {
        self.inner.counters()
    }

    fn rx_frame_len(&mut self) -> Option<usize> {
        if self.holds_rx() {
            return None;
        }
        self.inner.rx_frame_len()
    }

    fn rx_pending(&self) -> Option<bool> {
        if self.holds_rx() {
            return Some(true);
        }
        self.inner.rx_pending()
    }

    fn interests(&mut self, rx_space: bool, out: &mut Vec<FdInterest>) {
        self.inner.interests(rx_space, out);
    }

    fn on_fd_ready(&mut self, token: u64, readable: bool, writable: bool) {
        self.inner.on_fd_ready(token, readable, writable);
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let own = [
            self.tx_held.as_ref().map(|h| h.due),
            self.rx_wake.filter(|_| self.holds_rx()),
        ];
        own.into_iter()
            .flatten()
            .chain(self.inner.next_deadline())
            .min()
    }

    fn on_timer(&mut self, now: Instant) {
        if self.inner.next_deadline().is_some_and(|d| d <= now) {
            self.inner.on_timer(now);
        }
        if let Some(held) = self.tx_held.take_if(|h| h.due <= now) {
            if self.release_tx(held, now) {
                FaultCounters::bump(&self.counters.tx_released_late);
            }
        }
        // The worker offers RX buffers right after this; if the guest has none, look again
        // a little later rather than spin.
        if self.holds_rx() && self.rx_wake.is_some_and(|d| d <= now) {
            self.rx_wake = Some(now + MAX_HOLD);
        }
    }
}

impl Drop for FaultBackend {
    fn drop(&mut self) {
        if let Some(held) = self.tx_held.take() {
            if self.release_tx(held, Instant::now()) {
                FaultCounters::bump(&self.counters.tx_released_late);
            }
        }
        let stats = self.counters.snapshot();
        tracing::info!(%stats, spec = %self.spec, "test fault hook summary");
        eprintln!("ringfence: TEST FAULTS SUMMARY: {stats}");
    }
}

//! The virtio-net worker thread: TX and RX batches driven by the io_uring loop.
//!
//! One iteration (see `event_loop.rs` for the waiting side):
//! 1. handle completions: kicks, backend descriptors, the stop signal, the backend's timer;
//! 2. TX: take every available chain, validate it in place, hand the frame to the backend as
//!    iovecs over guest memory, return the chain with length 0; one used-ring publication;
//! 3. RX: take every available RX chain, and while the backend has frames and the guest has
//!    room, let the backend write each frame straight into the chains; one used-ring
//!    publication;
//! 4. at most one interrupt for the iteration, only if the driver asked for it;
//! 5. if there was work within the polling window, poll again without sleeping and with
//!    guest notifications left suppressed; otherwise re-enable notifications (re-checking
//!    the rings to close the race) and block. The window adapts to the guest's gaps
//!    (`poll_window.rs`).
//!
//! The worker never panics on guest input: every malformed chain is returned with length 0
//! and counted (log lines rate-limited). A queue it cannot go on with (an impossible avail
//! index, a used ring it cannot write) is marked broken: the worker stops serving it, sets
//! DEVICE_NEEDS_RESET and sends a configuration change interrupt (virtio 1.2 §2.1.2), and
//! waits for the driver's reset (which stops this worker; a new one starts on the next
//! DRIVER_OK).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{BackendError, FdInterest, NetBackend, RxBuf, RxFrame, TxFrame};
use super::features::{VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_MRG_RXBUF};
use super::header::VNET_HDR_LEN;
use super::metrics::NetMetrics;
use super::pcap::{CaptureSwitch, PcapSink};
use super::poll_window::PollWindow;
use super::queue_io::{TxChain, MAX_FRAME_LEN};
use super::rx_buffers::RxBuffers;
use super::{RX_QUEUE, TX_QUEUE};
use crate::event_loop::{Event, EventLoop, EventLoopError};
use crate::virtio::ring_layout::RingLayout;
use crate::virtio::used_ring::{set_avail_event, UsedBatch};
use crate::virtio::{ActivateContext, Interrupt};

mod steps;
use steps::StepState;

/// Ethernet header plus a VLAN tag: what a frame adds to the link MTU.
const L2_OVERHEAD: usize = 18;
/// How long after the last activity the worker polls the rings without ever sleeping.
///
/// The rest of the polling window is spent in [`POLL_TICK`] sleeps. A guest kick wakes the
/// worker on the kicking vCPU's CPU (the ioeventfd is signalled from the vCPU thread), and
/// a driver that polls its RX ring, like the probe, then waits for that CPU: spinning
/// through the whole window would delay it by the window on a host with few free cores.
const SPIN: Duration = Duration::from_micros(20);
/// Sleep between two polls of the rings in the rest of the polling window.
const POLL_TICK: Duration = Duration::from_micros(20);
/// RX bytes delivered in one pass below which the pass counts as request/response traffic,
/// worth polling for the guest's answer (above it, the transfer is bulk: the guest answers
/// with ACKs much later, and polling for them would cost a core for nothing).
const INTERACTIVE_RX_BYTES: usize = 16 * 1024;
/// TX bytes per iteration after which RX gets a turn: the backend's answers to what was just
/// sent (the netstack's ACKs) reach the guest while it still has data to send, instead of
/// after the whole ring (16 MiB with 64 KiB frames), which left a guest with a 1 MiB send
/// buffer idle for a third of a bulk upload. One MiB is such a send buffer whole: on a shared
/// device thread, where a turn ends here and the other devices' turns follow, 256 KiB cut a
/// guest's burst into four turns, each ending in an interrupt that a guest which halts when
/// idle woke for: twice the halts of a thread per VM, and 0.87x its aggregate throughput with
/// 8 VMs (issue 18; 1 MiB: 1.04x, and no loss for one busy-polling VM).
const TX_BATCH_BYTES: usize = 1 << 20;
/// Most RX frames per iteration before TX gets another turn.
const RX_BUDGET: usize = 256;

/// What survives a worker: handed back to the device on stop so it can be activated again.
pub(crate) struct WorkerParts {
    pub backend: Box<dyn NetBackend>,
    pub pcap: Option<PcapSink>,
    /// Captures started and stopped while the device runs.
    pub capture: Arc<CaptureSwitch>,
}

/// State of one running virtio-net worker.
pub(crate) struct NetWorker {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    parts: WorkerParts,
    metrics: Arc<NetMetrics>,
    mrg_rxbuf: bool,
    max_rx_len: usize,
    rx_bufs: RxBuffers,
    /// Where both queues' rings are: buffers overlapping them are refused.
    rings: RingLayout,
    tx_chain: TxChain,
    /// Backend descriptor TX frames are written to through the ring (tap), if any.
    tx_fd: Option<RawFd>,
    /// With `tx_fd`: one chain per queue entry, each owned by the device until its write
    /// completes (the kernel reads the iovec array and guest memory asynchronously).
    tx_slots: Vec<TxChain>,
    tx_free: Vec<usize>,
    rx_used: UsedBatch,
    tx_used: UsedBatch,
    poll_window: PollWindow,
    lp: EventLoop,
    interests: Vec<FdInterest>,
    events: Vec<Event>,
    notifications_on: bool,
    /// Per queue (RX, TX): the driver corrupted the avail index; the queue is ignored until
    /// the driver resets the device (otherwise the worker would spin on it forever).
    broken: [bool; 2],
    pcap_dirty: bool,
    /// Since when RX has been held up by the guest: the backend has frames and the driver
    /// has not posted room for them. While starved the worker sleeps until the driver posted
    /// a batch of buffers (design §3 item 4) instead of polling the ring.
    rx_starved_since: Option<Instant>,
    /// How long a starved worker waits for the batch it asked for (`NetConfig::rx_starve_wait`).
    starve_wait: Duration,
    /// For backends that cannot tell ([`NetBackend::rx_pending`] is `None`): a frame may be
    /// waiting (a readiness report or a delivered frame since the last empty receive).
    rx_maybe_pending: bool,
    /// The loop's state between passes.
    step: StepState,
}

impl NetWorker {
    pub(crate) fn new(
        ctx: ActivateContext,
        parts: WorkerParts,
        metrics: Arc<NetMetrics>,
        poll_window: PollWindow,
        lp: EventLoop,
        link_mtu: u16,
    ) -> Self {
        let mut queues = ctx.queues.into_iter();
        // The device checked there are exactly two queues before spawning us.
        let rx = queues.next().unwrap_or_default();
        let tx = queues.next().unwrap_or_default();
        let has = |bit: u32| ctx.acked_features & (1u64 << bit) != 0;
        let max_rx_len = if has(VIRTIO_NET_F_GUEST_TSO4) || has(VIRTIO_NET_F_GUEST_TSO6) {
            VNET_HDR_LEN + MAX_FRAME_LEN
        } else {
            VNET_HDR_LEN + usize::from(link_mtu) + L2_OVERHEAD
        };
        let rings = RingLayout::of(&[&rx, &tx]);
        let rx_size = usize::from(rx.size());
        let tx_size = usize::from(tx.size());
        let tx_fd = parts.backend.ring_tx_fd();
        let slots = if tx_fd.is_some() { tx_size } else { 0 };
        Self {
            mem: ctx.mem,
            rx,
            tx,
            queue_evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
            parts,
            metrics,
            mrg_rxbuf: has(VIRTIO_NET_F_MRG_RXBUF),
            max_rx_len,
            rx_bufs: RxBuffers::new(rx_size),
            rings,
            tx_chain: TxChain::new(),
            tx_fd,
            tx_slots: (0..slots).map(|_| TxChain::new()).collect(),
            tx_free: (0..slots).rev().collect(),
            rx_used: UsedBatch::with_capacity(rx_size),
            tx_used: UsedBatch::with_capacity(tx_size),
            poll_window,
            lp,
            interests: Vec::with_capacity(8),
            events: Vec::with_capacity(16),
            notifications_on: true,
            broken: [false; 2],
            pcap_dirty: false,
            rx_starved_since: None,
            starve_wait: crate::net::device::DEFAULT_RX_STARVE_WAIT,
            rx_maybe_pending: true,
            step: StepState::default(),
        }
    }

    /// Sets how long a starved worker waits for the batch of RX buffers it asked for.
    pub(crate) fn with_rx_starve_wait(mut self, wait: Duration) -> Self {
        self.starve_wait = wait;
        self
    }

    /// Arms polls for the descriptors the backend wants now.
    fn arm_backend(&mut self) -> Result<(), EventLoopError> {
        self.interests.clear();
        // Starved, a readable backend is old news until the guest posts room.
        let rx_space = !self.rx_bufs.is_empty() && self.rx_starved_since.is_none();
        self.parts.backend.interests(rx_space, &mut self.interests);
        self.lp.sync_fds(&self.interests)
    }

    /// Re-enables guest notifications before blocking; true if work arrived meanwhile.
    ///
    /// TX asks for a kick at the next frame. RX asks for one only if the device holds no RX
    /// buffer or is starved: while it holds room, frames can be delivered without the
    /// driver's refills, which the next pass picks up anyway, so a refill kick would only
    /// cost the guest an exit (design §3 item 4). Starved, it asks for a kick only once the
    /// driver has posted a batch ([`Self::rx_kick_batch`]): one exit per batch, not per
    /// buffer; if nothing came within `starve_wait`, at the next buffer.
    fn enable_notifications(&mut self, now: Instant) -> bool {
        self.notifications_on = true;
        let mut pending = false;
        let rx_batch = if let Some(since) = self.rx_starved_since {
            // A driver that posted nothing within `starve_wait` may post a buffer at a time.
            if now.duration_since(since) < self.starve_wait {
                Some(self.rx_kick_batch())
            } else {
                Some(1)
            }
        } else {
            self.rx_bufs.is_empty().then_some(1)
        };
        for (q, broken, batch) in [
            (&mut self.rx, self.broken[RX_QUEUE], rx_batch),
            (&mut self.tx, self.broken[TX_QUEUE], Some(1)),
        ] {
            if broken {
                continue;
            }
            let result = if let Some(batch) = batch.filter(|&b| b > 1 && q.event_idx_enabled()) {
                // Kick when the avail index passes next_avail + batch - 1; re-check after a
                // full fence in case the driver published that far before seeing it.
                let next = q.next_avail();
                set_avail_event(q, &self.mem, next.wrapping_add(batch - 1))
                    .map_err(drop)
                    .and_then(|()| {
                        std::sync::atomic::fence(Ordering::SeqCst);
                        q.avail_idx(&self.mem, Ordering::Acquire)
                            .map(|idx| idx.0.wrapping_sub(next) >= batch)
                            .map_err(drop)
                    })
            } else if batch.is_some() {
                q.enable_notification(&self.mem).map_err(drop)
            } else if q.event_idx_enabled() {
                // The driver kicks when avail_event lies between the index of its previous
                // kick decision and its new index. Both stay within a queue size of what we
                // took (the driver may have published, and we taken, buffers it has not yet
                // decided about), so half the index space away is never passed in practice.
                // `next_avail - 1` would not do: a driver that published a buffer we took
                // before it decided would still kick.
                let far = q.next_avail().wrapping_add(0x8000);
                set_avail_event(q, &self.mem, far)
                    .map(|()| false)
                    .map_err(drop)
            } else {
                // VIRTQ_USED_F_NO_NOTIFY stays set from the busy phase.
                Ok(false)
            };
            match result {
                Ok(more) => pending |= more,
                Err(()) => NetMetrics::add(&self.metrics.used_ring_errors, 1),
            }
        }
        pending
    }

    /// How many RX chains the driver should post before kicking a starved worker: enough for
    /// a largest frame, and at least a quarter of the queue so kicks stay rare (the driver
    /// still holds the rest of the ring's frames to work on meanwhile), but never more than
    /// the driver can post at all.
    fn rx_kick_batch(&self) -> u16 {
        self.rx_chains_for_full_frame()
            .max(usize::from(self.rx.size()) / 4)
            .min(self.rx_chains_driver_holds())
            .clamp(1, usize::from(u16::MAX)) as u16
    }

    /// RX chains the device does not hold: the most the driver can still post.
    fn rx_chains_driver_holds(&self) -> usize {
        usize::from(self.rx.size()).saturating_sub(self.rx_bufs.len())
    }

    /// More chains the driver must post before the device holds room for a largest frame,
    /// judging their size by the last chain it posted.
    fn rx_chains_for_full_frame(&self) -> usize {
        if !self.mrg_rxbuf {
            return usize::from(self.rx_bufs.is_empty());
        }
        let missing = self.max_rx_len.saturating_sub(self.rx_bufs.total_room());
        match self.rx_bufs.last_chain_room() {
            // No chain seen yet: nothing to judge by; one may do.
            0 => usize::from(missing > 0),
            per_chain => missing.div_ceil(per_chain),
        }
    }

    /// Whether RX may write a frame into less room than a largest frame needs: the driver
    /// cannot post enough for one (its ring is too small for our frame size), or it did not
    /// within `starve_wait`.
    fn rx_partial_ok(&self, now: Instant) -> bool {
        self.rx_chains_for_full_frame() > self.rx_chains_driver_holds()
            || self
                .rx_starved_since
                .is_some_and(|t| now.duration_since(t) >= self.starve_wait)
    }

    /// Called when a queue yields no chain: whether the driver's avail index is more than a
    /// queue size ahead of ours (the queue is corrupt; virtio 1.2 §2.7.13.3).
    fn avail_impossible(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
        queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0.wrapping_sub(queue.next_avail()) > queue.size())
    }

    /// Stops serving queue `q` until the driver resets the device: sets DEVICE_NEEDS_RESET
    /// and sends a configuration change interrupt (once per device activation), counts and
    /// logs it. The queue is never looked at again, so the worker cannot spin on it.
    fn mark_broken(&mut self, q: usize, why: &'static str) {
        if self.broken[q] {
            return;
        }
        self.broken[q] = true;
        NetMetrics::add(&self.metrics.queues_broken, 1);
        let queue = if q == RX_QUEUE { &self.rx } else { &self.tx };
        tracing::warn!(
            queue = q,
            why,
            avail_idx = queue.avail_idx(&self.mem, Ordering::Relaxed).map_or(0, |i| i.0),
            next_avail = queue.next_avail(),
            size = queue.size(),
            "virtio-net: queue broken; ignored until the driver resets the device (DEVICE_NEEDS_RESET)"
        );
        match self.interrupt.signal_needs_reset() {
            Ok(true) => NetMetrics::add(&self.metrics.needs_reset, 1),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "virtio-net: cannot send the configuration change interrupt"
            ),
        }
    }

    /// Suppresses guest notifications while the worker is busy polling.
    fn disable_notifications(&mut self) {
        self.notifications_on = false;
        for q in [&mut self.tx, &mut self.rx] {
            if q.disable_notification(&self.mem).is_err() {
                NetMetrics::add(&self.metrics.used_ring_errors, 1);
            }
        }
    }

    fn flush_pcap(&mut self) {
        self.pcap_dirty = false;
        if let Some(p) = self.parts.pcap.as_mut() {
            p.flush();
        }
    }

    /// Publishes a used batch; returns whether an interrupt is wanted, or `None` if the used
    /// ring could not be written (the caller breaks the queue).
    fn publish(
        queue: &mut Queue,
        used: &mut UsedBatch,
        mem: &GuestMemoryMmap,
        metrics: &NetMetrics,
    ) -> Option<bool> {
        if used.is_empty() {
            return Some(false);
        }
        match used.flush(queue, mem) {
            Ok(true) => Some(true),
            Ok(false) => {
                NetMetrics::add(&metrics.interrupts_suppressed, 1);
                Some(false)
            }
            Err(e) => {
                tracing::warn!(error = %e, "virtio-net: cannot publish used ring");
                NetMetrics::add(&metrics.used_ring_errors, 1);
                None
            }
        }
    }

    /// A TX write submitted through the ring completed: return its chain.
    fn tx_write_done(&mut self, slot: usize, result: i32) {
        let Some(c) = self.tx_slots.get(slot) else {
            return;
        };
        self.tx_used.push(c.head, 0);
        if result >= 0 {
            NetMetrics::add(&self.metrics.tx_frames, 1);
            NetMetrics::add(&self.metrics.tx_bytes, c.frame.len() as u64);
        } else if result == -libc::EAGAIN {
            // The descriptor is non-blocking; a full backend drops, as with `send`.
            NetMetrics::add(&self.metrics.tx_dropped_backend_busy, 1);
        } else {
            tracing::debug!(errno = -result, "virtio-net: TX write failed");
            NetMetrics::add(&self.metrics.tx_dropped_backend_error, 1);
        }
        self.tx_free.push(slot);
    }

    /// Sends every available TX chain; returns (did work, wants interrupt).
    fn process_tx(&mut self) -> (bool, bool) {
        if self.broken[TX_QUEUE] {
            return (false, false);
        }
        let budget = usize::from(self.tx.size());
        let mut done = 0;
        let mut bytes = 0;
        while done < budget && bytes < TX_BATCH_BYTES {
            // With ring writes, each chain needs a free slot until its write completes.
            let slot = match self.tx_fd {
                Some(_) => match self.tx_free.pop() {
                    Some(s) => Some(s),
                    None => break,
                },
                None => None,
            };
            let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) else {
                if let Some(s) = slot {
                    self.tx_free.push(s);
                }
                if Self::avail_impossible(&self.tx, &self.mem) {
                    self.mark_broken(TX_QUEUE, "impossible avail index");
                }
                break;
            };
            done += 1;
            let c = match slot {
                Some(s) => &mut self.tx_slots[s],
                None => &mut self.tx_chain,
            };
            if let Err(reason) = c.load(chain, &self.mem, &self.rings) {
                self.metrics.tx_malformed.inc(reason);
                if let Some(total) = self.metrics.malformed_log.admit() {
                    tracing::warn!(
                        reason = reason.name(),
                        head = c.head,
                        malformed_so_far = total,
                        "virtio-net: dropped a malformed TX chain (rate-limited log)"
                    );
                }
                self.tx_used.push(c.head, 0);
                if let Some(s) = slot {
                    self.tx_free.push(s);
                }
                continue;
            }
            let frame_len = c.frame.len();
            bytes += frame_len;
            if let Some(p) = self.parts.pcap.as_mut() {
                p.record(&c.full, VNET_HDR_LEN, frame_len);
                self.pcap_dirty = true;
            }
            if let (Some(s), Some(fd)) = (slot, self.tx_fd) {
                let iov = c.full.as_raw();
                // SAFETY: the iovec array lives in `tx_slots[s]`, which is not touched again
                // until `tx_write_done(s)` runs for this write's completion (the slot is off
                // the free list), and is drained before the worker drops it; the iovecs
                // point into guest memory kept mapped by `self.mem` for the same time.
                let queued =
                    unsafe { self.lp.writev(fd, iov.as_ptr(), iov.len() as u32, s as u64) };
                if let Err(e) = queued {
                    tracing::warn!(error = %e, "virtio-net: cannot queue TX write");
                    NetMetrics::add(&self.metrics.tx_dropped_backend_error, 1);
                    self.tx_used.push(c.head, 0);
                    self.tx_free.push(s);
                }
                continue;
            }
            let frame = TxFrame {
                with_header: c.full.as_io_slices(),
                frame: c.frame.as_io_slices(),
                frame_len,
                header: c.header,
            };
            match self.parts.backend.send(&frame) {
                Ok(()) => {
                    NetMetrics::add(&self.metrics.tx_frames, 1);
                    NetMetrics::add(&self.metrics.tx_bytes, frame_len as u64);
                }
                Err(BackendError::WouldBlock) => {
                    NetMetrics::add(&self.metrics.tx_dropped_backend_busy, 1)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "virtio-net: TX frame dropped");
                    NetMetrics::add(&self.metrics.tx_dropped_backend_error, 1);
                }
            }
            self.tx_used.push(c.head, 0);
        }
        let completed = !self.tx_used.is_empty();
        let irq = Self::publish(&mut self.tx, &mut self.tx_used, &self.mem, &self.metrics)
            .unwrap_or_else(|| {
                self.mark_broken(TX_QUEUE, "used ring not writable");
                false
            });
        (done > 0 || completed, irq)
    }

    /// Whether the held merged buffers are too short for the next frame: a largest one, or the
    /// backend's next when it knows that one's size. Asks the backend only when the room is
    /// short of a largest frame.
    fn rx_room_short(&mut self) -> bool {
        let room = self.rx_bufs.total_room();
        self.mrg_rxbuf
            && room < self.max_rx_len
            && self
                .parts
                .backend
                .rx_frame_len()
                .is_none_or(|n| room < VNET_HDR_LEN + n)
    }

    /// Whether the backend has (or may have) a frame for the guest.
    fn backend_rx_pending(&self) -> bool {
        self.parts
            .backend
            .rx_pending()
            .unwrap_or(self.rx_maybe_pending)
    }

    /// Moves frames from the backend into guest RX chains; returns (did work, frame bytes
    /// delivered, wants interrupt).
    ///
    /// With merged buffers a frame is written only into room for a largest one, unless
    /// [`Self::rx_partial_ok`]: the backend fills whatever room it is given, and frames cut
    /// to the few buffers a busy driver has just posted cost both sides per-frame work for
    /// little data. Short of room with frames pending, the worker is starved (see
    /// `rx_starved_since`).
    fn process_rx(&mut self, now: Instant) -> (bool, usize, bool) {
        if self.broken[RX_QUEUE] {
            self.rx_starved_since = None;
            return (false, 0, false);
        }
        let mut work = false;
        let mut frames = 0;
        let mut bytes = 0;
        let mut starved = false;
        loop {
            // Refills alone are not activity worth polling on: a driver reposting buffers
            // one at a time would keep the worker spinning. Room matters only with frames
            // pending, and then the worker is starved and waits for a batch.
            let ran_dry = self.rx_bufs.refill(
                &mut self.rx,
                &self.mem,
                &self.rings,
                &mut self.rx_used,
                &self.metrics,
            );
            if ran_dry && Self::avail_impossible(&self.rx, &self.mem) {
                self.mark_broken(RX_QUEUE, "impossible avail index");
                break;
            }
            work |= !self.rx_used.is_empty();
            if frames >= RX_BUDGET {
                break;
            }
            if self.rx_bufs.is_empty() || (self.rx_room_short() && !self.rx_partial_ok(now)) {
                starved = self.backend_rx_pending();
                break;
            }
            if !self.rx_bufs.assemble(self.mrg_rxbuf, self.max_rx_len) {
                break;
            }
            let frame_capacity = self.rx_bufs.frame.len();
            let rx = &mut self.rx_bufs;
            let buf = RxBuf {
                with_header: rx.full.as_io_slices_mut(),
                frame: rx.frame.as_io_slices_mut(),
                frame_capacity,
            };
            let written = match self.parts.backend.recv(buf) {
                Ok(None) | Err(BackendError::WouldBlock) => {
                    self.rx_maybe_pending = false;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "virtio-net: backend receive failed");
                    NetMetrics::add(&self.metrics.rx_backend_errors, 1);
                    break;
                }
                Ok(Some(RxFrame::WithHeader { len })) => {
                    if len < VNET_HDR_LEN {
                        // Counts against the budget so a misbehaving backend cannot
                        // keep us here forever.
                        NetMetrics::add(&self.metrics.rx_backend_errors, 1);
                        frames += 1;
                        continue;
                    }
                    len.min(self.rx_bufs.full.len())
                }
                Ok(Some(RxFrame::Frame { len, header })) => {
                    if len > frame_capacity {
                        NetMetrics::add(&self.metrics.rx_truncated, 1);
                    }
                    self.rx_bufs.full.write_at(0, &header.to_bytes());
                    VNET_HDR_LEN + len.min(frame_capacity)
                }
            };
            let frame_len = written - VNET_HDR_LEN;
            if let Some(p) = self.parts.pcap.as_mut() {
                p.record(&self.rx_bufs.full, VNET_HDR_LEN, frame_len);
                self.pcap_dirty = true;
            }
            self.rx_bufs.complete(written, &mut self.rx_used);
            self.rx_maybe_pending = true;
            NetMetrics::add(&self.metrics.rx_frames, 1);
            NetMetrics::add(&self.metrics.rx_bytes, frame_len as u64);
            bytes += frame_len;
            frames += 1;
            work = true;
        }
        self.rx_starved_since = match (starved, self.rx_starved_since) {
            (false, _) => None,
            // Still waiting for the same room: keep the clock running.
            (true, Some(since)) if frames == 0 => Some(since),
            (true, _) => {
                NetMetrics::add(&self.metrics.rx_starved, 1);
                Some(now)
            }
        };
        let irq = Self::publish(&mut self.rx, &mut self.rx_used, &self.mem, &self.metrics)
            .unwrap_or_else(|| {
                self.mark_broken(RX_QUEUE, "used ring not writable");
                false
            });
        (work, bytes, irq)
    }
}

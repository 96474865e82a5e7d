//! The virtio-vsock worker thread: the three queues and the host sockets on one io_uring
//! loop ([`crate::event_loop::EventLoop`], the one the net worker uses).
//!
//! One pass:
//! 1. completions: queue kicks, the stop signal, host sockets (listener, clients writing
//!    their CONNECT line, connections readable or writable);
//! 2. timers: unanswered REQUESTs, slow CONNECT lines, shutdowns that did not finish;
//! 3. TX: every available chain is validated, its header copied and checked, and the packet
//!    applied to the muxer (payload written from guest memory to the host socket); the chain
//!    goes back at once with length 0, one used-ring publication for the batch;
//! 4. RX: while the muxer has packets (RSTs, control, data) and the guest has buffers, each
//!    is written straight into an RX chain (socket reads land in guest memory); one
//!    publication;
//! 5. at most one interrupt, if the driver asked for one;
//! 6. the muxer's sockets are armed on the ring, guest notifications set (TX always; RX only
//!    while packets wait for a buffer, so a driver refilling its ring costs no exits
//!    otherwise), and the loop waits until something happens or the next deadline.
//!
//! The event queue is never written: the device sends no TRANSPORT_RESET (it has no live
//! migration or snapshot), and its buffers stay with the device until a reset.
//!
//! The worker never panics on guest input: malformed chains are returned with length 0 and
//! counted. A queue it cannot go on with (impossible avail index, used ring not writable)
//! is marked broken and DEVICE_NEEDS_RESET raised, as the net worker does.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::VsockMetrics;
use super::muxer::Muxer;
use super::queue_io::{RxChain, TxPacket};
use super::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::event_loop::{Event, EventLoop, EventLoopError};
use crate::net::backend::FdInterest;
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::ring_layout::RingLayout;
use crate::virtio::used_ring::{set_avail_event, UsedBatch};
use crate::virtio::{ActivateContext, Interrupt};

/// How long the worker waits at stop for its ring to let go of the host sockets.
const QUIESCE: Duration = Duration::from_secs(2);

/// State of one running vsock worker.
pub(crate) struct VsockWorker {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    lp: EventLoop,
    muxer: Muxer,
    metrics: Arc<VsockMetrics>,
    rings: RingLayout,
    rx_used: UsedBatch,
    tx_used: UsedBatch,
    tx_pkt: TxPacket,
    rx_chain: RxChain,
    /// `rx_chain` holds a validated chain taken from the RX queue and not used yet.
    rx_held: bool,
    /// Per queue: the driver corrupted it; ignored until the driver resets the device.
    broken: [bool; 3],
    interests: Vec<FdInterest>,
    events: Vec<Event>,
}

impl VsockWorker {
    pub(crate) fn new(
        ctx: ActivateContext,
        muxer: Muxer,
        metrics: Arc<VsockMetrics>,
        lp: EventLoop,
    ) -> Self {
        let queues = ctx.queues;
        let refs: Vec<&Queue> = queues.iter().collect();
        let rings = RingLayout::of(&refs);
        let rx_size = queues.get(RX_QUEUE).map_or(0, |q| usize::from(q.size()));
        let tx_size = queues.get(TX_QUEUE).map_or(0, |q| usize::from(q.size()));
        Self {
            mem: ctx.mem,
            queues,
            queue_evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
            lp,
            muxer,
            metrics,
            rings,
            rx_used: UsedBatch::with_capacity(rx_size),
            tx_used: UsedBatch::with_capacity(tx_size),
            tx_pkt: TxPacket::new(),
            rx_chain: RxChain::new(),
            rx_held: false,
            broken: [false; 3],
            interests: Vec::with_capacity(16),
            events: Vec::with_capacity(16),
        }
    }

    /// Runs until the stop eventfd fires or the loop fails; closes every connection and
    /// returns the listener for the next activation.
    pub(crate) fn run(mut self, stop_fd: RawFd) -> Option<UnixListener> {
        if let Err(e) = self.run_inner(stop_fd) {
            tracing::error!(error = %e, "virtio-vsock worker stopped");
        }
        // Armed polls hold the host sockets open in the kernel: cancel them before the
        // sockets are dropped, so every client sees its connection end now.
        let mut events = Vec::new();
        if !self.lp.quiesce(QUIESCE, &mut events) {
            tracing::warn!("virtio-vsock: the ring did not settle at stop");
        }
        self.muxer.into_listener()
    }

    fn run_inner(&mut self, stop_fd: RawFd) -> Result<(), EventLoopError> {
        let mut kick_idx = [0usize; 3];
        for (q, idx) in kick_idx.iter_mut().enumerate() {
            *idx = self.lp.add_eventfd(self.queue_evts[q].as_raw_fd())?;
        }
        let stop_idx = self.lp.add_eventfd(stop_fd)?;
        // Drivers post RX buffers (and may send) before DRIVER_OK: look at once.
        let mut timeout = Some(Duration::ZERO);
        loop {
            self.lp.wait(timeout, &mut self.events)?;
            VsockMetrics::add(&self.metrics.loop_iterations, 1);
            let now = Instant::now();
            let mut events = std::mem::take(&mut self.events);
            for ev in events.drain(..) {
                match ev {
                    Event::Eventfd(i) if i == stop_idx => return Ok(()),
                    Event::Eventfd(i) if i == kick_idx[RX_QUEUE] => {
                        VsockMetrics::add(&self.metrics.rx_kicks, 1)
                    }
                    Event::Eventfd(i) if i == kick_idx[TX_QUEUE] => {
                        VsockMetrics::add(&self.metrics.tx_kicks, 1)
                    }
                    Event::Eventfd(_) | Event::IoDone { .. } => {}
                    Event::Fd {
                        token,
                        readable,
                        writable,
                    } => self.muxer.on_ready(token, readable, writable, now),
                }
            }
            self.events = events;
            self.muxer.on_timers(now);
            let tx_irq = self.process_tx(now);
            let rx_irq = self.process_rx(now);
            if tx_irq || rx_irq {
                self.interrupt.set_status(INT_USED_RING);
                self.lp
                    .signal_eventfd(self.interrupt.eventfd().as_raw_fd())?;
                VsockMetrics::add(&self.metrics.interrupts, 1);
            }
            let more = self.set_notifications();
            self.muxer.interests(Instant::now(), &mut self.interests);
            self.lp.sync_fds(&self.interests)?;
            timeout = if more {
                Some(Duration::ZERO)
            } else {
                self.muxer
                    .next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
            };
        }
    }

    /// Whether the driver's avail index is more than a queue size ahead of ours.
    fn avail_impossible(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
        queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0.wrapping_sub(queue.next_avail()) > queue.size())
    }

    fn mark_broken(&mut self, q: usize, why: &'static str) {
        if self.broken[q] {
            return;
        }
        self.broken[q] = true;
        tracing::warn!(
            queue = q,
            why,
            "virtio-vsock: queue broken; ignored until the driver resets the device (DEVICE_NEEDS_RESET)"
        );
        match self.interrupt.signal_needs_reset() {
            Ok(true) => VsockMetrics::add(&self.metrics.needs_reset, 1),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "virtio-vsock: cannot send the configuration change interrupt"
            ),
        }
    }

    /// Publishes a used batch of queue `q`; returns whether an interrupt is wanted.
    fn publish(&mut self, q: usize) -> bool {
        let used = if q == RX_QUEUE {
            &mut self.rx_used
        } else {
            &mut self.tx_used
        };
        if used.is_empty() {
            return false;
        }
        match used.flush(&mut self.queues[q], &self.mem) {
            Ok(irq) => irq,
            Err(e) => {
                tracing::warn!(error = %e, "virtio-vsock: cannot publish used ring");
                VsockMetrics::add(&self.metrics.used_ring_errors, 1);
                self.mark_broken(q, "used ring not writable");
                false
            }
        }
    }

    /// Applies every available TX packet; returns whether an interrupt is wanted.
    fn process_tx(&mut self, now: Instant) -> bool {
        if self.broken[TX_QUEUE] {
            return false;
        }
        let budget = usize::from(self.queues[TX_QUEUE].size());
        for _ in 0..budget {
            let Some(chain) = self.queues[TX_QUEUE].pop_descriptor_chain(&self.mem) else {
                if Self::avail_impossible(&self.queues[TX_QUEUE], &self.mem) {
                    self.mark_broken(TX_QUEUE, "impossible avail index");
                }
                break;
            };
            VsockMetrics::add(&self.metrics.tx_packets, 1);
            match self.tx_pkt.load(chain, &self.mem, &self.rings) {
                Ok(()) => self.muxer.on_guest_packet(&self.tx_pkt, now),
                Err(reason) => {
                    self.metrics.bad(reason);
                    if let Some(total) = self.metrics.bad_log.admit() {
                        tracing::warn!(
                            reason = reason.name(),
                            head = self.tx_pkt.head,
                            bad_so_far = total,
                            "virtio-vsock: dropped a malformed TX chain (rate-limited log)"
                        );
                    }
                }
            }
            self.tx_used.push(self.tx_pkt.head, 0);
        }
        self.publish(TX_QUEUE)
    }

    /// Takes the next valid RX chain into `rx_chain`; false if the driver has none.
    fn take_rx_chain(&mut self) -> bool {
        if self.rx_held {
            return true;
        }
        loop {
            let Some(chain) = self.queues[RX_QUEUE].pop_descriptor_chain(&self.mem) else {
                if Self::avail_impossible(&self.queues[RX_QUEUE], &self.mem) {
                    self.mark_broken(RX_QUEUE, "impossible avail index");
                }
                return false;
            };
            match self.rx_chain.load(chain, &self.mem, &self.rings) {
                Ok(()) => {
                    self.rx_held = true;
                    return true;
                }
                Err(reason) => {
                    self.metrics.bad(reason);
                    self.rx_used.push(self.rx_chain.head, 0);
                }
            }
        }
    }

    /// Moves the muxer's packets into guest RX chains; returns whether an interrupt is
    /// wanted.
    fn process_rx(&mut self, now: Instant) -> bool {
        if self.broken[RX_QUEUE] {
            return false;
        }
        let budget = usize::from(self.queues[RX_QUEUE].size());
        for _ in 0..budget {
            if !self.muxer.has_rx_work() || !self.take_rx_chain() {
                break;
            }
            match self.muxer.fill_rx(&self.rx_chain, now) {
                Some(len) => {
                    self.rx_used.push(self.rx_chain.head, len);
                    self.rx_held = false;
                    VsockMetrics::add(&self.metrics.rx_packets, 1);
                }
                None => break,
            }
        }
        self.publish(RX_QUEUE)
    }

    /// Sets what the driver should kick for: TX always, RX only while packets wait for a
    /// buffer, the event queue never. Returns true if work arrived meanwhile (pass again
    /// without waiting).
    fn set_notifications(&mut self) -> bool {
        let rx_starved = self.muxer.has_rx_work() && !self.rx_held;
        let mut more = false;
        for q in [RX_QUEUE, TX_QUEUE, EVENT_QUEUE] {
            if self.broken[q] {
                continue;
            }
            let want = match q {
                TX_QUEUE => true,
                RX_QUEUE => rx_starved,
                _ => false,
            };
            let queue = &mut self.queues[q];
            let result = if want {
                queue.enable_notification(&self.mem).map_err(drop)
            } else if queue.event_idx_enabled() {
                // Half the index space away: the driver's avail index never passes it.
                let far = queue.next_avail().wrapping_add(0x8000);
                set_avail_event(queue, &self.mem, far)
                    .map(|()| false)
                    .map_err(drop)
            } else {
                queue
                    .disable_notification(&self.mem)
                    .map(|()| false)
                    .map_err(drop)
            };
            match result {
                Ok(m) => more |= m,
                Err(()) => VsockMetrics::add(&self.metrics.used_ring_errors, 1),
            }
        }
        more
    }
}

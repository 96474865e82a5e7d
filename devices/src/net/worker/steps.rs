//! The worker's loop, one pass at a time: [`NetWorker::before_wait`] (how long the loop may
//! wait, with the backend's polls armed), a wait on the ring, [`NetWorker::after_wait`] (the
//! completions, TX, RX, at most one interrupt). A worker thread of its own runs them in
//! [`NetWorker::run`]; a shared device thread (`crate::pool`) interleaves them with other
//! devices' passes. Nothing here blocks except [`NetWorker::wait`] and the stop-time
//! [`NetWorker::finish`].

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::{NetWorker, WorkerParts, INTERACTIVE_RX_BYTES, POLL_TICK, SPIN};
use crate::event_loop::{Event, EventLoopError};
use crate::net::metrics::NetMetrics;
use crate::net::{RX_QUEUE, TX_QUEUE};
use crate::virtio::interrupt::INT_USED_RING;

/// What the loop carries from one pass to the next.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StepState {
    /// Event index of the RX kick eventfd.
    rx_idx: usize,
    /// Event index of the TX kick eventfd.
    tx_idx: usize,
    /// Event index of the stop eventfd.
    stop_idx: usize,
    /// When the worker last did work worth polling on.
    last_activity: Option<Instant>,
    /// Work may be waiting without a completion to say so (right after activation).
    pending: bool,
    /// The last wait was a real sleep (notifications on), not a poll.
    sleeping: bool,
}

impl NetWorker {
    /// Runs until the stop eventfd fires or the loop fails; returns the backend and pcap sink.
    /// This is the thread-per-device loop; a shared device thread drives the same steps
    /// ([`Self::start`], [`Self::before_wait`], [`Self::after_wait`]) from its own loop
    /// (`crate::pool`).
    pub(crate) fn run(mut self, stop_fd: RawFd) -> WorkerParts {
        if let Err(e) = self.run_inner(stop_fd) {
            tracing::error!(error = %e, backend = self.parts.backend.name(), "virtio-net worker stopped");
        }
        self.finish()
    }

    /// Releases what the loop holds once it has stopped: waits for the ring to settle,
    /// syncs the capture, and hands back the backend and pcap sink.
    pub(crate) fn finish(mut self) -> WorkerParts {
        if let Ok(mut counters) = self.metrics.backend.lock() {
            *counters = self.parts.backend.counters();
        }
        // Writes through the ring still reference `tx_slots` and guest memory, and armed polls
        // keep the backend's descriptors (a tap, listening sockets) open past our exit.
        let mut events = Vec::new();
        if !self.lp.quiesce(Duration::from_secs(2), &mut events) {
            tracing::warn!(
                io_in_flight = self.lp.io_in_flight(),
                "virtio-net: the ring did not settle at stop"
            );
        }
        if self.lp.io_in_flight() > 0 {
            tracing::error!("virtio-net: TX writes did not complete; leaking their buffers");
            std::mem::forget(std::mem::take(&mut self.tx_slots));
            std::mem::forget(self.mem.clone());
        }
        if let Some(p) = self.parts.pcap.as_mut() {
            // Everything captured so far is in the output when the worker has stopped.
            p.sync();
        }
        self.parts
    }

    fn run_inner(&mut self, stop_fd: RawFd) -> Result<(), EventLoopError> {
        self.start(stop_fd)?;
        loop {
            let timeout = self.before_wait()?;
            self.wait(timeout)?;
            if self.after_wait()? {
                return Ok(());
            }
        }
    }

    /// The descriptor of the worker's ring: readable while completions wait to be handled
    /// (what a shared device thread polls).
    pub(crate) fn ring_fd(&self) -> RawFd {
        self.lp.ring_fd()
    }

    /// The backend's name, for log lines.
    pub(crate) fn backend_name(&self) -> &str {
        self.parts.backend.name()
    }

    /// Registers the kick and stop eventfds on the ring; call once before the first pass.
    pub(crate) fn start(&mut self, stop_fd: RawFd) -> Result<(), EventLoopError> {
        let rx_idx = self.lp.add_eventfd(self.queue_evts[RX_QUEUE].as_raw_fd())?;
        let tx_idx = self.lp.add_eventfd(self.queue_evts[TX_QUEUE].as_raw_fd())?;
        let stop_idx = self.lp.add_eventfd(stop_fd)?;
        self.step = StepState {
            rx_idx,
            tx_idx,
            stop_idx,
            last_activity: None,
            // Work may have been queued before activation (drivers fill RX first).
            pending: true,
            sleeping: false,
        };
        Ok(())
    }

    /// Submits what the last pass queued and waits for completions (at most `timeout`;
    /// `None`: until one arrives; zero: never blocks, and makes no syscall with nothing
    /// queued).
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> Result<(), EventLoopError> {
        self.lp.wait(timeout, &mut self.events)
    }

    /// Whether completions are waiting to be handled by [`Self::after_wait`].
    pub(crate) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Decides how long the loop may wait before the next pass (polling window, starvation,
    /// backend timers) and arms the backend's polls; `None` means until something happens.
    pub(crate) fn before_wait(&mut self) -> Result<Option<Duration>, EventLoopError> {
        let now = Instant::now();
        let window = self.poll_window.current();
        let last_activity = self.step.last_activity;
        let pending = self.step.pending;
        // Starved for RX room, polling would only watch the guest refill buffers one by
        // one; the driver kicks once it has posted a batch instead.
        let polling = pending
            || (self.rx_starved_since.is_none()
                && last_activity.is_some_and(|t| now.duration_since(t) < window));
        self.step.sleeping = false;
        let mut timeout = if polling {
            let since = last_activity.map_or(Duration::ZERO, |t| now.duration_since(t));
            if pending || since < SPIN {
                Some(Duration::ZERO)
            } else {
                // Past the spin: sleep in short ticks (any completion still wakes us at
                // once) so a vCPU thread sharing our CPU gets to run; the rings are
                // checked each tick with notifications still suppressed.
                NetMetrics::add(&self.metrics.poll_ticks, 1);
                Some(POLL_TICK.min(window.saturating_sub(since)))
            }
        } else {
            if self.pcap_dirty {
                self.flush_pcap();
            }
            if self.enable_notifications(now) {
                Some(Duration::ZERO)
            } else {
                self.step.sleeping = true;
                // Starved: wake after `starve_wait` to deliver into what the driver
                // posted meanwhile, however little. Past it (nothing was posted), the
                // kick comes with the driver's next buffer.
                self.rx_starved_since
                    .map(|t| now.duration_since(t))
                    .filter(|&waited| waited < self.starve_wait)
                    .map(|waited| self.starve_wait - waited)
            }
        };
        if let Some(deadline) = self.parts.backend.next_deadline() {
            let d = deadline.saturating_duration_since(now);
            timeout = Some(timeout.map_or(d, |t| t.min(d)));
        }
        self.arm_backend()?;
        Ok(timeout)
    }

    /// One pass after a wait: handles the completions, runs TX and RX, raises at most one
    /// interrupt. Returns true when the stop eventfd fired (the loop must end).
    pub(crate) fn after_wait(&mut self) -> Result<bool, EventLoopError> {
        let StepState {
            rx_idx,
            tx_idx,
            stop_idx,
            ..
        } = self.step;
        NetMetrics::add(&self.metrics.loop_iterations, 1);

        if let Some(mut sink) = self.parts.capture.take_change() {
            if let Some(s) = sink.as_mut() {
                s.report_to(self.metrics.clone());
            }
            // The old sink (if any) hands over its last batch and ends its writer.
            self.parts.pcap = sink;
        }
        let mut events = std::mem::take(&mut self.events);
        if self.step.sleeping && self.rx_starved_since.is_none() {
            if let Some(t) = self.step.last_activity {
                let kicked = events
                    .iter()
                    .any(|e| matches!(e, Event::Eventfd(i) if *i == rx_idx || *i == tx_idx));
                self.poll_window.after_sleep(t.elapsed(), kicked);
            }
        }
        let mut stop = false;
        for ev in events.drain(..) {
            match ev {
                Event::Eventfd(i) if i == stop_idx => {
                    stop = true;
                    break;
                }
                Event::Eventfd(i) if i == rx_idx => NetMetrics::add(&self.metrics.rx_kicks, 1),
                Event::Eventfd(i) if i == tx_idx => NetMetrics::add(&self.metrics.tx_kicks, 1),
                Event::Eventfd(_) => {}
                Event::Fd {
                    token,
                    readable,
                    writable,
                } => {
                    self.rx_maybe_pending = true;
                    self.parts.backend.on_fd_ready(token, readable, writable)
                }
                Event::IoDone { token, result } => self.tx_write_done(token as usize, result),
            }
        }
        self.events = events;
        if stop {
            return Ok(true);
        }
        let now = Instant::now();
        if let Some(deadline) = self.parts.backend.next_deadline() {
            if deadline <= now {
                self.parts.backend.on_timer(now);
            }
        }

        if self.notifications_on {
            self.disable_notifications();
        }
        let (tx_work, tx_irq) = self.process_tx();
        let (rx_work, rx_bytes, rx_irq) = self.process_rx(now);
        if tx_irq || rx_irq {
            self.interrupt.set_status(INT_USED_RING);
            self.lp
                .signal_eventfd(self.interrupt.eventfd().as_raw_fd())?;
            NetMetrics::add(&self.metrics.interrupts, 1);
        }
        self.step.pending = false;
        // Poll on after guest TX and after small deliveries, not after bulk ones.
        if tx_work || (rx_work && rx_bytes < INTERACTIVE_RX_BYTES) {
            self.step.last_activity = Some(Instant::now());
        }
        Ok(false)
    }
}

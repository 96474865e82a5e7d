//! A virtio-net worker served by a shared device thread ([`crate::pool`]) instead of a
//! thread of its own: the same passes as the worker thread's loop ([`NetWorker::run`]), one
//! per turn, with the waiting done by the shared thread's ring.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::worker::{NetWorker, WorkerParts};
use crate::event_loop::EventLoopError;
use crate::pool::{PooledDevice, Turn};

/// One device's worker on a shared thread.
pub(crate) struct PooledNet {
    worker: NetWorker,
    /// The device's stop eventfd (a duplicate; the device keeps the other end).
    stop: EventFd,
    started: bool,
    /// Where the backend goes when the worker is finished (the device waits on it).
    reply: mpsc::SyncSender<WorkerParts>,
}

impl PooledNet {
    pub(crate) fn new(
        worker: NetWorker,
        stop: EventFd,
        reply: mpsc::SyncSender<WorkerParts>,
    ) -> Self {
        PooledNet {
            worker,
            stop,
            started: false,
            reply,
        }
    }

    fn pass(&mut self) -> Result<Turn, EventLoopError> {
        if self.started {
            // Whatever completed since the last turn (this is what woke us, or the deadline).
            self.worker.wait(Some(Duration::ZERO))?;
            if self.worker.after_wait()? {
                return Ok(Turn::Stop);
            }
        } else {
            self.started = true;
            self.worker.start(self.stop.as_raw_fd())?;
        }
        let timeout = self.worker.before_wait()?;
        // Submit what the pass queued (re-armed polls, the interrupt) without waiting; the
        // shared thread waits for this ring's next completion.
        self.worker.wait(Some(Duration::ZERO))?;
        Ok(Turn::Wait(if self.worker.has_events() {
            Some(Duration::ZERO)
        } else {
            timeout
        }))
    }
}

impl PooledDevice for PooledNet {
    fn wake_fd(&self) -> RawFd {
        self.worker.ring_fd()
    }

    fn turn(&mut self) -> Turn {
        self.pass().unwrap_or_else(|e| {
            tracing::error!(error = %e, backend = self.worker.backend_name(), "virtio-net worker stopped");
            Turn::Stop
        })
    }

    fn finish(self: Box<Self>) {
        let PooledNet {
            worker,
            stop,
            reply,
            ..
        } = *self;
        let parts = worker.finish();
        drop(stop);
        // The device may be gone already (its owner stopped waiting); the backend is then
        // dropped here.
        let _ = reply.send(parts);
    }
}

//! An in-memory backend for tests and benchmarks.
//!
//! TX frames are captured (or only counted, or echoed back to the guest); RX frames are
//! injected through a [`LoopbackHandle`] from any thread, which wakes the device worker through
//! an eventfd the worker polls like any backend descriptor. It copies (frames live in `Vec`s),
//! so it measures the device's own cost, not a zero-copy path.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{BackendError, FdInterest, NetBackend, RxBuf, RxFrame, TxFrame};
use crate::net::header::VirtioNetHdr;

/// What the loopback does with frames the guest sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopbackMode {
    /// Keep them for [`LoopbackHandle::take_sent`].
    Capture,
    /// Only count them.
    Discard,
    /// Queue them back to the guest as RX frames.
    Echo,
}

#[derive(Debug, Default)]
struct Queues {
    to_guest: VecDeque<Vec<u8>>,
    from_guest: VecDeque<(VirtioNetHdr, Vec<u8>)>,
}

#[derive(Debug)]
struct Shared {
    queues: Mutex<Queues>,
    sent_cv: Condvar,
    wake: EventFd,
    sent: AtomicU64,
    delivered: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // A poisoned lock only means a test thread panicked; the queues are still usable.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The test side of a [`LoopbackBackend`].
#[derive(Debug, Clone)]
pub struct LoopbackHandle {
    shared: Arc<Shared>,
}

impl LoopbackHandle {
    /// Queues `frame` (an Ethernet frame) for delivery to the guest and wakes the worker.
    pub fn inject(&self, frame: &[u8]) {
        self.shared.lock().to_guest.push_back(frame.to_vec());
        let _ = self.shared.wake.write(1);
    }

    /// Frames not yet delivered to the guest.
    pub fn pending_to_guest(&self) -> usize {
        self.shared.lock().to_guest.len()
    }

    /// Takes the captured TX frames (header, Ethernet frame).
    pub fn take_sent(&self) -> Vec<(VirtioNetHdr, Vec<u8>)> {
        self.shared.lock().from_guest.drain(..).collect()
    }

    /// Frames the guest sent so far (all modes).
    pub fn sent_count(&self) -> u64 {
        self.shared.sent.load(Ordering::Acquire)
    }

    /// Frames delivered to the guest so far.
    pub fn delivered_count(&self) -> u64 {
        self.shared.delivered.load(Ordering::Acquire)
    }

    /// Waits until at least `n` frames were sent by the guest or `timeout` passed; returns
    /// the count seen.
    pub fn wait_sent(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut q = self.shared.lock();
        loop {
            let sent = self.sent_count();
            let now = Instant::now();
            if sent >= n || now >= deadline {
                return sent;
            }
            q = match self.shared.sent_cv.wait_timeout(q, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// The device side: implements [`NetBackend`] over in-memory queues.
#[derive(Debug)]
pub struct LoopbackBackend {
    shared: Arc<Shared>,
    mode: LoopbackMode,
}

impl LoopbackBackend {
    /// Creates a backend and the handle that feeds and observes it.
    pub fn new(mode: LoopbackMode) -> std::io::Result<(Self, LoopbackHandle)> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            sent_cv: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK)?,
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        });
        Ok((
            Self {
                shared: shared.clone(),
                mode,
            },
            LoopbackHandle { shared },
        ))
    }
}

/// Copies a scatter list into a new `Vec`.
fn gather(slices: &[std::io::IoSlice<'_>], len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    for s in slices {
        v.extend_from_slice(s);
    }
    v
}

impl NetBackend for LoopbackBackend {
    fn name(&self) -> &str {
        "loopback"
    }

    fn send(&mut self, frame: &TxFrame<'_>) -> Result<(), BackendError> {
        match self.mode {
            LoopbackMode::Discard => {}
            LoopbackMode::Capture => {
                let bytes = gather(frame.frame, frame.frame_len);
                self.shared
                    .lock()
                    .from_guest
                    .push_back((frame.header, bytes));
            }
            LoopbackMode::Echo => {
                let bytes = gather(frame.frame, frame.frame_len);
                self.shared.lock().to_guest.push_back(bytes);
            }
        }
        self.shared.sent.fetch_add(1, Ordering::AcqRel);
        self.shared.sent_cv.notify_all();
        Ok(())
    }

    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError> {
        let Some(bytes) = self.shared.lock().to_guest.pop_front() else {
            return Ok(None);
        };
        let mut off = 0;
        for s in buf.frame.iter_mut() {
            if off == bytes.len() {
                break;
            }
            let n = s.len().min(bytes.len() - off);
            s[..n].copy_from_slice(&bytes[off..off + n]);
            off += n;
        }
        self.shared.delivered.fetch_add(1, Ordering::AcqRel);
        Ok(Some(RxFrame::Frame {
            len: bytes.len(),
            header: VirtioNetHdr::default(),
        }))
    }

    fn rx_frame_len(&mut self) -> Option<usize> {
        self.shared.lock().to_guest.front().map(Vec::len)
    }

    fn rx_pending(&self) -> Option<bool> {
        Some(!self.shared.lock().to_guest.is_empty())
    }

    fn interests(&mut self, rx_space: bool, out: &mut Vec<FdInterest>) {
        if rx_space {
            out.push(FdInterest {
                fd: self.shared.wake.as_raw_fd(),
                token: 0,
                readable: true,
                writable: false,
            });
        }
    }

    fn on_fd_ready(&mut self, _token: u64, _readable: bool, _writable: bool) {
        let _ = self.shared.wake.read();
    }
}

//! Shared device threads: one io_uring loop serving the queues of many devices (design §2,
//! wave 2; issue 18 item 3).
//!
//! A [`DeviceThread`] is one thread with one io_uring ring of its own (the *pool ring*). Each
//! device attached to it keeps its own worker state and its own small ring (kick eventfds,
//! the stop eventfd, backend sockets, interrupt writes: exactly what a worker thread of its
//! own would have), and the pool ring holds one poll on each device ring's descriptor, which
//! turns readable when that ring has completions. One pass of the thread:
//!
//! 1. every device that is *due* (its ring fired, or the deadline it asked for passed) gets one
//!    turn: its completions are drained, TX and RX run (bounded batches, so no device can
//!    hold the thread), and it says how long it may wait next;
//! 2. the pool ring's polls are brought in line with the devices present (one slice
//!    comparison when nothing changed) and the thread waits for the first ring to fire or the
//!    earliest deadline.
//!
//! A device that is polling its rings (the adaptive window after activity) asks for a zero
//! wait and is turned again on the next pass, between the other devices' turns: polling
//! costs the shared thread what it would cost a thread of its own, without starving the
//! others. A device leaves when its stop eventfd fires (the device's reset or drop): the
//! thread finishes it (cancels its polls, waits for its in-flight writes, syncs its capture)
//! and hands its backend back to the device, which is waiting for exactly that.
//!
//! This module owns the thread, its ring and the list of devices; it never touches guest
//! memory or a backend itself (that is the device's turn), and never installs a seccomp filter
//! (the [`ThreadLauncher`] it is started with does, as for a worker thread of its own).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::event_loop::{Event, EventLoop, EventLoopError};
use crate::net::backend::FdInterest;
use crate::thread::ThreadLauncher;

/// Submission slots of the pool ring: one poll per device is armed at a time, and a full
/// queue is flushed to the kernel, so this bounds batching, not the number of devices.
const POOL_RING_ENTRIES: u32 = 256;

/// What a device asks for after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Turn it again when its ring fires, or after this long at the latest (`None`: only
    /// when its ring fires).
    Wait(Option<Duration>),
    /// It is done: call [`PooledDevice::finish`] and forget it.
    Stop,
}

/// A device served by a shared thread.
pub(crate) trait PooledDevice: Send {
    /// The descriptor that polls readable when the device has completions to handle.
    fn wake_fd(&self) -> RawFd;
    /// One pass: handle what happened, do a bounded amount of work, prepare the next wait.
    fn turn(&mut self) -> Turn;
    /// Releases the device once it stopped (or the thread ends); may block briefly.
    fn finish(self: Box<Self>);
}

/// Why a shared device thread could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceThreadError {
    /// The pool ring could not be created.
    #[error("shared device thread: {0}")]
    Ring(#[from] EventLoopError),
    /// The control eventfd or the thread could not be created.
    #[error("cannot start the shared device thread: {0}")]
    Spawn(#[source] io::Error),
    /// The thread ended (it failed; the log says why), so it takes no new devices.
    #[error("the shared device thread has ended; start the VM on another one")]
    Gone,
}

/// What the handles and the thread share.
struct Shared {
    /// Devices attached and not yet finished.
    devices: AtomicUsize,
    /// Passes of the thread's loop (for tests and benchmarks).
    passes: AtomicUsize,
}

/// The handles' side: how devices reach the thread, and its end.
struct Inner {
    name: String,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn PooledDevice>>>>,
    wake: EventFd,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone, so no device holds one: every device has left already
        // (a device keeps its handle until its worker is finished). End the thread.
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// A shared device thread: one io_uring loop serving the virtqueues and backends of many
/// devices. Cloning gives another handle to the same thread; the thread ends when the last
/// handle is dropped (devices hold one while they run, so it outlives them).
///
/// Give a clone to each device that should run on it ([`crate::net::NetConfig::pool`]).
///
/// ```
/// use devices::pool::DeviceThread;
/// use devices::thread::ThreadLauncher;
///
/// let thread = DeviceThread::spawn("rf-dev0", &ThreadLauncher::direct())?;
/// assert_eq!(thread.devices(), 0);
/// assert_eq!(thread.name(), "rf-dev0");
/// drop(thread); // ends and joins the thread
/// # Ok::<(), devices::pool::DeviceThreadError>(())
/// ```
#[derive(Clone)]
pub struct DeviceThread(Arc<Inner>);

impl std::fmt::Debug for DeviceThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceThread")
            .field("name", &self.0.name)
            .field("devices", &self.devices())
            .finish()
    }
}

impl DeviceThread {
    /// Starts a shared device thread called `name` through `launcher` (which decides which
    /// thread creates it and what it runs under: the VMM's installs the device worker's
    /// seccomp filter, as for a worker thread of one device).
    pub fn spawn(name: &str, launcher: &ThreadLauncher) -> Result<Self, DeviceThreadError> {
        let ring = EventLoop::new(POOL_RING_ENTRIES)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(DeviceThreadError::Spawn)?;
        let thread_wake = wake.try_clone().map_err(DeviceThreadError::Spawn)?;
        let (jobs, incoming) = mpsc::channel::<Box<dyn PooledDevice>>();
        let shared = Arc::new(Shared {
            devices: AtomicUsize::new(0),
            passes: AtomicUsize::new(0),
        });
        let thread_shared = shared.clone();
        let body = Box::new(move || {
            let mut pool = PoolLoop {
                ring,
                wake: thread_wake,
                incoming,
                shared: thread_shared,
                slots: Vec::new(),
                free: Vec::new(),
                interests: Vec::new(),
                events: Vec::new(),
                closed: false,
            };
            if let Err(e) = pool.run() {
                tracing::error!(error = %e, "shared device thread failed; its devices stop");
            }
            pool.finish_all();
        });
        let handle = launcher
            .launch(name, body)
            .map_err(DeviceThreadError::Spawn)?;
        Ok(DeviceThread(Arc::new(Inner {
            name: name.to_string(),
            jobs: Mutex::new(Some(jobs)),
            wake,
            shared,
            thread: Mutex::new(Some(handle)),
        })))
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Devices attached and running on this thread now.
    pub fn devices(&self) -> usize {
        self.0.shared.devices.load(Ordering::Relaxed)
    }

    /// Passes of the thread's loop so far (each turns every due device once).
    pub fn passes(&self) -> usize {
        self.0.shared.passes.load(Ordering::Relaxed)
    }

    /// Handles held: the caller's, clones kept for later devices, and one per running
    /// device. What a [`crate::net::NetConfig::pool`] balancer compares.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// Hands `device` to the thread; it gets its first turn at once.
    pub(crate) fn attach(&self, device: Box<dyn PooledDevice>) -> Result<(), DeviceThreadError> {
        let jobs = self.0.jobs.lock().map_err(|_| DeviceThreadError::Gone)?;
        let sender = jobs.as_ref().ok_or(DeviceThreadError::Gone)?;
        // Counted before the thread sees it, so `devices()` never misses a device that
        // was attached.
        self.0.shared.devices.fetch_add(1, Ordering::Relaxed);
        if sender.send(device).is_err() {
            self.0.shared.devices.fetch_sub(1, Ordering::Relaxed);
            return Err(DeviceThreadError::Gone);
        }
        self.0.wake.write(1).map_err(DeviceThreadError::Spawn)
    }
}

/// One attached device and when it wants its next turn.
struct Slot {
    device: Box<dyn PooledDevice>,
    /// Its ring fired (or it just arrived).
    due: bool,
    /// Turn it at this time even if its ring stays quiet.
    deadline: Option<Instant>,
}

/// The thread's state.
struct PoolLoop {
    ring: EventLoop,
    wake: EventFd,
    incoming: mpsc::Receiver<Box<dyn PooledDevice>>,
    shared: Arc<Shared>,
    /// Attached devices; the index is the token of the poll on its ring.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    interests: Vec<FdInterest>,
    events: Vec<Event>,
    /// Every handle is gone: end once the last device left.
    closed: bool,
}

impl PoolLoop {
    fn run(&mut self) -> Result<(), EventLoopError> {
        let wake_idx = self.ring.add_eventfd(self.wake.as_raw_fd())?;
        self.take_new();
        loop {
            self.shared.passes.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for index in 0..self.slots.len() {
                let Some(slot) = self.slots[index].as_mut() else {
                    continue;
                };
                if slot.due || slot.deadline.is_some_and(|d| d <= now) {
                    match slot.device.turn() {
                        Turn::Wait(wait) => {
                            slot.due = false;
                            slot.deadline = wait.map(|w| Instant::now() + w);
                        }
                        Turn::Stop => {
                            self.remove(index);
                            continue;
                        }
                    }
                }
                if let Some(d) = slot.deadline {
                    next = Some(next.map_or(d, |n: Instant| n.min(d)));
                }
            }
            if self.closed && self.slots.iter().all(Option::is_none) {
                return Ok(());
            }
            self.interests.clear();
            for (index, slot) in self.slots.iter().enumerate() {
                if let Some(s) = slot {
                    self.interests.push(FdInterest {
                        fd: s.device.wake_fd(),
                        token: index as u64,
                        readable: true,
                        writable: false,
                    });
                }
            }
            self.ring.sync_fds(&self.interests)?;
            let timeout = if self.events.is_empty() {
                next.map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            self.ring.wait(timeout, &mut self.events)?;
            let mut events = std::mem::take(&mut self.events);
            for ev in events.drain(..) {
                match ev {
                    Event::Eventfd(i) if i == wake_idx => self.take_new(),
                    Event::Fd { token, .. } => {
                        if let Some(Some(slot)) = self.slots.get_mut(token as usize) {
                            slot.due = true;
                        }
                    }
                    _ => {}
                }
            }
            self.events = events;
        }
    }

    /// Takes the devices attached since the last look; notes when every handle is gone.
    fn take_new(&mut self) {
        loop {
            match self.incoming.try_recv() {
                Ok(device) => {
                    let slot = Slot {
                        device,
                        due: true,
                        deadline: None,
                    };
                    match self.free.pop() {
                        Some(i) => self.slots[i] = Some(slot),
                        None => self.slots.push(Some(slot)),
                    }
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// A device stopped: finish it and free its slot (its ring poll is cancelled by the next
    /// `sync_fds`, before the slot can be reused by a new device's poll).
    fn remove(&mut self, index: usize) {
        if let Some(slot) = self.slots[index].take() {
            // Cancel the poll on its ring before the ring is closed, so a later device in this
            // slot whose ring gets the same descriptor number is polled afresh.
            self.interests.retain(|i| i.token != index as u64);
            if let Err(e) = self.ring.sync_fds(&self.interests) {
                tracing::warn!(error = %e, "shared device thread: cannot cancel a poll");
            }
            // Counted out before its owner hears back, so `devices()` is exact once the
            // owner's stop returned.
            self.shared.devices.fetch_sub(1, Ordering::Relaxed);
            slot.device.finish();
            self.free.push(index);
        }
    }

    /// The loop failed or ended: finish every device still attached (their owners wait).
    fn finish_all(&mut self) {
        self.take_new();
        for index in 0..self.slots.len() {
            self.remove(index);
        }
    }
}

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
///
/// ```
/// use devices::pool::DeviceThreadError;
///
/// assert!(DeviceThreadError::Gone.to_string().contains("has ended"));
/// ```
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
    ///
    /// ```
    /// # use devices::{pool::DeviceThread, thread::ThreadLauncher};
    /// let threads: Vec<DeviceThread> = (0..2)
    ///     .map(|i| DeviceThread::spawn(&format!("rf-devices-{i}"), &ThreadLauncher::direct()))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(threads.len(), 2);
    /// # Ok::<(), devices::pool::DeviceThreadError>(())
    /// ```
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
    ///
    /// ```
    /// # use devices::{pool::DeviceThread, thread::ThreadLauncher};
    /// let t = DeviceThread::spawn("rf-devices-0", &ThreadLauncher::direct())?;
    /// assert_eq!(t.name(), "rf-devices-0");
    /// # Ok::<(), devices::pool::DeviceThreadError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Devices attached and running on this thread now.
    ///
    /// ```
    /// # use devices::{pool::DeviceThread, thread::ThreadLauncher};
    /// let t = DeviceThread::spawn("rf-devices-0", &ThreadLauncher::direct())?;
    /// assert_eq!(t.devices(), 0); // a device attaches when its guest activates it
    /// # Ok::<(), devices::pool::DeviceThreadError>(())
    /// ```
    pub fn devices(&self) -> usize {
        self.0.shared.devices.load(Ordering::Relaxed)
    }

    /// Passes of the thread's loop so far (each turns every due device once).
    ///
    /// ```
    /// # use devices::{pool::DeviceThread, thread::ThreadLauncher};
    /// let t = DeviceThread::spawn("rf-devices-0", &ThreadLauncher::direct())?;
    /// let before = t.passes();
    /// assert!(t.passes() >= before);
    /// # Ok::<(), devices::pool::DeviceThreadError>(())
    /// ```
    pub fn passes(&self) -> usize {
        self.0.shared.passes.load(Ordering::Relaxed)
    }

    /// Handles held: the caller's, clones kept for later devices, and one per device given
    /// this thread ([`crate::net::NetConfig::pool`]), from its creation to its drop: what a
    /// balancer placing new devices compares.
    ///
    /// ```
    /// # use devices::{pool::DeviceThread, thread::ThreadLauncher};
    /// let t = DeviceThread::spawn("rf-devices-0", &ThreadLauncher::direct())?;
    /// let for_a_device = t.clone();
    /// assert_eq!(t.handles(), 2);
    /// drop(for_a_device);
    /// assert_eq!(t.handles(), 1);
    /// # Ok::<(), devices::pool::DeviceThreadError>(())
    /// ```
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
                    // A device that panics (a bug) stops alone; the others keep their thread.
                    let device = &mut slot.device;
                    let turn =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.turn()))
                            .unwrap_or_else(|_| {
                                tracing::error!(
                                    "a device panicked on the shared device thread; it is stopped"
                                );
                                Turn::Stop
                            });
                    match turn {
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
            let device = slot.device;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| device.finish())).is_err() {
                tracing::error!(
                    "a device panicked while it was finished on the shared device thread"
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A device whose "ring" is an eventfd: it counts its turns, stops when told, and can be
    /// made to panic on its next turn.
    struct Fake {
        wake: EventFd,
        turns: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
        panic: Arc<AtomicBool>,
        finished: mpsc::Sender<()>,
    }

    impl PooledDevice for Fake {
        fn wake_fd(&self) -> RawFd {
            self.wake.as_raw_fd()
        }

        fn turn(&mut self) -> Turn {
            // Consume the wake-up, as a device drains its ring.
            let _ = self.wake.read();
            self.turns.fetch_add(1, Ordering::SeqCst);
            if self.panic.load(Ordering::SeqCst) {
                panic!("a device bug");
            }
            if self.stop.load(Ordering::SeqCst) {
                Turn::Stop
            } else {
                Turn::Wait(None)
            }
        }

        fn finish(self: Box<Self>) {
            let _ = self.finished.send(());
        }
    }

    struct Handle {
        wake: EventFd,
        turns: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
        panic: Arc<AtomicBool>,
        finished: mpsc::Receiver<()>,
    }

    fn fake(thread: &DeviceThread) -> Handle {
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let (finished_tx, finished) = mpsc::channel();
        let h = Handle {
            wake: wake.try_clone().unwrap(),
            turns: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            panic: Arc::new(AtomicBool::new(false)),
            finished,
        };
        thread
            .attach(Box::new(Fake {
                wake,
                turns: h.turns.clone(),
                stop: h.stop.clone(),
                panic: h.panic.clone(),
                finished: finished_tx,
            }))
            .unwrap();
        h
    }

    fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..5000 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("not within 5 s: {what}");
    }

    #[test]
    fn a_device_is_turned_when_its_ring_fires_and_leaves_when_it_stops() {
        let thread = DeviceThread::spawn("rf-pool-test", &ThreadLauncher::direct()).unwrap();
        let a = fake(&thread);
        let b = fake(&thread);
        until("both got their first turn", || {
            a.turns.load(Ordering::SeqCst) == 1 && b.turns.load(Ordering::SeqCst) == 1
        });
        assert_eq!(thread.devices(), 2);
        // Only the device whose ring fired is turned.
        a.wake.write(1).unwrap();
        until("a turned again", || a.turns.load(Ordering::SeqCst) == 2);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(b.turns.load(Ordering::SeqCst), 1, "b's ring stayed quiet");
        // A device that says Stop is finished and counted out; the other stays.
        a.stop.store(true, Ordering::SeqCst);
        a.wake.write(1).unwrap();
        a.finished.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(thread.devices(), 1);
        b.wake.write(1).unwrap();
        until("b still served", || b.turns.load(Ordering::SeqCst) == 2);
        b.stop.store(true, Ordering::SeqCst);
        b.wake.write(1).unwrap();
        b.finished.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(thread.devices(), 0);
    }

    #[test]
    fn a_device_that_panics_stops_alone() {
        let thread = DeviceThread::spawn("rf-pool-test", &ThreadLauncher::direct()).unwrap();
        let bad = fake(&thread);
        let good = fake(&thread);
        until("first turns", || good.turns.load(Ordering::SeqCst) == 1);
        bad.panic.store(true, Ordering::SeqCst);
        bad.wake.write(1).unwrap();
        bad.finished
            .recv_timeout(Duration::from_secs(5))
            .expect("the panicked device is finished");
        until("counted out", || thread.devices() == 1);
        good.wake.write(1).unwrap();
        until("the other device is still served", || {
            good.turns.load(Ordering::SeqCst) == 2
        });
        // The thread ends (when its handle is dropped) once no device is left.
        good.stop.store(true, Ordering::SeqCst);
        good.wake.write(1).unwrap();
        good.finished.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_thread_whose_handles_are_gone_takes_no_device() {
        let thread = DeviceThread::spawn("rf-pool-test", &ThreadLauncher::direct()).unwrap();
        let jobs = thread.0.jobs.lock().unwrap().take();
        drop(jobs);
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let (finished, _rx) = mpsc::channel();
        let err = thread
            .attach(Box::new(Fake {
                wake,
                turns: Arc::default(),
                stop: Arc::default(),
                panic: Arc::default(),
                finished,
            }))
            .unwrap_err();
        assert!(matches!(err, DeviceThreadError::Gone), "{err}");
        assert_eq!(thread.devices(), 0);
    }
}

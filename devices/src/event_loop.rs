//! The io_uring event loop of a device worker thread.
//!
//! # How a device thread waits
//!
//! Each device worker owns one io_uring ring and nothing else wakes it. Everything it reacts
//! to arrives as a completion on that ring:
//!
//! * **Queue kicks and the stop signal** are eventfds (the kick eventfds are the ones KVM
//!   signals as ioeventfds, so a guest kick never leaves the kernel on its way here). Each has
//!   a *multishot* poll armed once; every signal produces a completion, and the loop drains the
//!   counter with one non-blocking `read`. Kicks are rare by design (see below), so that read
//!   is not on the per-packet path.
//! * **Backend descriptors** (the tap fd; the netstack's host sockets) are polled with one-shot
//!   polls. Before each wait the worker passes the backend's current wishes to
//!   [`EventLoop::sync_fds`], which arms what is wanted and not armed and cancels what is
//!   armed and no longer wanted (a closed socket, or the tap while the guest has no RX
//!   buffers, so backpressure stays in the kernel instead of in a queue of ours). Each armed
//!   poll has its own slot, so a token or descriptor number reused by the backend can never
//!   be confused with a stale poll.
//! * **Interrupts** to the guest are eventfd writes (KVM's irqfd). They are queued as `Write`
//!   submissions from a static 8-byte value and go out with the next `io_uring_enter`, so
//!   raising an interrupt costs no extra syscall.
//! * **Timers** (the backend's next deadline, the end of the polling window) are the timeout
//!   argument of the wait itself (`IORING_ENTER_EXT_ARG`), so no timer descriptor exists.
//!
//! One loop iteration is: one `io_uring_enter` that submits everything queued since the last
//! one (re-armed polls, interrupt writes) and waits for at least one completion or the
//! timeout; then the worker drains all completions, processes every available TX chain and
//! as many RX frames as the backend has and the guest has room for, publishes each used ring
//! once, and queues at most one interrupt per queue. A batch of N frames costs one syscall
//! round, not N.
//!
//! # Staying out of the guest's way
//!
//! A kick costs the guest ~7 µs here (design §3 item 4). While frames keep arriving the
//! worker leaves notifications suppressed (`VIRTQ_USED_F_NO_NOTIFY`, or an `avail_event` left
//! behind with EVENT_IDX) and polls the avail rings instead, for an adaptive, bounded window
//! after the last activity. For the first microseconds the wait has a zero timeout and, when
//! nothing is queued, no syscall at all (completions are read from shared memory); after
//! that it sleeps in short ticks so a vCPU sharing the CPU can run. When the window passes
//! without work the worker re-enables notifications, re-checks the rings to close the race,
//! and blocks. An RX queue whose buffers the device still holds stays suppressed even then:
//! the driver kicks RX only when the device has run out of buffers.
//!
//! * **Frames to a tap** may be written through the ring too ([`EventLoop::writev`], iovecs
//!   straight into guest memory): a batch of N TX frames then costs no syscall of its own.
//!   The TX chain stays owned by the device until the write completes.
//!
//! * **Disk I/O** (virtio-blk) goes through the ring as well: [`EventLoop::readv_at`] and
//!   [`EventLoop::writev_at`] at the request's file offset, iovecs straight into guest memory,
//!   and [`EventLoop::fsync`]; only a ring made with [`EventLoop::with_file_io`] may run them.
//!
//! * **The ring can do nothing else.** It is created disabled and restricted
//!   (`IORING_REGISTER_RESTRICTIONS`) to the operations its user needs, no SQE flags and no
//!   later registrations, before it is enabled: [`EventLoop::new`] allows the four above (poll
//!   add/remove, write, writev); [`EventLoop::with_file_io`] adds readv and fsync for a disk
//!   image. seccomp cannot see the operations a ring runs, so this is what keeps a compromised
//!   worker from opening files or sockets through the ring (docs/security.md).
//!
//! This module never dereferences guest memory. The only operations that touch caller memory
//! are `readv`s and `writev`s, whose owner waits for them ([`EventLoop::quiesce`]) before
//! releasing their iovecs.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::register::Restriction;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::net::backend::FdInterest;

/// The value every interrupt eventfd write sends; static so in-flight writes never dangle.
static EVENTFD_ONE: u64 = 1;

const TAG_SHIFT: u32 = 56;
const TAG_EVENTFD: u64 = 1;
const TAG_FD: u64 = 2;
const TAG_SIGNAL: u64 = 3;
const TAG_CANCEL: u64 = 4;
const TAG_IO: u64 = 5;
const INDEX_MASK: u64 = (1 << TAG_SHIFT) - 1;

/// Something the worker must react to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The eventfd registered with this index was signalled (and drained).
    Eventfd(usize),
    /// A backend descriptor became ready.
    Fd {
        /// The backend's token.
        token: u64,
        /// Readable (or hung up / error: the backend finds out on its next read).
        readable: bool,
        /// Writable.
        writable: bool,
    },
    /// An I/O submitted with [`EventLoop::writev`], [`EventLoop::readv_at`],
    /// [`EventLoop::writev_at`] or [`EventLoop::fsync`] completed.
    IoDone {
        /// The caller's token.
        token: u64,
        /// Bytes written or read (0 for fsync), or a negative errno.
        result: i32,
    },
}

/// Why the loop failed.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// io_uring_setup failed (kernel without io_uring, or io_uring disabled by sysctl
    /// kernel.io_uring_disabled, or RLIMIT_MEMLOCK too low on old kernels).
    #[error("cannot create an io_uring with {entries} entries: {source}; check kernel.io_uring_disabled and the memlock limit")]
    Setup {
        /// Requested ring size.
        entries: u32,
        /// OS error.
        source: io::Error,
    },
    /// The kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11+).
    #[error("this kernel's io_uring lacks wait timeouts (IORING_FEAT_EXT_ARG, Linux 5.11+)")]
    NoExtArg,
    /// io_uring_enter failed.
    #[error("io_uring_enter failed: {0}")]
    Enter(io::Error),
    /// The ring could not be limited to the operations the loop uses.
    #[error("cannot restrict the io_uring to its operations (IORING_REGISTER_RESTRICTIONS, Linux 5.10+): {0}")]
    Restrict(io::Error),
}

/// The only operations the loop submits; the ring refuses every other one.
const ALLOWED_OPS: [u8; 4] = [
    opcode::PollAdd::CODE,
    opcode::PollRemove::CODE,
    opcode::Write::CODE,
    opcode::Writev::CODE,
];

/// What a disk-image ring ([`EventLoop::with_file_io`]) allows on top of [`ALLOWED_OPS`].
const FILE_IO_OPS: [u8; 2] = [opcode::Readv::CODE, opcode::Fsync::CODE];

/// What a backend poll waits for; identifies an armed poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PollKey {
    token: u64,
    fd: RawFd,
    readable: bool,
    writable: bool,
}

/// One armed backend poll (a slot of [`EventLoop::polls`]).
#[derive(Debug, Clone, Copy)]
struct ArmedPoll {
    key: PollKey,
    /// Seen in the current `sync_fds` round.
    wanted: bool,
    /// A cancel was submitted; its completion reports nothing.
    cancelling: bool,
}

/// One worker's ring plus the bookkeeping of what is armed on it.
pub struct EventLoop {
    ring: IoUring,
    eventfds: Vec<RawFd>,
    io_in_flight: usize,
    polls: Vec<Option<ArmedPoll>>,
    free_slots: Vec<usize>,
    armed: HashMap<PollKey, usize>,
    /// The `wanted` list of the last full [`EventLoop::sync_fds`] pass.
    last_wanted: Vec<FdInterest>,
    /// Polls that fired (and so are no longer armed) since the last `sync_fds`.
    fired: Vec<PollKey>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("eventfds", &self.eventfds)
            .field("armed", &self.armed.len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Creates a ring with `entries` submission slots that runs only the loop's own operations
    /// (polls, eventfd writes, `writev`).
    pub fn new(entries: u32) -> Result<Self, EventLoopError> {
        Self::with_ops(entries, &[])
    }

    /// Creates a ring that may also read, write and sync a file at an offset
    /// ([`readv_at`](Self::readv_at), [`writev_at`](Self::writev_at), [`fsync`](Self::fsync)):
    /// the ring of a virtio-blk worker.
    pub fn with_file_io(entries: u32) -> Result<Self, EventLoopError> {
        Self::with_ops(entries, &FILE_IO_OPS)
    }

    /// Creates a ring restricted to [`ALLOWED_OPS`] plus `extra`.
    fn with_ops(entries: u32, extra: &[u8]) -> Result<Self, EventLoopError> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(entries)
            .map_err(|source| EventLoopError::Setup { entries, source })?;
        if !ring.params().is_feature_ext_arg() {
            return Err(EventLoopError::NoExtArg);
        }
        // No SQE flags and no registrations are listed, so none are allowed either.
        let mut allowed: Vec<Restriction> = ALLOWED_OPS
            .iter()
            .chain(extra)
            .map(|&op| Restriction::sqe_op(op))
            .collect();
        let submitter = ring.submitter();
        submitter
            .register_restrictions(&mut allowed)
            .map_err(EventLoopError::Restrict)?;
        submitter
            .register_enable_rings()
            .map_err(EventLoopError::Restrict)?;
        Ok(Self {
            ring,
            eventfds: Vec::new(),
            io_in_flight: 0,
            polls: Vec::new(),
            free_slots: Vec::new(),
            armed: HashMap::new(),
            last_wanted: Vec::new(),
            fired: Vec::new(),
        })
    }

    /// Pushes one submission, flushing the queue to the kernel first if it is full.
    /// Queues a file or socket I/O whose completion is reported as [`Event::IoDone`] with
    /// `token` (below 2^56), and counts it in flight.
    fn push_io(&mut self, sqe: squeue::Entry, token: u64) -> Result<(), EventLoopError> {
        self.push(sqe.user_data((TAG_IO << TAG_SHIFT) | (token & INDEX_MASK)))?;
        self.io_in_flight += 1;
        Ok(())
    }

    fn push(&mut self, sqe: squeue::Entry) -> Result<(), EventLoopError> {
        loop {
            // SAFETY: every entry we build references no memory of ours except the static
            // `EVENTFD_ONE` (poll entries reference none), so nothing can dangle.
            let pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
            if pushed {
                return Ok(());
            }
            self.ring.submit().map_err(EventLoopError::Enter)?;
        }
    }

    /// Registers an eventfd (kick or stop) with a multishot poll; returns its index, reported
    /// back as [`Event::Eventfd`]. The caller keeps the descriptor open while the loop lives.
    pub fn add_eventfd(&mut self, fd: RawFd) -> Result<usize, EventLoopError> {
        let index = self.eventfds.len();
        self.eventfds.push(fd);
        self.arm_eventfd(index)?;
        Ok(index)
    }

    fn arm_eventfd(&mut self, index: usize) -> Result<(), EventLoopError> {
        let fd = self.eventfds[index];
        let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data((TAG_EVENTFD << TAG_SHIFT) | index as u64);
        self.push(sqe)
    }

    /// Arms a one-shot poll for `key`. `wanted` is the mark of the current `sync_fds` sweep
    /// (between passes every mark is clear).
    fn arm_poll(&mut self, key: PollKey, wanted: bool) -> Result<(), EventLoopError> {
        let slot = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.polls.push(None);
                self.polls.len() - 1
            }
        };
        let mut mask = 0u32;
        if key.readable {
            mask |= libc::POLLIN as u32;
        }
        if key.writable {
            mask |= libc::POLLOUT as u32;
        }
        let sqe = opcode::PollAdd::new(types::Fd(key.fd), mask)
            .build()
            .user_data((TAG_FD << TAG_SHIFT) | slot as u64);
        self.push(sqe)?;
        self.polls[slot] = Some(ArmedPoll {
            key,
            wanted,
            cancelling: false,
        });
        self.armed.insert(key, slot);
        Ok(())
    }

    /// Makes the armed backend polls match `wanted`: arms a one-shot poll for each wanted
    /// (token, fd, events) not armed yet and cancels armed ones no longer wanted.
    ///
    /// Called once per loop pass with every descriptor the backend watches. When the list is
    /// the same as last time (the common case: hundreds of idle flows, one busy), only the
    /// polls that fired since are re-armed, so a pass costs one slice comparison rather
    /// than a map lookup per descriptor (measured at 256 flows: 11 µs → see
    /// `benches/benches/netstack.rs`, `worker_pass`).
    pub fn sync_fds(&mut self, wanted: &[FdInterest]) -> Result<(), EventLoopError> {
        if wanted == self.last_wanted.as_slice() {
            let fired = std::mem::take(&mut self.fired);
            for key in &fired {
                if !self.armed.contains_key(key) {
                    self.arm_poll(*key, false)?;
                }
            }
            self.fired = fired;
            self.fired.clear();
            return Ok(());
        }
        self.fired.clear();
        self.last_wanted.clear();
        self.last_wanted.extend_from_slice(wanted);
        for w in wanted {
            if !w.readable && !w.writable {
                continue;
            }
            let key = PollKey {
                token: w.token,
                fd: w.fd,
                readable: w.readable,
                writable: w.writable,
            };
            if let Some(&slot) = self.armed.get(&key) {
                if let Some(Some(p)) = self.polls.get_mut(slot) {
                    p.wanted = true;
                }
                continue;
            }
            self.arm_poll(key, true)?;
        }
        for slot in 0..self.polls.len() {
            let Some(p) = self.polls[slot].as_mut() else {
                continue;
            };
            if p.wanted || p.cancelling {
                p.wanted = false;
                continue;
            }
            p.cancelling = true;
            let key = p.key;
            self.armed.remove(&key);
            let sqe = opcode::PollRemove::new((TAG_FD << TAG_SHIFT) | slot as u64)
                .build()
                .user_data(TAG_CANCEL << TAG_SHIFT);
            self.push(sqe)?;
        }
        Ok(())
    }

    /// The ring's own descriptor: it polls readable while completions wait to be drained,
    /// so another loop can watch this one (a shared device thread, `crate::pool`).
    pub fn ring_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.ring.as_raw_fd()
    }

    /// Number of backend polls currently armed (not being cancelled).
    pub fn armed_fds(&self) -> usize {
        self.armed.len()
    }

    /// Queues a `writev` of `iovcnt` iovecs at `iov` to `fd`; its completion is reported as
    /// [`Event::IoDone`] with `token` (below 2^56).
    ///
    /// # Safety
    ///
    /// The iovec array and every buffer it points to must stay valid and unchanged by the
    /// caller until the completion has been reported (see [`io_in_flight`](Self::io_in_flight)
    /// and [`quiesce`](Self::quiesce)).
    pub unsafe fn writev(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iovcnt: u32,
        token: u64,
    ) -> Result<(), EventLoopError> {
        let sqe = opcode::Writev::new(types::Fd(fd), iov, iovcnt).build();
        self.push_io(sqe, token)
    }

    /// Queues a `readv` of `iovcnt` iovecs at `iov` from `fd` at file offset `offset`; its
    /// completion is reported as [`Event::IoDone`] with `token` (below 2^56) and the bytes
    /// read. Needs a ring from [`with_file_io`](Self::with_file_io) (others fail it with
    /// `-EACCES`).
    ///
    /// # Safety
    ///
    /// The iovec array and every buffer it points to must stay valid, and the buffers must not
    /// be read or written through Rust references, until the completion has been reported (see
    /// [`quiesce`](Self::quiesce)).
    pub unsafe fn readv_at(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
        token: u64,
    ) -> Result<(), EventLoopError> {
        let sqe = opcode::Readv::new(types::Fd(fd), iov, iovcnt)
            .offset(offset)
            .build();
        self.push_io(sqe, token)
    }

    /// Queues a `writev` to `fd` at file offset `offset` (a disk image); otherwise as
    /// [`writev`](Self::writev).
    ///
    /// # Safety
    ///
    /// As [`writev`](Self::writev): the iovec array and its buffers stay valid until the
    /// completion has been reported.
    pub unsafe fn writev_at(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iovcnt: u32,
        offset: u64,
        token: u64,
    ) -> Result<(), EventLoopError> {
        let sqe = opcode::Writev::new(types::Fd(fd), iov, iovcnt)
            .offset(offset)
            .build();
        self.push_io(sqe, token)
    }

    /// Queues an `fsync` of `fd` (data and metadata); reported as [`Event::IoDone`] with
    /// `token`. Needs a ring from [`with_file_io`](Self::with_file_io).
    pub fn fsync(&mut self, fd: RawFd, token: u64) -> Result<(), EventLoopError> {
        let sqe = opcode::Fsync::new(types::Fd(fd)).build();
        self.push_io(sqe, token)
    }

    /// Operations from [`writev`](Self::writev), [`readv_at`](Self::readv_at),
    /// [`writev_at`](Self::writev_at) and [`fsync`](Self::fsync) not yet reported complete.
    pub fn io_in_flight(&self) -> usize {
        self.io_in_flight
    }

    /// Backend polls armed or being cancelled, whose completions are still to come.
    fn polls_pending(&self) -> usize {
        self.polls.iter().filter(|p| p.is_some()).count()
    }

    /// Before the loop is dropped: cancels every backend poll and waits up to `timeout` for
    /// those cancellations and every in-flight [`writev`](Self::writev) to complete,
    /// appending events to `events`; returns whether nothing is left in flight. A poll or
    /// write still pending holds a reference to its file, which the kernel only drops when it
    /// tears the ring down, after this process may have exited; a tap would then stay
    /// attached (`EBUSY` for the next VMM to open it) and a listening socket bound.
    pub fn quiesce(&mut self, timeout: Duration, events: &mut Vec<Event>) -> bool {
        if self.sync_fds(&[]).is_err() {
            return false;
        }
        let deadline = std::time::Instant::now() + timeout;
        while self.io_in_flight > 0 || self.polls_pending() > 0 {
            let now = std::time::Instant::now();
            if now >= deadline || self.wait(Some(deadline - now), events).is_err() {
                return false;
            }
        }
        true
    }

    /// Queues an eventfd write of 1 (e.g. an irqfd); it is submitted with the next wait.
    pub fn signal_eventfd(&mut self, fd: RawFd) -> Result<(), EventLoopError> {
        let sqe = opcode::Write::new(types::Fd(fd), std::ptr::addr_of!(EVENTFD_ONE).cast(), 8)
            .build()
            .user_data(TAG_SIGNAL << TAG_SHIFT);
        self.push(sqe)
    }

    /// Submits what is queued and waits for completions: `None` blocks until at least one,
    /// `Some(d)` waits at most `d` (`Some(ZERO)` never blocks and, with nothing queued, makes
    /// no syscall). Appends what happened to `events`.
    pub fn wait(
        &mut self,
        timeout: Option<Duration>,
        events: &mut Vec<Event>,
    ) -> Result<(), EventLoopError> {
        let queued = !self.ring.submission().is_empty();
        let ready = !self.ring.completion().is_empty();
        let result = match timeout {
            _ if ready => {
                if queued {
                    self.ring.submit()
                } else {
                    Ok(0)
                }
            }
            Some(d) if d.is_zero() => {
                if queued {
                    self.ring.submit()
                } else {
                    Ok(0)
                }
            }
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        if let Err(e) = result {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => return Err(EventLoopError::Enter(e)),
            }
        }
        self.drain(events)
    }

    fn drain(&mut self, events: &mut Vec<Event>) -> Result<(), EventLoopError> {
        let mut rearm = Vec::new();
        {
            let cq = self.ring.completion();
            for cqe in cq {
                let data = cqe.user_data();
                let tag = data >> TAG_SHIFT;
                match tag {
                    TAG_EVENTFD => {
                        let index = (data & INDEX_MASK) as usize;
                        if let Some(&fd) = self.eventfds.get(index) {
                            drain_eventfd(fd);
                            if cqe.result() >= 0 {
                                events.push(Event::Eventfd(index));
                            }
                        }
                        if !cqueue::more(cqe.flags()) {
                            rearm.push(index);
                        }
                    }
                    TAG_FD => {
                        let slot = (data & INDEX_MASK) as usize;
                        let Some(p) = self.polls.get_mut(slot).and_then(Option::take) else {
                            continue;
                        };
                        self.free_slots.push(slot);
                        if p.cancelling {
                            continue;
                        }
                        self.armed.remove(&p.key);
                        self.fired.push(p.key);
                        let res = cqe.result();
                        let hup = (libc::POLLERR | libc::POLLHUP) as i32;
                        let readable = res < 0 || res & (libc::POLLIN as i32 | hup) != 0;
                        let writable = res < 0 || res & (libc::POLLOUT as i32 | hup) != 0;
                        events.push(Event::Fd {
                            token: p.key.token,
                            readable: readable && p.key.readable,
                            writable: writable && p.key.writable,
                        });
                    }
                    TAG_IO => {
                        self.io_in_flight = self.io_in_flight.saturating_sub(1);
                        events.push(Event::IoDone {
                            token: data & INDEX_MASK,
                            result: cqe.result(),
                        });
                    }
                    _ => {
                        if cqe.result() < 0 {
                            tracing::debug!(errno = -cqe.result(), "eventfd signal write failed");
                        }
                    }
                }
            }
        }
        for index in rearm {
            self.arm_eventfd(index)?;
        }
        Ok(())
    }
}

/// Resets an eventfd's counter with one non-blocking read (EAGAIN is fine).
fn drain_eventfd(fd: RawFd) {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live local `u64`; the fd is an eventfd the owner keeps open.
    let _ = unsafe { libc::read(fd, std::ptr::addr_of_mut!(v).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn the_ring_refuses_operations_the_loop_does_not_use() {
        let mut lp = EventLoop::new(4).unwrap();
        let path = c"/proc/self/status";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .build()
            .user_data(7);
        // SAFETY: `path` is a static C string that outlives the submission.
        unsafe { lp.ring.submission().push(&open) }.expect("queue has room");
        lp.ring.submit_and_wait(1).expect("enter");
        let cqe = lp.ring.completion().next().expect("a completion");
        assert_eq!(cqe.user_data(), 7);
        assert_eq!(
            cqe.result(),
            -libc::EACCES,
            "openat through the ring must be refused"
        );
        // Registering anything later is refused too.
        assert!(lp.ring.submitter().register_files(&[0]).is_err());
    }

    /// A net ring may not touch files at an offset; a disk ring may read, write and sync its
    /// file, and still cannot open anything.
    #[test]
    fn file_io_is_allowed_only_on_a_file_io_ring() {
        let path = std::env::temp_dir().join(format!("rf-evloop-{}", std::process::id()));
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut buf = [0u8; 4];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut ev = Vec::new();

        let mut net = EventLoop::new(4).unwrap();
        // SAFETY: `iov` and `buf` outlive the wait below, which reports the completion.
        unsafe { net.readv_at(file.as_raw_fd(), &iov, 1, 4, 1) }.unwrap();
        net.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![Event::IoDone {
                token: 1,
                result: -libc::EACCES
            }]
        );
        assert_eq!(buf, [0; 4], "the refused read wrote nothing");

        ev.clear();
        let mut disk = EventLoop::with_file_io(4).unwrap();
        // SAFETY: as above.
        unsafe { disk.readv_at(file.as_raw_fd(), &iov, 1, 4, 2) }.unwrap();
        disk.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![Event::IoDone {
                token: 2,
                result: 4
            }]
        );
        assert_eq!(&buf, b"4567");

        ev.clear();
        buf.copy_from_slice(b"WXYZ");
        // SAFETY: as above.
        unsafe { disk.writev_at(file.as_raw_fd(), &iov, 1, 12, 3) }.unwrap();
        disk.fsync(file.as_raw_fd(), 4).unwrap();
        while ev.len() < 2 {
            disk.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
        }
        ev.sort_by_key(|e| match e {
            Event::IoDone { token, .. } => *token,
            _ => 0,
        });
        assert_eq!(
            ev,
            vec![
                Event::IoDone {
                    token: 3,
                    result: 4
                },
                Event::IoDone {
                    token: 4,
                    result: 0
                }
            ]
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789abWXYZ");

        let c = c"/proc/self/status";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), c.as_ptr())
            .build()
            .user_data(9);
        // SAFETY: `c` is a static C string that outlives the submission.
        unsafe { disk.ring.submission().push(&open) }.expect("queue has room");
        disk.ring.submit_and_wait(1).expect("enter");
        let cqe = disk.ring.completion().next().expect("a completion");
        assert_eq!(cqe.result(), -libc::EACCES, "openat through a disk ring");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn eventfds_fds_and_signals_arrive_as_events() {
        let mut lp = EventLoop::new(16).unwrap();
        let a = EventFd::new(EFD_NONBLOCK).unwrap();
        let b = EventFd::new(EFD_NONBLOCK).unwrap();
        let target = EventFd::new(EFD_NONBLOCK).unwrap();
        let ia = lp.add_eventfd(a.as_raw_fd()).unwrap();
        let ib = lp.add_eventfd(b.as_raw_fd()).unwrap();
        let mut ev = Vec::new();
        lp.wait(Some(Duration::from_millis(1)), &mut ev).unwrap();
        assert!(ev.is_empty());

        b.write(1).unwrap();
        lp.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
        assert_eq!(ev, vec![Event::Eventfd(ib)]);
        // The counter was drained.
        assert!(b.read().is_err());

        // Multishot: a second signal arrives without re-registering.
        ev.clear();
        a.write(3).unwrap();
        lp.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
        assert_eq!(ev, vec![Event::Eventfd(ia)]);

        // A queued signal is written by the next wait.
        ev.clear();
        lp.signal_eventfd(target.as_raw_fd()).unwrap();
        lp.wait(Some(Duration::ZERO), &mut ev).unwrap();
        let mut got = 0;
        for _ in 0..1000 {
            if let Ok(v) = target.read() {
                got = v;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, 1);

        // One-shot backend poll, deduplicated while armed.
        ev.clear();
        let c = EventFd::new(EFD_NONBLOCK).unwrap();
        let interest = FdInterest {
            fd: c.as_raw_fd(),
            token: 42,
            readable: true,
            writable: false,
        };
        lp.sync_fds(&[interest]).unwrap();
        lp.sync_fds(&[interest]).unwrap();
        assert_eq!(lp.armed_fds(), 1);
        c.write(1).unwrap();
        lp.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
        let fd_events: Vec<_> = ev
            .iter()
            .filter(|e| matches!(e, Event::Fd { .. }))
            .collect();
        assert_eq!(
            fd_events,
            vec![&Event::Fd {
                token: 42,
                readable: true,
                writable: false
            }]
        );
        assert_eq!(lp.armed_fds(), 0);

        // An unwanted poll is cancelled and reports nothing; the descriptor number and token
        // can then be reused for a new poll.
        ev.clear();
        let d = EventFd::new(EFD_NONBLOCK).unwrap();
        let other = FdInterest {
            fd: d.as_raw_fd(),
            token: 7,
            readable: true,
            writable: false,
        };
        lp.sync_fds(&[other]).unwrap();
        lp.wait(Some(Duration::ZERO), &mut ev).unwrap();
        lp.sync_fds(&[]).unwrap();
        assert_eq!(lp.armed_fds(), 0);
        lp.wait(Some(Duration::from_millis(20)), &mut ev).unwrap();
        d.write(1).unwrap();
        lp.wait(Some(Duration::from_millis(20)), &mut ev).unwrap();
        assert!(ev.is_empty(), "cancelled poll reported {ev:?}");
        lp.sync_fds(&[other]).unwrap();
        lp.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![Event::Fd {
                token: 7,
                readable: true,
                writable: false
            }]
        );
    }

    /// After `quiesce`, no operation holds a backend descriptor: a listening socket that was
    /// being polled can be closed and its port bound again at once, with the loop still alive.
    #[test]
    fn quiesce_releases_every_polled_descriptor() {
        let mut lp = EventLoop::new(16).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let interest = FdInterest {
            fd: listener.as_raw_fd(),
            token: 1,
            readable: true,
            writable: false,
        };
        let mut ev = Vec::new();
        lp.sync_fds(&[interest]).unwrap();
        lp.wait(Some(Duration::ZERO), &mut ev).unwrap();
        assert_eq!(lp.polls_pending(), 1);
        assert!(lp.quiesce(Duration::from_secs(5), &mut ev));
        assert_eq!(lp.polls_pending(), 0);
        assert!(ev.is_empty(), "a cancelled poll reported {ev:?}");
        drop(listener);
        std::net::TcpListener::bind(addr).expect("the port is free once the poll is gone");
        drop(lp);
    }

    /// With an unchanged list, a poll that fired is re-armed (and fires again while its fd
    /// stays ready); a changed list still arms and cancels what differs.
    #[test]
    fn an_unchanged_list_rearms_only_the_fired_polls() {
        let mut lp = EventLoop::new(16).unwrap();
        let ready = EventFd::new(EFD_NONBLOCK).unwrap();
        let quiet = EventFd::new(EFD_NONBLOCK).unwrap();
        let list = [
            FdInterest {
                fd: ready.as_raw_fd(),
                token: 1,
                readable: true,
                writable: false,
            },
            FdInterest {
                fd: quiet.as_raw_fd(),
                token: 2,
                readable: true,
                writable: false,
            },
        ];
        let mut ev = Vec::new();
        lp.sync_fds(&list).unwrap();
        ready.write(1).unwrap();
        for round in 0..3 {
            ev.clear();
            lp.wait(Some(Duration::from_secs(5)), &mut ev).unwrap();
            assert_eq!(
                ev,
                vec![Event::Fd {
                    token: 1,
                    readable: true,
                    writable: false
                }],
                "round {round}"
            );
            assert_eq!(lp.armed_fds(), 1, "only the quiet poll is still armed");
            lp.sync_fds(&list).unwrap();
            assert_eq!(lp.armed_fds(), 2, "the fired poll is armed again");
        }
        lp.sync_fds(&list[1..]).unwrap();
        assert_eq!(lp.armed_fds(), 1);
        ev.clear();
        lp.wait(Some(Duration::from_millis(20)), &mut ev).unwrap();
        assert!(ev.is_empty(), "the dropped poll was cancelled: {ev:?}");
    }
}

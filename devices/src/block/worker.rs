//! The virtio-blk worker thread: requests from the queue to the io_uring ring and back.
//!
//! One loop pass:
//! 1. wait on the ring for anything: a kick, the stop signal, I/O completions;
//! 2. complete every finished I/O: write its status byte and put its chain on the used ring
//!    (a short transfer is resubmitted for its remainder first; a transfer that makes no
//!    progress, at the end of a shrunk image, fails with IOERR);
//! 3. after a kick, take every available chain (notifications suppressed meanwhile), validate
//!    it (`request.rs`) and either answer it at once (refusals, GET_ID, unsupported types) or
//!    submit its I/O: `readv`/`writev` at the request's offset over iovecs into guest memory,
//!    or `fsync`; re-enable notifications and re-check the ring to close the race;
//! 4. publish the used ring once, and interrupt the guest if it asked.
//!
//! Each request in flight owns a slot (one per queue entry, so the queue can never hold more
//! requests than there are slots); the slot's iovec array is what the kernel reads, so it is
//! neither touched nor freed until the completion arrives. On stop (device reset or drop) the
//! worker waits for every I/O in flight to complete, without answering it (the driver reset
//! the queue), before it lets go of guest memory.
//!
//! Writes check the image's current size first (one `lseek` per pass that has writes, not per
//! request), so a write to a file truncated under the VM fails with IOERR instead of growing
//! the file back; reads find out from their short transfer.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::backing::Backing;
use super::image::DiskImage;
use super::metrics::{BlockMetrics, RequestError};
use super::request::{Request, RequestKind, RequestParser};
use super::status::*;
use super::ID_BYTES;
use crate::event_loop::{Event, EventLoop, EventLoopError};
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::ring_layout::RingLayout;
use crate::virtio::used_ring::UsedBatch;
use crate::virtio::{ActivateContext, Interrupt};

/// How long a stopping worker waits for its I/O in flight before it gives up and leaks the
/// buffers (guest memory stays mapped, so a late completion cannot write into freed memory).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One request slot.
#[derive(Debug, Default)]
struct Slot {
    req: Request,
    /// Bytes transferred so far (IN/OUT).
    done: u64,
    /// Index of the first iovec not yet fully transferred.
    iov_start: usize,
}

/// State of one running virtio-blk worker.
pub(crate) struct BlockWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    kick: EventFd,
    interrupt: Arc<Interrupt>,
    backing: Arc<Backing>,
    /// The image requests go to, as of `generation`.
    image: Arc<DiskImage>,
    generation: u64,
    id: [u8; ID_BYTES],
    metrics: Arc<BlockMetrics>,
    lp: EventLoop,
    parser: RequestParser,
    slots: Vec<Slot>,
    free: Vec<usize>,
    used: UsedBatch,
    events: Vec<Event>,
    /// The image's size as seen this pass (`lseek`, taken at the first write of a pass).
    size_this_pass: Option<u64>,
    /// The driver corrupted the queue: it is ignored until the driver resets the device.
    broken: bool,
    /// Every slot was busy while chains were still available (only a driver that posts the
    /// same descriptors again while they are in flight gets there): take them once slots free
    /// up, without waiting for another kick.
    starved: bool,
}

impl BlockWorker {
    /// A worker for the one queue of `ctx`; `None` if `ctx` has no queue or kick eventfd.
    pub(crate) fn new(
        ctx: ActivateContext,
        backing: Arc<Backing>,
        id: [u8; ID_BYTES],
        metrics: Arc<BlockMetrics>,
        lp: EventLoop,
    ) -> Option<Self> {
        let queue = ctx.queues.into_iter().next()?;
        let kick = ctx.queue_evts.into_iter().next()?;
        let size = usize::from(queue.size());
        let rings = RingLayout::of(&[&queue]);
        let generation = backing.generation();
        let image = backing.current();
        let parser = RequestParser::new(image.size(), image.read_only(), rings, queue.size());
        Some(Self {
            mem: ctx.mem,
            queue,
            kick,
            interrupt: ctx.interrupt,
            backing,
            image,
            generation,
            id,
            metrics,
            lp,
            parser,
            slots: (0..size).map(|_| Slot::default()).collect(),
            free: (0..size).rev().collect(),
            used: UsedBatch::with_capacity(size),
            events: Vec::with_capacity(size + 4),
            size_this_pass: None,
            broken: false,
            starved: false,
        })
    }

    /// Runs until the stop eventfd is signalled, then waits for the I/O in flight.
    pub(crate) fn run(mut self, stop_fd: RawFd) {
        if let Err(e) = self.run_inner(stop_fd) {
            tracing::error!(error = %e, image = %self.image.path().display(), "virtio-blk worker stopped");
        }
        self.finish();
    }

    fn run_inner(&mut self, stop_fd: RawFd) -> Result<(), EventLoopError> {
        let kick_idx = self.lp.add_eventfd(self.kick.as_raw_fd())?;
        let stop_idx = self.lp.add_eventfd(stop_fd)?;
        // A driver may have queued requests before its first kick reached us.
        self.process_queue()?;
        self.publish();
        let mut events = std::mem::take(&mut self.events);
        loop {
            events.clear();
            self.lp.wait(None, &mut events)?;
            let mut kicked = false;
            for ev in &events {
                match *ev {
                    Event::Eventfd(i) if i == stop_idx => return Ok(()),
                    Event::Eventfd(i) if i == kick_idx => {
                        kicked = true;
                        BlockMetrics::add(&self.metrics.kicks, 1);
                    }
                    Event::IoDone { token, result } => self.io_done(token as usize, result)?,
                    _ => {}
                }
            }
            if kicked || (self.starved && !self.free.is_empty()) {
                self.process_queue()?;
            }
            self.publish();
        }
    }

    /// Waits for every I/O in flight; their results are not reported to the guest.
    fn finish(mut self) {
        let mut events = Vec::new();
        if !self.lp.quiesce(STOP_TIMEOUT, &mut events) || self.lp.io_in_flight() > 0 {
            tracing::error!(
                io_in_flight = self.lp.io_in_flight(),
                image = %self.image.path().display(),
                "virtio-blk: disk I/O did not complete at stop; leaking its buffers"
            );
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(self.mem.clone());
        }
    }

    /// Takes and starts every available request.
    fn process_queue(&mut self) -> Result<(), EventLoopError> {
        if self.broken {
            return Ok(());
        }
        self.size_this_pass = None;
        self.starved = false;
        if !self.follow_swap() {
            // Requests wait until the old image's I/O is done; an I/O completion retries.
            self.starved = true;
            return Ok(());
        }
        loop {
            if self.queue.disable_notification(&self.mem).is_err() {
                self.mark_broken("used ring not writable");
                return Ok(());
            }
            while let Some(&slot) = self.free.last() {
                let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) else {
                    if self.avail_impossible() {
                        self.mark_broken("impossible avail index");
                        return Ok(());
                    }
                    break;
                };
                self.free.pop();
                let parsed = self
                    .parser
                    .parse(chain, &self.mem, &mut self.slots[slot].req);
                match parsed {
                    Ok(()) => self.start(slot)?,
                    Err(reason) => self.refuse(slot, reason),
                }
            }
            match self.queue.enable_notification(&self.mem) {
                Ok(true) if !self.free.is_empty() => continue,
                Ok(more) => {
                    self.starved = more;
                    return Ok(());
                }
                Err(_) => {
                    self.mark_broken("used ring not writable");
                    return Ok(());
                }
            }
        }
    }

    /// Moves to a swapped-in image once no I/O is in flight on the old one; whether requests
    /// may be taken now.
    fn follow_swap(&mut self) -> bool {
        let generation = self.backing.generation();
        if generation == self.generation {
            return true;
        }
        if self.lp.io_in_flight() > 0 {
            return false;
        }
        self.image = self.backing.current();
        self.generation = generation;
        self.parser.set_capacity(self.image.size());
        tracing::info!(image = %self.image.path().display(), sectors = self.image.sectors(), "virtio-blk: image swapped");
        true
    }

    /// Called when the queue yields no chain: whether the driver's avail index is more than a
    /// queue size ahead of ours (the queue is corrupt; virtio 1.2 §2.7.13.3).
    fn avail_impossible(&self) -> bool {
        self.queue
            .avail_idx(&self.mem, Ordering::Acquire)
            .is_ok_and(|idx| idx.0.wrapping_sub(self.queue.next_avail()) > self.queue.size())
    }

    /// Answers a refused request with IOERR, or drops a chain without a status byte.
    fn refuse(&mut self, slot: usize, reason: RequestError) {
        self.metrics.refuse(reason);
        let head = self.slots[slot].req.head;
        if let Some(total) = self.metrics.refused_log.admit() {
            tracing::warn!(
                reason = reason.name(),
                head,
                refused_so_far = total,
                "virtio-blk: refused a request (rate-limited log)"
            );
        }
        if reason.drops_chain() || self.slots[slot].req.status.is_none() {
            self.used.push(head, 0);
            self.free.push(slot);
        } else {
            self.complete(slot, VIRTIO_BLK_S_IOERR, 0);
        }
    }

    /// Starts a validated request: answers it at once or submits its I/O.
    fn start(&mut self, slot: usize) -> Result<(), EventLoopError> {
        let fd = self.image.raw_fd();
        let s = &mut self.slots[slot];
        s.done = 0;
        s.iov_start = 0;
        match s.req.kind {
            RequestKind::Other(_) => self.complete(slot, VIRTIO_BLK_S_UNSUPP, 0),
            RequestKind::GetId => {
                let n = s.req.write_data(&self.id);
                self.complete(slot, VIRTIO_BLK_S_OK, n as u32);
            }
            // Nothing can have been written to a read-only drive.
            RequestKind::Flush if self.image.read_only() => self.complete(slot, VIRTIO_BLK_S_OK, 0),
            RequestKind::Flush => self.lp.fsync(fd, slot as u64)?,
            RequestKind::In | RequestKind::Out if s.req.data_len == 0 => {
                self.complete(slot, VIRTIO_BLK_S_OK, 0)
            }
            RequestKind::Out => {
                let end = s.req.offset + s.req.data_len;
                if end > self.image_size_now() {
                    self.refuse(slot, RequestError::ImageShrunk);
                } else {
                    self.submit(slot)?;
                }
            }
            RequestKind::In => self.submit(slot)?,
        }
        Ok(())
    }

    /// The image's current size, read once per pass.
    fn image_size_now(&mut self) -> u64 {
        if let Some(size) = self.size_this_pass {
            return size;
        }
        let size = match self.image.current_size() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "virtio-blk: cannot read the image size");
                0
            }
        };
        self.size_this_pass = Some(size);
        size
    }

    /// Submits the remaining part of slot `slot`'s transfer.
    fn submit(&mut self, slot: usize) -> Result<(), EventLoopError> {
        let fd = self.image.raw_fd();
        let s = &self.slots[slot];
        let iov = &s.req.data[s.iov_start..];
        let offset = s.req.offset + s.done;
        // The request has at most MAX_SEGMENTS (512) iovecs.
        let count = iov.len() as u32;
        // SAFETY: the iovec array lives in `self.slots[slot]`, which is off the free list and
        // not touched until `io_done(slot)` handles this operation's completion (the worker
        // drains every completion before it drops the slots, or leaks them); the array was
        // allocated with its final capacity and never grows, so it does not move. Every iovec
        // points into guest memory checked when the request was parsed and kept mapped by
        // `self.mem` for as long.
        unsafe {
            match s.req.kind {
                RequestKind::In => self
                    .lp
                    .readv_at(fd, iov.as_ptr(), count, offset, slot as u64),
                _ => self
                    .lp
                    .writev_at(fd, iov.as_ptr(), count, offset, slot as u64),
            }
        }
    }

    /// An I/O of slot `slot` completed with `result` (bytes, or a negative errno).
    fn io_done(&mut self, slot: usize, result: i32) -> Result<(), EventLoopError> {
        let Some(s) = self.slots.get_mut(slot) else {
            return Ok(());
        };
        let kind = s.req.kind;
        if result < 0 {
            BlockMetrics::add(&self.metrics.host_io_errors, 1);
            if let Some(total) = self.metrics.refused_log.admit() {
                tracing::warn!(
                    errno = -result,
                    ?kind,
                    offset = s.req.offset,
                    errors_so_far = total,
                    "virtio-blk: host I/O failed (rate-limited log)"
                );
            }
            self.complete(slot, VIRTIO_BLK_S_IOERR, 0);
            return Ok(());
        }
        if kind == RequestKind::Flush {
            self.complete(slot, VIRTIO_BLK_S_OK, 0);
            return Ok(());
        }
        let n = result as u64;
        s.done += n;
        if s.done >= s.req.data_len {
            let len = if kind == RequestKind::In {
                s.req.data_len as u32
            } else {
                0
            };
            self.complete(slot, VIRTIO_BLK_S_OK, len);
            return Ok(());
        }
        if n == 0 {
            // No progress: the end of a file that shrank under us.
            BlockMetrics::add(&self.metrics.host_io_errors, 1);
            self.complete(slot, VIRTIO_BLK_S_IOERR, 0);
            return Ok(());
        }
        // A short transfer: skip what was done and submit the rest.
        let mut skip = n as usize;
        while skip > 0 {
            let Some(v) = s.req.data.get_mut(s.iov_start) else {
                break;
            };
            if skip >= v.iov_len {
                skip -= v.iov_len;
                s.iov_start += 1;
            } else {
                // `skip < iov_len`: the new start stays inside the same checked segment.
                v.iov_base = v.iov_base.cast::<u8>().wrapping_add(skip).cast();
                v.iov_len -= skip;
                skip = 0;
            }
        }
        BlockMetrics::add(&self.metrics.resubmits, 1);
        self.submit(slot)
    }

    /// Writes `status` into slot `slot`'s status byte, puts its chain on the used ring with
    /// `data_written` + 1 bytes, counts it and frees the slot.
    fn complete(&mut self, slot: usize, status: u8, data_written: u32) {
        let s = &self.slots[slot];
        let m = &self.metrics;
        if let Some(addr) = s.req.status {
            // Checked in guest memory when the request was parsed.
            let _ = self.mem.write_obj(status, addr);
        }
        self.used.push(s.req.head, data_written.saturating_add(1));
        BlockMetrics::add(&m.requests, 1);
        match status {
            VIRTIO_BLK_S_OK => match s.req.kind {
                RequestKind::In => {
                    BlockMetrics::add(&m.reads, 1);
                    BlockMetrics::add(&m.bytes_read, s.req.data_len);
                }
                RequestKind::Out => {
                    BlockMetrics::add(&m.writes, 1);
                    BlockMetrics::add(&m.bytes_written, s.req.data_len);
                }
                RequestKind::Flush => BlockMetrics::add(&m.flushes, 1),
                RequestKind::GetId => BlockMetrics::add(&m.get_ids, 1),
                RequestKind::Other(_) => {}
            },
            VIRTIO_BLK_S_UNSUPP => BlockMetrics::add(&m.unsupported, 1),
            _ => BlockMetrics::add(&m.io_errors, 1),
        }
        self.free.push(slot);
    }

    /// Publishes the used ring and interrupts the guest if it asked.
    fn publish(&mut self) {
        if self.used.is_empty() || self.broken {
            return;
        }
        match self.used.flush(&mut self.queue, &self.mem) {
            Ok(true) => {
                self.interrupt.set_status(INT_USED_RING);
                match self.lp.signal_eventfd(self.interrupt.eventfd().as_raw_fd()) {
                    Ok(()) => BlockMetrics::add(&self.metrics.interrupts, 1),
                    Err(e) => tracing::warn!(error = %e, "virtio-blk: cannot queue the interrupt"),
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "virtio-blk: cannot publish the used ring");
                self.mark_broken("used ring not writable");
            }
        }
    }

    /// Stops serving the queue until the driver resets the device: sets DEVICE_NEEDS_RESET and
    /// sends a configuration change interrupt, counts and logs it.
    fn mark_broken(&mut self, why: &'static str) {
        if self.broken {
            return;
        }
        self.broken = true;
        BlockMetrics::add(&self.metrics.queues_broken, 1);
        tracing::warn!(
            why,
            next_avail = self.queue.next_avail(),
            size = self.queue.size(),
            "virtio-blk: queue broken; ignored until the driver resets the device (DEVICE_NEEDS_RESET)"
        );
        match self.interrupt.signal_needs_reset() {
            Ok(true) => BlockMetrics::add(&self.metrics.needs_reset, 1),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "virtio-blk: cannot send the configuration change interrupt"
            ),
        }
    }
}

//! A split virtqueue (virtio 1.2 §2.7), driver side, polled.
//!
//! The probe keeps a fixed buffer per descriptor, so a virtio-net chain is one
//! descriptor whose id names its buffer; virtio-blk requests are short chains
//! of consecutive descriptors ([`SplitQueue::push_chain`]). The rings live in one zeroed,
//! page-aligned allocation that is never freed while the device may use it
//! (queues live as long as the probe).
//!
//! Notifications: with VIRTIO_F_EVENT_IDX the driver kicks only when the new
//! available index passes the device's `avail_event` (§2.7.10); without it,
//! only when the device has not set VIRTQ_USED_F_NO_NOTIFY. Kicks are decided
//! once per batch by [`SplitQueue::needs_notify`]. Interrupts are suppressed
//! (`used_event` kept behind the used index, or VIRTQ_AVAIL_F_NO_INTERRUPT),
//! because the probe polls with IF=0, except around a halting wait, which
//! asks for one interrupt with [`SplitQueue::arm_interrupt`].

use alloc::alloc::{alloc_zeroed, Layout};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};

/// Descriptor flag: the chain continues at `next`.
const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
const DESC_F_WRITE: u16 = 2;
/// Avail flag: do not interrupt (ignored by the device under EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used flag: do not notify (ignored by the driver under EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;

/// Feature bit: VIRTIO_F_EVENT_IDX.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// Largest queue the probe sets up.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Why a queue could not be created.
#[derive(Debug)]
pub struct QueueAllocError {
    /// Bytes requested.
    pub bytes: usize,
}

/// One split virtqueue.
pub struct SplitQueue {
    size: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    /// Next available index to publish.
    avail_idx: u16,
    /// The available index the device was last shown (`avail->idx`).
    published_idx: u16,
    /// Next used index to consume.
    last_used: u16,
    /// Available index at the last notification decision.
    notified_idx: u16,
    event_idx: bool,
}

/// `(v - event - 1) < (v - old)` from the spec: did `event` fall in (old, v]?
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl SplitQueue {
    /// Allocates a queue of `size` entries (rounded down to a power of two,
    /// at most [`MAX_QUEUE_SIZE`]); `event_idx` says if EVENT_IDX was negotiated.
    pub fn new(size: u16, event_idx: bool) -> Result<SplitQueue, QueueAllocError> {
        let size = size.min(MAX_QUEUE_SIZE);
        let size = if size == 0 {
            0
        } else {
            1u16 << (15 - size.leading_zeros())
        };
        let n = usize::from(size);
        let avail_off = 16 * n;
        let used_off = (avail_off + 6 + 2 * n + 4095) & !4095;
        let bytes = used_off + 6 + 8 * n;
        let layout = Layout::from_size_align(bytes, 4096).map_err(|_| QueueAllocError { bytes })?;
        if size == 0 {
            return Err(QueueAllocError { bytes: 0 });
        }
        // SAFETY: layout has non-zero size.
        let mem = unsafe { alloc_zeroed(layout) };
        if mem.is_null() {
            return Err(QueueAllocError { bytes });
        }
        // SAFETY: both offsets are inside the `bytes`-long allocation.
        let (avail, used) = unsafe { (mem.add(avail_off), mem.add(used_off)) };
        let q = SplitQueue {
            size,
            desc: mem,
            avail,
            used,
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
            notified_idx: 0,
            event_idx,
        };
        q.suppress_interrupts();
        Ok(q)
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical addresses of the descriptor table, available ring and
    /// used ring (identity-mapped).
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc as u64, self.avail as u64, self.used as u64)
    }

    fn write_u16(base: *mut u8, offset: usize, v: u16) {
        // SAFETY: callers pass offsets inside the ring they name, which lies in
        // the queue allocation.
        unsafe { write_volatile(base.add(offset) as *mut u16, v) }
    }

    fn read_u16(base: *mut u8, offset: usize) -> u16 {
        // SAFETY: as for `write_u16`.
        unsafe { read_volatile(base.add(offset) as *const u16) }
    }

    /// Offset of `used_event` in the available ring (it follows the ring's entries).
    fn used_event_offset(&self) -> usize {
        4 + 2 * usize::from(self.size)
    }

    /// Tells the device whether to interrupt when it next uses a buffer: `used_event` at
    /// the next used index or just behind it (EVENT_IDX), else the NO_INTERRUPT flag.
    fn request_interrupt(&self, wanted: bool) {
        if self.event_idx {
            let at = if wanted {
                self.last_used
            } else {
                self.last_used.wrapping_sub(1)
            };
            Self::write_u16(self.avail, self.used_event_offset(), at);
        } else {
            let flags = if wanted { 0 } else { AVAIL_F_NO_INTERRUPT };
            Self::write_u16(self.avail, 0, flags);
        }
    }

    /// Asks the device to interrupt when it next uses a buffer, then looks whether it
    /// already has: `true` means used buffers are waiting, so the caller must not
    /// sleep. The full fence orders the request before the look, as the device
    /// orders its used-index store before reading the request (virtio 1.2 §2.7.10).
    pub fn arm_interrupt(&self) -> bool {
        self.request_interrupt(true);
        fence(Ordering::SeqCst);
        Self::read_u16(self.used, 2) != self.last_used
    }

    /// Turns used-buffer interrupts back off (the polling default).
    pub fn suppress_interrupts(&self) {
        self.request_interrupt(false);
    }

    /// Makes descriptor `id` (buffer `addr`, `len` bytes) available; the
    /// device writes it if `device_writes`. The caller owns the id/buffer
    /// pairing and never offers an id twice before it comes back used.
    pub fn push(&mut self, id: u16, addr: u64, len: u32, device_writes: bool) {
        self.stage(id, addr, len, device_writes);
        self.publish();
    }

    /// Writes descriptor `id` and its avail-ring entry as [`SplitQueue::push`]
    /// does, but leaves the avail index alone: the device sees the entry
    /// only at the next [`SplitQueue::publish`].
    pub fn stage(&mut self, id: u16, addr: u64, len: u32, device_writes: bool) {
        let i = usize::from(id % self.size);
        let flags = if device_writes { DESC_F_WRITE } else { 0 };
        // SAFETY: i < size, so the 16-byte descriptor is inside the table.
        unsafe {
            let d = self.desc.add(16 * i);
            write_volatile(d as *mut u64, addr);
            write_volatile(d.add(8) as *mut u32, len);
            write_volatile(d.add(12) as *mut u16, flags);
            write_volatile(d.add(14) as *mut u16, 0);
        }
        let slot = usize::from(self.avail_idx % self.size);
        Self::write_u16(self.avail, 4 + 2 * slot, id % self.size);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes every staged entry: writes the avail index, unless nothing was staged
    /// (the net driver calls this once per poll, and a needless store would take the ring's
    /// cache line from the device polling it).
    pub fn publish(&mut self) {
        if self.published_idx == self.avail_idx {
            return;
        }
        // The descriptors and ring entries must be visible before the index.
        fence(Ordering::Release);
        Self::write_u16(self.avail, 2, self.avail_idx);
        self.published_idx = self.avail_idx;
    }

    /// Makes a chain available: `parts[i]` = (buffer, length, device writes)
    /// goes into descriptor `(first + i) % size`, each linked to the next; the
    /// head is `first`. The caller owns those ids until the head comes back
    /// used, and never passes more parts than the queue has entries.
    pub fn push_chain(&mut self, first: u16, parts: &[(u64, u32, bool)]) {
        let n = parts.len();
        for (i, &(addr, len, device_writes)) in parts.iter().enumerate() {
            let id = (usize::from(first) + i) % usize::from(self.size);
            let next = ((usize::from(first) + i + 1) % usize::from(self.size)) as u16;
            let mut flags = if device_writes { DESC_F_WRITE } else { 0 };
            if i + 1 < n {
                flags |= DESC_F_NEXT;
            }
            // SAFETY: id < size, so the 16-byte descriptor is inside the table.
            unsafe {
                let d = self.desc.add(16 * id);
                write_volatile(d as *mut u64, addr);
                write_volatile(d.add(8) as *mut u32, len);
                write_volatile(d.add(12) as *mut u16, flags);
                write_volatile(d.add(14) as *mut u16, next);
            }
        }
        let slot = usize::from(self.avail_idx % self.size);
        Self::write_u16(self.avail, 4 + 2 * slot, first % self.size);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.publish();
    }

    /// Takes the next used entry: `(descriptor id, bytes written)`. Entries
    /// naming an id outside the table are skipped (a device bug must not make
    /// the probe index out of bounds).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        loop {
            let used_idx = Self::read_u16(self.used, 2);
            if used_idx == self.last_used {
                return None;
            }
            fence(Ordering::Acquire);
            let slot = usize::from(self.last_used % self.size);
            // SAFETY: slot < size, so the 8-byte element is inside the used ring.
            let (id, len) = unsafe {
                let e = self.used.add(4 + 8 * slot);
                (
                    read_volatile(e as *const u32),
                    read_volatile(e.add(4) as *const u32),
                )
            };
            self.last_used = self.last_used.wrapping_add(1);
            self.suppress_interrupts();
            if let Ok(id) = u16::try_from(id) {
                if id < self.size {
                    return Some((id, len));
                }
            }
        }
    }

    /// The used element `ahead` places after the next one [`pop_used`] would
    /// return, without taking anything; `None` if the device has not published
    /// that far (or the element names no descriptor of this queue).
    ///
    /// [`pop_used`]: Self::pop_used
    pub fn peek_used(&self, ahead: u16) -> Option<(u16, u32)> {
        let used_idx = Self::read_u16(self.used, 2);
        if used_idx.wrapping_sub(self.last_used) <= ahead {
            return None;
        }
        fence(Ordering::Acquire);
        let slot = usize::from(self.last_used.wrapping_add(ahead) % self.size);
        // SAFETY: slot < size, so the 8-byte element is inside the used ring.
        let (id, len) = unsafe {
            let e = self.used.add(4 + 8 * slot);
            (
                read_volatile(e as *const u32),
                read_volatile(e.add(4) as *const u32),
            )
        };
        let id = u16::try_from(id).ok().filter(|&id| id < self.size)?;
        Some((id, len))
    }

    /// Whether the device must be notified of buffers published since the
    /// last call (at most one kick per batch).
    pub fn needs_notify(&mut self) -> bool {
        let new = self.avail_idx;
        let old = self.notified_idx;
        if new == old {
            return false;
        }
        self.notified_idx = new;
        // The index store must be globally visible before we read the
        // device's suppression state (the device reads them in the other order).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event = Self::read_u16(self.used, 4 + 8 * usize::from(self.size));
            need_event(avail_event, new, old)
        } else {
            Self::read_u16(self.used, 0) & USED_F_NO_NOTIFY == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the device: reads the avail ring and writes the used ring.
    struct FakeDevice {
        last_avail: u16,
        used_idx: u16,
    }

    impl FakeDevice {
        fn take_avail(&mut self, q: &SplitQueue) -> Option<(u16, u64, u32, u16)> {
            let n = usize::from(q.size);
            let avail_idx = SplitQueue::read_u16(q.avail, 2);
            if avail_idx == self.last_avail {
                return None;
            }
            let id = SplitQueue::read_u16(q.avail, 4 + 2 * usize::from(self.last_avail % q.size));
            self.last_avail = self.last_avail.wrapping_add(1);
            assert!(usize::from(id) < n);
            // SAFETY: id < size, inside the descriptor table.
            let (addr, len, flags) = unsafe {
                let d = q.desc.add(16 * usize::from(id));
                (
                    read_volatile(d as *const u64),
                    read_volatile(d.add(8) as *const u32),
                    read_volatile(d.add(12) as *const u16),
                )
            };
            Some((id, addr, len, flags))
        }

        fn complete(&mut self, q: &SplitQueue, id: u32, len: u32) {
            let slot = usize::from(self.used_idx % q.size);
            // SAFETY: slot < size, inside the used ring.
            unsafe {
                let e = q.used.add(4 + 8 * slot);
                write_volatile(e as *mut u32, id);
                write_volatile(e.add(4) as *mut u32, len);
            }
            self.used_idx = self.used_idx.wrapping_add(1);
            SplitQueue::write_u16(q.used, 2, self.used_idx);
        }

        fn set_avail_event(&self, q: &SplitQueue, v: u16) {
            SplitQueue::write_u16(q.used, 4 + 8 * usize::from(q.size), v);
        }
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(5, 3, 0));
        assert!(need_event(2, 3, 0));
        assert!(need_event(65535, 1, 65534), "wraps around");
        assert!(!need_event(0, 0, 0));
    }

    #[test]
    fn staged_entries_reach_the_device_only_when_published() {
        let mut q = SplitQueue::new(8, true).unwrap();
        let mut dev = FakeDevice {
            last_avail: 0,
            used_idx: 0,
        };
        q.stage(3, 0x3000, 64, false);
        q.stage(4, 0x4000, 64, false);
        assert!(dev.take_avail(&q).is_none(), "staged, not yet published");
        q.publish();
        assert_eq!(dev.take_avail(&q).map(|e| e.0), Some(3));
        assert_eq!(dev.take_avail(&q).map(|e| e.0), Some(4));
        // Nothing staged: publishing again leaves the index as it is.
        q.publish();
        assert!(dev.take_avail(&q).is_none());
        assert_eq!(SplitQueue::read_u16(q.avail, 2), 2);
    }

    /// What the device would decide after using one more buffer: interrupt or not.
    fn device_would_interrupt(q: &SplitQueue, old_used: u16) -> bool {
        if q.event_idx {
            let used_event = SplitQueue::read_u16(q.avail, q.used_event_offset());
            need_event(used_event, old_used.wrapping_add(1), old_used)
        } else {
            SplitQueue::read_u16(q.avail, 0) & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    #[test]
    fn an_armed_queue_asks_for_exactly_the_next_interrupt() {
        for event_idx in [true, false] {
            let mut q = SplitQueue::new(8, event_idx).unwrap();
            let mut dev = FakeDevice {
                last_avail: 0,
                used_idx: 0,
            };
            for id in 0..3 {
                q.push(id, 0x1000, 64, true);
            }
            // Polling: the device is told not to interrupt.
            assert!(!device_would_interrupt(&q, 0), "event_idx={event_idx}");
            // Nothing used yet: arming asks for an interrupt and says "sleep".
            assert!(!q.arm_interrupt());
            assert!(device_would_interrupt(&q, 0), "event_idx={event_idx}");
            // The device used a buffer meanwhile: arming says "do not sleep".
            let (id, ..) = dev.take_avail(&q).unwrap();
            dev.complete(&q, u32::from(id), 10);
            assert!(q.arm_interrupt());
            // Consuming turns interrupts off again, and so does suppressing.
            assert_eq!(q.pop_used(), Some((id, 10)));
            assert!(!device_would_interrupt(&q, 1), "event_idx={event_idx}");
            assert!(!q.arm_interrupt());
            q.suppress_interrupts();
            assert!(!device_would_interrupt(&q, 1), "event_idx={event_idx}");
        }
    }

    #[test]
    fn size_is_a_power_of_two_up_to_the_cap() {
        assert_eq!(SplitQueue::new(1024, true).unwrap().size(), MAX_QUEUE_SIZE);
        assert_eq!(SplitQueue::new(100, true).unwrap().size(), 64);
        assert!(SplitQueue::new(0, true).is_err());
    }

    #[test]
    fn buffers_round_trip_across_index_wraparound() {
        let mut q = SplitQueue::new(8, true).unwrap();
        let mut dev = FakeDevice {
            last_avail: 0,
            used_idx: 0,
        };
        for round in 0..70_000u32 {
            let id = (round % 8) as u16;
            q.push(
                id,
                0x1000 + u64::from(id),
                100 + round % 7,
                id.is_multiple_of(2),
            );
            let (got, addr, len, flags) = dev.take_avail(&q).unwrap();
            assert_eq!(
                (got, addr, len),
                (id, 0x1000 + u64::from(id), 100 + round % 7)
            );
            assert_eq!(
                flags,
                if id.is_multiple_of(2) {
                    DESC_F_WRITE
                } else {
                    0
                }
            );
            dev.complete(&q, u32::from(id), 60);
            assert_eq!(q.pop_used(), Some((id, 60)));
            assert_eq!(q.pop_used(), None);
        }
    }

    #[test]
    fn chains_link_consecutive_descriptors() {
        let mut q = SplitQueue::new(8, true).unwrap();
        let mut dev = FakeDevice {
            last_avail: 0,
            used_idx: 0,
        };
        q.push_chain(
            6,
            &[(0x100, 16, false), (0x200, 512, true), (0x300, 1, true)],
        );
        let (head, addr, len, flags) = dev.take_avail(&q).unwrap();
        assert_eq!((head, addr, len, flags), (6, 0x100, 16, DESC_F_NEXT));
        let desc = |i: usize| {
            // SAFETY: i < 8, inside the descriptor table.
            unsafe {
                let d = q.desc.add(16 * i);
                (
                    read_volatile(d as *const u64),
                    read_volatile(d.add(12) as *const u16),
                    read_volatile(d.add(14) as *const u16),
                )
            }
        };
        assert_eq!(desc(6).2, 7);
        assert_eq!(
            desc(7),
            (0x200, DESC_F_WRITE | DESC_F_NEXT, 0),
            "wraps to 0"
        );
        assert_eq!(desc(0).0, 0x300);
        assert_eq!(desc(0).1, DESC_F_WRITE, "the last one ends the chain");
    }

    #[test]
    fn out_of_range_used_ids_are_skipped() {
        let mut q = SplitQueue::new(4, true).unwrap();
        let mut dev = FakeDevice {
            last_avail: 0,
            used_idx: 0,
        };
        dev.complete(&q, 99, 10);
        dev.complete(&q, 1 << 20, 10);
        dev.complete(&q, 2, 10);
        assert_eq!(q.pop_used(), Some((2, 10)));
        assert_eq!(q.pop_used(), None);
    }

    #[test]
    fn one_kick_per_batch_and_only_when_asked() {
        let mut q = SplitQueue::new(16, true).unwrap();
        let mut dev = FakeDevice {
            last_avail: 0,
            used_idx: 0,
        };
        // The device wants a kick when index 0 is passed (initial state).
        for id in 0..5 {
            q.push(id, 0, 64, false);
        }
        assert!(q.needs_notify(), "first batch kicks");
        assert!(!q.needs_notify(), "nothing new: no kick");
        // Device is busy polling: it moved avail_event far ahead.
        while dev.take_avail(&q).is_some() {}
        dev.set_avail_event(&q, 100);
        q.push(5, 0, 64, false);
        assert!(!q.needs_notify(), "device asked not to be kicked yet");
        // Device went idle, asking for a kick at the next buffer.
        dev.set_avail_event(&q, 6);
        q.push(6, 0, 64, false);
        q.push(7, 0, 64, false);
        assert!(q.needs_notify(), "idle device is kicked once for the batch");
    }

    #[test]
    fn without_event_idx_the_no_notify_flag_decides() {
        let mut q = SplitQueue::new(8, false).unwrap();
        assert_eq!(SplitQueue::read_u16(q.avail, 0), AVAIL_F_NO_INTERRUPT);
        SplitQueue::write_u16(q.used, 0, USED_F_NO_NOTIFY);
        q.push(0, 0, 64, false);
        assert!(!q.needs_notify());
        SplitQueue::write_u16(q.used, 0, 0);
        q.push(1, 0, 64, false);
        assert!(q.needs_notify());
    }

    #[test]
    fn used_event_stays_behind_so_the_device_never_interrupts() {
        let mut q = SplitQueue::new(8, true).unwrap();
        let mut dev = FakeDevice {
            last_avail: 0,
            used_idx: 0,
        };
        for id in 0..3 {
            q.push(id, 0, 64, true);
            dev.take_avail(&q);
            let old = dev.used_idx;
            dev.complete(&q, u32::from(id), 1);
            let used_event = SplitQueue::read_u16(q.avail, 4 + 2 * 8);
            assert!(!need_event(used_event, dev.used_idx, old));
            q.pop_used();
        }
    }
}

//! Batched used-ring publication.
//!
//! `virtio_queue::Queue::add_used` publishes the used index after every element. A device
//! that completes a batch of chains wants the driver to see the whole batch at once and to
//! decide about one interrupt for it, so [`UsedBatch`] writes the elements first, then stores
//! the used index once (release ordering) and evaluates the driver's suppression request
//! (`used_event` with EVENT_IDX, `VRING_AVAIL_F_NO_INTERRUPT` without) once.
//!
//! Layouts (virtio 1.2 §2.7.6, §2.7.8): used ring = flags u16, idx u16, `ring[size]` of
//! {id u32, len u32}, avail_event u16; avail ring = flags u16, idx u16, `ring[size]` u16,
//! used_event u16.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Avail ring flag: the driver does not want interrupts (ignored with EVENT_IDX).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Why a batch could not be published.
#[derive(Debug, thiserror::Error)]
pub enum UsedRingError {
    /// The used ring (or avail ring's event field) is outside guest memory.
    #[error(
        "used ring at {addr:#x} is not in guest memory; the driver programmed a bad queue address"
    )]
    BadAddress {
        /// Guest address that failed.
        addr: u64,
    },
}

/// Writes the used ring's `avail_event` field (EVENT_IDX): the driver kicks the queue once
/// its avail index moves past `value`.
///
/// `virtio_queue::Queue` only ever sets it to its `next_avail`, which asks for a kick at the
/// very next buffer; a device that still holds enough buffers (RX) wants to push that point
/// further away.
pub fn set_avail_event(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    value: u16,
) -> Result<(), UsedRingError> {
    let addr = queue
        .used_ring()
        .wrapping_add(4 + 8 * u64::from(queue.size()));
    mem.store(value.to_le(), GuestAddress(addr), Ordering::Relaxed)
        .map_err(|_| UsedRingError::BadAddress { addr })
}

/// Used-ring elements completed in one batch, published together by [`UsedBatch::flush`].
#[derive(Debug, Default)]
pub struct UsedBatch {
    entries: Vec<(u16, u32)>,
}

impl UsedBatch {
    /// Creates a batch that can hold `capacity` elements without allocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Records that the chain starting at `head` was used, with `len` bytes written to it.
    pub fn push(&mut self, head: u16, len: u32) {
        self.entries.push((head, len));
    }

    /// Number of elements waiting for [`flush`](Self::flush).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no element is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes all pending elements into the used ring, publishes the new used index once and
    /// returns whether the driver asked to be interrupted for this batch.
    ///
    /// Elements whose head index is out of range for the queue are skipped (they can only
    /// come from a bug; chains are taken from the queue itself).
    pub fn flush(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, UsedRingError> {
        if self.entries.is_empty() {
            return Ok(false);
        }
        let size = queue.size();
        let used = GuestAddress(queue.used_ring());
        let old = Wrapping(queue.next_used());
        let mut next = old;
        for &(head, len) in &self.entries {
            if head >= size {
                continue;
            }
            let slot = u64::from(next.0 % size);
            let addr = used.0.wrapping_add(4 + slot * 8);
            let mut elem = [0u8; 8];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            mem.write_slice(&elem, GuestAddress(addr))
                .map_err(|_| UsedRingError::BadAddress { addr })?;
            next += Wrapping(1);
        }
        self.entries.clear();
        if next == old {
            return Ok(false);
        }
        let idx_addr = used.0.wrapping_add(2);
        mem.store(next.0.to_le(), GuestAddress(idx_addr), Ordering::Release)
            .map_err(|_| UsedRingError::BadAddress { addr: idx_addr })?;
        queue.set_next_used(next.0);

        // The index store must be visible before we read the driver's suppression state,
        // otherwise an interrupt can be lost (virtio 1.2 §2.7.10).
        fence(Ordering::SeqCst);
        let avail = queue.avail_ring();
        if queue.event_idx_enabled() {
            let ev_addr = avail.wrapping_add(4 + 2 * u64::from(size));
            let used_event: u16 = mem
                .load(GuestAddress(ev_addr), Ordering::Relaxed)
                .map_err(|_| UsedRingError::BadAddress { addr: ev_addr })?;
            let used_event = Wrapping(u16::from_le(used_event));
            // vring_need_event: notify if used_event lies in [old, next).
            Ok(next - used_event - Wrapping(1) < next - old)
        } else {
            let flags: u16 = mem
                .load(GuestAddress(avail), Ordering::Relaxed)
                .map_err(|_| UsedRingError::BadAddress { addr: avail })?;
            Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

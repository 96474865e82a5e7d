//! Where a device's virtqueue rings live in guest memory, so buffers that overlap them can be
//! refused.
//!
//! A driver that posts an RX buffer over its own descriptor table or used ring would have the
//! device overwrite ring state with frame bytes; a TX buffer over the used ring races the
//! device's own used-ring writes. Neither can harm the host (every access goes through
//! vm-memory or bounds-checked iovecs, and the device copies whatever it parses), but no
//! correct driver does either, so the device refuses such chains and counts them
//! (`MalformedReason::OverlapsRing`) instead of handing the guest garbage it asked for.
//!
//! Ring sizes (virtio 1.2 §2.7): descriptor table 16 × size, avail ring 6 + 2 × size, used
//! ring 6 + 8 × size bytes (both rings counted with their event field).

use virtio_queue::{Queue, QueueT};

/// The guest ranges `[start, end)` taken by the rings of a device's queues.
#[derive(Debug, Clone, Default)]
pub struct RingLayout {
    ranges: Vec<(u64, u64)>,
}

impl RingLayout {
    /// The rings of `queues` (descriptor table, avail ring and used ring of each).
    pub fn of(queues: &[&Queue]) -> Self {
        let mut ranges = Vec::with_capacity(3 * queues.len());
        for q in queues {
            let size = u64::from(q.size());
            for (start, len) in [
                (q.desc_table(), 16 * size),
                (q.avail_ring(), 6 + 2 * size),
                (q.used_ring(), 6 + 8 * size),
            ] {
                ranges.push((start, start.saturating_add(len)));
            }
        }
        Self { ranges }
    }

    /// Whether the guest range `[addr, addr + len)` overlaps any ring. Empty ranges overlap
    /// nothing.
    pub fn overlaps(&self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        len != 0
            && self
                .ranges
                .iter()
                .any(|&(start, stop)| addr < stop && start < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn ranges_touching_a_ring_overlap_and_neighbours_do_not() {
        let mut q = Queue::new(16).expect("queue");
        q.try_set_desc_table_address(GuestAddress(0x1000))
            .expect("desc");
        q.try_set_avail_ring_address(GuestAddress(0x2000))
            .expect("avail");
        q.try_set_used_ring_address(GuestAddress(0x3000))
            .expect("used");
        let rings = RingLayout::of(&[&q]);
        // Descriptor table: 0x1000..0x1100.
        assert!(rings.overlaps(0x10ff, 1));
        assert!(!rings.overlaps(0x1100, 0x100));
        assert!(rings.overlaps(0x0f00, 0x101));
        assert!(!rings.overlaps(0x0f00, 0x100));
        // Avail ring: 0x2000..0x2026; used ring: 0x3000..0x3086.
        assert!(rings.overlaps(0x2025, 4));
        assert!(!rings.overlaps(0x2026, 4));
        assert!(rings.overlaps(0x3085, 1));
        assert!(!rings.overlaps(0x3086, 1));
        assert!(!rings.overlaps(0x3000, 0));
        assert!(rings.overlaps(0, u64::MAX));
    }
}

//! Where the harness puts rings and buffers in its guest memory.

use vm_memory::GuestAddress;

/// Guest memory size of the harness (three queues of 256 slots: virtio-vsock).
pub const MEM_SIZE: usize = 64 << 20;
/// Bytes per descriptor slot buffer: room for a largest frame plus header.
pub const SLOT_SIZE: u64 = 0x11000;
/// Largest queue size the layout supports.
pub const MAX_QUEUE: u16 = 256;

/// Where the rings go by default.
pub const RING_BASE: u64 = 0x1_0000;
/// Another place for the rings, clear of [`RING_BASE`]'s (tests that re-initialise a device
/// with new queue addresses).
pub const ALT_RING_BASE: u64 = 0x5_0000;

/// Rings of queue `q` at the default place: descriptor table, avail ring, used ring.
pub fn rings(q: u16) -> (GuestAddress, GuestAddress, GuestAddress) {
    rings_at(RING_BASE, q)
}

/// Rings of queue `q` with the rings of queue 0 at `base` (each queue takes 0x10000 bytes).
pub fn rings_at(base: u64, q: u16) -> (GuestAddress, GuestAddress, GuestAddress) {
    let base = base + u64::from(q) * 0x1_0000;
    (
        GuestAddress(base),
        GuestAddress(base + 0x1000 * 4),
        GuestAddress(base + 0x1000 * 8),
    )
}

/// Buffer of descriptor `d` in queue `q`.
pub fn slot(q: u16, d: u16) -> GuestAddress {
    // Slots start at 1 MiB; each queue's follow the previous one's. 3 x 256 x 68 KiB = 51 MiB.
    let per_queue = u64::from(MAX_QUEUE) * SLOT_SIZE;
    GuestAddress(0x10_0000 + u64::from(q) * per_queue + u64::from(d) * SLOT_SIZE)
}

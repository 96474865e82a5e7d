//! A polled virtio-blk driver (virtio 1.2 §5.2): one request queue, requests
//! built the way Linux builds them (a 16-byte header, one data buffer, a
//! 1-byte status), several in flight.
//!
//! Request slot `r` owns descriptors `3r`, `3r + 1`, `3r + 2` and its own
//! header and status bytes; the caller owns the data buffer until the slot
//! completes. Interrupts stay suppressed; completions are polled.

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};

use crate::virtio::mmio::{MmioError, MmioTransport};
use crate::virtio::queue::{QueueAllocError, SplitQueue, F_EVENT_IDX};

/// virtio device id of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Feature bits the driver asks for (virtio 1.2 §5.2.3).
const F_SEG_MAX: u64 = 1 << 2;
/// The device is read-only.
pub const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Read the 20-byte id.
pub const T_GET_ID: u32 = 8;
/// Status: success.
pub const S_OK: u8 = 0;
/// The status byte before the device wrote it.
const S_PENDING: u8 = 0xff;

/// Why the device could not be brought up.
#[derive(Debug)]
pub enum BlkError {
    /// Transport-level failure.
    Mmio(MmioError),
    /// Queue memory could not be allocated.
    Alloc(QueueAllocError),
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BlkError::Mmio(e) => write!(f, "{e}"),
            BlkError::Alloc(e) => {
                write!(f, "cannot allocate {} bytes of virtqueue memory", e.bytes)
            }
        }
    }
}

/// A live virtio-blk device.
pub struct VirtioBlk {
    transport: MmioTransport,
    queue: SplitQueue,
    features: u64,
    capacity: u64,
    headers: Vec<[u8; 16]>,
    status: Vec<u8>,
    /// Kicks written to QueueNotify.
    pub kicks: u64,
}

impl VirtioBlk {
    /// Brings up the block device behind `transport`.
    pub fn new(transport: MmioTransport) -> Result<VirtioBlk, BlkError> {
        let features = transport
            .begin_init(F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_RO | F_EVENT_IDX)
            .map_err(BlkError::Mmio)?;
        let max = transport.queue_max(0);
        let queue = SplitQueue::new(max, features & F_EVENT_IDX != 0).map_err(BlkError::Alloc)?;
        transport.setup_queue(0, &queue).map_err(BlkError::Mmio)?;
        transport.finish_init();
        let mut capacity = 0u64;
        for i in 0..8 {
            capacity |= u64::from(transport.config_u8(i)) << (8 * i);
        }
        let slots = usize::from(queue.size() / 3);
        Ok(VirtioBlk {
            transport,
            queue,
            features,
            capacity,
            headers: vec![[0u8; 16]; slots],
            status: vec![S_PENDING; slots],
            kicks: 0,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// How many requests may be in flight at once.
    pub fn slots(&self) -> usize {
        self.status.len()
    }

    /// Queues request `slot`: `data` is (address, length, device writes it).
    /// Not kicked until [`kick`](Self::kick).
    pub fn submit(&mut self, slot: usize, kind: u32, sector: u64, data: Option<(u64, u32, bool)>) {
        let h = &mut self.headers[slot];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[4..8].fill(0);
        h[8..].copy_from_slice(&sector.to_le_bytes());
        let hdr = h.as_ptr() as u64;
        let status = &mut self.status[slot] as *mut u8;
        // SAFETY: `status` points at this slot's byte, which lives as long as `self`.
        unsafe { write_volatile(status, S_PENDING) };
        let first = (3 * slot) as u16;
        match data {
            Some(d) => self
                .queue
                .push_chain(first, &[(hdr, 16, false), d, (status as u64, 1, true)]),
            None => self
                .queue
                .push_chain(first, &[(hdr, 16, false), (status as u64, 1, true)]),
        }
    }

    /// Notifies the device if it asked to be.
    pub fn kick(&mut self) {
        if self.queue.needs_notify() {
            self.kicks += 1;
            self.transport.notify(0);
        }
    }

    /// The next completed request: `(slot, status)`.
    pub fn poll(&mut self) -> Option<(usize, u8)> {
        let (id, _) = self.queue.pop_used()?;
        let slot = usize::from(id) / 3;
        let ptr = self.status.get(slot)? as *const u8;
        // SAFETY: `ptr` points at a live status byte the device wrote before publishing.
        Some((slot, unsafe { read_volatile(ptr) }))
    }

    /// Runs one request on slot 0 and waits for it (until `deadline` in TSC
    /// ticks); `None` on timeout.
    pub fn run(
        &mut self,
        kind: u32,
        sector: u64,
        data: Option<(u64, u32, bool)>,
        deadline: u64,
    ) -> Option<u8> {
        self.submit(0, kind, sector, data);
        self.kick();
        loop {
            if let Some((0, status)) = self.poll() {
                return Some(status);
            }
            if crate::clock::rdtsc() > deadline {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}

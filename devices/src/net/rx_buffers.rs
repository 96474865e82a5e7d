//! Guest RX chains kept ready for the backend (the pattern of Firecracker's RX buffer).
//!
//! Chains are validated once when taken from the RX queue and kept, as scatter lists into
//! guest memory, in arrival order. For each frame [`RxBuffers::assemble`] lays the front
//! chain (or, with MRG_RXBUF, as many front chains as a largest-possible frame needs) out as
//! one scatter list the backend writes into; [`RxBuffers::complete`] then hands the chains
//! the frame actually filled to the used ring and keeps the rest for the next frame.
//! Chain objects are recycled, so steady-state operation allocates nothing.

use std::collections::VecDeque;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::header::VNET_HDR_LEN;
use super::iov::GuestIov;
use super::metrics::NetMetrics;
use super::queue_io::{RxChain, MAX_CHAIN_SEGMENTS};
use crate::virtio::ring_layout::RingLayout;
use crate::virtio::used_ring::UsedBatch;

/// RX chains owned by the device, in the order the guest posted them.
#[derive(Debug)]
pub struct RxBuffers {
    ready: VecDeque<RxChain>,
    spare: Vec<RxChain>,
    capacity: usize,
    /// Header + frame room of the assembled frame.
    pub full: GuestIov,
    /// Frame room of the assembled frame (header skipped).
    pub frame: GuestIov,
    chains_in_frame: usize,
    /// Sum of the room of the chains in `ready`.
    room: usize,
    /// Room of the most recently taken chain: what the driver's next buffers likely hold.
    last_chain_room: usize,
}

impl RxBuffers {
    /// Room for up to `queue_size` chains.
    pub fn new(queue_size: usize) -> Self {
        Self {
            ready: VecDeque::with_capacity(queue_size),
            spare: (0..queue_size).map(|_| RxChain::with_capacity(4)).collect(),
            capacity: queue_size,
            full: GuestIov::with_capacity(MAX_CHAIN_SEGMENTS),
            frame: GuestIov::with_capacity(MAX_CHAIN_SEGMENTS),
            chains_in_frame: 0,
            room: 0,
            last_chain_room: 0,
        }
    }

    /// Chains held.
    pub fn len(&self) -> usize {
        self.ready.len()
    }

    /// Whether no chain is held.
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }

    /// Bytes of room (header included) in all held chains.
    pub fn total_room(&self) -> usize {
        self.room
    }

    /// Room of the chain taken last (0 before the first): an estimate of the size of the
    /// buffers the driver will post next.
    pub fn last_chain_room(&self) -> usize {
        self.last_chain_room
    }

    /// Takes every available chain from `queue` (up to the queue size), validating each
    /// (buffers overlapping `rings` are refused); malformed ones go to `used` with length 0
    /// and are counted. Returns true if the queue ran out of chains before the device's
    /// room for them did (the caller then checks the avail index for corruption).
    pub fn refill(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        rings: &RingLayout,
        used: &mut UsedBatch,
        metrics: &NetMetrics,
    ) -> bool {
        while self.ready.len() < self.capacity {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return true;
            };
            let mut slot = self.spare.pop().unwrap_or_default();
            match slot.load(chain, mem, rings) {
                Ok(()) => {
                    self.last_chain_room = slot.iov.len();
                    self.room += self.last_chain_room;
                    self.ready.push_back(slot);
                }
                Err(reason) => {
                    metrics.rx_malformed.inc(reason);
                    if let Some(total) = metrics.malformed_log.admit() {
                        tracing::warn!(
                            reason = reason.name(),
                            head = slot.head,
                            malformed_so_far = total,
                            "virtio-net: dropped a malformed RX chain (rate-limited log)"
                        );
                    }
                    used.push(slot.head, 0);
                    self.spare.push(slot);
                }
            }
        }
        false
    }

    /// Lays out room for one frame: the front chain, or with `merge` front chains until
    /// `max_len` bytes (header included) are covered. Returns false if no chain is held.
    pub fn assemble(&mut self, merge: bool, max_len: usize) -> bool {
        self.full.clear();
        self.frame.clear();
        self.chains_in_frame = 0;
        for chain in &self.ready {
            self.full.extend_from(&chain.iov);
            self.chains_in_frame += 1;
            if !merge || self.full.len() >= max_len {
                break;
            }
        }
        if self.chains_in_frame == 0 {
            return false;
        }
        self.frame.extend_skipping(&self.full, VNET_HDR_LEN);
        true
    }

    /// Completes a frame of `written` bytes (header included) in the assembled room: writes
    /// `num_buffers`, moves the chains it filled to `used` and returns how many it filled.
    pub fn complete(&mut self, written: usize, used: &mut UsedBatch) -> u16 {
        let mut remaining = written;
        let mut buffers: u16 = 0;
        while remaining > 0 && (buffers as usize) < self.chains_in_frame {
            let Some(chain) = self.ready.pop_front() else {
                break;
            };
            let n = chain.iov.len().min(remaining);
            self.room -= chain.iov.len();
            used.push(chain.head, n as u32);
            remaining -= n;
            buffers += 1;
            self.spare.push(chain);
        }
        // `num_buffers` lives at bytes 10..12 of the header, in the first chain. The chains
        // are not yet published to the driver, so the guest cannot be using them.
        self.full.write_at(10, &buffers.max(1).to_le_bytes());
        buffers
    }
}

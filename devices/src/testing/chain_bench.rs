//! Single-threaded fixture for measuring descriptor-chain handling alone: pop a batch of TX
//! chains from a real `virtio_queue::Queue`, validate each into a [`TxChain`] (guest-memory
//! iovecs, header copied and parsed) and publish them with one [`UsedBatch`] flush. No
//! worker thread, no wakeups: the figure is the device's per-chain CPU cost.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::driver::HarnessError;
use super::layout::{rings, slot};
use crate::net::header::VirtioNetHdr;
use crate::net::queue_io::TxChain;
use crate::virtio::ring_layout::RingLayout;
use crate::virtio::used_ring::UsedBatch;

/// A queue pre-filled with `batch` one-descriptor TX chains of `frame_len`-byte frames.
#[derive(Debug)]
pub struct TxChainBench {
    mem: GuestMemoryMmap,
    queue: Queue,
    chain: TxChain,
    rings: RingLayout,
    used: UsedBatch,
    batch: u16,
}

impl TxChainBench {
    /// Builds the queue (size 256) and writes `batch` (at most 256) chains once.
    pub fn new(frame_len: usize, batch: u16) -> Result<Self, HarnessError> {
        let batch = batch.clamp(1, 256);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), super::MEM_SIZE)])
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let (desc, avail, used) = rings(1);
        let mut q = Queue::new(256).map_err(|e| HarnessError::Setup(e.to_string()))?;
        q.set_desc_table_address(Some(desc.0 as u32), Some((desc.0 >> 32) as u32));
        q.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
        q.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        q.set_ready(true);
        let mut buf = VirtioNetHdr::default().to_bytes().to_vec();
        buf.resize(12 + frame_len, 0xab);
        let w =
            |r: vm_memory::GuestMemoryResult<()>| r.map_err(|e| HarnessError::Setup(e.to_string()));
        for d in 0..batch {
            let addr = slot(1, d);
            w(mem.write_slice(&buf, addr))?;
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&addr.0.to_le_bytes());
            e[8..12].copy_from_slice(&(buf.len() as u32).to_le_bytes());
            w(mem.write_slice(&e, desc.unchecked_add(u64::from(d) * 16)))?;
            w(mem.write_obj(d.to_le(), avail.unchecked_add(4 + 2 * u64::from(d))))?;
        }
        w(mem.write_obj(batch.to_le(), avail.unchecked_add(2)))?;
        Ok(Self {
            mem,
            rings: RingLayout::of(&[&q]),
            queue: q,
            chain: TxChain::new(),
            used: UsedBatch::with_capacity(256),
            batch,
        })
    }

    /// Processes the whole batch once and rewinds the queue; returns the bytes seen.
    pub fn run(&mut self) -> usize {
        let mut bytes = 0;
        while let Some(c) = self.queue.pop_descriptor_chain(&self.mem) {
            if self.chain.load(c, &self.mem, &self.rings).is_ok() {
                bytes += self.chain.frame.len();
            }
            self.used.push(self.chain.head, 0);
        }
        let _ = self.used.flush(&mut self.queue, &self.mem);
        // Rewind: the same avail entries are offered again next time.
        self.queue.set_next_avail(0);
        self.queue.set_next_used(0);
        bytes
    }

    /// Chains per [`run`](Self::run).
    pub fn batch(&self) -> u16 {
        self.batch
    }
}

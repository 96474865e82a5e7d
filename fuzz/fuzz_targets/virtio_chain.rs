//! Hostile guest memory under a virtqueue: the fuzzer writes the descriptor table, the avail
//! ring and the buffers, and picks the queue size, its ring addresses (one layout straddles
//! a memory-region boundary), EVENT_IDX, the starting ring indices and TX or RX. The device's
//! real code then takes every chain: `TxChain::load` (walk, direction/length/range checks,
//! the virtio-net header parsed from a copy) or `RxBuffers::refill/assemble/complete`
//! (MRG_RXBUF spanning, `num_buffers`), and `UsedBatch::flush` publishes the used ring.
//! Buffers overlapping a ring (this queue's, or the other queue's at 0x3000..0x5000) are
//! refused, as the device does.
//! Guest memory: two adjacent regions [0, 32K) + [32K, 64K) and one more at 128K after a gap.
#![no_main]

use std::sync::OnceLock;

use devices::net::header::VNET_HDR_LEN;
use devices::net::queue_io::{TxChain, MAX_FRAME_LEN};
use devices::net::rx_buffers::RxBuffers;
use devices::net::NetMetrics;
use devices::virtio::ring_layout::RingLayout;
use devices::virtio::used_ring::{set_avail_event, UsedBatch};
use libfuzzer_sys::fuzz_target;
use ringfence_fuzz::Input;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x2_0000, 0x1000)];
/// Bytes of input copied into guest memory from address 0.
const WINDOW: usize = 0x1_0000;

fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> =
            REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&ranges).expect("fuzz guest memory")
    })
}

fuzz_target!(|data: &[u8]| {
    let mem = memory();
    let mut input = Input::new(data);
    let flags = input.byte();
    let size = 1u16 << (input.byte() % 9); // 1..=256
    let start = input.u16();
    let extra = input.u16();
    let image = input.rest();

    // Fresh guest memory for every input: zeros, then the fuzzer's bytes from address 0.
    let zeros = [0u8; 0x1000];
    for &(base, len) in &REGIONS {
        for off in (0..len as u64).step_by(zeros.len()) {
            let _ = mem.write_slice(&zeros, GuestAddress(base + off));
        }
    }
    let _ = mem.write_slice(&image[..image.len().min(WINDOW)], GuestAddress(0));

    // Ring layout: normal, or the descriptor table straddling the region boundary at 32K.
    let (desc, avail, used) = if flags & 0x20 != 0 {
        (0x7f00, 0x1000, 0x2000)
    } else {
        (0x0, 0x1000, 0x2000)
    };
    let Ok(mut q) = Queue::new(256) else { return };
    if q.try_set_size(size).is_err()
        || q.try_set_desc_table_address(GuestAddress(desc)).is_err()
        || q.try_set_avail_ring_address(GuestAddress(avail)).is_err()
        || q.try_set_used_ring_address(GuestAddress(used)).is_err()
    {
        return;
    }
    q.set_event_idx(flags & 0x01 != 0);
    q.set_next_avail(start);
    q.set_next_used(start);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return;
    }
    // The device refuses buffers that overlap any ring of its queues: this one's and, as
    // the other queue of the pair, one more at fixed addresses.
    let Ok(mut other) = Queue::new(256) else {
        return;
    };
    if other.try_set_size(size).is_err()
        || other
            .try_set_desc_table_address(GuestAddress(0x3000))
            .is_err()
        || other
            .try_set_avail_ring_address(GuestAddress(0x4000))
            .is_err()
        || other
            .try_set_used_ring_address(GuestAddress(0x4800))
            .is_err()
    {
        return;
    }
    let rings = RingLayout::of(&[&q, &other]);
    let metrics = NetMetrics::default();
    let mut batch = UsedBatch::with_capacity(usize::from(size));

    if flags & 0x02 == 0 {
        // TX: every chain validated, its header parsed, its frame read through the iovecs.
        let mut chain = TxChain::new();
        let mut copy = vec![0u8; 2048];
        for _ in 0..2 * usize::from(size) {
            let Some(c) = q.pop_descriptor_chain(mem) else {
                break;
            };
            match chain.load(c, mem, &rings) {
                Ok(()) => {
                    let _ = chain.header.is_gso();
                    assert!(chain.full.len() >= VNET_HDR_LEN + 14);
                    assert_eq!(chain.frame.len() + VNET_HDR_LEN, chain.full.len());
                    assert!(chain.frame.len() <= MAX_FRAME_LEN);
                    let n = chain.frame.read_at(usize::from(extra) % 64, &mut copy);
                    assert!(n <= copy.len());
                    let total: usize = chain.frame.as_io_slices().iter().map(|s| s.len()).sum();
                    assert_eq!(total, chain.frame.len());
                    batch.push(chain.head, 0);
                }
                Err(reason) => {
                    let _ = reason.name();
                    batch.push(chain.head, 0);
                }
            }
        }
    } else {
        // RX: chains kept ready, frames laid out (merged if asked) and completed.
        let merge = flags & 0x04 != 0;
        let mut rx = RxBuffers::new(usize::from(size));
        let _ = rx.refill(&mut q, mem, &rings, &mut batch, &metrics);
        let frame = [0x5au8; 1514];
        let max_len = if flags & 0x08 != 0 { 65_550 } else { 1526 };
        for i in 0..usize::from(size) {
            if !rx.assemble(merge, max_len) {
                break;
            }
            let room = rx.full.len();
            rx.full.write_at(0, &[0u8; VNET_HDR_LEN]);
            rx.frame.write_at(0, &frame);
            let written = if room == 0 {
                0
            } else {
                (usize::from(extra).wrapping_mul(i + 1) % room) + 1
            };
            rx.complete(written, &mut batch);
        }
        let _ = set_avail_event(&q, mem, start.wrapping_add(extra));
    }
    let _ = batch.flush(&mut q, mem);
    let _ = q.enable_notification(mem);
    let _ = q.needs_notification(mem);
    let _ = metrics.rx_malformed.total();
});

//! A driver that scribbles on its rings while traffic flows: a second thread writes random
//! values over both queues' used rings (flags, index, elements, avail_event) and avail rings
//! (flags, index, entries, used_event) for a bounded number of writes. The device must not
//! panic or hang; it either keeps going (garbage heads are refused and counted) or raises
//! DEVICE_NEEDS_RESET, and after the driver's reset everything works byte-exact again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use devices::net::header::VirtioNetHdr;
use devices::net::{NetMetrics, RX_QUEUE, TX_QUEUE};
use devices::testing::{eth_frame, NetHarness};
use devices::virtio::mmio::regs;
use devices::virtio::STATUS_DEVICE_NEEDS_RESET;
use vm_memory::{Bytes, GuestAddress};

const T: Duration = Duration::from_secs(10);
const SCRIBBLES: u64 = 200_000;
const ROUNDS: u64 = 300;

/// xorshift64: a fixed, seedable sequence (no timing, no global state).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn race(seed: u64) {
    let mut h = NetHarness::with_defaults().unwrap();
    let mem = h.driver.memory().clone();
    let mut targets = Vec::new();
    for dq in [&h.driver.rx, &h.driver.tx] {
        let (_, avail, used) = dq.ring_addresses();
        let size = u64::from(dq.size);
        targets.push((avail, 4 + 2 * size + 2));
        targets.push((used, 4 + 8 * size + 2));
    }
    let done = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            for i in 0..SCRIBBLES {
                let r = rng.next();
                let (base, len) = targets[(r % targets.len() as u64) as usize];
                // Even offsets: every field in these rings is 2-byte aligned.
                let off = ((r >> 8) % len) & !1;
                let _ = mem.write_obj((r >> 32) as u16, GuestAddress(base.0 + off));
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    // Traffic meanwhile, without waiting on anything the scribbler can break.
    let mut rounds = 0;
    while rounds < ROUNDS || !done.load(Ordering::Acquire) {
        let _ = h
            .driver
            .send(&VirtioNetHdr::default(), &eth_frame(64, rounds as u8));
        let _ = h.driver.post_rx(1, 2048);
        if h.backend.pending_to_guest() < 64 {
            h.backend.inject(&eth_frame(80, rounds as u8));
        }
        let _ = h.driver.take_used(TX_QUEUE);
        let _ = h.driver.take_used(RX_QUEUE);
        h.driver.kick_always(TX_QUEUE);
        h.driver.kick_always(RX_QUEUE);
        rounds += 1;
        if rounds % 16 == 0 {
            std::thread::yield_now();
        }
    }
    scribbler.join().unwrap();
    let m = h.metrics.clone();
    // Accounting holds whatever the device made of it.
    assert_eq!(NetMetrics::get(&m.tx_frames), h.backend.sent_count());
    let needs_reset = h.driver.read_reg(regs::STATUS) & STATUS_DEVICE_NEEDS_RESET != 0;
    assert_eq!(needs_reset, NetMetrics::get(&m.needs_reset) == 1);
    eprintln!(
        "seed {seed}: {rounds} rounds; needs_reset {needs_reset}, queues_broken {}, \
         tx_malformed {}, rx_malformed {}, tx_frames {}, rx_frames {}",
        NetMetrics::get(&m.queues_broken),
        m.tx_malformed.total(),
        m.rx_malformed.total(),
        NetMetrics::get(&m.tx_frames),
        NetMetrics::get(&m.rx_frames),
    );

    // The driver resets (the worker must stop, so it did not hang) and starts over.
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    let _ = h.backend.take_sent();
    let before = h.backend.sent_count();
    let out = eth_frame(500, 0x77);
    h.driver.send(&VirtioNetHdr::default(), &out).unwrap();
    assert_eq!(h.backend.wait_sent(before + 1, T), before + 1);
    assert_eq!(h.backend.take_sent().pop().map(|(_, f)| f), Some(out));
    // Frames the backend still holds from the storm arrive first; the new one last.
    let leftover = h.backend.pending_to_guest();
    let inbound = eth_frame(600, 0x66);
    let mut got = Vec::new();
    h.backend.inject(&inbound);
    let mut remaining = leftover + 1;
    while remaining > 0 {
        let n = remaining.min(128);
        h.driver.post_rx(n, 4096).unwrap();
        got.extend(h.driver.recv_frames(n, T).unwrap());
        remaining -= n;
    }
    assert_eq!(got.last().map(|(_, f)| f.clone()), Some(inbound));
}

#[test]
fn scribbling_on_the_rings_during_traffic_never_panics_or_hangs() {
    for seed in [0x9e37_79b9_7f4a_7c15, 0xdead_beef_cafe_f00d, 42] {
        race(seed);
    }
}

//! Device reset and DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2, §4.2.2.1) against a driver that
//! resets mid-transfer or breaks its queues: the worker stops, the old rings are forgotten,
//! Status reads back 0, and a full re-initialisation carries traffic byte-exact again.
//! Waits are bounded loops on counters; timing never decides a result.

use std::sync::atomic::Ordering;
use std::time::Duration;

use devices::net::backend::loopback::LoopbackMode;
use devices::net::header::VirtioNetHdr;
use devices::net::{NetConfig, NetMetrics, RX_QUEUE, TX_QUEUE};
use devices::testing::{eth_frame, NetHarness, ALT_RING_BASE, MEM_SIZE, RING_BASE};
use devices::virtio::interrupt::INT_CONFIG;
use devices::virtio::mmio::regs;
use devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use vm_memory::{Bytes, GuestAddress};

const T: Duration = Duration::from_secs(10);

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Polls `cond` every millisecond, at most 5000 times; true once it holds.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..5000 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

fn no_polling() -> NetConfig {
    NetConfig {
        poll_window: Duration::ZERO,
        ..NetConfig::default()
    }
}

/// Sends `n` frames (seeds from `seed`) and checks the backend got exactly them.
fn send_and_check(h: &mut NetHarness, n: usize, seed: u8) {
    let _ = h.backend.take_sent();
    let before = h.backend.sent_count();
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| eth_frame(60 + 97 * i, seed.wrapping_add(i as u8)))
        .collect();
    for f in &frames {
        h.driver.send(&VirtioNetHdr::default(), f).unwrap();
        h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    }
    assert_eq!(h.backend.wait_sent(before + n as u64, T), before + n as u64);
    let sent: Vec<Vec<u8>> = h.backend.take_sent().into_iter().map(|(_, f)| f).collect();
    assert_eq!(sent, frames, "TX frames byte-exact");
}

/// Injects `n` frames (seeds from `seed`) and checks the guest received exactly them after
/// `earlier` frames left over from before.
fn receive_and_check(h: &mut NetHarness, earlier: &[Vec<u8>], n: usize, seed: u8) {
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| eth_frame(70 + 131 * i, seed.wrapping_add(i as u8)))
        .collect();
    h.driver.post_rx(earlier.len() + n, 4096).unwrap();
    for f in &frames {
        h.backend.inject(f);
    }
    let got: Vec<Vec<u8>> = h
        .driver
        .recv_frames(earlier.len() + n, T)
        .unwrap()
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let want: Vec<Vec<u8>> = earlier.iter().chain(&frames).cloned().collect();
    assert_eq!(got, want, "RX frames byte-exact");
}

/// Fills the rings of both queues at `base` with `byte`.
fn paint_rings(h: &NetHarness, base: u64, byte: u8) {
    let pattern = vec![byte; 0x1000 * 12];
    for q in 0..2u64 {
        h.driver
            .memory()
            .write_slice(&pattern, GuestAddress(base + q * 0x1_0000))
            .unwrap();
    }
}

fn rings_still_painted(h: &NetHarness, base: u64, byte: u8) -> bool {
    let mut buf = vec![0u8; 0x1000 * 12];
    (0..2u64).all(|q| {
        h.driver
            .memory()
            .read_slice(&mut buf, GuestAddress(base + q * 0x1_0000))
            .is_ok()
            && buf.iter().all(|&b| b == byte)
    })
}

#[test]
fn reset_mid_transfer_forgets_the_old_rings_and_reinit_carries_traffic_byte_exact() {
    let mut h = NetHarness::new(LoopbackMode::Capture, NetConfig::default(), u64::MAX).unwrap();
    // Traffic in flight both ways: RX buffers posted, more frames than buffers injected,
    // TX chains published and kicked, and the reset right behind them.
    h.driver.post_rx(4, 4096).unwrap();
    let early: Vec<Vec<u8>> = (0..12).map(|i| eth_frame(200 + i, i as u8)).collect();
    for f in &early {
        h.backend.inject(f);
    }
    for i in 0..32 {
        let f = eth_frame(100 + i, 0x40 + i as u8);
        let _ = h.driver.send(&VirtioNetHdr::default(), &f);
    }
    h.driver.write_reg(regs::STATUS, 0);

    // Reset done: Status reads back 0 (virtio 1.2 §4.2.2.1), no interrupt pending, worker gone.
    assert_eq!(h.driver.read_reg(regs::STATUS), 0);
    assert_eq!(h.driver.read_reg(regs::INTERRUPT_STATUS), 0);
    assert!(!h.driver.transport().device().is_activated());
    assert_eq!(get(&h.metrics.resets), 1);
    let sent_at_reset = h.backend.sent_count();
    assert!(sent_at_reset <= 32);
    // Frames the backend still holds survive (host side); what the guest had of them is gone.
    let left = h.backend.pending_to_guest();
    let leftover: Vec<Vec<u8>> = early[early.len() - left..].to_vec();

    // Nothing of the old rings is used any more: paint them, publish on them and kick; with
    // the rings moved elsewhere by the re-initialisation, the paint must stay untouched.
    paint_rings(&h, RING_BASE, 0xaa);
    h.driver.kick_always(TX_QUEUE);
    h.driver.kick_always(RX_QUEUE);
    h.driver.ring_base = ALT_RING_BASE;
    h.driver.initialize(u64::MAX).unwrap();
    assert_eq!(
        get(&h.metrics.resets),
        1,
        "the init's own reset of a reset device"
    );
    send_and_check(&mut h, 8, 0x10);
    receive_and_check(&mut h, &leftover, 8, 0x80);
    assert!(
        rings_still_painted(&h, RING_BASE, 0xaa),
        "old rings touched"
    );
    assert_eq!(get(&h.metrics.needs_reset), 0);
    assert_eq!(h.metrics.tx_malformed.total(), 0);
    assert_eq!(h.metrics.rx_malformed.total(), 0);
}

#[test]
fn reset_during_initialisation_and_after_failed_features_recovers() {
    let mut h = NetHarness::with_defaults().unwrap();
    // Reset half-way through the next initialisation, then a driver without VERSION_1
    // (refused), then a good one.
    h.driver.write_reg(regs::STATUS, 0);
    h.driver.write_reg(regs::STATUS, STATUS_ACKNOWLEDGE);
    h.driver
        .write_reg(regs::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    h.driver.write_reg(regs::STATUS, 0);
    assert_eq!(h.driver.read_reg(regs::STATUS), 0);
    assert!(h.driver.initialize(!(1u64 << VIRTIO_F_VERSION_1)).is_err());
    h.driver.initialize(u64::MAX).unwrap();
    assert_eq!(get(&h.metrics.resets), 3);
    send_and_check(&mut h, 4, 1);
    receive_and_check(&mut h, &[], 4, 2);
}

/// Breaks `q` with an impossible avail index; checks NEEDS_RESET, the configuration change
/// interrupt, the counters, that the worker does not spin, that the other queue still
/// works, and that a reset and re-initialisation bring everything back.
fn impossible_avail_index_needs_reset(q: usize) {
    let mut h = NetHarness::new(LoopbackMode::Capture, no_polling(), u64::MAX).unwrap();
    h.driver.set_avail_idx(q, 1000);
    h.driver.kick_always(q);
    let m = h.metrics.clone();
    assert!(
        eventually(|| get(&m.needs_reset) == 1),
        "NEEDS_RESET not raised"
    );
    assert_eq!(get(&m.queues_broken), 1);
    let status = h.driver.read_reg(regs::STATUS);
    assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0, "status {status:#x}");
    assert_ne!(status & STATUS_DRIVER_OK, 0, "DRIVER_OK stays set");
    assert_ne!(
        h.driver.read_reg(regs::INTERRUPT_STATUS) & INT_CONFIG,
        0,
        "configuration change interrupt"
    );
    // Kicks on the broken queue cost one wake-up each at most, never a spin: a worker that
    // kept polling the queue would run far more iterations than kicks plus the other
    // queue's work in this loop.
    let before = get(&m.loop_iterations);
    for _ in 0..50 {
        h.driver.kick_always(q);
        std::thread::sleep(Duration::from_millis(1));
    }
    // The queue that is not broken goes on working meanwhile.
    if q == TX_QUEUE {
        receive_and_check(&mut h, &[], 3, 7);
    } else {
        send_and_check(&mut h, 3, 7);
    }
    let iterations = get(&m.loop_iterations) - before;
    assert!(iterations < 1000, "{iterations} loop iterations");
    assert_eq!(get(&m.needs_reset), 1, "raised once");
    // The driver may not clear the bit or set it itself, only reset.
    h.driver
        .write_reg(regs::STATUS, status & !STATUS_DEVICE_NEEDS_RESET);
    h.driver.write_reg(regs::STATUS, status);
    assert_ne!(
        h.driver.read_reg(regs::STATUS) & STATUS_DEVICE_NEEDS_RESET,
        0
    );
    assert_eq!(get(&m.mmio_refused), 1, "setting NEEDS_RESET is refused");

    h.driver.reset_and_reinit(u64::MAX).unwrap();
    assert_eq!(
        h.driver.read_reg(regs::STATUS) & STATUS_DEVICE_NEEDS_RESET,
        0
    );
    assert_eq!(h.driver.read_reg(regs::INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert_eq!(get(&m.resets), 1);
    send_and_check(&mut h, 4, 0x20);
    receive_and_check(&mut h, &[], 4, 0x30);
    assert_eq!(get(&m.needs_reset), 1);
}

#[test]
fn impossible_tx_avail_index_sets_needs_reset_and_recovers_after_reset() {
    impossible_avail_index_needs_reset(TX_QUEUE);
}

#[test]
fn impossible_rx_avail_index_sets_needs_reset_and_recovers_after_reset() {
    impossible_avail_index_needs_reset(RX_QUEUE);
}

#[test]
fn queue_outside_guest_memory_fails_activation_with_needs_reset() {
    let mut h = NetHarness::with_defaults().unwrap();
    let d = &mut h.driver;
    d.write_reg(regs::STATUS, 0);
    let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    d.write_reg(regs::STATUS, st);
    d.write_reg(regs::DRIVER_FEATURES_SEL, 1);
    d.write_reg(regs::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    d.write_reg(regs::STATUS, st | STATUS_FEATURES_OK);
    for q in 0..2u32 {
        d.write_reg(regs::QUEUE_SEL, q);
        d.write_reg(regs::QUEUE_NUM, 256);
        // The used ring of queue 1 ends past guest memory.
        let used = if q == 1 {
            MEM_SIZE as u64 - 16
        } else {
            0x3_0000
        };
        for (lo, addr) in [
            (regs::QUEUE_DESC_LOW, 0x1_0000 + u64::from(q) * 0x4000),
            (regs::QUEUE_AVAIL_LOW, 0x2_0000 + u64::from(q) * 0x1000),
            (regs::QUEUE_USED_LOW, used),
        ] {
            d.write_reg(lo, addr as u32);
            d.write_reg(lo + 4, (addr >> 32) as u32);
        }
        d.write_reg(regs::QUEUE_READY, 1);
    }
    d.write_reg(regs::STATUS, st | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let status = d.read_reg(regs::STATUS);
    assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0, "status {status:#x}");
    assert_ne!(d.read_reg(regs::INTERRUPT_STATUS) & INT_CONFIG, 0);
    assert!(!d.transport().device().is_activated());
    assert_eq!(get(&h.metrics.needs_reset), 1);
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    send_and_check(&mut h, 2, 3);
    receive_and_check(&mut h, &[], 2, 4);
}

#[test]
fn reset_counters_appear_in_the_snapshot() {
    let mut h = NetHarness::with_defaults().unwrap();
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    let snap = h.metrics.snapshot();
    let find = |name: &str| snap.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    assert_eq!(find("resets"), Some(1));
    assert_eq!(find("needs_reset"), Some(0));
    assert_eq!(find("mmio_refused"), Some(0));
    assert_eq!(
        NetMetrics::get(&h.metrics.resets),
        find("resets").unwrap_or(0)
    );
}

//! A hundred resets mid-transfer in a row: every one stops and joins its worker and releases
//! its descriptors, so threads and file descriptors do not grow, and traffic still flows
//! byte-exact after the last. Alone in its test binary so no other test's threads or
//! descriptors disturb the counts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use devices::net::header::VirtioNetHdr;
use devices::net::TX_QUEUE;
use devices::testing::{eth_frame, NetHarness};
use devices::virtio::mmio::regs;

const T: Duration = Duration::from_secs(10);
const ROUNDS: u64 = 100;

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Threads of this process, leaving out the kernel's io_uring helpers (`iou-wrk-*`,
/// `iou-sqp-*`), which come and go on the kernel's schedule. (Counted, not compared by name:
/// a freshly spawned worker carries its parent's name until it renames itself.)
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .filter(|n| !n.starts_with("iou-"))
                .count()
        })
        .unwrap_or(0)
}

/// [`threads`] at its lowest over a few samples: a kernel io_uring helper that has just been
/// spawned still carries its parent's name, so a single look can count one that is about to
/// be renamed (and left out) or to go away. A leak would add a thread per round.
fn settled_threads() -> usize {
    (0..20)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            threads()
        })
        .min()
        .unwrap_or(0)
}

/// One round: traffic both ways left in flight, then a reset and a full re-initialisation.
fn round(h: &mut NetHarness, i: u64) {
    h.driver.post_rx(2, 4096).unwrap();
    h.backend.inject(&eth_frame(90, i as u8));
    h.backend.inject(&eth_frame(91, i as u8));
    for k in 0..4u8 {
        let _ = h.driver.send(
            &VirtioNetHdr::default(),
            &eth_frame(64, k.wrapping_add(i as u8)),
        );
    }
    h.driver.write_reg(regs::STATUS, 0);
    assert_eq!(h.driver.read_reg(regs::STATUS), 0, "round {i}");
    h.driver.initialize(u64::MAX).unwrap();
}

#[test]
fn a_hundred_resets_mid_transfer_leak_no_thread_fd_or_worker() {
    let mut h = NetHarness::with_defaults().unwrap();
    // Warm up: one round so lazily created process-wide resources exist before counting.
    round(&mut h, 0);
    let threads_before = settled_threads();
    let fds = count_entries("/proc/self/fd");
    for i in 1..=ROUNDS {
        round(&mut h, i);
    }
    assert_eq!(
        h.metrics.resets.load(Ordering::Relaxed),
        ROUNDS + 1,
        "every reset counted"
    );
    assert_eq!(settled_threads(), threads_before, "threads changed");
    assert_eq!(count_entries("/proc/self/fd"), fds, "descriptors grew");

    // Still byte-exact both ways. Frames the backend still held at the last reset come first.
    let _ = h.backend.take_sent();
    let before = h.backend.sent_count();
    let out = eth_frame(1000, 0xee);
    h.driver.send(&VirtioNetHdr::default(), &out).unwrap();
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert_eq!(h.backend.wait_sent(before + 1, T), before + 1);
    assert_eq!(h.backend.take_sent().pop().map(|(_, f)| f), Some(out));
    let leftover = h.backend.pending_to_guest();
    let inbound = eth_frame(1200, 0xdd);
    h.driver.post_rx(leftover + 1, 4096).unwrap();
    h.backend.inject(&inbound);
    let got = h.driver.recv_frames(leftover + 1, T).unwrap();
    assert_eq!(got.last().map(|(_, f)| f.clone()), Some(inbound));
    assert_eq!(h.metrics.needs_reset.load(Ordering::Relaxed), 0);
}

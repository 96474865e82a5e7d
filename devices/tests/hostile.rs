//! Hostile descriptor chains: each is dropped (returned with length 0), counted by reason,
//! and the device keeps working. Plus a property test over random descriptor tables.

use std::sync::atomic::Ordering;
use std::time::Duration;

use devices::net::backend::loopback::LoopbackMode;
use devices::net::header::VirtioNetHdr;
use devices::net::{MalformedReason, NetConfig, RX_QUEUE, TX_QUEUE};
use devices::testing::{NetHarness, RawDesc, MEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use proptest::prelude::*;

const T: Duration = Duration::from_secs(10);

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x5au8; len];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

fn tx_desc(h: &NetHarness, slot: u16, data: &[u8], flags: u16, next: u16) -> RawDesc {
    let addr = h.driver.slot_addr(TX_QUEUE, slot);
    let _ = vm_memory::Bytes::write_slice(h.driver.memory(), data, vm_memory::GuestAddress(addr));
    RawDesc {
        addr,
        len: data.len() as u32,
        flags,
        next,
    }
}

/// Sends `descs` at `indices` on TX, expects it dropped for `reason`, then checks a good
/// frame still goes through.
fn expect_tx_drop(
    indices: &[u16],
    build: impl FnOnce(&NetHarness) -> Vec<RawDesc>,
    reason: MalformedReason,
) {
    let mut h = NetHarness::with_defaults().unwrap();
    let descs = build(&h);
    let head = h.driver.add_raw_chain(TX_QUEUE, indices, &descs, None);
    h.driver.kick_always(TX_QUEUE);
    let used = h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert_eq!(used[0].id, u32::from(head));
    assert_eq!(used[0].len, 0);
    assert_eq!(
        h.metrics.tx_malformed.get(reason),
        1,
        "reason {}",
        reason.name()
    );
    assert_eq!(h.metrics.tx_malformed.total(), 1);
    assert_eq!(h.backend.sent_count(), 0);
    // Still working.
    h.driver
        .send(&VirtioNetHdr::default(), &frame(100))
        .unwrap();
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert_eq!(h.backend.sent_count(), 1);
    assert_eq!(h.metrics.tx_frames.load(Ordering::Relaxed), 1);
}

fn good_payload() -> Vec<u8> {
    let mut v = VirtioNetHdr::default().to_bytes().to_vec();
    v.extend(frame(60));
    v
}

#[test]
fn tx_cycle_is_truncated() {
    let p = good_payload();
    expect_tx_drop(
        &[200, 201],
        |h| {
            vec![
                tx_desc(h, 200, &p[..20], VRING_DESC_F_NEXT, 201),
                tx_desc(h, 201, &p[20..], VRING_DESC_F_NEXT, 200),
            ]
        },
        MalformedReason::TooManyDescriptors,
    );
}

#[test]
fn tx_self_loop_is_cut() {
    let p = good_payload();
    expect_tx_drop(
        &[210],
        |h| vec![tx_desc(h, 210, &p, VRING_DESC_F_NEXT, 210)],
        MalformedReason::TooManyDescriptors,
    );
}

#[test]
fn tx_next_outside_queue_is_truncated() {
    let p = good_payload();
    expect_tx_drop(
        &[220],
        |h| vec![tx_desc(h, 220, &p, VRING_DESC_F_NEXT, 5000)],
        MalformedReason::Truncated,
    );
}

#[test]
fn tx_address_outside_memory() {
    expect_tx_drop(
        &[230],
        |_| {
            vec![RawDesc {
                addr: MEM_SIZE as u64 - 10,
                len: 100,
                flags: 0,
                next: 0,
            }]
        },
        MalformedReason::OutOfMemory,
    );
}

#[test]
fn tx_address_overflowing_u64() {
    expect_tx_drop(
        &[231],
        |_| {
            vec![RawDesc {
                addr: u64::MAX - 4,
                len: 100,
                flags: 0,
                next: 0,
            }]
        },
        MalformedReason::OutOfMemory,
    );
}

#[test]
fn tx_zero_length_chain() {
    expect_tx_drop(
        &[240],
        |h| vec![tx_desc(h, 240, &[], 0, 0)],
        MalformedReason::HeaderTooShort,
    );
}

#[test]
fn tx_header_shorter_than_12_bytes() {
    expect_tx_drop(
        &[241],
        |h| vec![tx_desc(h, 241, &[0u8; 11], 0, 0)],
        MalformedReason::HeaderTooShort,
    );
}

#[test]
fn tx_frame_shorter_than_ethernet_header() {
    expect_tx_drop(
        &[242],
        |h| vec![tx_desc(h, 242, &[0u8; 20], 0, 0)],
        MalformedReason::FrameTooShort,
    );
}

#[test]
fn tx_write_only_buffer_is_wrong_direction() {
    let p = good_payload();
    expect_tx_drop(
        &[243],
        |h| vec![tx_desc(h, 243, &p, VRING_DESC_F_WRITE, 0)],
        MalformedReason::WrongDirection,
    );
}

#[test]
fn tx_overlong_chain_is_too_long() {
    // Two 40 KiB descriptors: 80 KiB > 64 KiB + headers.
    let big = vec![0u8; 40 * 1024];
    expect_tx_drop(
        &[250, 251],
        |h| {
            vec![
                tx_desc(h, 250, &big, VRING_DESC_F_NEXT, 251),
                tx_desc(h, 251, &big, 0, 0),
            ]
        },
        MalformedReason::TooLong,
    );
}

#[test]
fn tx_too_many_descriptors() {
    let p = good_payload();
    let idx: Vec<u16> = (100..170).collect();
    expect_tx_drop(
        &idx.clone(),
        |h| {
            idx.iter()
                .enumerate()
                .map(|(i, &d)| {
                    let last = i + 1 == idx.len();
                    let data: &[u8] = if i == 0 { &p } else { &p[..1] };
                    tx_desc(
                        h,
                        d,
                        data,
                        if last { 0 } else { VRING_DESC_F_NEXT },
                        if last { 0 } else { d + 1 },
                    )
                })
                .collect()
        },
        MalformedReason::TooManyDescriptors,
    );
}

#[test]
fn tx_head_outside_queue_is_counted_and_skipped() {
    let mut h = NetHarness::with_defaults().unwrap();
    let p = good_payload();
    let d = tx_desc(&h, 10, &p, 0, 0);
    h.driver.add_raw_chain(TX_QUEUE, &[10], &[d], Some(60000));
    h.driver.kick_always(TX_QUEUE);
    for _ in 0..1000 {
        if h.metrics.tx_malformed.get(MalformedReason::BadHead) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(h.metrics.tx_malformed.get(MalformedReason::BadHead), 1);
    h.driver
        .send(&VirtioNetHdr::default(), &frame(100))
        .unwrap();
    assert_eq!(h.backend.wait_sent(1, T), 1);
}

#[test]
fn rx_read_only_buffer_is_wrong_direction() {
    let mut h = NetHarness::with_defaults().unwrap();
    let addr = h.driver.slot_addr(RX_QUEUE, 30);
    let head = h.driver.add_raw_chain(
        RX_QUEUE,
        &[30],
        &[RawDesc {
            addr,
            len: 2048,
            flags: 0,
            next: 0,
        }],
        None,
    );
    h.driver.kick_always(RX_QUEUE);
    let used = h.driver.wait_used(RX_QUEUE, 1, T).unwrap();
    assert_eq!((used[0].id, used[0].len), (u32::from(head), 0));
    assert_eq!(
        h.metrics.rx_malformed.get(MalformedReason::WrongDirection),
        1
    );
    // A good buffer afterwards receives frames.
    h.driver.post_rx(2, 2048).unwrap();
    h.backend.inject(&frame(90));
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got[0].1, frame(90));
}

#[test]
fn rx_buffer_shorter_than_header() {
    let mut h = NetHarness::with_defaults().unwrap();
    let addr = h.driver.slot_addr(RX_QUEUE, 31);
    h.driver.add_raw_chain(
        RX_QUEUE,
        &[31],
        &[RawDesc {
            addr,
            len: 8,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        }],
        None,
    );
    h.driver.kick_always(RX_QUEUE);
    h.driver.wait_used(RX_QUEUE, 1, T).unwrap();
    assert_eq!(
        h.metrics.rx_malformed.get(MalformedReason::HeaderTooShort),
        1
    );
}

#[test]
fn rx_buffer_outside_memory() {
    let mut h = NetHarness::with_defaults().unwrap();
    h.driver.add_raw_chain(
        RX_QUEUE,
        &[32],
        &[RawDesc {
            addr: MEM_SIZE as u64,
            len: 4096,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        }],
        None,
    );
    h.driver.kick_always(RX_QUEUE);
    h.driver.wait_used(RX_QUEUE, 1, T).unwrap();
    assert_eq!(h.metrics.rx_malformed.get(MalformedReason::OutOfMemory), 1);
}

#[test]
fn impossible_avail_index_breaks_the_queue_without_spinning() {
    let cfg = NetConfig {
        poll_window: Duration::ZERO,
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Capture, cfg, u64::MAX).unwrap();
    h.driver.set_avail_idx(TX_QUEUE, 1000);
    h.driver.kick_always(TX_QUEUE);
    for _ in 0..1000 {
        if h.metrics.queues_broken.load(Ordering::Relaxed) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(h.metrics.queues_broken.load(Ordering::Relaxed), 1);
    // The worker is asleep, not spinning on the broken queue: a spinning loop would run
    // hundreds of thousands of iterations in this time.
    let before = h.metrics.loop_iterations.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    let iterations = h.metrics.loop_iterations.load(Ordering::Relaxed) - before;
    assert!(iterations < 1000, "{iterations} loop iterations while idle");
    // A reset brings the queue back.
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    h.driver.send(&VirtioNetHdr::default(), &frame(80)).unwrap();
    assert_eq!(h.backend.wait_sent(1, T), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Random descriptor tables on both queues never crash the device; every chain it takes
    /// is accounted for exactly once (sent, dropped by reason, or delivered), and a good frame
    /// still goes through afterwards.
    #[test]
    fn random_descriptor_tables(
        descs in proptest::collection::vec(
            (0u64..(MEM_SIZE as u64 + 0x1000), 0u32..70_000, 0u16..4, 0u16..300),
            1..40,
        ),
        heads in proptest::collection::vec(0u16..300, 1..20),
        rx_heads in proptest::collection::vec(0u16..300, 0..10),
    ) {
        let mut h = NetHarness::new(LoopbackMode::Capture, NetConfig::default(), u64::MAX).unwrap();
        // Fill descriptor tables of both queues with the same random entries at 0..n.
        let indices: Vec<u16> = (0..descs.len() as u16).collect();
        let raw: Vec<RawDesc> = descs
            .iter()
            .map(|&(addr, len, flags, next)| RawDesc { addr, len, flags, next })
            .collect();
        for &head in &heads {
            h.driver.add_raw_chain(TX_QUEUE, &indices, &raw, Some(head));
        }
        for &head in &rx_heads {
            h.driver.add_raw_chain(RX_QUEUE, &indices, &raw, Some(head));
        }
        h.driver.kick_always(TX_QUEUE);
        h.driver.kick_always(RX_QUEUE);
        let m = h.metrics.clone();
        let taken = |m: &devices::net::NetMetrics| {
            m.tx_frames.load(Ordering::Relaxed)
                + m.tx_malformed.total()
                + m.tx_dropped_backend_busy.load(Ordering::Relaxed)
                + m.tx_dropped_backend_error.load(Ordering::Relaxed)
        };
        let mut ok = false;
        for _ in 0..2000 {
            if taken(&m) == heads.len() as u64 {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        prop_assert!(ok, "TX accounted {} of {}", taken(&m), heads.len());
        prop_assert_eq!(m.tx_frames.load(Ordering::Relaxed), h.backend.sent_count());
        // RX chains are either kept (valid) or dropped by reason, never more than posted.
        prop_assert!(m.rx_malformed.total() <= rx_heads.len() as u64);
        // Reset and reinitialise: the device comes back cleanly and carries a good frame.
        h.driver.reset_and_reinit(u64::MAX).unwrap();
        let before = h.backend.sent_count();
        h.driver.send(&VirtioNetHdr::default(), &frame(64)).unwrap();
        prop_assert_eq!(h.backend.wait_sent(before + 1, T), before + 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random register traffic (any offset, size, value, order) never panics the transport,
    /// and a clean re-initialisation afterwards still yields a working device.
    #[test]
    fn random_register_accesses(
        ops in proptest::collection::vec((0u64..0x1100, 0usize..9, any::<u32>(), any::<bool>()), 1..200),
    ) {
        let mut h = NetHarness::new(LoopbackMode::Capture, NetConfig::default(), u64::MAX).unwrap();
        for (offset, size, value, write) in ops {
            let bytes = value.to_le_bytes();
            let mut data = vec![0u8; size];
            for (i, b) in data.iter_mut().enumerate() {
                *b = bytes[i % 4];
            }
            let t = h.driver.transport();
            if write {
                t.write(offset, &data);
            } else {
                t.read(offset, &mut data);
            }
        }
        h.driver.reset_and_reinit(u64::MAX).unwrap();
        let before = h.backend.sent_count();
        h.driver.send(&VirtioNetHdr::default(), &frame(64)).unwrap();
        prop_assert_eq!(h.backend.wait_sent(before + 1, T), before + 1);
    }
}

//! Overlapping guest buffers: buffers over the device's own rings are refused and counted
//! (`overlaps_ring`); buffers that overlap each other are the guest's problem (it gets
//! garbage) and the host stays sane, since the device reaches guest memory only through
//! vm-memory and bounds-checked iovecs, never through references held across writes.

use std::time::Duration;

use devices::net::header::VirtioNetHdr;
use devices::net::{MalformedReason, RX_QUEUE, TX_QUEUE};
use devices::testing::{eth_frame, NetHarness, RawDesc, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

const T: Duration = Duration::from_secs(10);

fn rx_desc(addr: u64, len: u32) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags: VRING_DESC_F_WRITE,
        next: 0,
    }
}

fn still_works(h: &mut NetHarness, seed: u8) {
    let out = eth_frame(200, seed);
    let before = h.backend.sent_count();
    let _ = h.backend.take_sent();
    h.driver.send(&VirtioNetHdr::default(), &out).unwrap();
    assert_eq!(h.backend.wait_sent(before + 1, T), before + 1);
    assert_eq!(h.backend.take_sent().pop().map(|(_, f)| f), Some(out));
    h.driver.post_rx(1, 4096).unwrap();
    let inbound = eth_frame(300, seed ^ 0x55);
    h.backend.inject(&inbound);
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got.last().map(|(_, f)| f.clone()), Some(inbound));
}

#[test]
fn rx_buffers_over_any_ring_are_refused_and_counted() {
    let mut h = NetHarness::with_defaults().unwrap();
    let (rx_desc_table, _, rx_used) = h.driver.rx.ring_addresses();
    let (_, tx_avail, _) = h.driver.tx.ring_addresses();
    // Over the RX descriptor table itself, the RX used ring (straddling its start), and the
    // other queue's avail ring.
    let targets = [
        (40u16, rx_desc(rx_desc_table.0, 4096)),
        (41, rx_desc(rx_used.0 - 8, 64)),
        (42, rx_desc(tx_avail.0 + 2, 16)),
    ];
    for (i, d) in targets {
        h.driver.add_raw_chain(RX_QUEUE, &[i], &[d], None);
    }
    h.driver.kick_always(RX_QUEUE);
    let used = h.driver.wait_used(RX_QUEUE, 3, T).unwrap();
    assert!(used.iter().all(|e| e.len == 0), "{used:?}");
    assert_eq!(h.metrics.rx_malformed.get(MalformedReason::OverlapsRing), 3);
    assert_eq!(h.metrics.rx_malformed.total(), 3);
    let snap = h.metrics.snapshot();
    assert!(snap
        .iter()
        .any(|(k, v)| k == "rx_malformed_overlaps_ring" && *v == 3));
    still_works(&mut h, 1);
}

#[test]
fn tx_buffer_over_the_used_ring_is_refused_and_counted() {
    let mut h = NetHarness::with_defaults().unwrap();
    let (_, _, tx_used) = h.driver.tx.ring_addresses();
    let hdr_slot = h.driver.slot_addr(TX_QUEUE, 50);
    let mut first = VirtioNetHdr::default().to_bytes().to_vec();
    first.extend(eth_frame(60, 0));
    vm_memory::Bytes::write_slice(h.driver.memory(), &first, vm_memory::GuestAddress(hdr_slot))
        .unwrap();
    let head = h.driver.add_raw_chain(
        TX_QUEUE,
        &[50, 51],
        &[
            RawDesc {
                addr: hdr_slot,
                len: first.len() as u32,
                flags: VRING_DESC_F_NEXT,
                next: 51,
            },
            RawDesc {
                addr: tx_used.0,
                len: 256,
                flags: 0,
                next: 0,
            },
        ],
        None,
    );
    h.driver.kick_always(TX_QUEUE);
    let used = h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert_eq!((used[0].id, used[0].len), (u32::from(head), 0));
    assert_eq!(h.metrics.tx_malformed.get(MalformedReason::OverlapsRing), 1);
    assert_eq!(h.backend.sent_count(), 0);
    still_works(&mut h, 2);
}

#[test]
fn rx_buffers_overlapping_each_other_leave_the_host_sane() {
    let mut h = NetHarness::with_defaults().unwrap();
    let shared = h.driver.slot_addr(RX_QUEUE, 60);
    // Eight chains over the same 2 KiB, one of them two descriptors over the same bytes,
    // another straddling the first half of it.
    for i in 0..6u16 {
        h.driver
            .add_raw_chain(RX_QUEUE, &[60 + i], &[rx_desc(shared, 2048)], None);
    }
    h.driver.add_raw_chain(
        RX_QUEUE,
        &[70, 71],
        &[
            RawDesc {
                addr: shared,
                len: 1024,
                flags: VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                next: 71,
            },
            rx_desc(shared, 1024),
        ],
        None,
    );
    h.driver
        .add_raw_chain(RX_QUEUE, &[72], &[rx_desc(shared + 1000, 2048)], None);
    h.driver.kick_always(RX_QUEUE);
    for i in 0..8u8 {
        h.backend.inject(&eth_frame(1500, i));
    }
    // Every chain is used with its frame's length; the bytes are whatever was written last.
    let used = h.driver.wait_used(RX_QUEUE, 8, T).unwrap();
    assert_eq!(used.len(), 8);
    assert!(used.iter().all(|e| e.len == 12 + 1500), "{used:?}");
    assert_eq!(
        h.metrics.rx_malformed.total(),
        0,
        "not detected, not refused"
    );
    still_works(&mut h, 3);
}

#[test]
fn tx_chain_reading_the_same_bytes_twice_is_sent() {
    let mut h = NetHarness::with_defaults().unwrap();
    let a = h.driver.slot_addr(TX_QUEUE, 80);
    let mut buf = VirtioNetHdr::default().to_bytes().to_vec();
    buf.extend(eth_frame(100, 9));
    vm_memory::Bytes::write_slice(h.driver.memory(), &buf, vm_memory::GuestAddress(a)).unwrap();
    let len = buf.len() as u32;
    h.driver.add_raw_chain(
        TX_QUEUE,
        &[80, 81],
        &[
            RawDesc {
                addr: a,
                len,
                flags: VRING_DESC_F_NEXT,
                next: 81,
            },
            RawDesc {
                addr: a,
                len,
                flags: 0,
                next: 0,
            },
        ],
        None,
    );
    h.driver.kick_always(TX_QUEUE);
    assert_eq!(h.backend.wait_sent(1, T), 1);
    let sent = h.backend.take_sent();
    let mut want = eth_frame(100, 9);
    want.extend(&buf);
    assert_eq!(sent[0].1, want);
    still_works(&mut h, 4);
}

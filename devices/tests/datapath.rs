//! Functional tests of the virtio-net datapath through the real transport and device, driven
//! by the in-process harness (no KVM).

use std::sync::atomic::Ordering;
use std::time::Duration;

use devices::net::backend::loopback::LoopbackMode;
use devices::net::features::*;
use devices::net::header::{VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
use devices::net::{NetConfig, NetMetrics, RX_QUEUE, TX_QUEUE};
use devices::testing::{NetDriver, NetHarness};
use devices::virtio::mmio::regs;
use devices::virtio::{
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

const T: Duration = Duration::from_secs(10);

use devices::testing::eth_frame as frame;

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn bit(b: u32) -> u64 {
    1u64 << b
}

#[test]
fn tx_frame_reaches_backend_with_parsed_header() {
    let mut h = NetHarness::with_defaults().unwrap();
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let f = frame(1514, 3);
    let head = h.driver.send(&hdr, &f).unwrap();
    let used = h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].id, u32::from(head));
    assert_eq!(used[0].len, 0, "TX chains are returned with length 0");
    let sent = h.backend.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, hdr);
    assert_eq!(sent[0].1, f);
    assert_eq!(get(&h.metrics.tx_frames), 1);
    assert_eq!(get(&h.metrics.tx_bytes), 1514);
    assert_eq!(h.metrics.tx_malformed.total(), 0);
}

#[test]
fn tx_frame_split_over_descriptors_is_gathered() {
    let mut h = NetHarness::with_defaults().unwrap();
    let f = frame(3000, 9);
    let hdr = VirtioNetHdr::default().to_bytes();
    // Header split over two descriptors, frame over three.
    let parts: Vec<&[u8]> = vec![&hdr[..5], &hdr[5..], &f[..1], &f[1..2000], &f[2000..]];
    h.driver.add_chain(TX_QUEUE, &parts, &[]).unwrap();
    h.driver.kick_always(TX_QUEUE);
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    let sent = h.backend.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, f);
}

#[test]
fn rx_frame_lands_in_guest_buffer_with_header() {
    let mut h = NetHarness::with_defaults().unwrap();
    h.driver.post_rx(8, 2048).unwrap();
    let f = frame(700, 1);
    h.backend.inject(&f);
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, f);
    assert_eq!(got[0].0.num_buffers, 1);
    assert_eq!(get(&h.metrics.rx_frames), 1);
    assert_eq!(get(&h.metrics.rx_bytes), 700);
    // The device raises the interrupt right after publishing the used ring.
    let mut irqs = 0;
    for _ in 0..1000 {
        irqs = get(&h.metrics.interrupts);
        if irqs >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        irqs >= 1,
        "the device interrupted the driver for the RX frame"
    );
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    let mut h = NetHarness::with_defaults().unwrap();
    for i in 0..5 {
        h.backend.inject(&frame(100 + i, i as u8));
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(get(&h.metrics.rx_frames), 0);
    assert_eq!(
        h.backend.pending_to_guest(),
        5,
        "frames stay in the backend without buffers"
    );
    h.driver.post_rx(16, 2048).unwrap();
    let got = h.driver.recv_frames(5, T).unwrap();
    for (i, (_, f)) in got.iter().enumerate() {
        assert_eq!(*f, frame(100 + i, i as u8));
    }
}

#[test]
fn mrg_rxbuf_spans_several_chains_and_sets_num_buffers() {
    let features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF);
    let mut h = NetHarness::new(LoopbackMode::Capture, NetConfig::default(), features).unwrap();
    assert_eq!(h.driver.features(), features);
    // 16 buffers of 256 bytes = 4096 bytes of room >= header + 1518.
    h.driver.post_rx(16, 256).unwrap();
    let f = frame(1000, 5);
    h.backend.inject(&f);
    let got = h.driver.recv_frames(1, T).unwrap();
    // 12 + 1000 bytes over 256-byte buffers = 4 buffers.
    assert_eq!(got[0].0.num_buffers, 4);
    assert_eq!(got[0].1, f);
    assert_eq!(get(&h.metrics.rx_frames), 1);
}

#[test]
fn without_mrg_rxbuf_a_short_buffer_truncates_and_counts() {
    let features = bit(VIRTIO_F_VERSION_1);
    let mut h = NetHarness::new(LoopbackMode::Capture, NetConfig::default(), features).unwrap();
    h.driver.post_rx(2, 512).unwrap();
    h.backend.inject(&frame(1000, 5));
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got[0].1.len(), 500);
    assert_eq!(got[0].1, frame(1000, 5)[..500]);
    assert_eq!(get(&h.metrics.rx_truncated), 1);
}

#[test]
fn works_with_no_optional_features() {
    let features = bit(VIRTIO_F_VERSION_1);
    let mut h = NetHarness::new(LoopbackMode::Echo, NetConfig::default(), features).unwrap();
    h.driver.post_rx(4, 2048).unwrap();
    let f = frame(64, 2);
    h.driver.send(&VirtioNetHdr::default(), &f).unwrap();
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got[0].1, f);
}

#[test]
fn feature_negotiation_refuses_legacy_drivers_and_masks_unknown_bits() {
    let (backend, _h) =
        devices::net::backend::loopback::LoopbackBackend::new(LoopbackMode::Discard).unwrap();
    let net = devices::net::Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    // A driver that does not accept VERSION_1 is refused at FEATURES_OK.
    let err = NetDriver::new(Box::new(net), bit(VIRTIO_NET_F_MAC)).unwrap_err();
    assert!(err.to_string().contains("FEATURES_OK"), "{err}");

    let mut h = NetHarness::new(LoopbackMode::Discard, NetConfig::default(), u64::MAX).unwrap();
    let f = h.driver.features();
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
    ] {
        assert_ne!(f & bit(b), 0, "feature {b} offered");
    }
    // Nothing else is offered (e.g. no control queue, no MQ).
    assert_eq!(f & bit(17), 0);
    assert_eq!(f & bit(22), 0);
    assert_eq!(h.driver.transport().device().acked_features(), f);
}

#[test]
fn config_space_has_mac_and_link_status() {
    let cfg = NetConfig {
        mac: [2, 4, 6, 8, 10, 12],
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Discard, cfg, u64::MAX).unwrap();
    let t = h.driver.transport();
    let mut mac = [0u8; 6];
    t.read(regs::CONFIG, &mut mac);
    assert_eq!(mac, [2, 4, 6, 8, 10, 12]);
    let mut st = [0u8; 2];
    t.read(regs::CONFIG + 6, &mut st);
    assert_eq!(u16::from_le_bytes(st), 1, "link up");
    let mut past = [0xffu8; 4];
    t.read(regs::CONFIG + 0x200, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn reset_stops_worker_and_device_works_after_reinit() {
    let mut h = NetHarness::with_defaults().unwrap();
    h.driver
        .send(&VirtioNetHdr::default(), &frame(100, 1))
        .unwrap();
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert!(h.driver.transport().device().is_activated());
    h.driver.write_reg(regs::STATUS, 0);
    assert!(!h.driver.transport().device().is_activated());
    assert_eq!(h.driver.read_reg(regs::STATUS), 0);
    assert_eq!(h.driver.transport().device().acked_features(), 0);
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    h.driver
        .send(&VirtioNetHdr::default(), &frame(200, 2))
        .unwrap();
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    let sent = h.backend.take_sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].1, frame(200, 2));
}

#[test]
fn shutdown_joins_worker() {
    let mut h = NetHarness::with_defaults().unwrap();
    h.driver.transport().shutdown();
    assert!(!h.driver.transport().device().is_activated());
    // Idempotent.
    h.driver.transport().shutdown();
}

#[test]
fn queue_notify_register_write_kicks_the_queue() {
    let cfg = NetConfig {
        poll_window: Duration::ZERO,
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Capture, cfg, u64::MAX).unwrap();
    // Let the worker go idle (notifications on), then add a chain and kick via MMIO.
    std::thread::sleep(Duration::from_millis(20));
    let mut buf = VirtioNetHdr::default().to_bytes().to_vec();
    buf.extend(frame(60, 0));
    h.driver.add_chain(TX_QUEUE, &[&buf], &[]).unwrap();
    h.driver.kick_mmio(TX_QUEUE);
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert_eq!(h.backend.sent_count(), 1);
    assert!(get(&h.metrics.tx_kicks) >= 1);
}

#[test]
fn bad_register_accesses_are_ignored_and_counted() {
    let mut h = NetHarness::with_defaults().unwrap();
    let t = h.driver.transport();
    let before = t.bad_accesses();
    let mut b2 = [0u8; 2];
    t.read(regs::MAGIC_VALUE, &mut b2);
    assert_eq!(b2, [0, 0]);
    t.write(regs::STATUS, &[1, 2]);
    t.write(0xf00_0000, &[0; 4]);
    t.write(regs::QUEUE_NOTIFY, &99u32.to_le_bytes());
    // Queue registers cannot change after DRIVER_OK.
    t.write(regs::QUEUE_NUM, &8u32.to_le_bytes());
    let mut huge = [0u8; 8];
    t.read(0xffc, &mut huge);
    assert_eq!(t.bad_accesses() - before, 6);
    assert_ne!(t.status() & STATUS_DRIVER_OK, 0, "device still running");
    assert_ne!(t.status() & STATUS_FEATURES_OK, 0);
    h.driver
        .send(&VirtioNetHdr::default(), &frame(64, 0))
        .unwrap();
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
}

#[test]
fn back_to_back_tx_needs_few_kicks() {
    // Generous poll window so the test does not depend on scheduling.
    let cfg = NetConfig {
        poll_window: Duration::from_millis(50),
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Discard, cfg, u64::MAX).unwrap();
    let n = 200u64;
    let f = frame(64, 0);
    let mut done = 0;
    while done < n {
        // Keep at most 100 in flight.
        if h.driver.tx.free_descriptors() == 0 || done - h.backend.sent_count() > 100 {
            h.driver.take_used(TX_QUEUE);
            std::hint::spin_loop();
            continue;
        }
        h.driver.send(&VirtioNetHdr::default(), &f).unwrap();
        done += 1;
    }
    let sent = h.backend.wait_sent(n, T);
    let used_idx = h.driver.used_idx(TX_QUEUE);
    assert_eq!(
        sent,
        n,
        "used_idx {used_idx} kicks {} suppressed {} malformed {} dev kicks {} iterations {}",
        h.driver.tx.kicks,
        h.driver.tx.kicks_suppressed,
        h.metrics.tx_malformed.total(),
        get(&h.metrics.tx_kicks),
        get(&h.metrics.loop_iterations)
    );
    let kicks = h.driver.tx.kicks;
    assert!(kicks < n / 2, "{kicks} kicks for {n} frames");
    // The backend counts a frame before the worker does; give the worker its moment.
    for _ in 0..1000 {
        if get(&h.metrics.tx_frames) == n {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(get(&h.metrics.tx_frames), n);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut h = NetHarness::with_defaults().unwrap();
    assert_ne!(h.driver.features() & bit(VIRTIO_RING_F_EVENT_IDX), 0);
    // Ask for an interrupt only after the 10th used element.
    h.driver.set_used_event(TX_QUEUE, 9);
    h.driver.set_used_event(RX_QUEUE, 1000);
    for i in 0..5 {
        h.driver
            .send(&VirtioNetHdr::default(), &frame(64, i))
            .unwrap();
        assert_eq!(h.backend.wait_sent(u64::from(i) + 1, T), u64::from(i) + 1);
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        get(&h.metrics.interrupts),
        0,
        "no interrupt before used_event"
    );
    assert!(get(&h.metrics.interrupts_suppressed) >= 1);
    for i in 5..10 {
        h.driver
            .send(&VirtioNetHdr::default(), &frame(64, i))
            .unwrap();
    }
    assert_eq!(h.backend.wait_sent(10, T), 10);
    let mut fired = false;
    for _ in 0..100 {
        if h.driver.wait_irq(Duration::from_millis(50)) {
            fired = true;
            break;
        }
    }
    assert!(fired, "interrupt once used passed used_event");
    assert!(get(&h.metrics.interrupts) >= 1);
}

#[test]
fn pcap_captures_both_directions() {
    let dir = std::env::temp_dir().join(format!("rf-devices-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cap.pcap");
    let cfg = NetConfig {
        pcap: Some(path.clone()),
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Capture, cfg, u64::MAX).unwrap();
    let tx = frame(300, 1);
    let rx = frame(400, 2);
    h.driver.send(&VirtioNetHdr::default(), &tx).unwrap();
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    h.driver.post_rx(4, 2048).unwrap();
    h.backend.inject(&rx);
    h.driver.recv_frames(1, T).unwrap();
    h.driver.transport().shutdown();

    let file = std::fs::File::open(&path).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
    assert_eq!(r.header().datalink, pcap_file::DataLink::ETHERNET);
    let mut frames = Vec::new();
    while let Some(p) = r.next_packet() {
        frames.push(p.unwrap().data.into_owned());
    }
    assert_eq!(frames, vec![tx, rx]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pcap_unwritable_path_fails_at_construction() {
    let (backend, _h) =
        devices::net::backend::loopback::LoopbackBackend::new(LoopbackMode::Discard).unwrap();
    let cfg = NetConfig {
        pcap: Some("/nonexistent-dir-rf/x.pcap".into()),
        ..NetConfig::default()
    };
    let err = devices::net::Net::new(cfg, Box::new(backend)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent-dir-rf/x.pcap") && msg.contains("writable"),
        "{msg}"
    );
}

#[test]
fn metrics_start_at_zero() {
    let m = NetMetrics::default();
    assert_eq!(m.tx_malformed.total() + m.rx_malformed.total(), 0);
}

#[test]
fn chain_bench_fixture_processes_its_batch_repeatedly() {
    let mut b = devices::testing::TxChainBench::new(100, 8).unwrap();
    assert_eq!(b.run(), 800);
    assert_eq!(b.run(), 800);
}

#[test]
fn mrg_rxbuf_carries_a_64k_gso_frame_over_many_buffers() {
    let features = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_CSUM);
    let mut h = NetHarness::new(LoopbackMode::Capture, NetConfig::default(), features).unwrap();
    // 40 x 2048 = 80 KiB of room >= header + largest frame.
    h.driver.post_rx(40, 2048).unwrap();
    let f = frame(65_000, 11);
    h.backend.inject(&f);
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(
        got[0].0.num_buffers as usize,
        (12 + 65_000usize).div_ceil(2048)
    );
    assert_eq!(got[0].1.len(), f.len());
    assert!(got[0].1 == f);
    // The chains the frame did not need stay posted for the next frame.
    h.backend.inject(&frame(100, 1));
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got[0].1, frame(100, 1));
}

#[test]
fn driver_ok_with_queues_outside_memory_sets_needs_reset_and_config_irq() {
    use devices::virtio::{STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER};
    let (backend, _h) =
        devices::net::backend::loopback::LoopbackBackend::new(LoopbackMode::Discard).unwrap();
    let net = devices::net::Net::new(NetConfig::default(), Box::new(backend)).unwrap();
    let mem =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
            .unwrap();
    let mut t = devices::virtio::mmio::MmioTransport::new(mem, Box::new(net)).unwrap();
    let w = |t: &mut devices::virtio::mmio::MmioTransport, off: u64, v: u32| {
        t.write(off, &v.to_le_bytes())
    };
    w(&mut t, regs::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(&mut t, regs::DRIVER_FEATURES_SEL, 1);
    w(&mut t, regs::DRIVER_FEATURES, 1); // VERSION_1
    let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    w(&mut t, regs::STATUS, st);
    for q in 0..2 {
        w(&mut t, regs::QUEUE_SEL, q);
        w(&mut t, regs::QUEUE_NUM, 256);
        w(&mut t, regs::QUEUE_DESC_LOW, 0x10_0000); // at the end of 1 MiB: outside
        w(&mut t, regs::QUEUE_AVAIL_LOW, 0x2000);
        w(&mut t, regs::QUEUE_USED_LOW, 0x3000);
        w(&mut t, regs::QUEUE_READY, 1);
    }
    w(&mut t, regs::STATUS, st | STATUS_DRIVER_OK);
    assert_ne!(t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(!t.device().is_activated());
    let mut b = [0u8; 4];
    t.read(regs::INTERRUPT_STATUS, &mut b);
    assert_eq!(
        u32::from_le_bytes(b) & 2,
        2,
        "config-change interrupt raised"
    );
    assert_eq!(t.irq_evt().read().unwrap(), 1);
    // A reset clears it.
    w(&mut t, regs::STATUS, 0);
    assert_eq!(t.status(), 0);
    t.read(regs::INTERRUPT_STATUS, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0);
}

//! A register and config-space write storm: 100 000 accesses the transport must refuse
//! (read-only registers and config fields, offsets outside the window, wrong widths,
//! QueueNum above QueueNumMax, QueueReady toggles and queue addresses after DRIVER_OK, queue
//! registers of queues that do not exist). Each is refused and counted once, the log gets a
//! few dozen lines rather than 100 000, nothing panics, and the device keeps working.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use devices::net::header::VirtioNetHdr;
use devices::net::{RX_QUEUE, TX_QUEUE};
use devices::testing::{eth_frame, NetHarness};
use devices::virtio::mmio::regs;
use devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};

const T: Duration = Duration::from_secs(10);
const STORM: u64 = 100_000;

/// A tracing subscriber that only counts events at WARN or above.
struct CountWarnings(Arc<AtomicU64>);

impl tracing::Subscriber for CountWarnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn traffic_still_flows(h: &mut NetHarness, seed: u8) {
    let out = eth_frame(300, seed);
    let _ = h.backend.take_sent();
    let before = h.backend.sent_count();
    h.driver.send(&VirtioNetHdr::default(), &out).unwrap();
    h.driver.wait_used(TX_QUEUE, 1, T).unwrap();
    assert_eq!(h.backend.wait_sent(before + 1, T), before + 1);
    assert_eq!(h.backend.take_sent().pop().map(|(_, f)| f), Some(out));
    let inbound = eth_frame(400, seed ^ 0xff);
    h.driver.post_rx(1, 4096).unwrap();
    h.backend.inject(&inbound);
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got[0].1, inbound);
}

/// One refused access, chosen by `i`, against a running device.
fn refused_while_running(h: &mut NetHarness, i: u64) {
    let t = h.driver.transport();
    let v = (i as u32).wrapping_mul(0x9e37_79b9);
    match i % 12 {
        // Config space is read-only for virtio-net: any width, any offset inside the window.
        0 => {
            let width = 1 + (i as usize / 12) % 4;
            t.write(regs::CONFIG + (i / 12) % 0x40, &v.to_le_bytes()[..width]);
        }
        1 => t.write(regs::MAGIC_VALUE, &v.to_le_bytes()),
        2 => t.write(regs::QUEUE_NUM_MAX, &v.to_le_bytes()),
        3 => t.write(regs::INTERRUPT_STATUS, &v.to_le_bytes()),
        // Outside the window, or wrapping the address space.
        4 => t.write(0x1000 + (i % 0x1000), &v.to_le_bytes()),
        5 => t.write(u64::MAX - (i % 3), &v.to_le_bytes()),
        // Wrong widths on registers, both ways.
        6 => t.write(regs::STATUS, &v.to_le_bytes()[..2]),
        7 => t.read(regs::DEVICE_ID, &mut [0u8; 8]),
        // Queue setup after DRIVER_OK: size above the maximum, ready toggles, addresses.
        8 => t.write(regs::QUEUE_NUM, &(512 + (i as u32 % 4096)).to_le_bytes()),
        9 => t.write(regs::QUEUE_READY, &((i / 12) as u32 % 2).to_le_bytes()),
        10 => t.write(regs::QUEUE_DESC_LOW + 0x10 * (i % 3), &v.to_le_bytes()),
        // Driver features after FEATURES_OK.
        _ => t.write(regs::DRIVER_FEATURES, &v.to_le_bytes()),
    }
}

#[test]
fn a_write_storm_on_a_running_device_is_refused_counted_and_quietly_logged() {
    let warnings = Arc::new(AtomicU64::new(0));
    let _guard = tracing::subscriber::set_default(CountWarnings(warnings.clone()));
    let mut h = NetHarness::with_defaults().unwrap();
    let status = h.driver.read_reg(regs::STATUS);
    for q in [RX_QUEUE, TX_QUEUE] {
        // Queue selection itself is always allowed; alternate it to hit both queues.
        h.driver.write_reg(regs::QUEUE_SEL, q as u32);
        for i in 0..STORM / 2 {
            refused_while_running(&mut h, i);
        }
    }
    assert_eq!(
        get(&h.metrics.mmio_refused),
        STORM,
        "each refusal counted once"
    );
    assert_eq!(h.driver.read_reg(regs::STATUS), status, "status unchanged");
    assert_eq!(get(&h.metrics.resets), 0);
    assert_eq!(get(&h.metrics.needs_reset), 0);
    let lines = get(&warnings);
    assert!(lines >= 2, "refusals are logged ({lines} lines)");
    assert!(lines < 100, "{lines} warning lines for {STORM} refusals");
    traffic_still_flows(&mut h, 1);
}

#[test]
fn bad_queue_setup_during_initialisation_is_refused_and_a_clean_init_follows() {
    let mut h = NetHarness::with_defaults().unwrap();
    let d = &mut h.driver;
    d.write_reg(regs::STATUS, 0);
    let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    d.write_reg(regs::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    d.write_reg(regs::DRIVER_FEATURES_SEL, 1);
    d.write_reg(regs::DRIVER_FEATURES, 1 << (VIRTIO_F_VERSION_1 - 32));
    // Queue registers before FEATURES_OK are refused.
    d.write_reg(regs::QUEUE_NUM, 128);
    d.write_reg(regs::STATUS, st);
    let mut refused = 1;
    for i in 0..2000u32 {
        // Any queue may be selected, even one that does not exist (queue 2).
        d.write_reg(regs::QUEUE_SEL, i % 3);
        let missing_queue = i % 3 == 2;
        refused += match i % 6 {
            // QueueNum above QueueNumMax, zero, or not a power of two.
            0 => {
                d.write_reg(regs::QUEUE_NUM, 257 + i);
                1
            }
            1 => {
                d.write_reg(regs::QUEUE_NUM, 0);
                1
            }
            2 => {
                d.write_reg(regs::QUEUE_NUM, 3);
                1
            }
            // Ready toggles are legal before DRIVER_OK (not on a queue that does not exist);
            // addresses may not change while the queue is ready.
            3 => {
                d.write_reg(regs::QUEUE_READY, 1);
                d.write_reg(regs::QUEUE_AVAIL_LOW, i);
                d.write_reg(regs::QUEUE_READY, 0);
                if missing_queue {
                    3
                } else {
                    1
                }
            }
            // Driver features after FEATURES_OK.
            4 => {
                d.write_reg(regs::DRIVER_FEATURES, i);
                1
            }
            // The select register takes any value.
            _ => {
                d.write_reg(regs::DRIVER_FEATURES_SEL, 7);
                0
            }
        };
    }
    assert_eq!(get(&h.metrics.mmio_refused), refused);
    // DRIVER_OK with no queue ready fails activation: NEEDS_RESET, then a clean init.
    h.driver.write_reg(regs::STATUS, st | STATUS_DRIVER_OK);
    assert_eq!(get(&h.metrics.needs_reset), 1);
    assert_eq!(get(&h.metrics.mmio_refused), refused);
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    traffic_still_flows(&mut h, 2);
}

//! RX under guest backpressure: with frames pending and too little room posted, the worker
//! neither polls the ring nor cuts frames to the few buffers a busy driver just reposted; it
//! asks for one kick per batch of buffers (EVENT_IDX `avail_event`) and still serves a
//! driver that posts less than that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use devices::net::backend::loopback::LoopbackMode;
use devices::net::features::VIRTIO_NET_F_MRG_RXBUF;
use devices::net::{NetConfig, RX_QUEUE};
use devices::testing::NetHarness;
use devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const T: Duration = Duration::from_secs(10);
/// Queue size of the default config: the batch asked for is a quarter of it.
const QUEUE_SIZE: u16 = 256;

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

use devices::testing::eth_frame as frame;

/// Long enough that the worker's fallback never fires during a test.
const FOREVER: Duration = Duration::from_secs(3600);

/// A merged-buffer driver with `frames` frames of 1000 bytes waiting in the backend and no RX
/// buffer posted, once the worker has noticed it is starved; it waits `starve_wait` for the
/// batch it asks for.
fn starved(frames: u8, starve_wait: Duration) -> (NetHarness, Vec<Vec<u8>>) {
    let features = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_RING_F_EVENT_IDX);
    let cfg = NetConfig {
        rx_starve_wait: starve_wait,
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Capture, cfg, features).unwrap();
    let sent: Vec<Vec<u8>> = (0..frames).map(|i| frame(1000, i)).collect();
    for f in &sent {
        h.backend.inject(f);
    }
    // A worker with no RX room does not poll the backend (backpressure stays there), so if
    // it went to sleep before the frames came it would not see them: one RX notification,
    // as a driver gives when it looks at the queue, makes it look.
    h.driver.kick_always(RX_QUEUE);
    let deadline = Instant::now() + T;
    while get(&h.metrics.rx_starved) == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker never noticed it was starved"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (h, sent)
}

#[test]
fn starved_worker_asks_for_a_batch_then_delivers_whole_frames() {
    let (mut h, sent) = starved(4, FOREVER);
    // Kick once a quarter of the ring is posted, not at the next buffer.
    let batch = QUEUE_SIZE / 4;
    assert_eq!(
        h.driver.avail_event(RX_QUEUE),
        h.driver.avail_idx(RX_QUEUE).wrapping_add(batch - 1)
    );
    // 256-byte buffers: each frame spans four.
    for _ in 0..batch - 1 {
        h.driver.add_chain(RX_QUEUE, &[], &[256]).unwrap();
    }
    assert!(
        !h.driver.kick(RX_QUEUE),
        "{} buffers are short of the batch: no kick wanted",
        batch - 1
    );
    h.driver.add_chain(RX_QUEUE, &[], &[256]).unwrap();
    assert!(h.driver.kick(RX_QUEUE), "the batch's last buffer kicks");
    let got = h.driver.recv_frames(sent.len(), T).unwrap();
    for ((hdr, f), want) in got.iter().zip(&sent) {
        assert_eq!(f, want);
        assert_eq!(
            hdr.num_buffers, 4,
            "a 1012-byte frame fills four 256-byte buffers"
        );
    }
    assert_eq!(get(&h.metrics.rx_truncated), 0);
}

#[test]
fn a_driver_posting_less_than_the_batch_still_gets_its_frames() {
    let (mut h, sent) = starved(2, Duration::from_millis(1));
    // Room for both frames, far below the batch. Posted within the worker's wait, they need
    // no kick (it finds them when the wait runs out); posted after it, they kick.
    for _ in 0..8 {
        h.driver.add_chain(RX_QUEUE, &[], &[256]).unwrap();
    }
    h.driver.kick(RX_QUEUE);
    let got = h.driver.recv_frames(sent.len(), T).unwrap();
    let frames: Vec<&Vec<u8>> = got.iter().map(|(_, f)| f).collect();
    assert_eq!(frames, sent.iter().collect::<Vec<_>>());
}

#[test]
fn a_starved_worker_sleeps_instead_of_polling_the_ring() {
    let (h, _sent) = starved(1, Duration::from_millis(1));
    let before = get(&h.metrics.loop_iterations);
    std::thread::sleep(Duration::from_millis(100));
    let iterations = get(&h.metrics.loop_iterations) - before;
    // It wakes once when its wait runs out, to look for buffers posted without a kick, then
    // sleeps until the driver's next buffer; polling would be hundreds of thousands.
    assert!(
        iterations < 20,
        "{iterations} loop iterations while starved"
    );
    assert_eq!(get(&h.metrics.rx_frames), 0);
}

#[test]
fn a_starved_worker_with_nothing_posted_asks_for_the_next_buffer() {
    let (mut h, sent) = starved(1, Duration::from_millis(1));
    // Once the wait ran out with nothing posted, one buffer is worth a kick.
    let deadline = Instant::now() + T;
    while h.driver.avail_event(RX_QUEUE) != h.driver.avail_idx(RX_QUEUE) {
        assert!(
            Instant::now() < deadline,
            "the worker kept asking for a batch"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    h.driver.add_chain(RX_QUEUE, &[], &[2048]).unwrap();
    assert!(
        h.driver.kick(RX_QUEUE),
        "the first buffer after the wait kicks"
    );
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got[0].1, sent[0]);
}

/// A frame the backend knows to be small goes into room too short for a largest frame at once
/// (a 64 KiB GSO frame here): only frames sized to the room wait for a batch.
#[test]
fn a_small_frame_does_not_wait_for_room_for_a_largest_one() {
    use devices::net::features::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4};
    let features = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4);
    let cfg = NetConfig {
        rx_starve_wait: FOREVER,
        ..NetConfig::default()
    };
    let mut h = NetHarness::new(LoopbackMode::Capture, cfg, features).unwrap();
    for _ in 0..2 {
        h.driver.add_chain(RX_QUEUE, &[], &[256]).unwrap();
    }
    h.driver.kick_always(RX_QUEUE);
    let f = frame(60, 9);
    h.backend.inject(&f);
    let got = h.driver.recv_frames(1, T).unwrap();
    assert_eq!(got[0].1, f);
    assert_eq!(get(&h.metrics.rx_starved), 0);
}

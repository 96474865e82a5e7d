//! The fault hook against a fake backend: faults happen at the configured rates with a fixed
//! seed, headers travel with their frames, and no frame is lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;

const FRAMES: u32 = 10_000;
const CAPACITY: usize = 1514;

/// Frames a backend was sent: header and Ethernet frame.
type SentLog = Arc<Mutex<Vec<(VirtioNetHdr, Vec<u8>)>>>;

/// Records what it is sent; hands out queued frames, numbered in their first 4 bytes.
#[derive(Default)]
struct Fake {
    sent: SentLog,
    to_guest: VecDeque<u32>,
    with_header: bool,
}

/// A frame carrying `seq`, with a header that carries it too.
fn frame(seq: u32) -> (VirtioNetHdr, Vec<u8>) {
    let mut bytes = seq.to_be_bytes().to_vec();
    bytes.resize(60 + (seq as usize % 7), 0xab);
    let header = VirtioNetHdr {
        gso_size: seq as u16,
        csum_start: (seq >> 16) as u16,
        ..Default::default()
    };
    (header, bytes)
}

fn seq_of(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

impl NetBackend for Fake {
    fn name(&self) -> &str {
        "fake"
    }

    fn send(&mut self, f: &TxFrame<'_>) -> Result<(), BackendError> {
        let bytes: Vec<u8> = f.frame.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(bytes.len(), f.frame_len);
        let whole: Vec<u8> = f
            .with_header
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect();
        assert_eq!(&whole[..VNET_HDR_LEN], &f.header.to_bytes());
        assert_eq!(&whole[VNET_HDR_LEN..], &bytes[..]);
        self.sent.lock().unwrap().push((f.header, bytes));
        Ok(())
    }

    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError> {
        let Some(seq) = self.to_guest.pop_front() else {
            return Ok(None);
        };
        let (header, bytes) = frame(seq);
        Ok(Some(if self.with_header {
            let mut wire = header.to_bytes().to_vec();
            wire.extend_from_slice(&bytes);
            RxFrame::WithHeader {
                len: scatter(&wire, buf.with_header),
            }
        } else {
            RxFrame::Frame {
                len: scatter(&bytes, buf.frame),
                header,
            }
        }))
    }

    fn interests(&mut self, _rx_space: bool, _out: &mut Vec<FdInterest>) {}
}

fn spec(reorder_pct: u8, dup_pct: u8) -> FaultSpec {
    FaultSpec::both_ways(reorder_pct, dup_pct, 7)
}

fn send(b: &mut FaultBackend, seq: u32) {
    let (header, bytes) = frame(seq);
    let hdr = header.to_bytes();
    let with_header = [IoSlice::new(&hdr), IoSlice::new(&bytes)];
    let only = [IoSlice::new(&bytes)];
    b.send(&TxFrame {
        with_header: &with_header,
        frame: &only,
        frame_len: bytes.len(),
        header,
    })
    .unwrap();
}

/// Offers one guest buffer; returns the header and frame written, if any.
fn recv(b: &mut FaultBackend) -> Option<(VirtioNetHdr, Vec<u8>)> {
    let mut full = vec![0u8; VNET_HDR_LEN + CAPACITY];
    let mut only = vec![0u8; CAPACITY];
    let mut full_io = [IoSliceMut::new(&mut full)];
    let mut only_io = [IoSliceMut::new(&mut only)];
    let got = b
        .recv(RxBuf {
            with_header: &mut full_io,
            frame: &mut only_io,
            frame_capacity: CAPACITY,
        })
        .unwrap()?;
    Some(match got {
        RxFrame::WithHeader { len } => {
            let header = VirtioNetHdr::from_bytes(full[..VNET_HDR_LEN].try_into().unwrap());
            (header, full[VNET_HDR_LEN..len].to_vec())
        }
        RxFrame::Frame { len, header } => (header, only[..len].to_vec()),
    })
}

/// Checks that `got` holds every frame 0..FRAMES intact, with `dups` extra copies and
/// `reorders` places where a frame comes right after its successor; returns the inversions.
fn check_delivery(got: &[(VirtioNetHdr, Vec<u8>)], dups: u64, reorders: u64) {
    for (header, bytes) in got {
        assert_eq!(
            (*header, bytes.clone()),
            frame(seq_of(bytes)),
            "frame altered"
        );
    }
    let seqs: Vec<u32> = got.iter().map(|(_, b)| seq_of(b)).collect();
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique, (0..FRAMES).collect::<Vec<_>>(), "a frame was lost");
    assert_eq!(seqs.len() as u64, u64::from(FRAMES) + dups);
    let adjacent_dups = seqs.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    let inversions = seqs.windows(2).filter(|w| w[0] > w[1]).count() as u64;
    assert_eq!(adjacent_dups, dups);
    assert_eq!(inversions, reorders);
}

#[test]
fn guest_frames_are_reordered_and_duplicated_at_the_set_rates_and_none_is_lost() {
    let fake = Fake::default();
    let sent = fake.sent.clone();
    let mut b = FaultBackend::new(Box::new(fake), spec(5, 2));
    assert_eq!(b.ring_tx_fd(), None);
    for seq in 0..FRAMES {
        send(&mut b, seq);
    }
    b.on_timer(Instant::now() + MAX_HOLD);
    let stats = b.counters().snapshot();
    // One frame held at a time: about 5%/(1+5%) of frames are held.
    assert!((380..600).contains(&stats.tx_reordered), "{stats}");
    assert!((140..270).contains(&stats.tx_duplicated), "{stats}");
    assert!(stats.tx_released_late <= 1, "{stats}");
    check_delivery(
        &sent.lock().unwrap(),
        stats.tx_duplicated,
        stats.tx_reordered,
    );
    assert_eq!(stats.rx_reordered + stats.rx_duplicated, 0);
}

#[test]
fn a_held_guest_frame_goes_out_at_its_deadline() {
    let fake = Fake::default();
    let sent = fake.sent.clone();
    let mut b = FaultBackend::new(Box::new(fake), spec(100, 0));
    let before = Instant::now();
    send(&mut b, 1);
    assert!(sent.lock().unwrap().is_empty());
    let due = b.next_deadline().expect("a deadline for the held frame");
    assert!(due <= Instant::now() + MAX_HOLD && due >= before);
    b.on_timer(due - Duration::from_micros(1));
    assert!(sent.lock().unwrap().is_empty());
    b.on_timer(due);
    assert_eq!(sent.lock().unwrap().len(), 1);
    assert_eq!(b.next_deadline(), None);
    assert_eq!(b.counters().snapshot().tx_released_late, 1);
}

#[test]
fn a_held_guest_frame_is_not_lost_when_the_backend_is_dropped() {
    let fake = Fake::default();
    let sent = fake.sent.clone();
    let mut b = FaultBackend::new(Box::new(fake), spec(100, 0));
    send(&mut b, 3);
    drop(b);
    assert_eq!(sent.lock().unwrap().len(), 1);
}

fn rx_run(with_header: bool) {
    let fake = Fake {
        to_guest: (0..FRAMES).collect(),
        with_header,
        ..Default::default()
    };
    let mut b = FaultBackend::new(Box::new(fake), spec(5, 2));
    let mut got = Vec::new();
    // Bounded: every call hands out a frame until the end.
    for _ in 0..2 * FRAMES {
        match recv(&mut b) {
            Some(f) => got.push(f),
            None => break,
        }
    }
    // A frame stashed at the very end waits for its deadline.
    std::thread::sleep(MAX_HOLD);
    b.on_timer(Instant::now());
    got.extend(recv(&mut b));
    assert_eq!(recv(&mut b), None);
    assert_eq!(b.next_deadline(), None);
    let stats = b.counters().snapshot();
    assert!((380..600).contains(&stats.rx_reordered), "{stats}");
    assert!((140..270).contains(&stats.rx_duplicated), "{stats}");
    assert!(stats.rx_released_late <= 1, "{stats}");
    check_delivery(&got, stats.rx_duplicated, stats.rx_reordered);
    assert_eq!(stats.tx_reordered + stats.tx_duplicated, 0);
}

#[test]
fn frames_for_the_guest_are_reordered_and_duplicated_with_their_headers() {
    rx_run(false);
}

#[test]
fn frames_written_with_their_header_keep_it_through_the_hook() {
    rx_run(true);
}

#[test]
fn a_pending_duplicate_asks_for_a_wake_up_and_is_handed_out() {
    let fake = Fake {
        to_guest: [5].into(),
        ..Default::default()
    };
    let mut b = FaultBackend::new(Box::new(fake), spec(0, 100));
    assert_eq!(recv(&mut b), Some(frame(5)));
    let due = b.next_deadline().expect("a wake-up for the duplicate");
    b.on_timer(due);
    assert!(
        b.next_deadline().is_some_and(|d| d > due),
        "re-armed, not spinning"
    );
    assert_eq!(recv(&mut b), Some(frame(5)));
    assert_eq!(b.next_deadline(), None);
    assert_eq!(recv(&mut b), None);
}

#[test]
fn the_same_seed_gives_the_same_faults() {
    let run = || {
        let fake = Fake::default();
        let sent = fake.sent.clone();
        let mut b = FaultBackend::new(Box::new(fake), spec(10, 10));
        for seq in 0..1000 {
            send(&mut b, seq);
        }
        drop(b);
        let order: Vec<u32> = sent
            .lock()
            .unwrap()
            .iter()
            .map(|(_, f)| seq_of(f))
            .collect();
        order
    };
    assert_eq!(run(), run());
}

#[test]
fn a_stashed_frame_for_the_guest_waits_for_the_next_one_or_its_deadline() {
    let fake = Fake {
        to_guest: [1, 2, 3].into(),
        ..Default::default()
    };
    let mut b = FaultBackend::new(Box::new(fake), spec(100, 0));
    // 1 is stashed, 2 overtakes it, then 3 is stashed with nothing behind it.
    assert_eq!(recv(&mut b), Some(frame(2)));
    assert_eq!(recv(&mut b), Some(frame(1)));
    assert_eq!(recv(&mut b), None);
    let due = b.next_deadline().expect("a wake-up for the stashed frame");
    std::thread::sleep(due.saturating_duration_since(Instant::now()));
    b.on_timer(Instant::now());
    assert_eq!(recv(&mut b), Some(frame(3)));
    assert_eq!(recv(&mut b), None);
    let stats = b.counters().snapshot();
    assert_eq!((stats.rx_reordered, stats.rx_released_late), (1, 1));
}

#[test]
fn lost_frames_are_counted_both_ways_and_the_rest_arrive_in_order() {
    let fake = Fake {
        to_guest: (0..FRAMES).collect(),
        ..Default::default()
    };
    let sent = fake.sent.clone();
    let lossy: FaultSpec = "loss=5,seed=7".parse().unwrap();
    let mut b = FaultBackend::new(Box::new(fake), lossy);
    for seq in 0..FRAMES {
        send(&mut b, seq);
    }
    let mut got = Vec::new();
    // Bounded: every call hands out a frame until the end.
    for _ in 0..FRAMES {
        match recv(&mut b) {
            Some(f) => got.push(f),
            None => break,
        }
    }
    let stats = b.counters().snapshot();
    for (lost, arrived) in [
        (stats.tx_lost, sent.lock().unwrap().len()),
        (stats.rx_lost, got.len()),
    ] {
        assert!((350..650).contains(&lost), "{stats}");
        assert_eq!(arrived as u64 + lost, u64::from(FRAMES), "{stats}");
    }
    let seqs: Vec<u32> = got.iter().map(|(_, b)| seq_of(b)).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "loss alone reorders nothing"
    );
    assert_eq!(stats.rx_reordered + stats.rx_duplicated, 0);
}

//! virtio-blk through the real transport and device code, driven by the in-process harness:
//! byte-exact I/O, every request type, and hostile chains. Every test checks the exact status
//! byte and, where the device must not write, that the image file is unchanged.

use std::time::{Duration, Instant};

use devices::block::features::*;
use devices::block::request_type::*;
use devices::block::status::*;
use devices::block::{RequestError, TYPE_BLOCK};
use devices::testing::block::{header, pattern, BlockHarness, BLOCK_QUEUE};
use devices::testing::{RawDesc, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use devices::virtio::mmio::regs;
use devices::virtio::{STATUS_DEVICE_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;

/// A raw descriptor: guest address (0 = its own harness slot), length, flags.
type Desc = (u64, u32, u16);

fn expected(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64).map(pattern).collect()
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// Builds a raw chain at descriptor indices from 200 on; the buffer of descriptor `i` is its
/// own harness slot unless `descs[i].addr` is non-zero. Returns the head.
fn raw_chain(h: &mut BlockHarness, descs: &[Desc]) -> u16 {
    let indices: Vec<u16> = (0..descs.len() as u16).map(|i| 200 + i).collect();
    let raw: Vec<RawDesc> = descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let last = i + 1 == descs.len();
            RawDesc {
                addr: if addr == 0 {
                    h.driver.slot_addr(BLOCK_QUEUE, indices[i])
                } else {
                    addr
                },
                len,
                flags: flags | if last { 0 } else { VRING_DESC_F_NEXT },
                next: if last { 0 } else { indices[i + 1] },
            }
        })
        .collect();
    let head = h.driver.add_raw_chain(BLOCK_QUEUE, &indices, &raw, None);
    h.driver.kick(BLOCK_QUEUE);
    head
}

/// Guest address of raw-chain descriptor `i`'s own slot.
fn raw_slot(h: &BlockHarness, i: u16) -> u64 {
    h.driver.slot_addr(BLOCK_QUEUE, 200 + i)
}

fn put(h: &BlockHarness, addr: u64, bytes: &[u8]) {
    h.driver
        .memory()
        .write_slice(bytes, GuestAddress(addr))
        .expect("in guest memory");
}

fn peek(h: &BlockHarness, addr: u64) -> u8 {
    h.driver
        .memory()
        .read_obj::<u8>(GuestAddress(addr))
        .expect("in guest memory")
}

#[test]
fn the_device_announces_itself_and_its_geometry() {
    let mut h = BlockHarness::new(MIB).unwrap();
    assert_eq!(h.driver.read_reg(regs::DEVICE_ID), TYPE_BLOCK);
    let f = h.driver.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_FLUSH,
    ] {
        assert!(f & (1 << bit) != 0, "feature {bit} negotiated");
    }
    assert_eq!(
        f & (1 << VIRTIO_BLK_F_RO),
        0,
        "a read-write drive is not RO"
    );
    let mut cfg = [0u8; 24];
    for (i, b) in cfg.chunks_mut(4).enumerate() {
        h.driver.transport().read(regs::CONFIG + 4 * i as u64, b);
    }
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), MIB / 512);
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 128);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    // Config space is read-only.
    h.driver.write_reg(regs::CONFIG, 7);
    let mut b = [0u8; 4];
    h.driver.transport().read(regs::CONFIG, &mut b);
    assert_eq!(u32::from_le_bytes(b), (MIB / 512) as u32);
    assert_eq!(get(&h.metrics.mmio_refused), 1);
}

#[test]
fn reads_are_byte_exact_at_any_sector_and_segmentation() {
    let mut h = BlockHarness::new(MIB).unwrap();
    for (sector, lens) in [
        (0u64, vec![512u32]),
        (1, vec![512, 512]),
        (7, vec![512, 2048, 1536]),
        (1000, vec![4096, 512, 65536]),
        (MIB / 512 - 1, vec![512]),
    ] {
        let (status, data, used_len) = h.read(sector, &lens).unwrap();
        assert_eq!(status, VIRTIO_BLK_S_OK, "sector {sector}");
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        assert_eq!(
            data,
            expected(sector * 512, total),
            "sector {sector} {lens:?}"
        );
        assert_eq!(
            used_len as usize,
            total + 1,
            "data bytes plus the status byte"
        );
    }
    assert_eq!(get(&h.metrics.reads), 5);
    assert_eq!(h.metrics.refused_total(), 0);
}

#[test]
fn writes_land_exactly_where_asked_and_read_back() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let a = vec![0xa5u8; 512];
    let b: Vec<u8> = (0..3072).map(|i| (i % 251) as u8).collect();
    assert_eq!(h.write(3, &[&a]).unwrap(), VIRTIO_BLK_S_OK);
    assert_eq!(
        h.write(100, &[&b[..1024], &b[1024..]]).unwrap(),
        VIRTIO_BLK_S_OK
    );
    let mut want = expected(0, MIB as usize);
    want[3 * 512..4 * 512].copy_from_slice(&a);
    want[100 * 512..100 * 512 + 3072].copy_from_slice(&b);
    assert_eq!(h.image.contents(), want, "only the written sectors changed");
    let (status, data, _) = h.read(100, &[3072]).unwrap();
    assert_eq!((status, data), (VIRTIO_BLK_S_OK, b));
    assert_eq!(get(&h.metrics.bytes_written), 512 + 3072);
    assert_eq!(h.flush().unwrap(), VIRTIO_BLK_S_OK);
    assert_eq!(get(&h.metrics.flushes), 1);
}

#[test]
fn many_requests_run_at_once_and_all_complete() {
    let mut h = BlockHarness::new(4 * MIB).unwrap();
    let mut heads = Vec::new();
    for i in 0..64u64 {
        let sector = i * 97 % (4 * MIB / 512 - 16);
        if i % 4 == 3 {
            let data = vec![i as u8; 4096];
            heads.push((
                h.submit(VIRTIO_BLK_T_OUT, sector, &[&data], &[]).unwrap(),
                sector,
                true,
            ));
        } else {
            heads.push((
                h.submit(VIRTIO_BLK_T_IN, sector, &[], &[4096]).unwrap(),
                sector,
                false,
            ));
        }
    }
    let mut done = 0;
    while done < heads.len() {
        done += h.wait(1).unwrap().len();
    }
    for &(head, sector, write) in &heads {
        assert_eq!(h.status(head), Some(VIRTIO_BLK_S_OK), "sector {sector}");
        if !write {
            // Reads of sectors no write in this batch touches are the pattern.
            let touched = heads
                .iter()
                .any(|&(_, s, w)| w && s < sector + 8 && sector < s + 8);
            if !touched {
                assert_eq!(h.data_in(head, &[4096]), expected(sector * 512, 4096));
            }
        }
    }
    let img = h.image.contents();
    for (i, &(_, sector, write)) in heads.iter().enumerate() {
        if write {
            let off = sector as usize * 512;
            assert!(
                img[off..off + 4096].iter().all(|&b| b == i as u8),
                "write {i}"
            );
        }
    }
    assert_eq!(get(&h.metrics.requests), 64);
}

#[test]
fn get_id_returns_the_drive_id_padded_or_cut_to_20_bytes() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let (status, id) = h.get_id().unwrap();
    assert_eq!(status, VIRTIO_BLK_S_OK);
    let mut want = b"harness-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(id, want);

    let mut long =
        BlockHarness::build(MIB, false, "a-very-long-drive-identifier", u64::MAX).unwrap();
    let (status, id) = long.get_id().unwrap();
    assert_eq!(
        (status, id),
        (VIRTIO_BLK_S_OK, b"a-very-long-drive-id".to_vec())
    );
    assert_eq!(get(&long.metrics.get_ids), 1);
}

#[test]
fn a_read_only_drive_refuses_writes_and_keeps_its_file() {
    let mut h = BlockHarness::build(MIB, true, "ro", u64::MAX).unwrap();
    assert!(h.driver.features() & (1 << VIRTIO_BLK_F_RO) != 0);
    let before = h.image.contents();
    assert_eq!(h.write(0, &[&[0u8; 512]]).unwrap(), VIRTIO_BLK_S_IOERR);
    assert_eq!(h.write(10, &[&[1u8; 4096]]).unwrap(), VIRTIO_BLK_S_IOERR);
    assert_eq!(h.flush().unwrap(), VIRTIO_BLK_S_OK);
    let (status, data, _) = h.read(0, &[512]).unwrap();
    assert_eq!((status, data), (VIRTIO_BLK_S_OK, expected(0, 512)));
    assert_eq!(h.image.contents(), before);
    assert_eq!(h.metrics.refused(RequestError::ReadOnly), 2);
}

#[test]
fn requests_past_the_end_or_unaligned_get_ioerr_and_touch_nothing() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let last = MIB / 512 - 1;
    let before = h.image.contents();
    let cases: Vec<(u32, u64, Vec<u8>, Vec<u32>)> = vec![
        (VIRTIO_BLK_T_IN, last + 1, vec![], vec![512]),
        (VIRTIO_BLK_T_IN, last, vec![], vec![1024]),
        (VIRTIO_BLK_T_IN, u64::MAX, vec![], vec![512]),
        (VIRTIO_BLK_T_IN, u64::MAX / 512 + 1, vec![], vec![512]),
        (VIRTIO_BLK_T_OUT, last, vec![7; 1024], vec![]),
        (VIRTIO_BLK_T_OUT, u64::MAX / 512, vec![7; 512], vec![]),
        (VIRTIO_BLK_T_IN, 0, vec![], vec![100]),
        (VIRTIO_BLK_T_OUT, 0, vec![7; 513], vec![]),
    ];
    for (kind, sector, out, ins) in &cases {
        let outs: Vec<&[u8]> = if out.is_empty() { vec![] } else { vec![out] };
        let head = h.submit(*kind, *sector, &outs, ins).unwrap();
        let used = h.wait_for(head).unwrap();
        assert_eq!(
            h.status(head),
            Some(VIRTIO_BLK_S_IOERR),
            "type {kind} sector {sector}"
        );
        assert_eq!(used.len, 1, "only the status byte was written");
    }
    assert_eq!(h.image.contents(), before);
    assert_eq!(h.metrics.refused(RequestError::OutOfRange), 6);
    assert_eq!(h.metrics.refused(RequestError::Unaligned), 2);
    assert_eq!(get(&h.metrics.io_errors), 8);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mut h = BlockHarness::new(MIB).unwrap();
    for kind in [11u32, 13, 99] {
        let head = h.submit(kind, 0, &[], &[512]).unwrap();
        h.wait_for(head).unwrap();
        assert_eq!(h.status(head), Some(VIRTIO_BLK_S_UNSUPP), "type {kind}");
    }
    assert_eq!(get(&h.metrics.unsupported), 3);
}

#[test]
fn hostile_chains_with_a_status_byte_get_ioerr() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let before = h.image.contents();
    let w = VRING_DESC_F_WRITE;
    let outside = 1u64 << 40;
    let ring = devices::testing::RING_BASE;
    // (name, descriptors (addr 0 = own slot), header type, reason)
    let cases: Vec<(&str, Vec<Desc>, u32, RequestError)> = vec![
        (
            "zero-length data",
            vec![(0, 16, 0), (0, 0, w), (0, 1, w)],
            VIRTIO_BLK_T_IN,
            RequestError::ZeroLength,
        ),
        (
            "IN with readable data",
            vec![(0, 16, 0), (0, 512, 0), (0, 1, w)],
            VIRTIO_BLK_T_IN,
            RequestError::WrongDirection,
        ),
        (
            "OUT with writable data",
            vec![(0, 16, 0), (0, 512, w), (0, 1, w)],
            VIRTIO_BLK_T_OUT,
            RequestError::WrongDirection,
        ),
        (
            "readable after writable",
            vec![(0, 16, 0), (0, 512, w), (0, 512, 0), (0, 1, w)],
            VIRTIO_BLK_T_OUT,
            RequestError::WrongDirection,
        ),
        (
            "FLUSH with data",
            vec![(0, 16, 0), (0, 512, 0), (0, 1, w)],
            VIRTIO_BLK_T_FLUSH,
            RequestError::WrongDirection,
        ),
        (
            "short header",
            vec![(0, 8, 0), (0, 1, w)],
            VIRTIO_BLK_T_IN,
            RequestError::HeaderTooShort,
        ),
        (
            "data outside memory",
            vec![(0, 16, 0), (outside, 512, w), (0, 1, w)],
            VIRTIO_BLK_T_IN,
            RequestError::OutOfMemory,
        ),
        (
            "data over the rings",
            vec![(0, 16, 0), (ring, 512, w), (0, 1, w)],
            VIRTIO_BLK_T_IN,
            RequestError::OverlapsRing,
        ),
        (
            "OUT data over the rings",
            vec![(0, 16, 0), (ring + 0x4000, 512, 0), (0, 1, w)],
            VIRTIO_BLK_T_OUT,
            RequestError::OverlapsRing,
        ),
    ];
    for (i, (name, descs, kind, reason)) in cases.iter().enumerate() {
        put(&h, raw_slot(&h, 0), &header(*kind, 0));
        let status_addr = {
            let (addr, len, _) = *descs.last().unwrap();
            let base = if addr == 0 {
                raw_slot(&h, descs.len() as u16 - 1)
            } else {
                addr
            };
            base + u64::from(len) - 1
        };
        put(&h, status_addr, &[0xff]);
        let head = raw_chain(&mut h, descs);
        let used = h.wait_for(head).unwrap();
        assert_eq!(peek(&h, status_addr), VIRTIO_BLK_S_IOERR, "{name}");
        assert_eq!(used.len, 1, "{name}");
        assert_eq!(
            h.metrics.refused(*reason) as usize,
            cases[..=i].iter().filter(|c| c.3 == *reason).count(),
            "{name}: {:?}",
            h.metrics.snapshot()
        );
    }
    assert_eq!(h.image.contents(), before);
    assert_eq!(get(&h.metrics.chains_dropped), 0);
}

#[test]
fn overlapping_device_writable_buffers_are_refused() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let w = VRING_DESC_F_WRITE;
    let data = raw_slot(&h, 1);
    // Two data buffers over the same bytes.
    put(&h, raw_slot(&h, 0), &header(VIRTIO_BLK_T_IN, 0));
    let status = raw_slot(&h, 3);
    put(&h, status, &[0xff]);
    let head = raw_chain(
        &mut h,
        &[
            (0, 16, 0),
            (data, 512, w),
            (data + 256, 512, w),
            (status, 1, w),
        ],
    );
    h.wait_for(head).unwrap();
    assert_eq!(peek(&h, status), VIRTIO_BLK_S_IOERR);
    // A data buffer that covers the status byte.
    put(&h, data + 511, &[0xff]);
    let head = raw_chain(&mut h, &[(0, 16, 0), (data, 1024, w), (data + 511, 1, w)]);
    h.wait_for(head).unwrap();
    assert_eq!(peek(&h, data + 511), VIRTIO_BLK_S_IOERR);
    assert_eq!(h.metrics.refused(RequestError::Overlap), 2);
    // Device-readable OUT buffers may overlap (the same bytes written twice).
    put(&h, data, &[0x5a; 512]);
    put(&h, raw_slot(&h, 0), &header(VIRTIO_BLK_T_OUT, 2));
    put(&h, status, &[0xff]);
    let head = raw_chain(
        &mut h,
        &[(0, 16, 0), (data, 512, 0), (data, 512, 0), (status, 1, w)],
    );
    h.wait_for(head).unwrap();
    assert_eq!(peek(&h, status), VIRTIO_BLK_S_OK);
    assert_eq!(&h.image.contents()[1024..2048], &[0x5a; 1024][..]);
}

#[test]
fn any_framing_of_header_data_and_status_is_accepted() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let w = VRING_DESC_F_WRITE;
    // Header split over two descriptors; data and status in one writable descriptor.
    let hdr = header(VIRTIO_BLK_T_IN, 5);
    put(&h, raw_slot(&h, 0), &hdr[..8]);
    put(&h, raw_slot(&h, 1), &hdr[8..]);
    let buf = raw_slot(&h, 2);
    put(&h, buf + 512, &[0xff]);
    let head = raw_chain(&mut h, &[(0, 8, 0), (0, 8, 0), (buf, 513, w)]);
    let used = h.wait_for(head).unwrap();
    assert_eq!(peek(&h, buf + 512), VIRTIO_BLK_S_OK);
    assert_eq!(used.len, 513);
    let mut got = vec![0u8; 512];
    h.driver
        .memory()
        .read_slice(&mut got, GuestAddress(buf))
        .unwrap();
    assert_eq!(got, expected(5 * 512, 512));
    // Header and OUT data in one readable descriptor.
    let mut req = header(VIRTIO_BLK_T_OUT, 9).to_vec();
    req.extend_from_slice(&[0x33; 512]);
    put(&h, raw_slot(&h, 0), &req);
    put(&h, raw_slot(&h, 1), &[0xff]);
    let head = raw_chain(&mut h, &[(0, 528, 0), (0, 1, w)]);
    h.wait_for(head).unwrap();
    assert_eq!(peek(&h, raw_slot(&h, 1)), VIRTIO_BLK_S_OK);
    assert_eq!(&h.image.contents()[9 * 512..10 * 512], &[0x33; 512][..]);
}

#[test]
fn chains_without_a_usable_status_byte_are_dropped_and_counted() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let before = h.image.contents();
    let w = VRING_DESC_F_WRITE;
    put(&h, raw_slot(&h, 0), &header(VIRTIO_BLK_T_OUT, 0));
    // Last descriptor device-readable: an OUT with no status descriptor.
    let head = raw_chain(&mut h, &[(0, 16, 0), (0, 512, 0)]);
    assert_eq!(h.wait_for(head).unwrap().len, 0);
    // Status descriptor of length 0, or outside guest memory.
    let head = raw_chain(&mut h, &[(0, 16, 0), (0, 512, 0), (0, 0, w)]);
    assert_eq!(h.wait_for(head).unwrap().len, 0);
    let head = raw_chain(&mut h, &[(0, 16, 0), (0, 512, 0), (1 << 40, 1, w)]);
    assert_eq!(h.wait_for(head).unwrap().len, 0);
    assert_eq!(h.metrics.refused(RequestError::NoStatus), 3);

    // A loop: 200 -> 201 -> 200 -> ...
    let loop_descs = [
        RawDesc {
            addr: raw_slot(&h, 0),
            len: 16,
            flags: VRING_DESC_F_NEXT,
            next: 201,
        },
        RawDesc {
            addr: raw_slot(&h, 1),
            len: 1,
            flags: VRING_DESC_F_NEXT | w,
            next: 200,
        },
    ];
    let head = h
        .driver
        .add_raw_chain(BLOCK_QUEUE, &[200, 201], &loop_descs, None);
    h.driver.kick(BLOCK_QUEUE);
    assert_eq!(h.wait_for(head).unwrap().len, 0);
    // A `next` outside the queue.
    let bad_next = [RawDesc {
        addr: raw_slot(&h, 0),
        len: 16,
        flags: VRING_DESC_F_NEXT,
        next: 4000,
    }];
    let head = h.driver.add_raw_chain(BLOCK_QUEUE, &[200], &bad_next, None);
    h.driver.kick(BLOCK_QUEUE);
    assert_eq!(h.wait_for(head).unwrap().len, 0);
    assert_eq!(h.metrics.refused(RequestError::Truncated), 2);
    assert_eq!(get(&h.metrics.chains_dropped), 5);
    assert_eq!(h.image.contents(), before);
    // The device still serves well-formed requests.
    let (status, data, _) = h.read(0, &[512]).unwrap();
    assert_eq!((status, data), (VIRTIO_BLK_S_OK, expected(0, 512)));
}

#[test]
fn a_corrupt_avail_index_breaks_the_queue_until_reset() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let bogus = h.driver.avail_idx(BLOCK_QUEUE).wrapping_add(1000);
    h.driver.set_avail_idx(BLOCK_QUEUE, bogus);
    h.driver.kick_always(BLOCK_QUEUE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.driver.read_reg(regs::STATUS) & STATUS_DEVICE_NEEDS_RESET == 0 {
        assert!(Instant::now() < deadline, "DEVICE_NEEDS_RESET never set");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(get(&h.metrics.queues_broken), 1);
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    let (status, data, _) = h.read(3, &[512]).unwrap();
    assert_eq!((status, data), (VIRTIO_BLK_S_OK, expected(3 * 512, 512)));
}

#[test]
fn a_reset_with_io_in_flight_completes_and_the_device_starts_again() {
    let mut h = BlockHarness::new(16 * MIB).unwrap();
    for i in 0..80u64 {
        h.submit(VIRTIO_BLK_T_IN, i * 128, &[], &[65536]).unwrap();
    }
    // Reset at once: the worker waits for the reads in flight and reports none of them.
    h.driver.reset_and_reinit(u64::MAX).unwrap();
    assert_eq!(
        h.driver.used_idx(BLOCK_QUEUE),
        0,
        "fresh rings after the reset"
    );
    assert_eq!(get(&h.metrics.resets), 1);
    for sector in [0u64, 4096, 32767] {
        let (status, data, _) = h.read(sector, &[512]).unwrap();
        assert_eq!(
            (status, data),
            (VIRTIO_BLK_S_OK, expected(sector * 512, 512))
        );
    }
}

#[test]
fn a_backing_file_truncated_under_the_guest_gives_ioerr_and_is_not_regrown() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let half = MIB / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(h.image.path())
        .unwrap()
        .set_len(half)
        .unwrap();
    // Inside what is left: fine.
    let (status, data, _) = h.read(0, &[4096]).unwrap();
    assert_eq!((status, data), (VIRTIO_BLK_S_OK, expected(0, 4096)));
    assert_eq!(h.write(8, &[&[9u8; 512]]).unwrap(), VIRTIO_BLK_S_OK);
    // Past the new end (still inside the drive's capacity): IOERR.
    let (status, _, _) = h.read(half / 512, &[512]).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    // Straddling the new end: the first part is read, then the device finds the end.
    let (status, _, _) = h.read(half / 512 - 1, &[1024]).unwrap();
    assert_eq!(status, VIRTIO_BLK_S_IOERR);
    assert_eq!(
        h.write(half / 512 + 10, &[&[9u8; 512]]).unwrap(),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        h.write(half / 512 - 1, &[&[9u8; 1024]]).unwrap(),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        std::fs::metadata(h.image.path()).unwrap().len(),
        half,
        "not regrown"
    );
    assert_eq!(h.metrics.refused(RequestError::ImageShrunk), 2);
    assert_eq!(get(&h.metrics.host_io_errors), 2);
    let img = h.image.contents();
    assert_eq!(&img[8 * 512..9 * 512], &[9u8; 512][..]);

    // The file vanishing (unlinked) changes nothing for the open drive.
    std::fs::remove_file(h.image.path()).unwrap();
    let (status, data, _) = h.read(8, &[512]).unwrap();
    assert_eq!((status, data), (VIRTIO_BLK_S_OK, vec![9u8; 512]));
}

/// Not a benchmark (the harness spins on a loaded machine), but a figure: sequential 64 KiB
/// reads and writes through the whole path, 32 requests in flight.
#[test]
fn throughput_through_the_harness() {
    let size = 64 * MIB;
    let mut h = BlockHarness::new(size).unwrap();
    let chunk = 65536u32;
    let depth = 32;
    for (name, kind) in [("write", VIRTIO_BLK_T_OUT), ("read", VIRTIO_BLK_T_IN)] {
        let data = vec![0x11u8; chunk as usize];
        let start = Instant::now();
        let total = size / u64::from(chunk);
        let (mut sent, mut done) = (0u64, 0u64);
        while done < total {
            while sent < total && sent - done < depth {
                let sector = sent * u64::from(chunk) / 512;
                if kind == VIRTIO_BLK_T_OUT {
                    h.submit(kind, sector, &[&data], &[]).unwrap();
                } else {
                    h.submit(kind, sector, &[], &[chunk]).unwrap();
                }
                sent += 1;
            }
            done += h.wait(1).unwrap().len() as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "virtio-blk harness {name}: {} MiB in {secs:.3} s = {:.0} MiB/s",
            size / MIB,
            (size / MIB) as f64 / secs
        );
    }
    assert_eq!(get(&h.metrics.io_errors), 0);
    assert_eq!(get(&h.metrics.bytes_written), size);
    assert_eq!(get(&h.metrics.bytes_read), size);
}

#[test]
fn without_event_idx_requests_still_complete() {
    let features = !(1u64 << VIRTIO_RING_F_EVENT_IDX);
    let mut h = BlockHarness::build(MIB, false, "no-event-idx", features).unwrap();
    assert_eq!(h.driver.features() & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    for round in 0..50u64 {
        let data = vec![round as u8; 1024];
        assert_eq!(h.write(round * 2, &[&data]).unwrap(), VIRTIO_BLK_S_OK);
        let (status, back, _) = h.read(round * 2, &[1024]).unwrap();
        assert_eq!((status, back), (VIRTIO_BLK_S_OK, data), "round {round}");
    }
}

/// A driver that posts the same descriptors as a whole ring's worth of requests at once (all
/// in flight together, all reading into the same buffer) gets every one of them answered.
#[test]
fn the_same_chain_posted_a_whole_ring_over_is_served_every_time() {
    let mut h = BlockHarness::new(MIB).unwrap();
    let w = VRING_DESC_F_WRITE;
    put(&h, raw_slot(&h, 0), &header(VIRTIO_BLK_T_IN, 4));
    let descs = [
        RawDesc {
            addr: raw_slot(&h, 0),
            len: 16,
            flags: VRING_DESC_F_NEXT,
            next: 201,
        },
        RawDesc {
            addr: raw_slot(&h, 1),
            len: 512,
            flags: VRING_DESC_F_NEXT | w,
            next: 202,
        },
        RawDesc {
            addr: raw_slot(&h, 2),
            len: 1,
            flags: w,
            next: 0,
        },
    ];
    // Two bursts of a full ring each.
    let mut seen = 0;
    for _ in 0..2 {
        for _ in 0..256 {
            h.driver
                .add_raw_chain(BLOCK_QUEUE, &[200, 201, 202], &descs, None);
        }
        h.driver.kick_always(BLOCK_QUEUE);
        while seen < 256 {
            seen += h.wait(1).unwrap().len();
        }
        seen -= 256;
    }
    assert_eq!(get(&h.metrics.reads), 512);
    assert_eq!(peek(&h, raw_slot(&h, 2)), VIRTIO_BLK_S_OK);
}

#[test]
fn a_swapped_image_takes_the_next_requests_and_the_guest_is_told_its_size() {
    use devices::block::DiskImage;
    use devices::testing::block::TempImage;
    use devices::virtio::interrupt::INT_CONFIG;
    let mut h = BlockHarness::new(MIB).unwrap();
    let (st, data, _) = h.read(0, &[512]).unwrap();
    assert_eq!((st, data), (VIRTIO_BLK_S_OK, expected(0, 512)));
    // A bigger image of other bytes.
    let other = TempImage::empty().unwrap();
    std::fs::write(other.path(), vec![0xab; 2 * MIB as usize]).unwrap();
    let sectors = h
        .swap
        .swap(DiskImage::open(other.path(), false).unwrap())
        .unwrap();
    assert_eq!(sectors, 2 * MIB / 512);
    // The guest is told (a configuration change interrupt) and reads the new capacity.
    assert_ne!(h.driver.read_reg(regs::INTERRUPT_STATUS) & INT_CONFIG, 0);
    let mut cap = [0u8; 8];
    for (i, b) in cap.chunks_mut(4).enumerate() {
        h.driver.transport().read(regs::CONFIG + 4 * i as u64, b);
    }
    assert_eq!(u64::from_le_bytes(cap), 2 * MIB / 512);
    // Reads and writes go to the new image, including past the old end.
    let (st, data, _) = h.read(0, &[512]).unwrap();
    assert_eq!((st, data), (VIRTIO_BLK_S_OK, vec![0xab; 512]));
    assert_eq!(h.write(3000, &[&[7u8; 512]]).unwrap(), VIRTIO_BLK_S_OK);
    let new = std::fs::read(other.path()).unwrap();
    assert_eq!(&new[3000 * 512..3001 * 512], &[7u8; 512][..]);
    assert_eq!(
        h.image.contents(),
        expected(0, MIB as usize),
        "the old image is untouched"
    );
    // A read-only image cannot go behind a read-write drive (features are fixed at boot).
    let e = h
        .swap
        .swap(DiskImage::open(other.path(), true).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("read-write"), "{e}");
    // An empty placeholder is a drive of no sectors: every read is refused.
    let empty = TempImage::empty().unwrap();
    let placeholder = DiskImage::open_with(empty.path(), false, true).unwrap();
    assert_eq!(h.swap.swap(placeholder).unwrap(), 0);
    let (st, _, _) = h.read(0, &[512]).unwrap();
    assert_eq!(st, VIRTIO_BLK_S_IOERR);
}

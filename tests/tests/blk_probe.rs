//! virtio-blk end to end on KVM: the probe guest's own virtio-blk driver reads whole drives
//! (the hash must match the image file), gets IOERR past the end, reads each drive's id, and
//! writes, flushes and reads back 64 KiB; the image file must then hold exactly those bytes,
//! and a read-only drive must refuse the write and stay unchanged. Two drives also prove the
//! guest finds them in `--drive` order.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use ringfence_tests::harness::{ringfence_bin, TempDir};

/// FNV-1a (64 bits), as the probe computes it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What the probe writes at sector 8 (`scenarios/blk.rs`).
fn written() -> Vec<u8> {
    (0..65536usize)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(7))
        .collect()
}

fn run(probe: &Path, flags: &[&str], words: &[&str]) -> Output {
    Command::new(ringfence_bin())
        .arg("run")
        .arg("--kernel")
        .arg(probe)
        .args(["--net", "none", "--timeout", "60"])
        .args(flags)
        .arg("--")
        .args(words)
        .output()
        .expect("run ringfence")
}

fn image(dir: &TempDir, name: &str, len: usize, seed: u8) -> (String, Vec<u8>) {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add((i >> 9) as u8))
        .collect();
    let path = dir.file(name, &bytes);
    (path.to_str().expect("utf-8 path").to_string(), bytes)
}

#[test]
fn the_probe_reads_writes_and_flushes_a_drive_byte_exact() {
    let probe = require!(kvm_and_probe());
    let dir = TempDir::new("blk-probe");
    let (path, before) = image(&dir, "disk.img", 8 << 20, 7);
    let o = run(
        &probe,
        &["--drive", &format!("path={path},id=probe-disk")],
        &["probe.scenario=blk", "probe.blk.write=1"],
    );
    assert_exit_ok(&o, "probe blk scenario");
    let j = result_json(&o);
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["id"], "probe-disk");
    assert_eq!(j["capacity"], (8 << 20) / 512);
    assert_eq!(j["ro"], false);
    assert_eq!(j["read_bytes"], 8 << 20);
    assert_eq!(j["read_fnv"].as_u64(), Some(fnv1a(&before)), "{j}");
    assert_eq!(j["oob_status"], 1, "a read past the end is IOERR");
    assert_eq!(j["write_status"], 0);
    assert_eq!(j["flush_status"], 0);
    assert_eq!(j["verify"], true);
    let after = std::fs::read(&path).expect("read image");
    let mut want = before;
    want[8 * 512..8 * 512 + 65536].copy_from_slice(&written());
    assert!(
        after == want,
        "the image holds the write and nothing else changed"
    );
    eprintln!(
        "probe read {} MiB at {} MiB/s",
        (8 << 20) >> 20,
        j["read_mib_s"]
    );
}

#[test]
fn drives_appear_in_order_and_a_read_only_one_refuses_writes() {
    let probe = require!(kvm_and_probe());
    let dir = TempDir::new("blk-probe-ro");
    let (first, first_bytes) = image(&dir, "first.img", 1 << 20, 3);
    let (second, second_bytes) = image(&dir, "second.img", 2 << 20, 5);
    let drives = [
        "--drive",
        &format!("path={first},id=first"),
        "--drive",
        &format!("path={second},id=second,ro"),
    ]
    .map(String::from);
    let flags: Vec<&str> = drives.iter().map(String::as_str).collect();
    let o = run(
        &probe,
        &flags,
        &[
            "probe.scenario=blk",
            "probe.blk.write=1",
            "probe.blk.index=1",
        ],
    );
    assert_exit_ok(&o, "probe blk scenario on the second drive");
    let j = result_json(&o);
    assert_eq!(
        j["id"], "second",
        "the second blk device is the second --drive: {j}"
    );
    assert_eq!(j["window"], 0xd000_2000u64, "drive 1 sits on window 2");
    assert_eq!(j["ro"], true);
    assert_eq!(j["capacity"], (2 << 20) / 512);
    assert_eq!(j["read_fnv"].as_u64(), Some(fnv1a(&second_bytes)));
    assert_eq!(
        j["write_status"], 1,
        "IOERR for a write to a read-only drive"
    );
    assert_eq!(j["flush_status"], 0);
    assert_eq!(std::fs::read(&second).expect("read"), second_bytes);

    // The first drive, read-only here, is read but not written.
    let o = run(&probe, &flags, &["probe.scenario=blk", "probe.blk.index=0"]);
    assert_exit_ok(&o, "probe blk scenario on the first drive");
    let j = result_json(&o);
    assert_eq!(
        (j["id"].as_str(), j["ro"].as_bool()),
        (Some("first"), Some(false))
    );
    assert_eq!(j["window"], 0xd000_1000u64);
    assert_eq!(j["read_fnv"].as_u64(), Some(fnv1a(&first_bytes)));
    assert_eq!(std::fs::read(&first).expect("read"), first_bytes);
}

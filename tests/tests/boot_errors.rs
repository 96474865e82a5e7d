//! Kernels the VMM must refuse (exit 125, one clear stderr line) and guests that stop badly
//! (exit 126 with the reason) or by asking for a reset (exit 0).

use ringfence_tests::asm::{Asm, Mode, Reg};
use ringfence_tests::conformance::{codes, pvh_kernel, Expect};
use ringfence_tests::harness::{run_guest, skip_without_kvm, RunOpts, RunResult, TempDir};
use ringfence_tests::images::{elf32_header, BzImage, PvhElf, LOAD_ADDR};

const STATUS_VMM_ERROR: i32 = 125;
const STATUS_GUEST_CRASH: i32 = 126;

fn run_kernel(bytes: &[u8], opts: &RunOpts<'_>) -> RunResult {
    let dir = TempDir::new("boot-errors");
    let kernel = dir.file("kernel", bytes);
    let r = run_guest(&kernel, opts);
    println!("-> {:?}\nstderr: {}", r.status, r.stderr.trim());
    r
}

/// A PVH ELF whose 32-bit entry is `code`.
fn pvh_with(code: impl FnOnce(&mut Asm)) -> Vec<u8> {
    let mut a = Asm::new(Mode::Bits32, LOAD_ADDR);
    code(&mut a);
    PvhElf {
        payload: a.finish(),
        bss: 0x1000,
        entry: LOAD_ADDR,
        pvh_note: true,
    }
    .to_bytes()
}

/// Asserts exit 125 and exactly one stderr line containing `needle`.
fn assert_refused(r: &RunResult, needle: &str) {
    assert_eq!(r.status, Some(STATUS_VMM_ERROR), "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got {lines:?}");
    assert!(
        lines[0].contains(needle),
        "stderr {:?} does not mention {needle:?}",
        lines[0]
    );
}

#[test]
fn elf_without_pvh_note_is_refused() {
    if skip_without_kvm() {
        return;
    }
    let elf = PvhElf {
        payload: vec![0xf4],
        bss: 0,
        entry: LOAD_ADDR,
        pvh_note: false,
    }
    .to_bytes();
    assert_refused(
        &run_kernel(&elf, &RunOpts::default()),
        "without a PVH entry note",
    );
}

#[test]
fn elf32_is_refused() {
    if skip_without_kvm() {
        return;
    }
    assert_refused(
        &run_kernel(&elf32_header(), &RunOpts::default()),
        "not a 64-bit x86-64",
    );
}

fn tiny_bzimage() -> BzImage {
    let mut protected = vec![0u8; 0x400];
    protected[0x200..0x202].copy_from_slice(&[0x0f, 0x0b]);
    BzImage::new(protected)
}

#[test]
fn truncated_bzimage_is_refused() {
    if skip_without_kvm() {
        return;
    }
    let full = tiny_bzimage().to_bytes();
    // Cut inside the protected-mode part, and inside the setup sectors.
    for cut in [full.len() - 0x100, 0x300] {
        assert_refused(&run_kernel(&full[..cut], &RunOpts::default()), "truncated");
    }
}

#[test]
fn bzimage_with_old_protocol_is_refused() {
    if skip_without_kvm() {
        return;
    }
    let mut bz = tiny_bzimage();
    bz.version = 0x020b;
    assert_refused(&run_kernel(&bz.to_bytes(), &RunOpts::default()), "2.11");
}

#[test]
fn bzimage_without_64_bit_entry_is_refused() {
    if skip_without_kvm() {
        return;
    }
    let mut bz = tiny_bzimage();
    bz.xloadflags = 0;
    assert_refused(
        &run_kernel(&bz.to_bytes(), &RunOpts::default()),
        "XLF_KERNEL_64",
    );
}

#[test]
fn ud2_triple_faults() {
    if skip_without_kvm() {
        return;
    }
    let r = run_kernel(&pvh_with(|a| a.ud2()), &RunOpts::default());
    assert_eq!(r.status, Some(STATUS_GUEST_CRASH), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("triple-faulted"), "{}", r.stderr);
}

#[test]
fn cli_hlt_is_reported_as_dead_halt() {
    if skip_without_kvm() {
        return;
    }
    let r = run_kernel(
        &pvh_with(|a| {
            a.cli();
            a.hlt();
        }),
        &RunOpts::default(),
    );
    assert_eq!(r.status, Some(STATUS_GUEST_CRASH), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("halted with interrupts disabled"),
        "{}",
        r.stderr
    );
}

#[test]
fn i8042_reset_exits_cleanly() {
    if skip_without_kvm() {
        return;
    }
    let r = run_kernel(
        &pvh_with(|a| {
            a.mov_al(0xfe);
            a.out8(0x64);
            a.cli();
            a.hlt();
        }),
        &RunOpts::default(),
    );
    assert_eq!(r.status, Some(0), "stderr: {}", r.stderr);
}

#[test]
fn exit_port_status_reaches_the_caller() {
    if skip_without_kvm() {
        return;
    }
    let r = run_kernel(
        &pvh_with(|a| {
            a.mov_imm(Reg::Ax, 42);
            a.out32(0xf4);
            a.cli();
            a.hlt();
        }),
        &RunOpts::default(),
    );
    assert_eq!(r.status, Some(42), "stderr: {}", r.stderr);
}

#[test]
fn two_vcpus_boot_the_pvh_kernel() {
    if skip_without_kvm() {
        return;
    }
    let cmdline = "console=ttyS0 ringfence.test=smp";
    let kernel = pvh_kernel(&Expect {
        cmdline: cmdline.as_bytes().to_vec(),
        mem_bytes: 128 << 20,
        initrd: None,
    });
    let r = run_kernel(
        &kernel,
        &RunOpts {
            cmdline: Some(cmdline),
            mem_mib: Some(128),
            vcpus: Some(2),
            ..Default::default()
        },
    );
    assert_eq!(r.status, Some(codes::PASS as i32), "stderr: {}", r.stderr);
}

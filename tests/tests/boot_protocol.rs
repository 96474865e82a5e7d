//! Boot-protocol conformance: generated PVH and bzImage kernels check, from inside the guest,
//! what `ringfence run` handed them (CPU state, boot info, memory map, command line, initrd)
//! and exit through port 0xf4 with 0 or the code of the first failed check.

use ringfence_tests::asm::{Reg, Sreg};
use ringfence_tests::conformance::{
    bzimage_kernel, bzimage_kernel_with_prelude, codes, pvh_kernel, pvh_kernel_with_prelude,
    Expect, InitrdExpect,
};
use ringfence_tests::harness::{run_guest, skip_without_kvm, RunOpts, TempDir};

/// Which of the two kernels to build.
#[derive(Clone, Copy, Debug)]
enum Proto {
    Pvh,
    BzImage,
}

fn build(proto: Proto, e: &Expect) -> Vec<u8> {
    match proto {
        Proto::Pvh => pvh_kernel(e),
        Proto::BzImage => bzimage_kernel(e),
    }
}

/// A deterministic initrd of `len` bytes whose checksum depends on every byte.
fn initrd_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Runs one kernel built for `expect` with the actual `cmdline`/`mem`/initrd and returns the
/// exit status.
fn run_case(
    proto: Proto,
    expect: &Expect,
    cmdline: &str,
    mem_mib: u64,
    initrd: Option<&[u8]>,
) -> i32 {
    let dir = TempDir::new("conformance");
    let kernel = dir.file("kernel", &build(proto, expect));
    let initrd_path = initrd.map(|b| dir.file("initrd", b));
    let r = run_guest(
        &kernel,
        &RunOpts {
            initrd: initrd_path.as_deref(),
            cmdline: Some(cmdline),
            mem_mib: Some(mem_mib),
            ..Default::default()
        },
    );
    println!(
        "{proto:?} mem={mem_mib} initrd={:?} cmdline_len={} -> {:?} {}",
        initrd.map(<[u8]>::len),
        cmdline.len(),
        r.status,
        r.stderr.trim()
    );
    r.status.expect("ringfence was killed by a signal")
}

fn expect_for(cmdline: &str, mem_mib: u64, initrd: Option<&[u8]>) -> Expect {
    Expect {
        cmdline: cmdline.as_bytes().to_vec(),
        mem_bytes: mem_mib << 20,
        initrd: initrd.map(InitrdExpect::of),
    }
}

fn long_cmdline() -> String {
    let mut s = String::from("console=ttyS0 reboot=k panic=1");
    let mut i = 0;
    while s.len() < 1500 {
        s.push_str(&format!(" ringfence.word{i}=value-{i}"));
        i += 1;
    }
    s
}

fn all_pass(proto: Proto) {
    if skip_without_kvm() {
        return;
    }
    let short = "console=ttyS0 ringfence.test=conformance";
    let long = long_cmdline();
    let initrd = initrd_bytes(5001, 7);
    for mem in [64u64, 128, 1000] {
        for cmdline in [short, long.as_str()] {
            for rd in [None, Some(initrd.as_slice())] {
                let e = expect_for(cmdline, mem, rd);
                assert_eq!(
                    run_case(proto, &e, cmdline, mem, rd),
                    codes::PASS as i32,
                    "{proto:?} mem={mem} initrd={} cmdline_len={}",
                    rd.is_some(),
                    cmdline.len()
                );
            }
        }
    }
}

#[test]
fn pvh_kernel_sees_a_conforming_entry() {
    all_pass(Proto::Pvh);
}

#[test]
fn bzimage_kernel_sees_a_conforming_entry() {
    all_pass(Proto::BzImage);
}

/// Each check can fail: a kernel built with a wrong expectation reports that check's code.
fn wrong_expectations_fail(proto: Proto) {
    if skip_without_kvm() {
        return;
    }
    let cmdline = "console=ttyS0 ringfence.test=negative";
    let initrd = initrd_bytes(4096, 3);
    let good = expect_for(cmdline, 128, Some(&initrd));

    let mut e = good.clone();
    e.cmdline = b"console=ttyS0 ringfence.test=negativE".to_vec();
    assert_eq!(
        run_case(proto, &e, cmdline, 128, Some(&initrd)),
        codes::CMDLINE_MISMATCH as i32
    );
    // A prefix of the real command line: the terminating NUL is compared too.
    e.cmdline = b"console=ttyS0".to_vec();
    assert_eq!(
        run_case(proto, &e, cmdline, 128, Some(&initrd)),
        codes::CMDLINE_MISMATCH as i32
    );

    let mut e = good.clone();
    e.mem_bytes = 256 << 20;
    assert_eq!(
        run_case(proto, &e, cmdline, 128, Some(&initrd)),
        codes::MEMMAP_END_WRONG as i32
    );

    let mut e = good.clone();
    e.initrd = Some(InitrdExpect {
        size: 4095,
        checksum: 0,
    });
    assert_eq!(
        run_case(proto, &e, cmdline, 128, Some(&initrd)),
        codes::INITRD_SIZE_WRONG as i32
    );

    let mut corrupted = initrd.clone();
    corrupted[4000] ^= 0x40;
    assert_eq!(
        run_case(proto, &good, cmdline, 128, Some(&corrupted)),
        codes::INITRD_CHECKSUM_WRONG as i32
    );
    assert_eq!(
        run_case(proto, &good, cmdline, 128, None),
        codes::INITRD_MISSING as i32
    );
    let none = expect_for(cmdline, 128, None);
    assert_eq!(
        run_case(proto, &none, cmdline, 128, Some(&initrd)),
        codes::INITRD_UNEXPECTED as i32
    );
}

#[test]
fn pvh_kernel_checks_can_fail() {
    wrong_expectations_fail(Proto::Pvh);
}

#[test]
fn bzimage_kernel_checks_can_fail() {
    wrong_expectations_fail(Proto::BzImage);
}

/// The boot-info pointer check can fail: with `ebx`/`rsi` cleared at entry, the kernels read
/// the magic at the wrong place and report it.
#[test]
fn a_lost_boot_info_pointer_is_detected() {
    if skip_without_kvm() {
        return;
    }
    let cmdline = "console=ttyS0";
    let e = expect_for(cmdline, 128, None);
    let dir = TempDir::new("sabotage");
    for (name, kernel) in [
        (
            "pvh",
            pvh_kernel_with_prelude(&e, |a| a.xor(Reg::Bx, Reg::Bx)),
        ),
        (
            "bzimage",
            bzimage_kernel_with_prelude(&e, |a| a.xor(Reg::Si, Reg::Si)),
        ),
    ] {
        let path = dir.file(name, &kernel);
        let r = run_guest(
            &path,
            &RunOpts {
                cmdline: Some(cmdline),
                mem_mib: Some(128),
                ..Default::default()
            },
        );
        assert_eq!(
            r.status,
            Some(codes::BAD_MAGIC as i32),
            "{name}: {}",
            r.stderr
        );
    }
}

/// Builds `kernel`, runs it with a plain command line and 128 MiB, and returns the status.
fn run_sabotaged(name: &str, kernel: Vec<u8>) -> Option<i32> {
    let dir = TempDir::new("sabotage");
    let path = dir.file(name, &kernel);
    let r = run_guest(
        &path,
        &RunOpts {
            cmdline: Some("console=ttyS0"),
            mem_mib: Some(128),
            ..Default::default()
        },
    );
    println!("{name}: {:?} {}", r.status, r.stderr.trim());
    r.status
}

/// The CPU-state checks can fail: a data segment register reloaded with the (readable) code
/// selector fails the segment check in both kernels; EFER.LME set before the PVH checks fails the
/// EFER check.
#[test]
fn damaged_cpu_state_is_detected() {
    if skip_without_kvm() {
        return;
    }
    let e = expect_for("console=ttyS0", 128, None);
    // ES, not DS: the code segment is not writable and the PVH kernel writes through DS.
    let pvh_es = pvh_kernel_with_prelude(&e, |a| {
        a.mov_imm(Reg::Ax, 0x08);
        a.mov_to_sreg(Sreg::Es, Reg::Ax);
    });
    assert_eq!(
        run_sabotaged("pvh-es", pvh_es),
        Some(codes::DATA_SEGMENTS_WRONG as i32)
    );
    let bz_ds = bzimage_kernel_with_prelude(&e, |a| {
        a.mov_imm(Reg::Ax, 0x10);
        a.mov_to_sreg(Sreg::Ds, Reg::Ax);
    });
    assert_eq!(
        run_sabotaged("bz-ds", bz_ds),
        Some(codes::DATA_SEGMENTS_WRONG as i32)
    );
    let pvh_lme = pvh_kernel_with_prelude(&e, |a| {
        a.mov_imm(Reg::Cx, 0xc000_0080);
        a.rdmsr();
        a.or_imm(Reg::Ax, 1 << 8);
        a.wrmsr();
    });
    assert_eq!(
        run_sabotaged("pvh-lme", pvh_lme),
        Some(codes::EFER_WRONG as i32)
    );
}

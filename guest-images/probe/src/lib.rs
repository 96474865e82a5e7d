//! The probe guest: a freestanding test and benchmark program for ringfence
//! (and QEMU microvm, for comparison with the same ELF).
//!
//! Boot path: `boot` (PVH entry at CPL0, ~30 instructions) → `probe_main` at
//! CPL3 → IDT fill, start_info, heap, ready line, TSC calibration → the
//! scenario named by `probe.scenario=` → one JSON line → exit port.
//!
//! Everything lives in this library; `src/main.rs` only links it into the
//! ELF. Host unit tests (`cargo test --lib`) build the pure logic with std;
//! the boot path, runtime items and global allocator exist only in the image.

#![cfg_attr(not(test), no_std)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

extern crate alloc;

pub mod apic;
pub mod blk;
#[cfg(not(test))]
pub mod boot;
pub mod clock;
pub mod cmdline;
pub mod exit;
pub mod heap;
#[cfg(not(test))]
pub mod idt;
pub mod json;
pub mod net;
pub mod port;
#[cfg(not(test))]
pub mod rt;
pub mod scenarios;
pub mod serial;
pub mod start_info;
pub mod virtio;

use alloc::format;

use clock::{rdtsc, Clock};
use cmdline::{parse_u64, Cmdline};
use json::JsonLine;
use start_info::StartInfo;

/// Heap size assumed after the image when the VMM gives no memory map.
const FALLBACK_HEAP: u64 = 16 << 20;

/// The CPL3 entry point the boot stub `iretq`s to.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn probe_main(start_info_paddr: u64) -> ! {
    serial::init();
    idt::init();
    set_default_mxcsr();
    let info = StartInfo::parse(start_info_paddr);
    // Only the address of this linker-script symbol is used.
    let image_end = core::ptr::addr_of!(boot::__image_end) as u64;
    let empty = [None; 1];
    let ram = match &info {
        Ok(i) => &i.ram[..],
        Err(_) => &empty[..],
    };
    heap::init(ram, image_end, FALLBACK_HEAP);
    let ready_tsc = rdtsc();
    // Short on purpose: each console byte is a VM exit (70-100 µs on this development
    // host); the TSC at this point is in every result line as `ready_tsc`.
    println!("probe: ready");

    let info = match info {
        Ok(i) => i,
        Err(e) => {
            JsonLine::new("")
                .bool("ok", false)
                .str("error", &format!("unusable PVH start_info at ebx={start_info_paddr:#x}: {e}; boot the probe through a PVH loader"))
                .print();
            exit::exit(exit::STATUS_USAGE)
        }
    };
    let cmdline = Cmdline::new(info.cmdline);
    let clock = Clock::calibrate(cmdline.get("probe.tsc_khz").and_then(parse_u64));
    let ctx = scenarios::Context {
        cmdline,
        clock,
        ready_tsc,
        start_info_version: info.version,
    };
    let outcome = scenarios::run(&ctx);
    outcome.json.print();
    exit::exit(outcome.status)
}

#[cfg(not(test))]
/// Sets MXCSR to its architectural default (all SSE exceptions masked), so
/// the probe does not depend on the VMM's initial FPU state.
fn set_default_mxcsr() {
    let mxcsr: u32 = 0x1f80;
    // SAFETY: ldmxcsr with a valid value only changes SSE rounding/masking.
    unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, readonly)) };
}

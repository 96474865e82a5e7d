//! The interrupt descriptor table: filled at CPL3 at start-up (the boot stub
//! only loads IDTR), and the CPL0 exception reporter behind it.
//!
//! Vectors 0..32 go to `boot::exception_stubs`, which call
//! [`exception_report`] at CPL0 to print the vector, RIP and error code and
//! exit with status 0x71, so a crash is reported rather than triple-faulting.
//! A `ud2` with `rax` = `CPL0_SPIN_MAGIC` is the gate to the CPL0 spin loop
//! used by `cpl0spin` (software interrupts raise #UD on this host), and with
//! `CPL0_IDLE_MAGIC` the gate to `sti; hlt` used by `idle` and by the net
//! stack's halting wait. The interrupt vectors of [`crate::apic`] go to
//! `boot::interrupt_return`, a bare `iretq`: an interrupt only has to end the halt.

use crate::boot::{
    self, CPL0_IDLE_MAGIC, CPL0_SPIN_MAGIC, EXCEPTION_STUB_SIZE, EXCEPTION_VECTORS, IDT_ENTRIES,
    KERNEL_CS,
};
use crate::exit::{exit, STATUS_EXCEPTION};

/// Encodes a 64-bit interrupt gate (IF cleared on entry) as two quadwords.
fn gate(handler: u64) -> [u64; 2] {
    let type_attr: u64 = 0x8e; // present, DPL0, 64-bit interrupt gate
    let low = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (type_attr << 40)
        | ((handler >> 16) & 0xffff) << 48;
    [low, handler >> 32]
}

/// Fills the IDT. Must run before anything can fault.
pub fn init() {
    let stubs = boot::exception_stubs as *const () as usize as u64;
    let mut table = [0u64; 2 * IDT_ENTRIES];
    for v in 0..EXCEPTION_VECTORS {
        let [lo, hi] = gate(stubs + (v * EXCEPTION_STUB_SIZE) as u64);
        table[2 * v] = lo;
        table[2 * v + 1] = hi;
    }
    let wake = boot::interrupt_return as *const () as usize as u64;
    for v in crate::apic::VECTORS {
        let v = usize::from(v);
        let [lo, hi] = gate(wake);
        table[2 * v] = lo;
        table[2 * v + 1] = hi;
    }
    // SAFETY: idt_table is the probe's own IDT (user-accessible through the
    // identity map); nothing else writes it and no interrupt can arrive while
    // it is written (IF=0, and vectors are only raised by faults the probe's
    // own code does not cause here).
    unsafe { core::ptr::addr_of_mut!(boot::idt_table).write_volatile(table) };
}

/// The frame `exception_common` hands over: pushed by the stub and the CPU.
#[repr(C)]
pub struct ExceptionFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// Runs at CPL0 on the kernel stack after a CPU exception: prints and exits.
///
/// # Safety
/// Only `exception_common` calls this, with `frame` pointing at the stack frame.
#[no_mangle]
pub unsafe extern "C" fn exception_report(frame: *const ExceptionFrame) -> ! {
    // SAFETY: the stub passes its stack pointer, which points at a complete frame.
    let f = unsafe { &*frame };
    let cr2: u64;
    // SAFETY: reading CR2 is side-effect free and we are at CPL0 here.
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
    };
    crate::serial::print_line_direct(format_args!(
        "probe: exception vector={} error={:#x} rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} cr2={:#x}",
        f.vector, f.error_code, f.rip, f.cs, f.rflags, f.rsp, cr2
    ));
    exit(STATUS_EXCEPTION)
}

/// Runs `iterations` turns of a `dec; jnz` loop at CPL0 (through the #UD
/// gate, see `boot::CPL0_SPIN_MAGIC`) and returns to CPL3.
pub fn cpl0_spin(iterations: u64) {
    // SAFETY: the #UD handler recognises the magic in rax, spins rcx turns,
    // steps over the 2-byte ud2 and returns; it clobbers rcx and r11 only.
    unsafe {
        core::arch::asm!(
            "ud2",
            in("rax") CPL0_SPIN_MAGIC,
            inout("rcx") iterations => _,
            out("r11") _,
            options(nostack)
        )
    };
}

/// Halts the vCPU at CPL0 with interrupts enabled (through the #UD gate, see
/// `boot::CPL0_IDLE_MAGIC`) until an interrupt arrives, then returns to CPL3 with
/// interrupts off again. The host sees a halted vCPU: no CPU time is spent meanwhile.
pub fn cpl0_idle() {
    // SAFETY: the #UD handler recognises the magic in rax, runs `sti; hlt; cli`, steps
    // over the 2-byte ud2 and returns; it clobbers r11 only.
    unsafe {
        core::arch::asm!(
            "ud2",
            in("rax") CPL0_IDLE_MAGIC,
            out("r11") _,
            options(nostack)
        )
    };
}

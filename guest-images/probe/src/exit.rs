//! Leaving the VM through the isa-debug-exit style port 0xf4.
//!
//! A 32-bit write of V ends the VM: ringfence reports V as its exit status,
//! QEMU (`-device isa-debug-exit,iobase=0xf4,iosize=4`) reports (V << 1) | 1.

use crate::port::outl;

const EXIT_PORT: u16 = 0xf4;

/// Exit status for a panic in the probe's CPL3 code.
pub const STATUS_PANIC: u32 = 0x70;
/// Exit status for a CPU exception caught by the CPL0 handlers.
pub const STATUS_EXCEPTION: u32 = 0x71;
/// Exit status used when the scenario is missing, unknown or malformed.
pub const STATUS_USAGE: u32 = 2;

/// Ends the VM with `status`. Never returns; if no exit device is present the
/// probe parks in a `pause` loop (the VMM's timeout then ends it).
pub fn exit(status: u32) -> ! {
    outl(EXIT_PORT, status);
    loop {
        core::hint::spin_loop();
    }
}

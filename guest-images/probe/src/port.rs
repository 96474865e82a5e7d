//! x86 port I/O from CPL3 (allowed because the boot stub sets RFLAGS.IOPL=3).
//!
//! Owns the raw `in`/`out` instructions; callers name the port they mean.

/// Writes one byte to an I/O port.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects on the probe; IOPL=3 makes it legal
    // at CPL3, and every port the probe touches is a device it owns (UART, PIT,
    // exit port).
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads one byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reading a port has no effect on probe memory.
    unsafe {
        core::arch::asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit value to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

//! Polled 8250 UART output on COM1 (I/O port 0x3f8) and the `print!`/`println!`
//! macros built on it.
//!
//! The UART is write-only from the probe's point of view; the transmit holding
//! register is written only after the line status register reports it empty,
//! with a bounded wait so a missing UART cannot hang the probe.

use core::fmt;

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Upper bound of LSR polls per byte (each poll is one VM exit).
const MAX_POLLS: u32 = 100_000;

/// Writes raw bytes to the UART, turning `\n` into `\r\n`.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            write_byte(b'\r');
        }
        write_byte(b);
    }
}

fn write_byte(b: u8) {
    let mut polls = 0;
    while inb(LSR) & LSR_THR_EMPTY == 0 && polls < MAX_POLLS {
        polls += 1;
    }
    outb(COM1, b);
}

/// A `core::fmt::Write` sink for the UART.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Formats to the serial port; used by the `print!` macros.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    // Serial::write_str never fails.
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::serial::print_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::serial::write_bytes(b"\n") };
    ($($arg:tt)*) => {{
        $crate::serial::print_fmt(format_args!($($arg)*));
        $crate::serial::write_bytes(b"\n");
    }};
}

//! Polled 16550A UART output on COM1 (I/O port 0x3f8) and the `print!`/`println!`
//! macros built on it.
//!
//! The UART is write-only from the probe's point of view. [`init`] turns its
//! FIFOs on; then, each time the line status register reports the transmitter
//! empty, up to 16 bytes (the FIFO's depth) go out. Every port access is a VM
//! exit (KVM takes even a `rep outsb` a byte per exit), so checking the
//! status once per 16 bytes rather than once per byte nearly halves a line's
//! exits; on this development host an exit costs 70-100 µs, which made the
//! console most of a probe's start. The wait is bounded so a missing UART
//! cannot hang the probe.

use core::fmt;

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;
const FCR: u16 = COM1 + 2;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// FIFO control: enable the FIFOs and clear both.
const FCR_ENABLE_CLEAR: u8 = 0x07;
/// Bytes the transmit FIFO takes once the LSR reports it empty.
const FIFO_LEN: usize = 16;
/// Upper bound of LSR polls per burst (each poll is one VM exit).
const MAX_POLLS: u32 = 100_000;

/// Turns the UART's FIFOs on; called once, before the first line.
pub fn init() {
    outb(FCR, FCR_ENABLE_CLEAR);
}

/// Writes raw bytes to the UART, turning `\n` into `\r\n`.
pub fn write_bytes(bytes: &[u8]) {
    let mut burst = Burst::new();
    burst.push_all(bytes);
    burst.flush();
}

/// Bytes gathered for the transmit FIFO: sent [`FIFO_LEN`] at a time after one
/// status check, however many pieces `format_args!` hands over.
struct Burst {
    buf: [u8; FIFO_LEN],
    len: usize,
}

impl Burst {
    fn new() -> Burst {
        Burst {
            buf: [0; FIFO_LEN],
            len: 0,
        }
    }

    /// Queues `bytes`, turning `\n` into `\r\n`; full bursts go out at once.
    fn push_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.push(b'\r');
            }
            self.push(b);
        }
    }

    fn push(&mut self, b: u8) {
        if self.len == FIFO_LEN {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// Sends what is queued: waits for an empty transmitter, then fills its FIFO.
    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        wait_transmitter_empty();
        for &b in &self.buf[..self.len] {
            outb(COM1, b);
        }
        self.len = 0;
    }
}

impl fmt::Write for Burst {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_all(s.as_bytes());
        Ok(())
    }
}

/// Formats to the serial port; used by the `print!` macros.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    print_then(args, b"");
}

/// Formats a line (`args`, then `\r\n`) to the serial port; used by `println!`.
pub fn print_line(args: fmt::Arguments<'_>) {
    print_then(args, b"\n");
}

/// Formats `args`, then `end`, in FIFO bursts.
fn print_then(args: fmt::Arguments<'_>, end: &[u8]) {
    let mut burst = Burst::new();
    // Burst::write_str never fails.
    let _ = fmt::Write::write_fmt(&mut burst, args);
    burst.push_all(end);
    burst.flush();
}

/// Formats a line (`args`, then `\r\n`) a byte at a time, with no buffer: for the
/// CPL0 exception report. Every CPL0 instruction is emulated on this development host,
/// and its emulator knows no SSE, while a zeroed [`Burst`] can compile to `xorps`
/// (measured: a KVM internal error on the exception path).
pub fn print_line_direct(args: fmt::Arguments<'_>) {
    // Direct::write_str never fails.
    let _ = fmt::Write::write_fmt(&mut Direct, args);
    let _ = fmt::Write::write_str(&mut Direct, "\n");
}

/// The unbuffered writer behind [`print_line_direct`].
struct Direct;

impl fmt::Write for Direct {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                direct_byte(b'\r');
            }
            direct_byte(b);
        }
        Ok(())
    }
}

/// Waits for an empty transmitter, then writes `b`.
fn direct_byte(b: u8) {
    wait_transmitter_empty();
    outb(COM1, b);
}

/// Polls the line status until the transmitter (and its FIFO) is empty, at most
/// [`MAX_POLLS`] times.
fn wait_transmitter_empty() {
    let mut polls = 0;
    while inb(LSR) & LSR_THR_EMPTY == 0 && polls < MAX_POLLS {
        polls += 1;
    }
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
    ($($arg:tt)*) => { $crate::serial::print_line(format_args!($($arg)*)) };
}

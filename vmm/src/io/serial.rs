//! COM1: a 16550A UART (vm-superio) at 0x3f8 whose output goes to stdout or a console file and
//! whose interrupt reaches IRQ 4 through an irqfd.

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// First I/O port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of ports the UART decodes.
pub const COM1_LEN: u16 = 8;

/// Raises the serial interrupt by writing to its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest serial output goes.
pub type ConsoleSink = Box<dyn Write + Send>;

/// The guest's COM1.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialConsole {
    /// A UART that raises `irq` and writes to `sink`.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        SerialConsole {
            uart: Serial::new(IrqTrigger(irq), sink),
        }
    }

    /// A guest write of `value` to port `COM1_BASE + offset`.
    pub fn write(&mut self, offset: u8, value: u8) {
        // A failing console (closed stdout) must not stop the guest; the byte is dropped.
        let _ = self.uart.write(offset, value);
    }

    /// A guest read of port `COM1_BASE + offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    /// Flushes buffered output (at VM exit).
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

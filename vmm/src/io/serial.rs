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

/// Bytes buffered before output is passed on even without a newline.
const LINE_LIMIT: usize = 4096;

/// Buffers console bytes and passes them on a whole line at a time.
///
/// The UART emulation flushes after every byte; passing those flushes through would cost one
/// `write(2)` per guest byte. Complete lines go out at once; a partial line (a prompt) goes out
/// on [`LineBuffer::flush_all`], which the VMM calls periodically and at exit.
pub struct LineBuffer {
    inner: ConsoleSink,
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Wraps `inner`.
    pub fn new(inner: ConsoleSink) -> Self {
        LineBuffer {
            inner,
            pending: Vec::with_capacity(256),
        }
    }

    /// Writes out everything buffered, partial line included.
    pub fn flush_all(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.inner.write_all(&self.pending)?;
            self.pending.clear();
        }
        self.inner.flush()
    }
}

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.len() >= LINE_LIMIT {
            return self.flush_all();
        }
        if let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.inner.write_all(&self.pending[..=end])?;
            self.pending.drain(..=end);
            self.inner.flush()?;
        }
        Ok(())
    }
}

/// The guest's COM1.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, LineBuffer>,
}

impl SerialConsole {
    /// A UART that raises `irq` and writes to `sink`.
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        SerialConsole {
            uart: Serial::new(IrqTrigger(irq), LineBuffer::new(sink)),
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

    /// Writes out buffered output, partial lines included.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Log {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn whole_lines_go_out_in_one_write_and_partials_on_flush_all() {
        let log = Log::default();
        let mut lb = LineBuffer::new(Box::new(log.clone()));
        for b in b"hello\nwor" {
            lb.write_all(&[*b]).unwrap();
            lb.flush().unwrap();
        }
        assert_eq!(*log.0.lock().unwrap(), vec![b"hello\n".to_vec()]);
        lb.flush_all().unwrap();
        assert_eq!(log.0.lock().unwrap()[1], b"wor".to_vec());
    }
}

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
/// on [`LineBuffer::flush_all`], which the VMM calls shortly after the partial line starts
/// (the buffer calls its waker then, once until the next `flush_all`) and at exit. So an idle
/// guest costs the supervisor no periodic wake-ups for its console.
pub struct LineBuffer {
    inner: ConsoleSink,
    pending: Vec<u8>,
    panic: Option<String>,
    waker: Option<PartialLineWaker>,
    partial_signalled: bool,
}

/// Called (from a vCPU thread) when a partial line is left buffered.
pub type PartialLineWaker = Box<dyn Fn() + Send>;

/// What a Linux guest prints when its kernel panics (`panic()` in kernel/panic.c).
const LINUX_PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

impl LineBuffer {
    /// Wraps `inner`.
    pub fn new(inner: ConsoleSink) -> Self {
        LineBuffer {
            inner,
            pending: Vec::with_capacity(256),
            panic: None,
            waker: None,
            partial_signalled: false,
        }
    }

    /// Calls `waker` when a partial line is left buffered (once until the next
    /// [`flush_all`](Self::flush_all)).
    pub fn set_partial_waker(&mut self, waker: PartialLineWaker) {
        self.waker = Some(waker);
    }

    /// Whether a partial line waits for [`flush_all`](Self::flush_all) since the waker was
    /// called.
    pub fn partial_pending(&self) -> bool {
        self.partial_signalled
    }

    /// The first kernel panic line the guest printed, if any: a Linux guest booted with
    /// `panic=-1` reboots after a panic, and this tells that reboot from one it asked for.
    pub fn panic_line(&self) -> Option<&str> {
        self.panic.as_deref()
    }

    /// Remembers the first panic line among `out`, the bytes about to be written.
    fn watch(&mut self, end: usize) {
        if self.panic.is_some() {
            return;
        }
        let out = &self.pending[..end];
        if let Some(at) = out
            .windows(LINUX_PANIC_MARKER.len())
            .position(|w| w == LINUX_PANIC_MARKER)
        {
            let line = &out[at..];
            let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
            self.panic = Some(String::from_utf8_lossy(line).trim_end().to_string());
        }
    }

    /// Writes out everything buffered, partial line included.
    pub fn flush_all(&mut self) -> io::Result<()> {
        self.partial_signalled = false;
        if !self.pending.is_empty() {
            self.watch(self.pending.len());
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
            self.watch(end + 1);
            self.inner.write_all(&self.pending[..=end])?;
            self.pending.drain(..=end);
            self.inner.flush()?;
        }
        if !self.pending.is_empty() && !self.partial_signalled {
            if let Some(wake) = &self.waker {
                self.partial_signalled = true;
                wake();
            }
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

    /// Calls `waker` when a partial line waits in the console buffer (see [`LineBuffer`]).
    pub fn set_partial_waker(&mut self, waker: PartialLineWaker) {
        self.uart.writer_mut().set_partial_waker(waker);
    }

    /// Whether a partial line waits to be flushed (see [`LineBuffer::partial_pending`]).
    pub fn partial_pending(&mut self) -> bool {
        self.uart.writer_mut().partial_pending()
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

    /// The guest kernel's panic line, if it printed one (see [`LineBuffer::panic_line`]).
    pub fn panic_line(&mut self) -> Option<String> {
        self.uart.writer_mut().panic_line().map(String::from)
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
    fn a_partial_line_is_signalled_once_until_flushed() {
        let log = Log::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut b = LineBuffer::new(Box::new(log.clone()));
        let seen = calls.clone();
        b.set_partial_waker(Box::new(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let count = || calls.load(std::sync::atomic::Ordering::SeqCst);
        b.write_all(b"whole line\n").unwrap();
        b.flush().unwrap();
        assert_eq!(
            (count(), b.partial_pending()),
            (0, false),
            "a whole line needs no wake"
        );
        for byte in b"$ " {
            b.write_all(&[*byte]).unwrap();
            b.flush().unwrap();
        }
        assert_eq!(
            (count(), b.partial_pending()),
            (1, true),
            "one wake for the prompt"
        );
        b.flush_all().unwrap();
        assert!(!b.partial_pending());
        assert_eq!(log.0.lock().unwrap().concat(), b"whole line\n$ ");
        b.write_all(b">").unwrap();
        b.flush().unwrap();
        assert_eq!(count(), 2, "woken again after the flush");
    }

    #[test]
    fn a_kernel_panic_line_is_remembered() {
        let log = Log::default();
        let mut b = LineBuffer::new(Box::new(log.clone()));
        b.write_all(b"[ 1.0] boot\n").unwrap();
        b.flush().unwrap();
        assert_eq!(b.panic_line(), None);
        b.write_all(b"[ 2.0] Kernel panic - not syncing: sysrq triggered crash\r\nmore\n")
            .unwrap();
        b.flush().unwrap();
        assert_eq!(
            b.panic_line(),
            Some("Kernel panic - not syncing: sysrq triggered crash")
        );
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

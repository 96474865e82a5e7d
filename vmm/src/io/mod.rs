//! Port I/O and MMIO dispatch for exits that reach userspace.
//!
//! Port devices: COM1 serial, the exit port (QEMU's `isa-debug-exit` convention at 0xf4, so the
//! same probe ELF ends QEMU and ringfence alike), and a minimal i8042 controller (its reset
//! line, and answers for Linux's probe). MMIO: the virtio-mmio
//! windows. Everything else reads as all-ones and ignores writes, as an empty bus would.

pub mod i8042;
pub mod serial;

use std::sync::Mutex;

use i8042::{I8042Effect, I8042};
use serial::{PartialLineWaker, SerialConsole, COM1_BASE, COM1_LEN};

use crate::exit::VmExit;

/// The exit port: a write of V ends the VM with guest status V.
pub const EXIT_PORT: u16 = 0xf4;
/// Width of the exit port in bytes.
pub const EXIT_PORT_LEN: u16 = 4;
/// i8042 command port; command 0xfe pulses the CPU reset line.
pub const I8042_COMMAND_PORT: u16 = i8042::COMMAND_PORT;
/// The i8042 "pulse reset" command.
pub const I8042_RESET: u8 = 0xfe;

/// A device that decodes an MMIO window (virtio-mmio transports).
pub trait MmioDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` inside the window.
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write at `offset` inside the window.
    fn mmio_write(&mut self, offset: u64, data: &[u8]);
}

/// One MMIO window.
struct MmioWindow {
    base: u64,
    len: u64,
    device: Mutex<Box<dyn MmioDevice>>,
}

/// All devices that exits can reach, shared by the vCPU threads.
pub struct IoBus {
    serial: Mutex<SerialConsole>,
    i8042: Mutex<I8042>,
    mmio: Vec<MmioWindow>,
}

/// What the vCPU does after an I/O exit.
#[derive(Debug, PartialEq)]
pub enum IoAction {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM with this reason.
    Stop(VmExit),
}

impl IoBus {
    /// A bus with COM1 and no MMIO devices.
    pub fn new(serial: SerialConsole) -> Self {
        IoBus {
            serial: Mutex::new(serial),
            i8042: Mutex::new(I8042::default()),
            mmio: Vec::new(),
        }
    }

    /// Has the console call `waker` when a partial line (a prompt) waits in its buffer, so
    /// the supervisor can flush it soon without waking up periodically.
    pub fn set_partial_waker(&self, waker: PartialLineWaker) {
        if let Ok(mut s) = self.serial.lock() {
            s.set_partial_waker(waker);
        }
    }

    /// Whether a partial console line waits for [`flush_console`](Self::flush_console).
    pub fn console_partial_pending(&self) -> bool {
        self.serial.lock().is_ok_and(|mut s| s.partial_pending())
    }

    /// Places `device` at `[base, base + len)`.
    pub fn add_mmio(&mut self, base: u64, len: u64, device: Box<dyn MmioDevice>) {
        self.mmio.push(MmioWindow {
            base,
            len,
            device: Mutex::new(device),
        });
    }

    /// A guest `out` to `port`. `data` holds every byte of the exit (`size × count`): a string
    /// I/O exit with a count above one reaches the UART as that many byte writes, in order.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> IoAction {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                if let Ok(mut s) = self.serial.lock() {
                    for &v in data {
                        s.write((p - COM1_BASE) as u8, v);
                    }
                }
                IoAction::Continue
            }
            EXIT_PORT => IoAction::Stop(VmExit::GuestStatus(le_value(data))),
            I8042_COMMAND_PORT | i8042::DATA_PORT => {
                let (Some(&v), Ok(mut c)) = (data.first(), self.i8042.lock()) else {
                    return IoAction::Continue;
                };
                let effect = if port == I8042_COMMAND_PORT {
                    c.write_command(v)
                } else {
                    c.write_data(v)
                };
                match effect {
                    I8042Effect::Reset => IoAction::Stop(VmExit::Reset),
                    I8042Effect::None => IoAction::Continue,
                }
            }
            _ => IoAction::Continue,
        }
    }

    /// A guest `in` from `port`.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                let v = self
                    .serial
                    .lock()
                    .map(|mut s| s.read((p - COM1_BASE) as u8))
                    .unwrap_or(0xff);
                byte_read(data, v);
            }
            I8042_COMMAND_PORT | i8042::DATA_PORT => {
                let v = self.i8042.lock().map_or(0xff, |mut c| {
                    if port == I8042_COMMAND_PORT {
                        c.status()
                    } else {
                        c.read_data()
                    }
                });
                byte_read(data, v);
            }
            _ => data.fill(0xff),
        }
    }

    fn window(&self, addr: u64) -> Option<&MmioWindow> {
        self.mmio
            .iter()
            .find(|w| addr >= w.base && addr - w.base < w.len)
    }

    /// A guest MMIO read at `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.window(addr) {
            Some(w) => match w.device.lock() {
                Ok(mut d) => d.mmio_read(addr - w.base, data),
                Err(_) => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    /// A guest MMIO write at `addr`.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some(w) = self.window(addr) {
            if let Ok(mut d) = w.device.lock() {
                d.mmio_write(addr - w.base, data);
            }
        }
    }

    /// The guest kernel's panic line, if its console showed one.
    pub fn guest_panic(&self) -> Option<String> {
        self.serial.lock().ok().and_then(|mut s| s.panic_line())
    }

    /// Flushes the console (at VM exit).
    pub fn flush_console(&self) {
        if let Ok(mut s) = self.serial.lock() {
            s.flush();
        }
    }
}

/// Fills an 8-bit device's read: the byte, then zeros for wider accesses.
fn byte_read(data: &mut [u8], v: u8) {
    data.fill(0);
    if let Some(b) = data.first_mut() {
        *b = v;
    }
}

/// Little-endian value of an I/O write of 1, 2 or 4 bytes.
fn le_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex as StdMutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Capture(Arc<StdMutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn bus() -> (IoBus, Capture) {
        let cap = Capture::default();
        let serial = SerialConsole::new(EventFd::new(0).unwrap(), Box::new(cap.clone()));
        (IoBus::new(serial), cap)
    }

    #[test]
    fn exit_port_reports_the_written_value() {
        let (bus, _) = bus();
        assert_eq!(
            bus.pio_write(EXIT_PORT, &7u32.to_le_bytes()),
            IoAction::Stop(VmExit::GuestStatus(7))
        );
        assert_eq!(
            bus.pio_write(EXIT_PORT, &[3]),
            IoAction::Stop(VmExit::GuestStatus(3))
        );
    }

    #[test]
    fn serial_bytes_reach_the_console() {
        let (bus, cap) = bus();
        for b in b"hi\n" {
            assert_eq!(bus.pio_write(COM1_BASE, &[*b]), IoAction::Continue);
        }
        assert_eq!(&*cap.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        bus.pio_read(COM1_BASE + 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
    }

    #[test]
    fn a_string_out_reaches_the_console_byte_by_byte() {
        let (bus, cap) = bus();
        // FIFO control (the probe enables the FIFOs), then a string exit of 16 bytes.
        assert_eq!(bus.pio_write(COM1_BASE + 2, &[0x07]), IoAction::Continue);
        assert_eq!(
            bus.pio_write(COM1_BASE, b"probe: ready 1\r\n"),
            IoAction::Continue
        );
        assert_eq!(&*cap.0.lock().unwrap(), b"probe: ready 1\r\n");
    }

    #[test]
    fn i8042_reset_stops_the_vm_and_unknown_ports_float() {
        let (bus, _) = bus();
        assert_eq!(
            bus.pio_write(I8042_COMMAND_PORT, &[I8042_RESET]),
            IoAction::Stop(VmExit::Reset)
        );
        let mut d = [0u8; 2];
        bus.pio_read(0x80, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        let mut m = [0u8; 4];
        bus.mmio_read(0xd000_0000, &mut m);
        assert_eq!(m, [0xff; 4]);
    }
}

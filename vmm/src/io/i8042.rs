//! A minimal i8042 keyboard controller: enough for a Linux guest's driver to find it and move
//! on at once, and for the reset line that `reboot=k` pulls.
//!
//! Without it Linux's i8042 driver waits for answers that never come ("i8042: Can't read
//! CTR"), which cost 2.5–3 s of every boot. The controller answers the commands the driver
//! sends while probing (read/write the command byte, self tests, port enable/disable) through
//! its output buffer, which the driver polls. No keyboard is attached, and the AUX (mouse)
//! port reports a stuck clock line in its interface test, so the driver gives up on it
//! without waiting for the AUX IRQ test. Nothing here raises interrupts: every byte the
//! controller produces answers a command the driver is polling for.

use std::collections::VecDeque;

/// Data port (read: output buffer; write: command parameter or device byte).
pub const DATA_PORT: u16 = 0x60;
/// Command (write) and status (read) port.
pub const COMMAND_PORT: u16 = 0x64;

/// Status: output buffer full.
const STATUS_OBF: u8 = 0x01;
/// Status: system flag (self test passed).
const STATUS_SYS: u8 = 0x04;
/// Status: the last write was a command.
const STATUS_CMD: u8 = 0x08;
/// Status: keyboard not inhibited (the key lock is open; Linux warns when it reads clear).
const STATUS_UNLOCKED: u8 = 0x10;

/// Command byte: keyboard interrupt enabled, system flag, scancode translation.
const CTR_DEFAULT: u8 = 0x45;
/// Command byte bit: keyboard port disabled.
const CTR_KBD_DISABLED: u8 = 0x10;
/// Command byte bit: AUX port disabled.
const CTR_AUX_DISABLED: u8 = 0x20;

/// Most bytes the output buffer holds (a real one holds one; the driver drains it).
const OUTPUT_CAPACITY: usize = 16;

/// What a write to the controller did.
#[derive(Debug, PartialEq)]
pub enum I8042Effect {
    /// Nothing beyond the controller's own state.
    None,
    /// The guest pulsed the CPU reset line (command 0xfe).
    Reset,
}

/// A command waiting for its parameter on the data port.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pending {
    WriteCommandByte,
    WriteOutputPort,
    KbdOutput,
    AuxLoopback,
    AuxDevice,
}

/// The controller's state.
#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    output: VecDeque<u8>,
    pending: Option<Pending>,
    last_was_command: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            ctr: CTR_DEFAULT,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
            pending: None,
            last_was_command: false,
        }
    }
}

impl I8042 {
    /// The status register.
    pub fn status(&self) -> u8 {
        let mut s = STATUS_SYS | STATUS_UNLOCKED;
        if !self.output.is_empty() {
            s |= STATUS_OBF;
        }
        if self.last_was_command {
            s |= STATUS_CMD;
        }
        s
    }

    /// A read of the data port: the oldest output byte (0 when empty).
    pub fn read_data(&mut self) -> u8 {
        self.output.pop_front().unwrap_or(0)
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_CAPACITY {
            self.output.push_back(byte);
        }
    }

    /// A write to the command port.
    pub fn write_command(&mut self, cmd: u8) -> I8042Effect {
        self.last_was_command = true;
        self.pending = None;
        match cmd {
            0x20 => self.push(self.ctr),
            0x60 => self.pending = Some(Pending::WriteCommandByte),
            0xa7 => self.ctr |= CTR_AUX_DISABLED,
            0xa8 => self.ctr &= !CTR_AUX_DISABLED,
            // AUX interface test: "clock line stuck low", so the driver drops the AUX port.
            0xa9 => self.push(0x01),
            // Controller self test passed; keyboard interface test passed.
            0xaa => self.push(0x55),
            0xab => self.push(0x00),
            0xad => self.ctr |= CTR_KBD_DISABLED,
            0xae => self.ctr &= !CTR_KBD_DISABLED,
            // Output port: reset line high (not in reset), A20 enabled.
            0xd0 => self.push(0x03),
            0xd1 => self.pending = Some(Pending::WriteOutputPort),
            0xd2 => self.pending = Some(Pending::KbdOutput),
            0xd3 => self.pending = Some(Pending::AuxLoopback),
            0xd4 => self.pending = Some(Pending::AuxDevice),
            0xfe => return I8042Effect::Reset,
            _ => {}
        }
        I8042Effect::None
    }

    /// A write to the data port.
    pub fn write_data(&mut self, byte: u8) -> I8042Effect {
        self.last_was_command = false;
        match self.pending.take() {
            Some(Pending::WriteCommandByte) => self.ctr = byte,
            // Bit 0 of the output port is the CPU reset line, active low.
            Some(Pending::WriteOutputPort) if byte & 1 == 0 => return I8042Effect::Reset,
            Some(Pending::WriteOutputPort) => {}
            Some(Pending::KbdOutput) => self.push(byte),
            // No working AUX port: the loopback does not return what was sent.
            Some(Pending::AuxLoopback) => self.push(!byte),
            // Bytes for an absent mouse or keyboard are dropped; the driver times out on
            // those devices only if it has a driver for them.
            Some(Pending::AuxDevice) | None => {}
        }
        I8042Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver's polled command: write, then read the answer while OBF is set.
    fn command(c: &mut I8042, cmd: u8, param: Option<u8>) -> Option<u8> {
        assert_eq!(c.write_command(cmd), I8042Effect::None);
        if let Some(p) = param {
            c.write_data(p);
        }
        (c.status() & STATUS_OBF != 0).then(|| c.read_data())
    }

    #[test]
    fn linux_probe_sequence_gets_answers() {
        let mut c = I8042::default();
        assert_eq!(c.status() & STATUS_OBF, 0, "nothing to flush at start");
        assert_eq!(command(&mut c, 0xaa, None), Some(0x55), "self test");
        let ctr = command(&mut c, 0x20, None).expect("CTR readable");
        assert_eq!(ctr, CTR_DEFAULT);
        assert_eq!(command(&mut c, 0x60, Some(ctr | CTR_KBD_DISABLED)), None);
        assert_eq!(command(&mut c, 0x20, None), Some(ctr | CTR_KBD_DISABLED));
        // AUX: the loopback garbles, the interface test reports a stuck clock.
        assert_ne!(command(&mut c, 0xd3, Some(0x5a)), Some(0x5a));
        assert_eq!(command(&mut c, 0xa9, None), Some(0x01));
        command(&mut c, 0xa7, None);
        assert_ne!(command(&mut c, 0x20, None).unwrap() & CTR_AUX_DISABLED, 0);
        command(&mut c, 0xa8, None);
        assert_eq!(command(&mut c, 0x20, None).unwrap() & CTR_AUX_DISABLED, 0);
        assert_eq!(c.status() & STATUS_OBF, 0, "every answer was read");
    }

    #[test]
    fn reset_comes_from_the_pulse_command_or_the_output_port() {
        let mut c = I8042::default();
        assert_eq!(c.write_command(0xfe), I8042Effect::Reset);
        assert_eq!(c.write_command(0xd1), I8042Effect::None);
        assert_eq!(c.write_data(0x03), I8042Effect::None);
        assert_eq!(c.write_command(0xd1), I8042Effect::None);
        assert_eq!(c.write_data(0x02), I8042Effect::Reset);
    }

    #[test]
    fn the_output_buffer_is_bounded_and_reads_zero_when_empty() {
        let mut c = I8042::default();
        for _ in 0..100 {
            c.write_command(0x20);
        }
        let mut n = 0;
        while c.status() & STATUS_OBF != 0 {
            c.read_data();
            n += 1;
        }
        assert_eq!(n, OUTPUT_CAPACITY);
        assert_eq!(c.read_data(), 0);
    }
}

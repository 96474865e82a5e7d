//! The virtio-mmio register block (virtio 1.2 §4.2.2) and the device
//! initialisation handshake (§3.1.1), for version 2 (modern) transports only.

use core::ptr::{read_volatile, write_volatile};

use super::queue::SplitQueue;
use super::MmioWindow;

const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_ACK: u64 = 0x064;
/// InterruptStatus bits: used buffers, configuration change.
const INTERRUPT_ALL: u32 = 0b11;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// Start of the device-specific configuration space.
pub const CONFIG: u64 = 0x100;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;

/// Feature bit: the device complies with virtio 1.x.
pub const F_VERSION_1: u64 = 1 << 32;

/// Why a transport could not be brought up.
#[derive(Debug)]
pub enum MmioError {
    /// The transport speaks the legacy (version 1) interface.
    Legacy {
        /// Base address of the transport.
        base: u64,
    },
    /// The device rejected the feature set.
    FeaturesRejected {
        /// Base address of the transport.
        base: u64,
        /// Features the driver asked for.
        features: u64,
    },
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1 {
        /// Base address of the transport.
        base: u64,
    },
    /// A queue is missing or already live.
    QueueUnavailable {
        /// Base address of the transport.
        base: u64,
        /// Queue index.
        queue: u16,
    },
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmioError::Legacy { base } => write!(
                f,
                "virtio-mmio transport at {base:#x} is legacy (version 1); the probe supports version 2 only \
                 (QEMU: add -global virtio-mmio.force-legacy=false)"
            ),
            MmioError::FeaturesRejected { base, features } => {
                write!(f, "virtio device at {base:#x} rejected features {features:#x} (FEATURES_OK not set)")
            }
            MmioError::NoVersion1 { base } => {
                write!(f, "virtio device at {base:#x} does not offer VIRTIO_F_VERSION_1")
            }
            MmioError::QueueUnavailable { base, queue } => {
                write!(f, "virtio device at {base:#x}: queue {queue} has size 0 or is already live")
            }
        }
    }
}

/// A version 2 virtio-mmio transport.
pub struct MmioTransport {
    base: u64,
    irq: Option<u32>,
}

impl MmioTransport {
    /// Probes `window`: returns the transport if it holds a device of
    /// `device_id`, `Ok(None)` if it holds something else or nothing.
    pub fn probe(window: MmioWindow, device_id: u32) -> Result<Option<MmioTransport>, MmioError> {
        let t = MmioTransport {
            base: window.base,
            irq: window.irq,
        };
        if window.size < 0x200 || t.read(MAGIC_VALUE) != MAGIC || t.read(DEVICE_ID) != device_id {
            return Ok(None);
        }
        if t.read(VERSION) != 2 {
            return Err(MmioError::Legacy { base: window.base });
        }
        Ok(Some(t))
    }

    /// Base address of the register block.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The interrupt line the command line named for this transport, if any.
    pub fn irq(&self) -> Option<u32> {
        self.irq
    }

    fn read(&self, offset: u64) -> u32 {
        // SAFETY: base..base+0x200 is a virtio-mmio register block inside the
        // identity-mapped low 4 GiB (checked by the caller's window); MMIO
        // reads have no effect on probe memory.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: u64, value: u32) {
        // SAFETY: as for `read`; the register is one the virtio spec lets the
        // driver write.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Reads a byte of device configuration space.
    pub fn config_u8(&self, offset: u64) -> u8 {
        // SAFETY: as for `read`; configuration space follows the registers.
        unsafe { read_volatile((self.base + CONFIG + offset) as *const u8) }
    }

    /// Resets the device and negotiates `wanted` features (VERSION_1 is
    /// required). Returns the accepted feature set.
    pub fn begin_init(&self, wanted: u64) -> Result<u64, MmioError> {
        self.write(STATUS, 0);
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let high = self.read(DEVICE_FEATURES);
        let offered = u64::from(low) | (u64::from(high) << 32);
        if offered & F_VERSION_1 == 0 {
            self.write(STATUS, STATUS_FAILED);
            return Err(MmioError::NoVersion1 { base: self.base });
        }
        let features = offered & (wanted | F_VERSION_1);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
        self.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if self.read(STATUS) & STATUS_FEATURES_OK == 0 {
            self.write(STATUS, STATUS_FAILED);
            return Err(MmioError::FeaturesRejected {
                base: self.base,
                features,
            });
        }
        Ok(features)
    }

    /// The largest size queue `index` supports (0 if it does not exist).
    pub fn queue_max(&self, index: u16) -> u16 {
        self.write(QUEUE_SEL, u32::from(index));
        self.read(QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16
    }

    /// Hands queue `index` to the device.
    pub fn setup_queue(&self, index: u16, queue: &SplitQueue) -> Result<(), MmioError> {
        self.write(QUEUE_SEL, u32::from(index));
        if self.read(QUEUE_READY) != 0 || self.read(QUEUE_NUM_MAX) == 0 {
            return Err(MmioError::QueueUnavailable {
                base: self.base,
                queue: index,
            });
        }
        let (desc, driver, device) = queue.addresses();
        self.write(QUEUE_NUM, u32::from(queue.size()));
        self.write(QUEUE_DESC_LOW, desc as u32);
        self.write(QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(QUEUE_DRIVER_LOW, driver as u32);
        self.write(QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
        self.write(QUEUE_DEVICE_LOW, device as u32);
        self.write(QUEUE_DEVICE_HIGH, (device >> 32) as u32);
        self.write(QUEUE_READY, 1);
        Ok(())
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn finish_init(&self) {
        self.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    /// Acknowledges every interrupt cause (InterruptACK), so a device that keeps its
    /// line raised while InterruptStatus is non-zero (QEMU's virtio-mmio) can raise
    /// the next edge.
    pub fn ack_interrupts(&self) {
        self.write(INTERRUPT_ACK, INTERRUPT_ALL);
    }

    /// Tells the device that queue `index` has new available buffers.
    pub fn notify(&self, index: u16) {
        self.write(QUEUE_NOTIFY, u32::from(index));
    }
}

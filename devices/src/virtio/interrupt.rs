//! The interrupt line of one virtio device: the InterruptStatus bits (shared between the
//! device worker, which sets them, and the transport, where the driver reads and acks them)
//! and the eventfd the VMM registers as an irqfd on the device's GSI. It also carries the
//! device's DEVICE_NEEDS_RESET flag, which the worker raises together with a configuration
//! change interrupt (virtio 1.2 §2.1.2) and the transport reports in the Status register.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit 0: the device used buffers in at least one virtqueue.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit 1: the device configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Interrupt status plus the irqfd that delivers it.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    evt: EventFd,
}

impl Interrupt {
    /// Creates an interrupt line with a fresh non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd the VMM registers as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// Sets status bits without signalling the eventfd (the caller signals it, e.g. through
    /// its io_uring ring). Returns the previous status.
    pub fn set_status(&self, bits: u32) -> u32 {
        self.status.fetch_or(bits, Ordering::AcqRel)
    }

    /// Clears the bits the driver acknowledged (InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears all status bits and the DEVICE_NEEDS_RESET flag (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }

    /// Marks the device as needing a reset (virtio 1.2 §2.1.2: it hit an error it cannot
    /// recover from) and sends a configuration change notification. Returns `Ok(true)` if the
    /// flag was newly set, `Ok(false)` if it was already set (no second interrupt is sent).
    pub fn signal_needs_reset(&self) -> io::Result<bool> {
        if self.needs_reset.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        self.trigger(INT_CONFIG).map(|()| true)
    }

    /// Whether the device asked the driver for a reset (until the driver resets it).
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// Sets `bits` and signals the eventfd with a direct `write(2)`.
    pub fn trigger(&self, bits: u32) -> io::Result<()> {
        self.set_status(bits);
        self.evt.write(1)
    }
}

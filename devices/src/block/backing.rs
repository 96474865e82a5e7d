//! The image behind a running drive, swappable while the guest runs (Firecracker's
//! `PATCH /drives/{id}`, which Kata uses to put a container's disk into one of the empty
//! placeholder drives it configured before boot).
//!
//! The VMM keeps a [`DriveSwap`]; [`DriveSwap::swap`] installs the new [`DiskImage`], bumps a
//! generation counter and, if the driver is running, sends a configuration change interrupt
//! so the guest rereads the capacity (Linux's virtio_blk then resizes the disk). The device
//! reads the capacity from here on every config-space read; the worker picks the new image
//! up before it takes its next request, once the I/O in flight on the old one is done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::image::DiskImage;
use crate::virtio::interrupt::INT_CONFIG;
use crate::virtio::Interrupt;

/// Why an image could not be swapped in.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The new image's mode differs from the drive's (the guest negotiated `VIRTIO_BLK_F_RO`
    /// or its absence at boot and cannot renegotiate it).
    #[error("the drive is {drive} but the new image was opened {image}; features cannot change while the guest runs")]
    Mode {
        /// The drive's mode.
        drive: &'static str,
        /// The new image's mode.
        image: &'static str,
    },
    /// The configuration change interrupt could not be sent.
    #[error("the guest could not be told of the new size: {0}")]
    Interrupt(std::io::Error),
}

fn mode(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "read-write"
    }
}

/// The drive's current image and who to tell when it changes.
#[derive(Debug)]
pub(crate) struct Backing {
    image: Mutex<Arc<DiskImage>>,
    generation: AtomicU64,
    interrupt: Mutex<Option<Arc<Interrupt>>>,
    read_only: bool,
}

impl Backing {
    pub(crate) fn new(image: DiskImage) -> Self {
        Self {
            read_only: image.read_only(),
            image: Mutex::new(Arc::new(image)),
            generation: AtomicU64::new(0),
            interrupt: Mutex::new(None),
        }
    }

    /// The image requests go to now.
    pub(crate) fn current(&self) -> Arc<DiskImage> {
        self.image
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bumped by every swap.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the drive is read-only (fixed for its life).
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// The running driver's interrupt line (`None` when the device stops).
    pub(crate) fn set_interrupt(&self, interrupt: Option<Arc<Interrupt>>) {
        *self
            .interrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = interrupt;
    }
}

/// The VMM's handle on a drive's image (see the module docs).
#[derive(Clone, Debug)]
pub struct DriveSwap(pub(crate) Arc<Backing>);

impl DriveSwap {
    /// Puts `image` behind the drive; returns its capacity in 512-byte sectors.
    pub fn swap(&self, image: DiskImage) -> Result<u64, SwapError> {
        if image.read_only() != self.0.read_only {
            return Err(SwapError::Mode {
                drive: mode(self.0.read_only),
                image: mode(image.read_only()),
            });
        }
        let sectors = image.sectors();
        *self.0.image.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(image);
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        let interrupt = self
            .0
            .interrupt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(irq) = interrupt {
            irq.trigger(INT_CONFIG).map_err(SwapError::Interrupt)?;
        }
        Ok(sectors)
    }

    /// Whether the drive is read-only (a new image must be opened the same way).
    pub fn read_only(&self) -> bool {
        self.0.read_only
    }
}

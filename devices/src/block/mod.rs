//! The virtio-blk device (virtio 1.2 §5.2): a raw disk image behind one request queue.
//!
//! Layout, one job per file: [`image`] (the backing file: opened with the right mode, its size
//! checked), [`backing`] (the image behind a running drive, swappable while the guest runs), [`device`] (the [`Block`] device: features, config space, activation and reset),
//! [`request`] (descriptor chains → validated requests), `worker` (the per-device thread that
//! runs requests on its io_uring ring) and [`metrics`].
//!
//! # A request's path
//!
//! The worker takes a chain from the queue and walks it once ([`request::RequestParser`]):
//! the 16-byte header is *copied* out of guest memory and parsed from the copy; every data
//! buffer is bounds-checked against guest memory, the device's rings and the drive's capacity
//! (with checked sector arithmetic) and kept as an iovec into guest memory. Reads and writes
//! are then one `readv`/`writev` on the io_uring ring at the request's byte offset, straight
//! between the image file and the guest's buffers: **no copy** in the device. FLUSH is an
//! `fsync` on the same ring. Many requests are in flight at once; each is completed (status
//! byte written, chain put on the used ring) as soon as its I/O completes, in completion
//! order, and the used ring is published once per loop pass.
//!
//! # What the device never does
//!
//! It never panics on guest input, never reads or writes outside the image (the offset of
//! every I/O is below `capacity` and its end at most `capacity`) and never writes to a
//! read-only drive (whose file is opened read-only, so not even a bug could). A chain that
//! breaks a rule gets `VIRTIO_BLK_S_IOERR` in its status byte when it has a usable one, and
//! is otherwise returned unused and counted ([`metrics::BlockMetrics::chains_dropped`]).

pub mod backing;
pub mod device;
pub mod image;
pub mod metrics;
pub mod request;
mod worker;

pub use backing::{DriveSwap, SwapError};
pub use device::{Block, BlockConfig, BlockError};
pub use image::{DiskImage, ImageError};
pub use metrics::{BlockMetrics, RequestError};

/// Virtio device id of a block device (virtio 1.2 §5).
pub const TYPE_BLOCK: u32 = 2;

/// Sector size of the virtio-blk protocol: offsets and capacity count 512-byte sectors
/// whatever the block size (virtio 1.2 §5.2.6).
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the id `VIRTIO_BLK_T_GET_ID` returns (virtio 1.2 §5.2.6).
pub const ID_BYTES: usize = 20;

/// virtio-blk feature bits (virtio 1.2 §5.2.3).
pub mod features {
    /// `seg_max` in config space: most data segments in one request.
    pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
    /// The device is read-only.
    pub const VIRTIO_BLK_F_RO: u32 = 5;
    /// `blk_size` in config space.
    pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
    /// The device takes `VIRTIO_BLK_T_FLUSH`.
    pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
}

/// Request types (virtio 1.2 §5.2.6).
pub mod request_type {
    /// Read sectors.
    pub const VIRTIO_BLK_T_IN: u32 = 0;
    /// Write sectors.
    pub const VIRTIO_BLK_T_OUT: u32 = 1;
    /// Make every completed write durable.
    pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
    /// Read the device id (20 bytes).
    pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
}

/// Status byte values (virtio 1.2 §5.2.6).
pub mod status {
    /// Success.
    pub const VIRTIO_BLK_S_OK: u8 = 0;
    /// Device or driver error.
    pub const VIRTIO_BLK_S_IOERR: u8 = 1;
    /// Request type not supported.
    pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
}

//! Block devices as the VMM sees them: the `--drive` settings of a VM. The virtio-blk device
//! itself lives in `devices::block`.
//!
//! Device windows: virtio-net is always window 0 (whether or not the VM has a network
//! device), drives take windows 1..=[`MAX_DRIVES`] (IRQs 6 to 21) in the order given, vsock the window after
//! the last drive ([`crate::layout::virtio_mmio_base`]).

use std::path::PathBuf;

/// Most drives one VM may have: Kata's Firecracker driver gives 9 (the rootfs and eight
/// hot-swap placeholders); the IOAPIC's 24 pins bound it.
pub const MAX_DRIVES: usize = 16;

/// One virtio-blk drive backed by a raw image file (`--drive`, Firecracker's `PUT /drives`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveSettings {
    /// The drive's id (Firecracker's `drive_id`); also the serial the guest reads
    /// (`VIRTIO_BLK_T_GET_ID`, first 20 bytes).
    pub id: String,
    /// The raw image file.
    pub path: PathBuf,
    /// Opened read-only and offered with `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The guest's root filesystem: `root=/dev/vdX` is added to the command line.
    pub root: bool,
}

/// The window index of drive `n` (0-based).
pub fn drive_window(n: usize) -> u32 {
    1 + n as u32
}

//! virtio-vsock as the VMM sees it: the `--vsock` settings of a VM. The device itself lives in
//! `devices::vsock`.
//!
//! The host side is Firecracker's: host programs connect to the Unix socket `uds_path` and
//! write `CONNECT <port>\n` to reach a guest listener on that port (the device answers
//! `OK <host_port>\n`); a guest connection to the host (CID 2) port `P` is carried to a
//! Unix socket listening at `<uds_path>_<P>`.

use std::path::PathBuf;

/// The guest context id ringfence gives when none is asked for.
pub const DEFAULT_GUEST_CID: u32 = 3;

/// A virtio-vsock device (`--vsock`, Firecracker's `PUT /vsock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockSettings {
    /// The guest's context id (3 or more; 0–2 are reserved).
    pub guest_cid: u32,
    /// The Unix socket host programs connect to.
    pub uds_path: PathBuf,
}

/// The window index of the vsock device on a VM with `drives` drives.
pub fn vsock_window(drives: usize) -> u32 {
    crate::block::drive_window(drives)
}

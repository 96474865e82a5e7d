//! The virtio-net device (virtio 1.2 §5.1).
//!
//! Layout, one job per file: [`device`] (the [`Net`] device: features, config space,
//! activation and reset), `worker` (the per-device thread: TX and RX batches on the
//! io_uring loop), [`queue_io`] (descriptor chains → validated scatter lists), [`rx_buffers`]
//! (guest RX chains kept ready for the backend, MRG_RXBUF spanning), [`iov`] (scatter lists
//! into guest memory), [`header`] (the 12-byte virtio-net header), [`metrics`], [`pcap`] and
//! [`backend`] (the [`backend::NetBackend`] trait and its tap and loopback implementations).
//!
//! Copy count: TX frames reach the backend as iovecs into guest memory (0 copies here; only
//! the 12-byte header is copied to be parsed); RX frames are written by the backend straight
//! into the guest's buffers (0 copies here). pcap capture, when enabled, adds one copy.

pub mod backend;
pub mod device;
pub mod header;
pub mod iov;
pub mod metrics;
pub mod pcap;
mod poll_window;
mod pooled;
pub mod queue_io;
pub mod rx_buffers;
mod worker;

pub use device::{Net, NetConfig, NetError};
pub use metrics::{MalformedReason, NetMetrics};

/// virtio-net feature bits (virtio 1.2 §5.1.3).
pub mod features {
    /// Device handles partial checksums on TX.
    pub const VIRTIO_NET_F_CSUM: u32 = 0;
    /// Driver handles partial checksums on RX.
    pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
    /// Device announces the link MTU in its config space.
    pub const VIRTIO_NET_F_MTU: u32 = 3;
    /// Device has a MAC address in its config space.
    pub const VIRTIO_NET_F_MAC: u32 = 5;
    /// Driver can receive TSOv4 super-frames.
    pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
    /// Driver can receive TSOv6 super-frames.
    pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
    /// Device can take TSOv4 super-frames.
    pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
    /// Device can take TSOv6 super-frames.
    pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
    /// Driver can merge RX buffers (one frame over several chains).
    pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
    /// Config space has a link status field.
    pub const VIRTIO_NET_F_STATUS: u32 = 16;
}

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

//! The boundary between the virtio-net device and whatever carries its frames.
//!
//! A [`NetBackend`] receives TX frames as scatter lists into guest memory (the device never
//! copies them) and writes RX frames straight into guest buffers. It tells the device worker
//! which file descriptors to poll ([`FdInterest`]) and when it next needs a timer; the worker
//! polls them in its io_uring ring and calls back [`NetBackend::on_fd_ready`] /
//! [`NetBackend::on_timer`]. Implementations: [`tap::TapBackend`] (kernel tap device,
//! IFF_VNET_HDR), [`loopback::LoopbackBackend`] (in-memory, for tests and benchmarks); the
//! netstack adapter (`user::UserBackend`, feature `user`) implements the same trait.
//!
//! Backends must never block: `send`/`recv` return [`BackendError::WouldBlock`] or `Ok(None)`
//! instead.

pub mod fault;
pub mod loopback;
pub mod tap;
#[cfg(feature = "user")]
pub mod user;

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::RawFd;
use std::time::Instant;

use super::header::VirtioNetHdr;

/// One frame the guest sent.
#[derive(Debug)]
pub struct TxFrame<'a> {
    /// The 12-byte virtio-net header followed by the Ethernet frame, in guest memory (for
    /// backends that pass the header through, like a tap with IFF_VNET_HDR).
    pub with_header: &'a [IoSlice<'a>],
    /// The Ethernet frame alone, in guest memory.
    pub frame: &'a [IoSlice<'a>],
    /// Length of `frame` in bytes.
    pub frame_len: usize,
    /// The virtio-net header, parsed from a copy (checksum/GSO requests).
    pub header: VirtioNetHdr,
}

/// Guest RX buffers offered for one frame.
#[derive(Debug)]
pub struct RxBuf<'a> {
    /// Room for the 12-byte header followed by the frame (for backends that write the header
    /// themselves).
    pub with_header: &'a mut [IoSliceMut<'a>],
    /// Room for the frame alone (the device writes the header).
    pub frame: &'a mut [IoSliceMut<'a>],
    /// Capacity of `frame` in bytes.
    pub frame_capacity: usize,
}

/// What a backend wrote into an [`RxBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxFrame {
    /// The backend wrote a virtio-net header and the frame into `with_header`; `len` counts
    /// both. The device fills in `num_buffers`.
    WithHeader {
        /// Bytes written, header included.
        len: usize,
    },
    /// The backend wrote only the frame into `frame`; the device writes `header` in front.
    Frame {
        /// Frame bytes written.
        len: usize,
        /// Checksum/GSO information for the guest.
        header: VirtioNetHdr,
    },
}

/// A file descriptor the backend wants polled, identified by a backend-chosen token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInterest {
    /// The descriptor.
    pub fd: RawFd,
    /// Passed back in [`NetBackend::on_fd_ready`].
    pub token: u64,
    /// Wake when readable.
    pub readable: bool,
    /// Wake when writable.
    pub writable: bool,
}

/// Why a backend could not move a frame.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend is full (or empty) right now; try again after its fd is ready.
    #[error("backend would block")]
    WouldBlock,
    /// An I/O error on the backend's descriptor.
    #[error("{backend}: {op} failed: {source}")]
    Io {
        /// Backend name (e.g. the tap interface).
        backend: String,
        /// Operation (readv, writev, ioctl name).
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The backend cannot be configured for the features the guest negotiated.
    #[error("{backend}: {what}")]
    Config {
        /// Backend name.
        backend: String,
        /// What failed and what to do.
        what: String,
    },
}

/// Carries frames between the virtio-net device and the outside world.
pub trait NetBackend: Send {
    /// Human-readable name for logs and errors (e.g. `tap:rf0`).
    fn name(&self) -> &str;

    /// Called when the guest activates the device, with the negotiated feature bits, so the
    /// backend can match its offloads (e.g. TUNSETOFFLOAD) to what the guest accepts.
    fn activate(&mut self, features: u64) -> Result<(), BackendError> {
        let _ = features;
        Ok(())
    }

    /// Sends one guest frame. The iovecs are only valid during the call.
    fn send(&mut self, frame: &TxFrame<'_>) -> Result<(), BackendError>;

    /// A descriptor the device may write TX frames to itself, through its io_uring ring, as
    /// one `writev` of the virtio-net header followed by the frame (what a tap with
    /// IFF_VNET_HDR takes). When `Some`, [`send`](Self::send) is not called.
    fn ring_tx_fd(&self) -> Option<RawFd> {
        None
    }

    /// Writes at most one frame into `buf`. `Ok(None)` means no frame is ready now.
    fn recv(&mut self, buf: RxBuf<'_>) -> Result<Option<RxFrame>, BackendError>;

    /// Whether a frame for the guest is waiting, if the backend can tell without receiving it.
    /// `None` (the default): it cannot; the device then assumes one may be after any
    /// readiness report or delivered frame, until a receive comes back empty. The device uses
    /// it to tell "short of guest room with frames waiting" (worth a batched refill kick)
    /// from plain idleness.
    fn rx_pending(&self) -> Option<bool> {
        None
    }

    /// The length of the next frame for the guest, if the backend knows it in advance and it
    /// is not sized to the room it is given. `None` (the default): assume a largest frame.
    /// Lets the device deliver a small frame into room too short for a largest one.
    fn rx_frame_len(&mut self) -> Option<usize> {
        None
    }

    /// Fills `out` with every descriptor to poll now (the full current set, not changes:
    /// polls armed earlier and missing from the set are cancelled). `rx_space` says whether
    /// the guest has RX buffers posted; a backend whose readable fd only means "frame for the
    /// guest" should not ask for readability without space (backpressure stays in the
    /// kernel). A ready descriptor is reported once; list it again to keep polling it.
    fn interests(&mut self, rx_space: bool, out: &mut Vec<FdInterest>);

    /// A polled descriptor became ready.
    fn on_fd_ready(&mut self, token: u64, readable: bool, writable: bool) {
        let _ = (token, readable, writable);
    }

    /// When the backend next needs [`on_timer`](Self::on_timer), if ever.
    fn next_deadline(&mut self) -> Option<Instant> {
        None
    }

    /// The backend's own counters by name, for reports (`--net-stats`); none by default.
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// The deadline from [`next_deadline`](Self::next_deadline) passed.
    fn on_timer(&mut self, now: Instant) {
        let _ = now;
    }
}

//! The virtio-vsock device (virtio 1.2 §5.10) with Firecracker's host side: Unix sockets.
//!
//! # The host protocol
//!
//! The device is given a listening Unix socket at `uds_path`.
//! - **Host-initiated**: a host program connects to `uds_path` and writes
//!   `CONNECT <port>\n`; the device picks a host-side port (round robin from 2^30) and sends
//!   the guest a REQUEST from (CID 2, that port) to (guest CID, `<port>`). On the guest's
//!   RESPONSE it writes `OK <host_port>\n` to the client and relays bytes both ways; on the
//!   guest's RST, or no answer within the request timeout, it closes the client. A malformed
//!   line (no newline within 32 bytes, not `CONNECT`, a bad port) closes the client.
//! - **Guest-initiated**: a REQUEST to (CID 2, port P) connects to the Unix socket
//!   `<uds_path>_<P>`; no listener there means an RST.
//! - Packets to another CID, of another type, or for no connection are answered with an
//!   RST; packets from another CID, or malformed (short header, `len` beyond the buffers),
//!   are dropped; both are counted by reason ([`BadPacket`]).
//!
//! # The data path and its copies
//!
//! Guest → host: the 44-byte header is copied out of guest memory and parsed; the payload is
//! sent to the host socket straight from the guest's buffers (`sendmsg` on iovecs into guest
//! memory). Only bytes the socket does not take at once are copied, into the connection's
//! buffer, which never exceeds the credit the device advertised (`buf_alloc`).
//! Host → guest: the socket is read straight into the guest's RX buffer after the header
//! slot (`recvmsg`), no more than the guest's credit; the header is written after it. So the
//! payload is copied once, by the kernel, in each direction — as with vhost-vsock.
//!
//! # Layout
//!
//! [`device`] (the [`Vsock`] device: features, config space, worker lifecycle), `worker`
//! (the thread: queues on the io_uring loop), [`muxer`] (the connection table, host
//! listener and CONNECT lines), [`conn`] (one connection: state, credit, shutdown),
//! [`txbuf`] (a connection's overflow buffer), [`queue_io`] (descriptor chains → validated
//! scatter lists), [`packet`] (the header), [`connect_line`] (the host's command line),
//! [`sys`] (the socket calls) and [`metrics`].
//!
//! Nothing here is KVM-specific, and nothing here trusts guest memory: every descriptor is
//! bounds-checked, every header copied before it is read, every length checked against the
//! buffers, and connections, buffering and queued control packets are all bounded.

pub mod conn;
pub mod connect_line;
pub mod device;
pub mod metrics;
pub mod muxer;
pub mod packet;
pub mod queue_io;
pub mod sys;
pub mod txbuf;
mod worker;

pub use device::{Vsock, VsockConfig, VsockError};
pub use metrics::{BadPacket, VsockMetrics};

/// The name of the device's worker thread (an embedder's `ThreadLauncher` may give this
/// thread, and only it, the right to create Unix sockets).
pub const WORKER_THREAD: &str = "rf-virtio-vsock";

/// Virtio device id of a socket device (virtio 1.2 §5).
pub const TYPE_VSOCK: u32 = 19;

/// Feature bit: stream sockets are supported (virtio 1.2 §5.10.3).
pub const VIRTIO_VSOCK_F_STREAM: u32 = 0;

/// Index of the receive queue (device → driver packets).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (driver → device packets).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 2;

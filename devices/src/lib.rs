//! Virtio devices for ringfence (design §5).
//!
//! This crate owns everything between the guest's virtqueues and a network backend:
//! - [`virtio`]: the virtio-mmio (version 2) transport and the [`virtio::VirtioDevice`] trait
//!   the transport drives;
//! - [`net`]: the virtio-net device, its per-device worker thread, metrics, pcap tap-off and
//!   the [`net::backend::NetBackend`] trait with the `tap` and loopback backends;
//! - [`event_loop`]: the io_uring ring each device worker thread waits on;
//! - [`testing`] (feature `harness`): an in-process virtio driver that drives the real
//!   transport without KVM, for tests and benchmarks.
//!
//! Nothing here is KVM-specific: the VMM forwards MMIO exits to
//! [`virtio::mmio::MmioTransport::read`]/[`write`](virtio::mmio::MmioTransport::write) and
//! registers the transport's eventfds with KVM (ioeventfd for kicks, irqfd for interrupts).

#![deny(missing_docs)]

pub mod event_loop;
pub mod net;
#[cfg(feature = "harness")]
pub mod testing;
pub mod virtio;

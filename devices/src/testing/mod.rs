//! An in-process virtio driver that drives the real
//! [`MmioTransport`](crate::virtio::mmio::MmioTransport) and device code without KVM
//! (design §3 item 5).
//!
//! [`VirtioDriver`] (alias [`NetDriver`]) owns a `GuestMemoryMmap`, lays out descriptor tables
//! and rings in it like a guest driver, negotiates features and sets up queues through the
//! transport's `read`/`write` registers, kicks through the queue eventfds (as KVM's ioeventfd
//! would), waits on the irq eventfd and reads the used rings. It can also write arbitrary
//! (hostile) descriptor chains. Tests, benchmarks and other crates' tests use it to push frames
//! and requests through the real device code; [`NetHarness`] builds a virtio-net device with a
//! loopback backend in one call, [`BlockHarness`] a virtio-blk device over a temporary image,
//! and [`VsockHarness`] a virtio-vsock device with its Unix listener, the driver playing a
//! Linux guest's vsock transport.
//!
//! This is test code: it panics on nothing the device does, but reports timeouts as errors.

pub mod block;
mod chain_bench;
mod driver;
mod layout;
mod vsock;

pub use block::BlockHarness;
pub use chain_bench::TxChainBench;
pub use driver::{
    DriverQueue, HarnessError, NetDriver, RawDesc, UsedElem, VirtioDriver, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
pub use layout::{rings_at, ALT_RING_BASE, MEM_SIZE, RING_BASE, SLOT_SIZE};
pub use vsock::{RxPacket, VsockHarness, GUEST_BUF_ALLOC, GUEST_RX_BUF};

use std::sync::Arc;

use crate::net::backend::loopback::{LoopbackBackend, LoopbackHandle, LoopbackMode};
use crate::net::{Net, NetConfig, NetMetrics};

/// A virtio-net device with a loopback backend, driven by a [`NetDriver`].
#[derive(Debug)]
pub struct NetHarness {
    /// The driver (owns the transport and the device).
    pub driver: NetDriver,
    /// The loopback backend's test side.
    pub backend: LoopbackHandle,
    /// The device's counters.
    pub metrics: Arc<NetMetrics>,
}

impl NetHarness {
    /// Builds the device with `config`, negotiates `driver_features` (masked to what the
    /// device offers) and brings it to DRIVER_OK.
    pub fn new(
        mode: LoopbackMode,
        config: NetConfig,
        driver_features: u64,
    ) -> Result<Self, HarnessError> {
        let (backend, handle) =
            LoopbackBackend::new(mode).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let net =
            Net::new(config, Box::new(backend)).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let metrics = net.metrics();
        let driver = NetDriver::new(Box::new(net), driver_features)?;
        Ok(Self {
            driver,
            backend: handle,
            metrics,
        })
    }

    /// Default device, all offered features accepted, capturing TX frames.
    pub fn with_defaults() -> Result<Self, HarnessError> {
        Self::new(LoopbackMode::Capture, NetConfig::default(), u64::MAX)
    }
}

/// An Ethernet frame of `len` bytes (at least 14) from a fixed source to the harness's guest
/// MAC, EtherType IPv4, with a payload pattern that depends on `seed`.
pub fn eth_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(seed);
    }
    f
}

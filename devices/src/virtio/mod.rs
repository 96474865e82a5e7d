//! Virtio building blocks shared by all devices: the [`VirtioDevice`] trait a transport drives,
//! the interrupt line a device raises ([`Interrupt`]), the virtio-mmio transport ([`mmio`]) and
//! the used-ring writer ([`used_ring`]) that publishes a whole batch with one index store,
//! the guest's ring locations ([`ring_layout`]) and the rate limit on misbehaviour log lines
//! ([`log_gate`]).
//!
//! This module never touches KVM: the VMM wires the transport's eventfds to KVM itself.

pub mod interrupt;
pub mod log_gate;
pub mod mmio;
pub mod ring_layout;
pub mod used_ring;

pub use interrupt::Interrupt;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device id of a network card (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;

/// Feature bit: the device complies with virtio 1.0+ (virtio 1.2 §6).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: `used_event`/`avail_event` notification suppression (virtio 1.2 §2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status bit: the guest noticed the device (virtio 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit: the guest knows how to drive the device.
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit: the driver is set up and ready to drive the device.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status bit: the device hit an error it cannot recover from without a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status bit: the guest gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// Everything a device needs to start processing its queues, handed over on `DRIVER_OK`.
pub struct ActivateContext {
    /// Guest memory; the device keeps this clone alive while its worker runs, which keeps
    /// the mappings (and so every iovec taken from them) valid.
    pub mem: GuestMemoryMmap,
    /// One queue per virtqueue, configured as the driver programmed it.
    pub queues: Vec<Queue>,
    /// One kick eventfd per queue (duplicates of the transport's ioeventfds).
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt line (status bits + irqfd).
    pub interrupt: Arc<Interrupt>,
    /// The feature bits both sides agreed on.
    pub acked_features: u64,
}

/// Something the transport saw that the device counts in its metrics (the transport itself
/// is device-agnostic and has no metrics of its own beyond [`mmio::MmioTransport::bad_accesses`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEvent {
    /// The driver reset the device (wrote 0 to Status while it was non-zero).
    Reset,
    /// A register or configuration-space access was refused (bad offset, width, value, a
    /// read-only register, or a write the status state machine does not allow now).
    RefusedAccess,
    /// The transport set DEVICE_NEEDS_RESET (e.g. activation failed on a queue configuration
    /// that does not fit guest memory).
    NeedsReset,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured a different number of queues than the device needs.
    #[error("device needs {expected} queues but the driver set up {got}; the guest driver is incompatible")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the driver made ready.
        got: usize,
    },
    /// The device was already running; the driver must reset it first.
    #[error("device is already active; the driver must write status 0 (reset) before activating it again")]
    AlreadyActive,
    /// The device cannot start its worker (resources, backend, thread).
    #[error("device could not start: {0}")]
    Start(String),
}

/// The device side of a virtio transport, in the shape Firecracker and Cloud Hypervisor use.
///
/// The transport owns negotiation state and queue configuration; the device owns its
/// configuration space and, once activated, a worker thread that processes the queues.
pub trait VirtioDevice: Send {
    /// Virtio device id (e.g. [`TYPE_NET`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Records the feature bits the driver accepted (already masked to the offered ones).
    fn ack_features(&mut self, features: u64);
    /// Feature bits the driver accepted so far.
    fn acked_features(&self) -> u64;
    /// Reads `data.len()` bytes of device configuration space at `offset`. Bytes outside the
    /// configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; writes outside writable fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts processing the queues (spawns the worker thread).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops and joins the worker and returns the device to its pre-activation state.
    fn reset(&mut self);
    /// Whether the worker is running.
    fn is_activated(&self) -> bool;
    /// Counts a [`TransportEvent`] in the device's metrics; ignored by default.
    fn transport_event(&self, event: TransportEvent) {
        let _ = event;
    }
}

/// Copies `data.len()` bytes of a device's configuration space `space` from `offset` into
/// `data`; bytes past the end read as zero (virtio 1.2 §4.2.2: the driver may read any width
/// anywhere in the window, and a device must not fail it).
pub fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= space.len() {
        return;
    }
    let end = start.saturating_add(data.len()).min(space.len());
    data[..end - start].copy_from_slice(&space[start..end]);
}

/// A worker's stop eventfd and the duplicate its thread waits on (written once to stop it).
pub fn stop_eventfds() -> Result<(EventFd, EventFd), ActivateError> {
    let stop = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
        .map_err(|e| ActivateError::Start(format!("cannot create the stop eventfd: {e}")))?;
    let worker_stop = stop
        .try_clone()
        .map_err(|e| ActivateError::Start(format!("cannot duplicate the stop eventfd: {e}")))?;
    Ok((stop, worker_stop))
}

//! The virtio-mmio transport, version 2 ("modern", virtio 1.2 §4.2.2).
//!
//! [`MmioTransport`] owns the register block of one device window (0x1000 bytes): feature
//! negotiation, queue configuration, the status state machine, InterruptStatus/ACK and the
//! device configuration space at 0x100. The VMM forwards MMIO exits inside the window to
//! [`MmioTransport::read`]/[`MmioTransport::write`] and registers the eventfds returned by
//! [`MmioTransport::queue_notify_evts`] (ioeventfd at base+0x50, datamatch = queue index) and
//! [`MmioTransport::irq_evt`] (irqfd on the device's GSI) with KVM, so queue kicks and
//! interrupts never pass through this code on the fast path.
//!
//! The transport never panics on what the driver writes: bad offsets, sizes and out-of-order
//! writes are refused (ignored; reads return 0), counted in [`MmioTransport::bad_accesses`]
//! and in the device's metrics ([`TransportEvent::RefusedAccess`]), and logged through a
//! [`LogGate`] so a write storm costs a handful of log lines.
//!
//! Reset and DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2, §4.2.2.1): writing 0 to Status stops and
//! joins the device worker, forgets every queue address and negotiated feature, clears
//! InterruptStatus and DEVICE_NEEDS_RESET and reads back 0. DEVICE_NEEDS_RESET is reported in
//! Status whenever the device raised it ([`Interrupt::signal_needs_reset`], from the worker
//! or from a failed activation here); the driver must reset the device to clear it. The
//! driver cannot set that bit itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::{INT_CONFIG, INT_USED_RING};
use super::log_gate::LogGate;
use super::{
    ActivateContext, Interrupt, TransportEvent, VirtioDevice, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Size of one device window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Transport version implemented here (modern).
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the driver ("RFNC").
pub const MMIO_VENDOR_ID: u32 = 0x434e_4652;

/// Register offsets inside the window (virtio 1.2 §4.2.2, table "MMIO Device Register Layout").
pub mod regs {
    /// Magic value "virt" (R).
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Version (R).
    pub const VERSION: u64 = 0x004;
    /// Device id (R).
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id (R).
    pub const VENDOR_ID: u64 = 0x00c;
    /// Device features, 32 bits selected by DEVICE_FEATURES_SEL (R).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Device features word select (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// Driver features, 32 bits selected by DRIVER_FEATURES_SEL (W).
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Driver features word select (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// Queue select (W).
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue (R).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue (W).
    pub const QUEUE_NUM: u64 = 0x038;
    /// Ready bit of the selected queue (RW).
    pub const QUEUE_READY: u64 = 0x044;
    /// Queue notification: value = queue index (W).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Interrupt status (R).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Interrupt acknowledge (W).
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status (RW).
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits (W).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Available ring address, low 32 bits (W).
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    /// Available ring address, high 32 bits (W).
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    /// Used ring address, low 32 bits (W).
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    /// Used ring address, high 32 bits (W).
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    /// Configuration atomicity value (R).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device-specific configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// Why a transport could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An eventfd could not be created (usually the process's fd limit).
    #[error("cannot create the {what} eventfd: {source}; raise the open-file limit (ulimit -n)")]
    EventFd {
        /// Which eventfd.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device declares no queues or a queue size virtio does not allow.
    #[error("device declares queue {index} with maximum size {size}; sizes must be powers of two in 1..=32768")]
    BadQueueSize {
        /// Queue index.
        index: usize,
        /// Declared maximum size.
        size: u16,
    },
}

/// Queue configuration as the driver programs it, turned into a [`Queue`] on DRIVER_OK.
#[derive(Debug, Clone, Copy, Default)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ..Self::default()
        }
    }

    fn set_low(v: &mut u64, low: u32) {
        *v = (*v & !0xffff_ffff) | u64::from(low);
    }

    fn set_high(v: &mut u64, high: u32) {
        *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
    }

    /// Builds and validates the runtime queue against guest memory.
    fn build(&self, mem: &GuestMemoryMmap, event_idx: bool) -> Option<Queue> {
        let mut q = Queue::new(self.max_size).ok()?;
        q.try_set_size(self.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.used)).ok()?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q.is_valid(mem).then_some(q)
    }
}

/// A virtio-mmio v2 register block in front of one [`VirtioDevice`].
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    bad_accesses: AtomicU64,
    refusal_log: LogGate,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Creates the register block for `device`, with one kick eventfd per queue and one
    /// interrupt eventfd, all non-blocking.
    pub fn new(mem: GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> Result<Self, Error> {
        let sizes = device.queue_max_sizes().to_vec();
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for (index, &size) in sizes.iter().enumerate() {
            if size == 0 || !size.is_power_of_two() || size > 32768 {
                return Err(Error::BadQueueSize { index, size });
            }
            queues.push(QueueConfig::new(size));
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd {
                what: "queue notify",
                source,
            })?);
        }
        let interrupt = Interrupt::new().map_err(|source| Error::EventFd {
            what: "interrupt",
            source,
        })?;
        Ok(Self {
            mem,
            device,
            interrupt: Arc::new(interrupt),
            queue_evts,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            bad_accesses: AtomicU64::new(0),
            refusal_log: LogGate::new(),
        })
    }

    /// One kick eventfd per queue, in queue order. Register each as an ioeventfd at
    /// `base + 0x50` with datamatch = its index.
    pub fn queue_notify_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt eventfd; register it as an irqfd on the device's GSI.
    pub fn irq_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    /// The interrupt line (status bits + eventfd), shared with the device worker.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Current device status register, as the driver reads it (with DEVICE_NEEDS_RESET if the
    /// device raised it).
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Number of ignored accesses (bad offset, size, or out-of-order write).
    pub fn bad_accesses(&self) -> u64 {
        self.bad_accesses.load(Ordering::Relaxed)
    }

    /// The device behind this transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Stops and joins the device worker (same as a driver reset). Idempotent.
    pub fn shutdown(&mut self) {
        self.reset();
    }

    /// Refuses a driver access: counts it here and in the device's metrics, and logs it
    /// (rate-limited).
    fn refuse(&self, offset: u64, len: usize, why: &'static str) {
        self.bad_accesses.fetch_add(1, Ordering::Relaxed);
        self.device.transport_event(TransportEvent::RefusedAccess);
        if let Some(total) = self.refusal_log.admit() {
            tracing::warn!(
                offset,
                len,
                why,
                refused_so_far = total,
                "virtio-mmio: refused a driver register access (rate-limited log)"
            );
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        let idx = self.queue_select as usize;
        self.queues.get_mut(idx)
    }

    /// Handles a driver read of `data.len()` bytes at `offset` inside the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= regs::CONFIG {
            if offset.saturating_add(data.len() as u64) > MMIO_WINDOW_SIZE {
                data.fill(0);
                self.refuse(offset, data.len(), "read past the window");
                return;
            }
            self.device.read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            self.refuse(offset, data.len(), "register read not 32 bits wide");
            return;
        }
        let v = match offset {
            regs::MAGIC_VALUE => MMIO_MAGIC,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => MMIO_VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            regs::INTERRUPT_STATUS => self.interrupt.status(),
            regs::STATUS => self.status(),
            regs::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.refuse(offset, 4, "read of a write-only or unknown register");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Handles a driver write of `data` at `offset` inside the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= regs::CONFIG {
            let in_window = offset.saturating_add(data.len() as u64) <= MMIO_WINDOW_SIZE;
            if !in_window || data.is_empty() {
                self.refuse(offset, data.len(), "config write past the window");
                return;
            }
            self.device.write_config(offset - regs::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.refuse(offset, data.len(), "register write not 32 bits wide");
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let features_open = self.status & STATUS_FEATURES_OK == 0;
        let queues_open =
            self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_select = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_select = v,
            regs::DRIVER_FEATURES if features_open => match self.driver_features_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => self.refuse(offset, 4, "driver features word select out of range"),
            },
            regs::QUEUE_SEL => self.queue_select = v,
            regs::QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if evt.write(1).is_err() {
                        self.refuse(offset, 4, "queue notify eventfd full");
                    }
                }
                None => self.refuse(offset, 4, "notify of a queue that does not exist"),
            },
            regs::INTERRUPT_ACK => self.interrupt.ack(v & (INT_USED_RING | INT_CONFIG)),
            regs::STATUS => self.write_status(v),
            o if is_queue_reg(o) && queues_open => {
                if let Err(why) = self.write_queue_reg(offset, v) {
                    self.refuse(offset, 4, why);
                }
            }
            o if is_queue_reg(o) => self.refuse(
                offset,
                4,
                "queue register written outside FEATURES_OK..DRIVER_OK",
            ),
            regs::DRIVER_FEATURES => {
                self.refuse(offset, 4, "driver features written after FEATURES_OK")
            }
            _ => self.refuse(offset, 4, "write to a read-only or unknown register"),
        }
    }

    /// Applies a queue register write; says why if it was invalid.
    fn write_queue_reg(&mut self, offset: u64, v: u32) -> Result<(), &'static str> {
        let Some(q) = self.selected_queue() else {
            return Err("queue register of a queue that does not exist");
        };
        // Addresses and size may only change while the queue is not ready (virtio 1.2 §4.2.3.2).
        if q.ready && offset != regs::QUEUE_READY {
            return Err("queue size or address written while the queue is ready");
        }
        match offset {
            regs::QUEUE_NUM => match u16::try_from(v) {
                Ok(n) if n != 0 && n <= q.max_size && n.is_power_of_two() => q.size = n,
                _ => return Err("QueueNum zero, above QueueNumMax or not a power of two"),
            },
            regs::QUEUE_READY => q.ready = v == 1,
            regs::QUEUE_DESC_LOW => QueueConfig::set_low(&mut q.desc, v),
            regs::QUEUE_DESC_HIGH => QueueConfig::set_high(&mut q.desc, v),
            regs::QUEUE_AVAIL_LOW => QueueConfig::set_low(&mut q.avail, v),
            regs::QUEUE_AVAIL_HIGH => QueueConfig::set_high(&mut q.avail, v),
            regs::QUEUE_USED_LOW => QueueConfig::set_low(&mut q.used, v),
            regs::QUEUE_USED_HIGH => QueueConfig::set_high(&mut q.used, v),
            _ => return Err("not a queue register"),
        }
        Ok(())
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            if self.status != 0 || self.interrupt.needs_reset() {
                self.device.transport_event(TransportEvent::Reset);
                tracing::info!(
                    status = self.status(),
                    "virtio-mmio: driver reset the device"
                );
            }
            self.reset();
            return;
        }
        // Only the device sets DEVICE_NEEDS_RESET (virtio 1.2 §2.1.1).
        if v & STATUS_DEVICE_NEEDS_RESET != 0 {
            self.refuse(regs::STATUS, 4, "driver set DEVICE_NEEDS_RESET");
            return;
        }
        // The driver only ever adds bits (virtio 1.2 §3.1.1); clearing one is a driver bug.
        if v & self.status != self.status {
            self.refuse(
                regs::STATUS,
                4,
                "driver cleared a status bit without a reset",
            );
            return;
        }
        let added = v & !self.status;
        let mut new = v;
        if added & STATUS_FEATURES_OK != 0 {
            let acked = self.driver_features & self.device.avail_features();
            if acked & (1 << VIRTIO_F_VERSION_1) == 0 {
                // A modern transport needs VERSION_1: refuse FEATURES_OK so the driver sees it.
                new &= !STATUS_FEATURES_OK;
                self.refuse(regs::STATUS, 4, "FEATURES_OK without VIRTIO_F_VERSION_1");
            } else {
                self.device.ack_features(acked);
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            if new & STATUS_FEATURES_OK == 0 || self.status & STATUS_FAILED != 0 {
                new &= !STATUS_DRIVER_OK;
                self.refuse(
                    regs::STATUS,
                    4,
                    "DRIVER_OK without FEATURES_OK, or after FAILED",
                );
            } else if !self.activate() {
                self.config_generation = self.config_generation.wrapping_add(1);
                match self.interrupt.signal_needs_reset() {
                    Ok(true) => self.device.transport_event(TransportEvent::NeedsReset),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        error = %e,
                        "virtio-mmio: cannot send the configuration change interrupt"
                    ),
                }
            }
        }
        self.status = new;
    }

    /// Builds the runtime queues and starts the device; false if anything was invalid.
    fn activate(&mut self) -> bool {
        let acked = self.device.acked_features();
        let event_idx = acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for cfg in &self.queues {
            if !cfg.ready {
                tracing::warn!("virtio-mmio: driver set DRIVER_OK with a queue not ready");
                return false;
            }
            match cfg.build(&self.mem, event_idx) {
                Some(q) => queues.push(q),
                None => {
                    tracing::warn!(
                        ?cfg,
                        "virtio-mmio: queue configuration invalid for guest memory"
                    );
                    return false;
                }
            }
        }
        let mut queue_evts = Vec::with_capacity(self.queue_evts.len());
        for evt in &self.queue_evts {
            match evt.try_clone() {
                Ok(e) => queue_evts.push(e),
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-mmio: cannot duplicate a queue eventfd");
                    return false;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: acked,
        };
        match self.device.activate(ctx) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "virtio-mmio: device activation failed");
                false
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        // Drain stale kicks so the next activation does not start with a phantom one.
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.clear();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        self.device.reset();
    }
}

// The VMM calls the transport from vCPU threads; it must be movable between threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<MmioTransport>();
};

/// The registers of the selected queue's set-up, writable only while the driver sets queues up.
fn is_queue_reg(offset: u64) -> bool {
    matches!(
        offset,
        regs::QUEUE_NUM
            | regs::QUEUE_READY
            | regs::QUEUE_DESC_LOW
            | regs::QUEUE_DESC_HIGH
            | regs::QUEUE_AVAIL_LOW
            | regs::QUEUE_AVAIL_HIGH
            | regs::QUEUE_USED_LOW
            | regs::QUEUE_USED_HIGH
    )
}

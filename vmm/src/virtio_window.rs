//! Putting a virtio-mmio transport on its window, the same for every device: an ioeventfd per
//! queue on QueueNotify (datamatch = the queue's index), an irqfd on the window's GSI
//! (`VIRTIO_IRQ_BASE + window`), the adapter the MMIO bus takes, and the kernel command-line
//! word Linux reads (`virtio_mmio.device=4K@BASE:IRQ`).

use devices::virtio::mmio::{regs, MmioTransport};
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::io::MmioDevice;
use crate::kvm::KvmError;
use crate::layout::{virtio_mmio_base, VIRTIO_IRQ_BASE, VIRTIO_MMIO_WINDOW};

/// The KVM calls that wire one device, named for error messages.
pub struct WiringNames {
    /// The ioeventfd registration, e.g. `"KVM_IOEVENTFD (virtio-net queue notify)"`.
    pub ioevent: &'static str,
    /// The irqfd registration, e.g. `"KVM_IRQFD (virtio-net)"`.
    pub irqfd: &'static str,
}

/// A transport wired to KVM, ready for the bus.
pub struct Placed {
    /// Guest-physical base of the window.
    pub base: u64,
    /// The device, as the bus takes it.
    pub device: Box<dyn MmioDevice>,
    /// The command-line word that announces it to the guest.
    pub cmdline: String,
}

/// The transport on the bus, with `K` kept alive until the transport (and so the device's
/// worker) is gone: fields drop in order.
struct TransportOnBus<K> {
    transport: MmioTransport,
    _keep: K,
}

impl<K: Send> MmioDevice for TransportOnBus<K> {
    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        self.transport.read(offset, data);
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        self.transport.write(offset, data);
    }
}

/// Wires `transport` on window `window` into `vm`; `keep` lives as long as the device (e.g.
/// the vsock socket file, removed after the worker stopped).
pub fn place<K: Send + 'static>(
    vm: &VmFd,
    transport: MmioTransport,
    window: u32,
    names: WiringNames,
    keep: K,
) -> Result<Placed, KvmError> {
    let base = virtio_mmio_base(window);
    let irq = VIRTIO_IRQ_BASE + window;
    for (queue, evt) in transport.queue_notify_evts().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(base + regs::QUEUE_NOTIFY),
            queue as u32,
        )
        .map_err(KvmError::ioctl(names.ioevent))?;
    }
    vm.register_irqfd(transport.irq_evt(), irq)
        .map_err(KvmError::ioctl(names.irqfd))?;
    Ok(Placed {
        base,
        device: Box::new(TransportOnBus {
            transport,
            _keep: keep,
        }),
        cmdline: format!(
            "virtio_mmio.device={}K@{base:#x}:{irq}",
            VIRTIO_MMIO_WINDOW / 1024
        ),
    })
}

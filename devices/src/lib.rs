//! Virtio devices for ringfence (design §5).
//!
//! This crate owns everything between the guest's virtqueues and a network backend:
//! - [`virtio`]: the virtio-mmio (version 2) transport and the [`virtio::VirtioDevice`] trait
//!   the transport drives;
//! - [`net`]: the virtio-net device, its per-device worker thread, metrics, pcap tap-off and
//!   the [`net::backend::NetBackend`] trait with the `tap` and loopback backends;
//! - [`block`]: the virtio-blk device over a raw disk image, its I/O on the worker's io_uring
//!   ring;
//! - [`event_loop`]: the io_uring ring each device worker thread waits on;
//! - [`pool`]: shared device threads, one io_uring loop serving the queues of many devices;
//! - [`thread`]: the hook that decides which thread starts device workers (seccomp);
//! - [`vsock`]: the virtio-vsock device, whose host side is Unix sockets (Firecracker's
//!   `uds_path` protocol);
//! - [`testing`] (feature `harness`): an in-process virtio driver that drives the real
//!   transport without KVM, for tests and benchmarks.
//!
//! Nothing here is KVM-specific: the VMM forwards MMIO exits to
//! [`virtio::mmio::MmioTransport::read`]/[`write`](virtio::mmio::MmioTransport::write) and
//! registers the transport's eventfds with KVM (ioeventfd for kicks, irqfd for interrupts).
//!
//! # Wiring a virtio-net device (what the VMM does)
//!
//! ```no_run
//! use devices::net::backend::tap::TapBackend;
//! use devices::net::{Net, NetConfig};
//! use devices::virtio::mmio::{regs, MmioTransport, MMIO_WINDOW_SIZE};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)])?;
//! let tap = TapBackend::open("rf0")?;
//! let net = Net::new(NetConfig::default(), Box::new(tap))?;
//! let metrics = net.metrics(); // counters for logs/tests
//! let mut transport = MmioTransport::new(mem, Box::new(net))?;
//! let base: u64 = 0xd000_0000; // the device's MMIO window, MMIO_WINDOW_SIZE bytes
//! for (index, evt) in transport.queue_notify_evts().iter().enumerate() {
//!     // vm.register_ioevent(evt, &IoEventAddress::Mmio(base + regs::QUEUE_NOTIFY), index as u32)
//!     let _ = (evt, base + regs::QUEUE_NOTIFY, index as u32);
//! }
//! // vm.register_irqfd(transport.irq_evt(), gsi)
//! let _ = transport.irq_evt();
//! // On an MMIO exit at `addr` inside [base, base + MMIO_WINDOW_SIZE):
//! let mut data = [0u8; 4];
//! transport.read(0x0, &mut data); // offset = addr - base
//! transport.write(regs::STATUS, &0u32.to_le_bytes());
//! // Shutdown (dropping the transport does the same): stops and joins the worker.
//! transport.shutdown();
//! # let _ = (metrics, MMIO_WINDOW_SIZE);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod block;
pub mod event_loop;
pub mod net;
pub mod pool;
#[cfg(feature = "harness")]
pub mod testing;
pub mod thread;
pub mod virtio;
pub mod vsock;

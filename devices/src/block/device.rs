//! The [`Block`] device: what the guest negotiates with (features, config space) and the
//! lifecycle of its worker thread (spawned on activation, stopped and joined on reset or
//! drop, after every I/O in flight has completed). The request path lives in `worker.rs`.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use super::backing::{Backing, DriveSwap};
use super::features::*;
use super::image::DiskImage;
use super::metrics::BlockMetrics;
use super::worker::BlockWorker;
use super::{ID_BYTES, SECTOR_SIZE, TYPE_BLOCK};
use crate::event_loop::EventLoop;
use crate::thread::ThreadLauncher;
use crate::virtio::log_gate::LogGate;
use crate::virtio::{
    ActivateContext, ActivateError, TransportEvent, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Default (and largest) size of the request queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Most data segments per request announced in `seg_max` (Linux sizes its scatter lists by it).
pub const SEG_MAX: u32 = 128;
/// Block size announced in `blk_size`.
pub const BLK_SIZE: u32 = 512;
/// Config space (virtio 1.2 §5.2.4) up to and including the write-zeroes fields: capacity
/// (le64, 0), size_max (8), seg_max (12), geometry (16), blk_size (20), topology (24),
/// writeback (32), num_queues (34), discard and write-zeroes limits (36..60).
const CONFIG_SPACE_LEN: usize = 60;

/// Static configuration of one virtio-blk device.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// The drive's id, returned by `VIRTIO_BLK_T_GET_ID` (first 20 bytes; shorter ids are
    /// NUL-padded).
    pub id: String,
    /// Size of the request queue (a power of two in 2..=256).
    pub queue_size: u16,
    /// Starts the worker thread on activation (default: from the activating thread).
    pub launcher: ThreadLauncher,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            queue_size: DEFAULT_QUEUE_SIZE,
            launcher: ThreadLauncher::default(),
        }
    }
}

/// Why a [`Block`] device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The queue size is not a power of two in 2..=256.
    #[error("invalid virtio-blk queue size {0}: use a power of two between 2 and 256")]
    QueueSize(u16),
}

struct Running {
    stop: EventFd,
    handle: JoinHandle<()>,
}

/// A virtio-blk device in front of a raw [`DiskImage`].
pub struct Block {
    config: BlockConfig,
    queue_sizes: [u16; 1],
    backing: Arc<Backing>,
    id: [u8; ID_BYTES],
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_LEN],
    metrics: Arc<BlockMetrics>,
    running: Option<Running>,
    /// Rate limit on the log lines of refused config-space writes.
    config_write_log: LogGate,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("config", &self.config)
            .field("image", &self.backing.current().path())
            .field("read_only", &self.backing.read_only())
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Creates a device over `image`; a read-only image is offered with `VIRTIO_BLK_F_RO`.
    pub fn new(config: BlockConfig, image: DiskImage) -> Result<Self, BlockError> {
        let qs = config.queue_size;
        if !(2..=DEFAULT_QUEUE_SIZE).contains(&qs) || !qs.is_power_of_two() {
            return Err(BlockError::QueueSize(qs));
        }
        let ro_bit = if image.read_only() {
            1u64 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        let avail_features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
        ]
        .iter()
        .fold(ro_bit, |acc, bit| acc | (1u64 << bit));
        let mut config_space = [0u8; CONFIG_SPACE_LEN];
        config_space[0..8].copy_from_slice(&(image.size() / SECTOR_SIZE).to_le_bytes());
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config_space[20..24].copy_from_slice(&BLK_SIZE.to_le_bytes());
        config_space[34..36].copy_from_slice(&1u16.to_le_bytes());
        let mut id = [0u8; ID_BYTES];
        let n = config.id.len().min(ID_BYTES);
        id[..n].copy_from_slice(&config.id.as_bytes()[..n]);
        Ok(Self {
            queue_sizes: [qs],
            config,
            backing: Arc::new(Backing::new(image)),
            id,
            avail_features,
            acked_features: 0,
            config_space,
            metrics: Arc::new(BlockMetrics::default()),
            running: None,
            config_write_log: LogGate::new(),
        })
    }

    /// The device's counters (shared with its worker; live).
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Capacity in 512-byte sectors (what config space announces).
    pub fn sectors(&self) -> u64 {
        self.backing.current().sectors()
    }

    /// The handle that swaps the drive's image while the guest runs.
    pub fn swap_handle(&self) -> DriveSwap {
        DriveSwap(self.backing.clone())
    }

    fn stop_worker(&mut self) {
        self.backing.set_interrupt(None);
        if let Some(run) = self.running.take() {
            if let Err(e) = run.stop.write(1) {
                tracing::error!(error = %e, "virtio-blk: cannot signal the worker to stop");
            }
            if run.handle.join().is_err() {
                tracing::error!("virtio-blk: worker thread panicked");
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The capacity follows the current image (it changes when the image is swapped).
        let mut space = self.config_space;
        space[0..8].copy_from_slice(&self.sectors().to_le_bytes());
        crate::virtio::read_config_space(&space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // No writable field is offered (CONFIG_WCE is not): every write is refused.
        self.transport_event(TransportEvent::RefusedAccess);
        if let Some(total) = self.config_write_log.admit() {
            tracing::warn!(
                offset,
                len = data.len(),
                refused_so_far = total,
                "virtio-blk: refused a write to read-only config space (rate-limited log)"
            );
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != 1 || ctx.queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: ctx.queues.len(),
            });
        }
        let (stop, worker_stop) = crate::virtio::stop_eventfds()?;
        let entries = u32::from(self.queue_sizes[0]).max(16);
        let lp =
            EventLoop::with_file_io(entries).map_err(|e| ActivateError::Start(e.to_string()))?;
        let interrupt = ctx.interrupt.clone();
        let worker = BlockWorker::new(ctx, self.backing.clone(), self.id, self.metrics.clone(), lp)
            .ok_or(ActivateError::QueueCount {
                expected: 1,
                got: 0,
            })?;
        let body = Box::new(move || {
            worker.run(worker_stop.as_raw_fd());
            drop(worker_stop);
        });
        let handle = self
            .config
            .launcher
            .launch("rf-virtio-blk", body)
            .map_err(|e| {
                ActivateError::Start(format!("cannot spawn the virtio-blk worker thread: {e}"))
            })?;
        self.backing.set_interrupt(Some(interrupt));
        self.running = Some(Running { stop, handle });
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }

    fn is_activated(&self) -> bool {
        self.running.is_some()
    }

    fn transport_event(&self, event: TransportEvent) {
        let counter = match event {
            TransportEvent::Reset => &self.metrics.resets,
            TransportEvent::RefusedAccess => &self.metrics.mmio_refused,
            TransportEvent::NeedsReset => &self.metrics.needs_reset,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

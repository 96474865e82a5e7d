//! The [`Vsock`] device: what the guest negotiates with (features, the `guest_cid` config
//! field) and the lifecycle of its worker thread (spawned on activation with the listener,
//! stopped and joined on reset or drop, which closes every connection and gives the listener
//! back for the next activation).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::metrics::VsockMetrics;
use super::muxer::{Muxer, MuxerLimits};
use super::worker::VsockWorker;
use super::{TYPE_VSOCK, VIRTIO_VSOCK_F_STREAM};
use crate::event_loop::EventLoop;
use crate::thread::ThreadLauncher;
use crate::virtio::log_gate::LogGate;
use crate::virtio::{
    ActivateContext, ActivateError, TransportEvent, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Default size of each queue (Firecracker's).
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Default credit per connection: guest → host bytes the device accepts before the host
/// socket took them (and so the most it buffers per connection).
pub const DEFAULT_BUF_ALLOC: u32 = 64 * 1024;
/// Default limit of open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time the guest has to answer a host-initiated REQUEST (Firecracker's 2 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a closing connection waits for its flush or the guest's RST (Firecracker's).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a host client has to send its `CONNECT <port>\n` line.
pub const DEFAULT_CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest CID a guest may have (0–2 are reserved; virtio 1.2 §5.10.4).
pub const MIN_GUEST_CID: u64 = 3;
/// Config space: `guest_cid`, le64.
const CONFIG_SPACE_LEN: usize = 8;

/// Static configuration of one virtio-vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (3 ..= 2^32 - 2).
    pub guest_cid: u64,
    /// The Unix socket host clients connect to; guest connections to port P go to
    /// `<uds_path>_<P>`.
    pub uds_path: PathBuf,
    /// Size of each of the three queues (a power of two up to 32768).
    pub queue_size: u16,
    /// Credit advertised per connection (bytes; at least 4096).
    pub buf_alloc: u32,
    /// Most open connections.
    pub max_connections: usize,
    /// How long the guest has to answer a host-initiated REQUEST.
    pub request_timeout: Duration,
    /// How long a closing connection waits for its flush or the guest's RST.
    pub shutdown_timeout: Duration,
    /// How long a host client has to send its CONNECT line.
    pub connect_line_timeout: Duration,
    /// Starts the worker thread on activation (default: from the activating thread).
    pub launcher: ThreadLauncher,
}

impl VsockConfig {
    /// The defaults for a guest `guest_cid` with host sockets at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Self {
        Self {
            guest_cid,
            uds_path,
            queue_size: DEFAULT_QUEUE_SIZE,
            buf_alloc: DEFAULT_BUF_ALLOC,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            connect_line_timeout: DEFAULT_CONNECT_LINE_TIMEOUT,
            launcher: ThreadLauncher::default(),
        }
    }
}

/// Why a [`Vsock`] device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or does not fit 32 bits.
    #[error("invalid guest CID {0}: use a value between 3 and 4294967294 (0-2 are reserved)")]
    Cid(u64),
    /// The queue size is not a power of two in 2..=32768.
    #[error("invalid virtio-vsock queue size {0}: use a power of two between 2 and 32768")]
    QueueSize(u16),
    /// The per-connection credit is too small to carry a packet.
    #[error("invalid virtio-vsock buffer size {0}: use at least 4096 bytes")]
    BufAlloc(u32),
    /// The listener could not be made non-blocking.
    #[error("the vsock listener at {path}: {source}")]
    Listener {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

struct Running {
    stop: EventFd,
    handle: JoinHandle<()>,
    /// Where the worker leaves the listener when it stops.
    listener: Arc<Mutex<Option<UnixListener>>>,
}

/// A virtio-vsock device whose host side is Unix sockets (Firecracker's design).
pub struct Vsock {
    config: VsockConfig,
    queue_sizes: [u16; 3],
    avail_features: u64,
    acked_features: u64,
    metrics: Arc<VsockMetrics>,
    idle: Option<UnixListener>,
    running: Option<Running>,
    config_write_log: LogGate,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("config", &self.config)
            .field("acked_features", &self.acked_features)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Creates the device around `listener`, already bound and listening at
    /// `config.uds_path` (the VMM binds it before boot so a clash is reported then). The
    /// listener is made non-blocking; clients that connect before the guest's driver is up
    /// wait in its backlog.
    pub fn new(config: VsockConfig, listener: UnixListener) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=u64::from(u32::MAX - 1)).contains(&config.guest_cid) {
            return Err(VsockError::Cid(config.guest_cid));
        }
        let qs = config.queue_size;
        if qs < 2 || !qs.is_power_of_two() || qs > 32768 {
            return Err(VsockError::QueueSize(qs));
        }
        if config.buf_alloc < 4096 {
            return Err(VsockError::BufAlloc(config.buf_alloc));
        }
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Listener {
                path: config.uds_path.clone(),
                source,
            })?;
        let avail_features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_VSOCK_F_STREAM,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | (1u64 << bit));
        Ok(Self {
            queue_sizes: [qs; 3],
            config,
            avail_features,
            acked_features: 0,
            metrics: Arc::new(VsockMetrics::default()),
            idle: Some(listener),
            running: None,
            config_write_log: LogGate::new(),
        })
    }

    /// The device's counters (shared with its worker; live).
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    fn stop_worker(&mut self) {
        let Some(run) = self.running.take() else {
            return;
        };
        if let Err(e) = run.stop.write(1) {
            tracing::error!(error = %e, "virtio-vsock: cannot signal the worker to stop");
        }
        if run.handle.join().is_err() {
            tracing::error!("virtio-vsock: worker thread panicked; the listener is lost");
            return;
        }
        self.idle = match run.listener.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
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
        let space: [u8; CONFIG_SPACE_LEN] = self.config.guest_cid.to_le_bytes();
        crate::virtio::read_config_space(&space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // guest_cid is read-only for the driver.
        self.transport_event(TransportEvent::RefusedAccess);
        if let Some(total) = self.config_write_log.admit() {
            tracing::warn!(
                offset,
                len = data.len(),
                refused_so_far = total,
                "virtio-vsock: refused a write to read-only config space (rate-limited log)"
            );
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != 3 || ctx.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: ctx.queues.len(),
            });
        }
        let (stop, worker_stop) = crate::virtio::stop_eventfds()?;
        let lp = EventLoop::new(64).map_err(|e| ActivateError::Start(e.to_string()))?;
        let listener = self.idle.take();
        if listener.is_none() {
            tracing::warn!("virtio-vsock: no listener (lost earlier); host clients cannot connect");
        }
        let limits = MuxerLimits {
            buf_alloc: self.config.buf_alloc,
            max_connections: self.config.max_connections,
            request_timeout: self.config.request_timeout,
            shutdown_timeout: self.config.shutdown_timeout,
            connect_line_timeout: self.config.connect_line_timeout,
        };
        let muxer = Muxer::new(
            self.config.guest_cid,
            self.config.uds_path.clone(),
            listener,
            limits,
            self.metrics.clone(),
        );
        let metrics = self.metrics.clone();
        let slot = Arc::new(Mutex::new(None));
        let worker_slot = slot.clone();
        let body = Box::new(move || {
            let worker = VsockWorker::new(ctx, muxer, metrics, lp);
            let listener = worker.run(worker_stop.as_raw_fd());
            drop(worker_stop);
            if let Ok(mut s) = worker_slot.lock() {
                *s = listener;
            }
        });
        match self.config.launcher.launch(super::WORKER_THREAD, body) {
            Ok(handle) => {
                self.running = Some(Running {
                    stop,
                    handle,
                    listener: slot,
                });
                Ok(())
            }
            Err(e) => Err(ActivateError::Start(format!(
                "cannot spawn the virtio-vsock worker thread: {e}; the listener is lost, recreate the device"
            ))),
        }
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
        VsockMetrics::add(counter, 1);
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

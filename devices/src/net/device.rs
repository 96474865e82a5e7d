//! The [`Net`] device: what the guest negotiates with (features, config space) and the
//! lifecycle of its worker thread (spawned on activation, stopped and joined on reset or
//! drop). The datapath itself lives in `worker.rs`.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::NetBackend;
use super::features::*;
use super::metrics::NetMetrics;
use super::pcap::{CaptureSwitch, PcapError, PcapSink, SNAPLEN_WHOLE};
use super::poll_window::PollWindow;
use super::pooled::PooledNet;
use super::worker::{NetWorker, WorkerParts};
use crate::event_loop::EventLoop;
use crate::pool::DeviceThread;
use crate::thread::ThreadLauncher;
use crate::virtio::log_gate::LogGate;
use crate::virtio::{
    ActivateContext, ActivateError, TransportEvent, VirtioDevice, TYPE_NET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Default size of each queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Default adaptive-polling window after the last activity (design §3 item 4).
pub const DEFAULT_POLL_WINDOW: Duration = Duration::from_micros(100);
/// Default ceiling the polling window may grow to while guest kicks keep arriving soon after
/// it closed (request/response traffic whose gaps exceed the default window).
pub const DEFAULT_POLL_WINDOW_MAX: Duration = Duration::from_millis(1);
/// Default [`NetConfig::rx_starve_wait`]: ~5 % of the time a guest on our hosts takes to
/// work through a quarter of a 256-entry ring of 64 KiB frames.
pub const DEFAULT_RX_STARVE_WAIT: Duration = Duration::from_micros(500);
/// Config space status bit: link up.
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Config space: mac (6), status (2), max_virtqueue_pairs (2), mtu (2).
const CONFIG_SPACE_LEN: usize = 12;
/// MTU of a standard Ethernet link, assumed when no MTU is configured.
const STD_MTU: u16 = 1500;
/// Smallest MTU the virtio spec lets a device announce.
const MIN_MTU: u16 = 68;

/// Static configuration of one virtio-net device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Size of the RX and TX queues (a power of two up to 32768).
    pub queue_size: u16,
    /// How long the worker keeps polling the rings after activity before it re-enables
    /// notifications and sleeps. Zero disables polling.
    pub poll_window: Duration,
    /// Longest the polling window may grow to when guest kicks keep arriving soon after it
    /// closed; it shrinks back once the guest stays quiet longer than this. Set it to
    /// `poll_window` for a fixed window.
    pub poll_window_max: Duration,
    /// Short of guest RX room with frames waiting, how long the worker waits for the driver
    /// to post a batch of buffers (it asks for a kick at the batch's end) before it delivers
    /// into whatever was posted; past it, with nothing posted, the next buffer kicks.
    pub rx_starve_wait: Duration,
    /// Capture every frame, both directions, into this pcap file.
    pub pcap: Option<PathBuf>,
    /// Bytes of each frame the pcap file keeps (`None`: whole frames).
    pub pcap_snaplen: Option<u32>,
    /// Link MTU announced in config space with VIRTIO_NET_F_MTU (68..=65535): the largest IP
    /// packet the guest should send, and the largest the backend will deliver. `None` does not
    /// offer the feature; the link is then a standard 1500-byte Ethernet.
    pub mtu: Option<u16>,
    /// Starts the worker thread on activation (default: from the activating thread).
    pub launcher: ThreadLauncher,
    /// Serve the queues on this shared device thread instead of a worker thread of the
    /// device's own (`None`, the default: a thread per device, started by `launcher`).
    pub pool: Option<DeviceThread>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            queue_size: DEFAULT_QUEUE_SIZE,
            poll_window: DEFAULT_POLL_WINDOW,
            poll_window_max: DEFAULT_POLL_WINDOW_MAX,
            rx_starve_wait: DEFAULT_RX_STARVE_WAIT,
            pcap: None,
            pcap_snaplen: None,
            mtu: None,
            launcher: ThreadLauncher::default(),
            pool: None,
        }
    }
}

/// Why a [`Net`] device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The pcap file could not be created.
    #[error(transparent)]
    Pcap(#[from] PcapError),
    /// The queue size is not a power of two in 2..=32768.
    #[error("invalid virtio-net queue size {0}: use a power of two between 2 and 32768")]
    QueueSize(u16),
    /// The MTU is below the 68 bytes every IPv4 link must carry.
    #[error("invalid virtio-net MTU {0}: use a value between 68 and 65535")]
    Mtu(u16),
}

struct Running {
    stop: EventFd,
    runner: Runner,
}

/// Where a running worker lives.
enum Runner {
    /// A thread of its own, which leaves the backend in `parts` when it stops.
    Thread {
        handle: JoinHandle<()>,
        parts: Arc<Mutex<Option<WorkerParts>>>,
    },
    /// A shared device thread, which sends the backend back when the worker is finished.
    Pool(mpsc::Receiver<WorkerParts>),
}

/// A virtio-net device in front of a [`NetBackend`].
pub struct Net {
    config: NetConfig,
    queue_sizes: [u16; 2],
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_LEN],
    metrics: Arc<NetMetrics>,
    capture: Arc<CaptureSwitch>,
    idle: Option<WorkerParts>,
    running: Option<Running>,
    /// Rate limit on the log lines of refused config-space writes.
    config_write_log: LogGate,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("config", &self.config)
            .field("acked_features", &self.acked_features)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Creates a device; opens the pcap file now if one is configured.
    pub fn new(config: NetConfig, backend: Box<dyn NetBackend>) -> Result<Self, NetError> {
        let qs = config.queue_size;
        if qs < 2 || !qs.is_power_of_two() || qs > 32768 {
            return Err(NetError::QueueSize(qs));
        }
        let metrics = Arc::new(NetMetrics::default());
        let pcap = match &config.pcap {
            Some(p) => {
                let snaplen = config.pcap_snaplen.unwrap_or(SNAPLEN_WHOLE);
                let mut sink = PcapSink::create_with_snaplen(p, snaplen)?;
                sink.report_to(metrics.clone());
                Some(sink)
            }
            None => None,
        };
        if let Some(mtu) = config.mtu.filter(|&m| m < MIN_MTU) {
            return Err(NetError::Mtu(mtu));
        }
        let capture = Arc::new(CaptureSwitch::default());
        let mtu_bit = config.mtu.map_or(0, |_| 1u64 << VIRTIO_NET_F_MTU);
        let avail_features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
        ]
        .iter()
        .fold(mtu_bit, |acc, bit| acc | (1u64 << bit));
        let mut config_space = [0u8; CONFIG_SPACE_LEN];
        config_space[..6].copy_from_slice(&config.mac);
        config_space[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
        config_space[10..12].copy_from_slice(&config.mtu.unwrap_or(STD_MTU).to_le_bytes());
        Ok(Self {
            queue_sizes: [qs, qs],
            config,
            avail_features,
            acked_features: 0,
            config_space,
            metrics,
            capture: capture.clone(),
            idle: Some(WorkerParts {
                backend,
                pcap,
                capture,
            }),
            running: None,
            config_write_log: LogGate::new(),
        })
    }

    /// Starts and stops pcap captures while the device runs (see [`CaptureSwitch`]).
    pub fn capture_switch(&self) -> Arc<CaptureSwitch> {
        self.capture.clone()
    }

    /// The device's counters (shared with its worker; live).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    fn stop_worker(&mut self) {
        if let Some(run) = self.running.take() {
            if let Err(e) = run.stop.write(1) {
                tracing::error!(error = %e, "virtio-net: cannot signal the worker to stop");
            }
            let parts = match run.runner {
                Runner::Thread { handle, parts } => {
                    handle.join().ok().and_then(|()| match parts.lock() {
                        Ok(mut slot) => slot.take(),
                        Err(_) => None,
                    })
                }
                // The shared thread finishes the worker on its next turn (the stop eventfd
                // wakes it) and sends the backend back; it never drops the sender first.
                Runner::Pool(finished) => finished.recv().ok(),
            };
            match parts {
                Some(parts) => self.idle = Some(parts),
                None => tracing::error!("virtio-net: worker thread panicked; backend lost"),
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
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
        crate::virtio::read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // All virtio-net config fields we expose are read-only for the driver.
        self.transport_event(TransportEvent::RefusedAccess);
        if let Some(total) = self.config_write_log.admit() {
            tracing::warn!(
                offset,
                len = data.len(),
                refused_so_far = total,
                "virtio-net: refused a write to read-only config space (rate-limited log)"
            );
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.running.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if ctx.queues.len() != 2 || ctx.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: ctx.queues.len(),
            });
        }
        let mut parts = self.idle.take().ok_or_else(|| {
            ActivateError::Start("the backend was lost when a previous worker panicked".into())
        })?;
        self.metrics
            .features_offered
            .store(self.avail_features, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .features_acked
            .store(ctx.acked_features, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = parts.backend.activate(ctx.acked_features) {
            self.idle = Some(parts);
            return Err(ActivateError::Start(e.to_string()));
        }
        let setup = || -> Result<(EventFd, EventLoop), String> {
            let stop = EventFd::new(EFD_NONBLOCK)
                .map_err(|e| format!("cannot create stop eventfd: {e}"))?;
            let lp = EventLoop::new(64).map_err(|e| e.to_string())?;
            Ok((stop, lp))
        };
        let (stop, lp) = match setup() {
            Ok(v) => v,
            Err(e) => {
                self.idle = Some(parts);
                return Err(ActivateError::Start(e));
            }
        };
        let worker_stop = match stop.try_clone() {
            Ok(s) => s,
            Err(e) => {
                self.idle = Some(parts);
                return Err(ActivateError::Start(format!(
                    "cannot duplicate stop eventfd: {e}"
                )));
            }
        };
        let metrics = self.metrics.clone();
        let poll_window = PollWindow::new(self.config.poll_window, self.config.poll_window_max);
        let link_mtu = self.config.mtu.unwrap_or(STD_MTU);
        let starve_wait = self.config.rx_starve_wait;
        if let Some(pool) = &self.config.pool {
            let worker = NetWorker::new(ctx, parts, metrics, poll_window, lp, link_mtu)
                .with_rx_starve_wait(starve_wait);
            let (reply, finished) = mpsc::sync_channel(1);
            return match pool.attach(Box::new(PooledNet::new(worker, worker_stop, reply))) {
                Ok(()) => {
                    self.running = Some(Running {
                        stop,
                        runner: Runner::Pool(finished),
                    });
                    Ok(())
                }
                Err(e) => Err(ActivateError::Start(format!(
                    "{e}; the backend is lost, recreate the device"
                ))),
            };
        }
        let slot = Arc::new(Mutex::new(None));
        let worker_slot = slot.clone();
        let body = Box::new(move || {
            let stop_fd = worker_stop.as_raw_fd();
            let worker = NetWorker::new(ctx, parts, metrics, poll_window, lp, link_mtu)
                .with_rx_starve_wait(starve_wait);
            let parts = worker.run(stop_fd);
            drop(worker_stop);
            if let Ok(mut s) = worker_slot.lock() {
                *s = Some(parts);
            }
        });
        match self.config.launcher.launch("rf-virtio-net", body) {
            Ok(handle) => {
                self.running = Some(Running {
                    stop,
                    runner: Runner::Thread {
                        handle,
                        parts: slot,
                    },
                });
                Ok(())
            }
            Err(e) => Err(ActivateError::Start(format!(
                "cannot spawn the virtio-net worker thread: {e}; the backend is lost, recreate the device"
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
        NetMetrics::add(counter, 1);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

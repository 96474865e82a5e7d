//! The harness driver playing a virtio-vsock guest (as Linux's `vmw_vsock_virtio_transport`
//! does): it keeps the RX queue filled with 4 KiB + header buffers, sends packets as a header
//! descriptor followed by a payload descriptor, and reads packets back from the used ring.
//! [`VsockHarness`] builds the device with its listener in a fresh temporary directory.

use std::collections::VecDeque;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::driver::{HarnessError, NetDriver};
use crate::vsock::packet::{Header, Op, HDR_LEN, HOST_CID, TYPE_STREAM};
use crate::vsock::{Vsock, VsockConfig, VsockMetrics, RX_QUEUE, TX_QUEUE};

/// Payload room of each RX buffer the harness posts (Linux's default RX buffer).
pub const GUEST_RX_BUF: u32 = 4096;
/// The receive buffer the harness's guest advertises (Linux's default `buf_alloc`).
pub const GUEST_BUF_ALLOC: u32 = 256 * 1024;

/// A packet the device gave the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxPacket {
    /// Its header.
    pub header: Header,
    /// Its payload (`header.len` bytes).
    pub payload: Vec<u8>,
    /// The length the device put in the used ring.
    pub used_len: u32,
}

/// A vsock device with its listener in a temporary directory, driven by a [`NetDriver`].
#[derive(Debug)]
pub struct VsockHarness {
    /// The driver (owns the transport and the device).
    pub driver: NetDriver,
    /// The device's counters.
    pub metrics: Arc<VsockMetrics>,
    /// The guest's CID.
    pub guest_cid: u64,
    /// Where host clients connect.
    pub uds_path: PathBuf,
    /// The guest's count of payload bytes it consumed (sent in every header).
    pub fwd_cnt: u32,
    /// The receive buffer the guest advertises.
    pub buf_alloc: u32,
    dir: PathBuf,
    rx: VecDeque<RxPacket>,
}

impl VsockHarness {
    /// Builds the device (CID 3) with `tune` applied to the default configuration, brings it
    /// to DRIVER_OK and fills the RX queue.
    pub fn new(tune: impl FnOnce(&mut VsockConfig)) -> Result<Self, HarnessError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rf-vsock-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let uds_path = dir.join("v.sock");
        let listener =
            UnixListener::bind(&uds_path).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let mut config = VsockConfig::new(3, uds_path.clone());
        tune(&mut config);
        let guest_cid = config.guest_cid;
        let vsock = Vsock::new(config, listener).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let metrics = vsock.metrics();
        let driver = NetDriver::new(Box::new(vsock), u64::MAX)?;
        let mut h = Self {
            driver,
            metrics,
            guest_cid,
            uds_path,
            fwd_cnt: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            dir,
            rx: VecDeque::new(),
        };
        h.fill_rx()?;
        Ok(h)
    }

    /// Runs the driver's initialisation again (after a reset), forgetting every packet and
    /// credit of before, and fills the RX queue.
    pub fn reinitialize(&mut self) -> Result<(), HarnessError> {
        self.driver.initialize(u64::MAX)?;
        self.rx.clear();
        self.fwd_cnt = 0;
        self.fill_rx()
    }

    /// The default device.
    pub fn with_defaults() -> Result<Self, HarnessError> {
        Self::new(|_| {})
    }

    /// The path a guest connection to host port `port` goes to.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds_path.clone().into_os_string();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// The temporary directory of this harness.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Posts RX buffers until the queue is full, and kicks if the device asks for it.
    pub fn fill_rx(&mut self) -> Result<(), HarnessError> {
        while self.driver.rx.free_descriptors() > 0 {
            self.driver
                .add_chain(RX_QUEUE, &[], &[HDR_LEN as u32 + GUEST_RX_BUF])?;
        }
        self.driver.kick(RX_QUEUE);
        Ok(())
    }

    /// A header from the guest (`src_port`) to the host (`dst_port`), with the guest's
    /// credit state.
    pub fn header(&self, src_port: u32, dst_port: u32, op: Op) -> Header {
        Header {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op.code(),
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Sends `h` (its `len` as given) with `payload` as a header descriptor followed by a
    /// payload descriptor (none if empty); kicks if the device asks for it.
    pub fn send_raw(&mut self, h: &Header, payload: &[u8]) -> Result<u16, HarnessError> {
        self.reclaim_tx()?;
        let hb = h.to_bytes();
        let head = if payload.is_empty() {
            self.driver.add_chain(TX_QUEUE, &[&hb], &[])?
        } else {
            self.driver.add_chain(TX_QUEUE, &[&hb, payload], &[])?
        };
        self.driver.kick(TX_QUEUE);
        Ok(head)
    }

    /// Sends `h` with `payload` (setting `len`).
    pub fn send(&mut self, mut h: Header, payload: &[u8]) -> Result<u16, HarnessError> {
        h.len = payload.len() as u32;
        self.send_raw(&h, payload)
    }

    /// Frees the descriptors of TX chains the device returned; waits (bounded) if none is
    /// free.
    fn reclaim_tx(&mut self) -> Result<(), HarnessError> {
        self.driver.take_used(TX_QUEUE);
        if self.driver.tx.free_descriptors() < 2 {
            self.driver.wait_used(TX_QUEUE, 1, Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Waits until the device returned every TX chain sent so far.
    pub fn wait_tx_done(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.driver.take_used(TX_QUEUE);
            if usize::from(self.driver.tx.size) == self.driver.tx.free_descriptors() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    what: "the device to return every TX chain".into(),
                    timeout,
                });
            }
            self.driver
                .wait_irq((deadline - now).min(Duration::from_millis(2)));
        }
    }

    /// Takes what the device delivered, re-posting a buffer for each packet.
    fn collect(&mut self) -> Result<usize, HarnessError> {
        if self.driver.features() & (1 << crate::virtio::VIRTIO_RING_F_EVENT_IDX) != 0 {
            let used = self.driver.used_idx(RX_QUEUE);
            self.driver.set_used_event(RX_QUEUE, used);
        }
        let used = self.driver.take_used(RX_QUEUE);
        let n = used.len();
        for e in used {
            let bytes = self.driver.read_slot(RX_QUEUE, e.id as u16, e.len as usize);
            let mut hb = [0u8; HDR_LEN];
            let got = bytes.len().min(HDR_LEN);
            hb[..got].copy_from_slice(&bytes[..got]);
            let header = Header::from_bytes(&hb);
            let end = (HDR_LEN + header.len as usize).min(bytes.len());
            let payload = bytes.get(HDR_LEN..end).unwrap_or_default().to_vec();
            self.rx.push_back(RxPacket {
                header,
                payload,
                used_len: e.len,
            });
        }
        if n > 0 {
            self.fill_rx()?;
        }
        Ok(n)
    }

    /// The next packet the device gives the guest (waits up to `timeout`). Data packets
    /// count as consumed at once: their bytes are added to [`Self::fwd_cnt`].
    pub fn recv(&mut self, timeout: Duration) -> Result<RxPacket, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.rx.pop_front() {
                if p.header.op == Op::Rw.code() {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(p.header.len);
                }
                return Ok(p);
            }
            if self.collect()? > 0 {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    what: "a packet from the device".into(),
                    timeout,
                });
            }
            self.driver
                .wait_irq((deadline - now).min(Duration::from_millis(2)));
        }
    }

    /// The next packet that is not a CREDIT_UPDATE (answering CREDIT_REQUESTs with the
    /// guest's credit, as Linux does).
    pub fn recv_skip_credit(&mut self, timeout: Duration) -> Result<RxPacket, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = self.recv(left)?;
            match Op::from_code(p.header.op) {
                Some(Op::CreditUpdate) => continue,
                Some(Op::CreditRequest) => {
                    let h = self.header(p.header.dst_port, p.header.src_port, Op::CreditUpdate);
                    self.send(h, &[])?;
                }
                _ => return Ok(p),
            }
        }
    }

    /// Whether a packet arrives within `wait` (none expected: returns it if one does).
    pub fn recv_none(&mut self, wait: Duration) -> Option<RxPacket> {
        self.recv(wait).ok()
    }
}

impl Drop for VsockHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

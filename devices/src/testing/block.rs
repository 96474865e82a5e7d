//! A virtio-blk device over a temporary raw image, driven by the harness's [`VirtioDriver`].
//!
//! Requests are built the way Linux builds them: a 16-byte header descriptor, one descriptor
//! per data segment, and a 1-byte status descriptor, each in a buffer slot of its own. Hostile
//! chains are built with [`VirtioDriver::add_raw_chain`] on `harness.driver`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::driver::{HarnessError, UsedElem, VirtioDriver};
use crate::block::request_type::*;
use crate::block::{Block, BlockConfig, BlockMetrics, DiskImage};

/// The request queue's index.
pub const BLOCK_QUEUE: usize = 0;
/// How long the helpers wait for a completion.
pub const WAIT: Duration = Duration::from_secs(10);

/// A file in the temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempImage {
    path: PathBuf,
}

impl TempImage {
    /// Creates a file of `len` bytes whose byte at offset `i` is [`pattern`]`(i)`.
    pub fn with_pattern(len: u64) -> std::io::Result<Self> {
        let img = Self::empty()?;
        let bytes: Vec<u8> = (0..len).map(pattern).collect();
        std::fs::write(&img.path, bytes)?;
        Ok(img)
    }

    /// A new, empty file.
    pub fn empty() -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rf-blk-{}-{n}.img", std::process::id()));
        std::fs::write(&path, b"")?;
        Ok(Self { path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's whole contents.
    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap_or_default()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The byte a fresh [`TempImage::with_pattern`] holds at `offset` (never the same for two
/// offsets a sector apart, so misplaced I/O shows).
pub fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9).wrapping_mul(7)) as u8
}

/// A 16-byte request header.
pub fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A virtio-blk device over a [`TempImage`], at DRIVER_OK.
#[derive(Debug)]
pub struct BlockHarness {
    /// The driver (owns the transport and the device).
    pub driver: VirtioDriver,
    /// The device's counters.
    pub metrics: Arc<BlockMetrics>,
    /// The backing file.
    pub image: TempImage,
    /// Swaps the drive's image while it runs.
    pub swap: crate::block::DriveSwap,
    /// Descriptors of the chains in flight, by head (recorded when they were added).
    chains: HashMap<u16, Vec<u16>>,
}

impl BlockHarness {
    /// A read-write drive of `len` bytes holding [`pattern`], id `"harness-disk"`, all offered
    /// features accepted.
    pub fn new(len: u64) -> Result<Self, HarnessError> {
        Self::build(len, false, "harness-disk", u64::MAX)
    }

    /// A drive of `len` bytes holding [`pattern`], `read_only` or not, with `id`, negotiating
    /// `driver_features`.
    pub fn build(
        len: u64,
        read_only: bool,
        id: &str,
        driver_features: u64,
    ) -> Result<Self, HarnessError> {
        let image = TempImage::with_pattern(len).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let disk = DiskImage::open(image.path(), read_only)
            .map_err(|e| HarnessError::Setup(e.to_string()))?;
        let config = BlockConfig {
            id: id.to_string(),
            ..Default::default()
        };
        let block = Block::new(config, disk).map_err(|e| HarnessError::Setup(e.to_string()))?;
        let metrics = block.metrics();
        let swap = block.swap_handle();
        let driver = VirtioDriver::new(Box::new(block), driver_features)?;
        Ok(Self {
            driver,
            metrics,
            image,
            swap,
            chains: HashMap::new(),
        })
    }

    /// Queues a request: the header and `out` parts device-readable, then one device-writable
    /// buffer per `in_lens` entry, then a 1-byte status buffer; kicks. Returns the head.
    pub fn submit(
        &mut self,
        kind: u32,
        sector: u64,
        out: &[&[u8]],
        in_lens: &[u32],
    ) -> Result<u16, HarnessError> {
        let hdr = header(kind, sector);
        let mut parts: Vec<&[u8]> = vec![&hdr];
        parts.extend_from_slice(out);
        let mut writable = in_lens.to_vec();
        writable.push(1);
        // A stale status from an earlier use of the slot must not pass for the device's: the
        // writable buffers are filled before the chain is published (after would race a
        // device already answering it).
        let head = self
            .driver
            .add_chain_filled(BLOCK_QUEUE, &parts, &writable, Some(0xff))?;
        if let Some(descs) = self.driver.chain_descriptors(BLOCK_QUEUE, head) {
            self.chains.insert(head, descs);
        }
        self.driver.kick(BLOCK_QUEUE);
        Ok(head)
    }

    /// Waits for `n` completions.
    pub fn wait(&mut self, n: usize) -> Result<Vec<UsedElem>, HarnessError> {
        self.driver.wait_used(BLOCK_QUEUE, n, WAIT)
    }

    /// The status byte of a completed chain from [`submit`](Self::submit).
    pub fn status(&self, head: u16) -> Option<u8> {
        let last = *self.chains.get(&head)?.last()?;
        let addr = GuestAddress(self.driver.slot_addr(BLOCK_QUEUE, last));
        self.driver.memory().read_obj::<u8>(addr).ok()
    }

    /// The device-writable data of a completed chain (its `in_lens` buffers, concatenated).
    pub fn data_in(&self, head: u16, in_lens: &[u32]) -> Vec<u8> {
        let Some(descs) = self.chains.get(&head) else {
            return Vec::new();
        };
        let first = descs.len().saturating_sub(in_lens.len() + 1);
        let mut out = Vec::new();
        for (&d, &len) in descs[first..].iter().zip(in_lens) {
            let mut buf = vec![0u8; len as usize];
            let addr = GuestAddress(self.driver.slot_addr(BLOCK_QUEUE, d));
            let _ = self.driver.memory().read_slice(&mut buf, addr);
            out.extend(buf);
        }
        out
    }

    /// Reads `in_lens` bytes (one segment per entry) from `sector`: (status, data, used len).
    pub fn read(
        &mut self,
        sector: u64,
        in_lens: &[u32],
    ) -> Result<(u8, Vec<u8>, u32), HarnessError> {
        let head = self.submit(VIRTIO_BLK_T_IN, sector, &[], in_lens)?;
        let used = self.wait_for(head)?;
        Ok((
            self.status_or_err(head)?,
            self.data_in(head, in_lens),
            used.len,
        ))
    }

    /// Writes `parts` (one segment each) at `sector`; returns the status.
    pub fn write(&mut self, sector: u64, parts: &[&[u8]]) -> Result<u8, HarnessError> {
        let head = self.submit(VIRTIO_BLK_T_OUT, sector, parts, &[])?;
        self.wait_for(head)?;
        self.status_or_err(head)
    }

    /// Sends a FLUSH; returns the status.
    pub fn flush(&mut self) -> Result<u8, HarnessError> {
        let head = self.submit(VIRTIO_BLK_T_FLUSH, 0, &[], &[])?;
        self.wait_for(head)?;
        self.status_or_err(head)
    }

    /// Sends a GET_ID with a 20-byte buffer; returns the status and the buffer.
    pub fn get_id(&mut self) -> Result<(u8, Vec<u8>), HarnessError> {
        let head = self.submit(VIRTIO_BLK_T_GET_ID, 0, &[], &[20])?;
        self.wait_for(head)?;
        Ok((self.status_or_err(head)?, self.data_in(head, &[20])))
    }

    /// Waits until chain `head` is used and returns its used element.
    pub fn wait_for(&mut self, head: u16) -> Result<UsedElem, HarnessError> {
        loop {
            for e in self.wait(1)? {
                if e.id == u32::from(head) {
                    return Ok(e);
                }
            }
        }
    }

    fn status_or_err(&self, head: u16) -> Result<u8, HarnessError> {
        self.status(head)
            .ok_or_else(|| HarnessError::Setup(format!("no status for chain {head}")))
    }
}

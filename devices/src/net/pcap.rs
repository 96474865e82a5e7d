//! Optional capture of every frame at the device boundary, both directions, into a pcap file
//! (Ethernet link type, microsecond timestamps).
//!
//! The file is created when the device is built, so an unwritable path fails early with a
//! clear error; afterwards the sink lives on the device worker thread and writes through a
//! buffer that is flushed whenever the worker goes idle and when it stops. Capturing copies each frame once into a reused scratch buffer (pcap needs it
//! contiguous); without a sink the datapath does no copy at all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

use super::iov::GuestIov;

/// Largest frame length recorded in the file header (covers TSO super-frames).
const SNAPLEN: u32 = 262_144;

/// Why a capture could not be started or written.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The file could not be created.
    #[error(
        "cannot create pcap file {path}: {source}; check that the directory exists and is writable"
    )]
    Create {
        /// Requested path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Writing the file failed (disk full, I/O error).
    #[error("cannot write pcap file {path}: {detail}")]
    Write {
        /// File path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// The buffered file, shared between the pcap writer and [`PcapSink::flush`] (`PcapWriter`
/// gives no access to its inner writer). Only the worker thread touches it, so the lock is
/// never contended.
#[derive(Debug, Clone)]
struct SharedFile(Arc<Mutex<BufWriter<File>>>);

impl SharedFile {
    fn with<R>(&self, f: impl FnOnce(&mut BufWriter<File>) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.with(|w| w.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.with(|w| w.flush())
    }
}

/// A buffered pcap writer owned by a device worker.
pub struct PcapSink {
    path: PathBuf,
    file: SharedFile,
    writer: PcapWriter<SharedFile>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for PcapSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapSink")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PcapSink {
    /// Creates (truncates) `path` and writes the pcap file header.
    pub fn create(path: &Path) -> Result<Self, PcapError> {
        let file = File::create(path).map_err(|source| PcapError::Create {
            path: path.to_owned(),
            source,
        })?;
        let header = PcapHeader {
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let file = SharedFile(Arc::new(Mutex::new(BufWriter::new(file))));
        let writer =
            PcapWriter::with_header(file.clone(), header).map_err(|e| PcapError::Write {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
            writer,
            scratch: Vec::with_capacity(2048),
        })
    }

    /// Records `len` bytes of the frame in `frame` (guest memory) starting at `offset`.
    pub fn record(&mut self, frame: &GuestIov, offset: usize, len: usize) -> Result<(), PcapError> {
        self.scratch.resize(len, 0);
        let got = frame.read_at(offset, &mut self.scratch);
        self.scratch.truncate(got);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let packet = PcapPacket::new(ts, got as u32, &self.scratch);
        self.writer
            .write_packet(&packet)
            .map(|_| ())
            .map_err(|e| PcapError::Write {
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    /// Writes buffered packets to the file (the worker calls this when it goes idle or stops).
    pub fn flush(&mut self) -> Result<(), PcapError> {
        self.file.with(|w| w.flush()).map_err(|e| PcapError::Write {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// The capture file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

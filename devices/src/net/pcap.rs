//! Optional capture of every frame at the device boundary, both directions, in pcap format
//! (Ethernet link type, microsecond timestamps), into any writer: a file (`--pcap`), or one
//! an embedder hands in while the VM runs ([`CaptureSwitch`]).
//!
//! The device thread never writes the capture itself. [`PcapSink::record`] copies at most
//! `snaplen` bytes of a frame into a buffer from a fixed pool and appends it to a batch
//! local to the device thread; a full batch, or the worker going idle, moves the batch to a
//! shared queue under one lock and wakes the writer thread, which formats and writes the
//! records and hands the buffers back. So capturing costs the datapath one copy of
//! `snaplen` bytes per frame and one lock per batch, no allocation once the pool is warm and
//! no syscall per frame. When the writer falls behind, the pool runs dry and frames are
//! dropped from the capture (never from the datapath), counted in [`CaptureStats`].
//!
//! Must never block the device thread on the writer.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::iov::GuestIov;
use super::metrics::NetMetrics;

/// Snap length meaning "whole frames" (covers TSO super-frames).
pub const SNAPLEN_WHOLE: u32 = 262_144;
/// Most frames the pool holds (captured frames waiting for the writer): with short snap
/// lengths; whole-frame captures get fewer, so the pool stays within [`POOL_BYTES`].
const POOL_FRAMES: usize = 1024;
/// Fewest frames the pool holds.
const POOL_FRAMES_MIN: usize = 64;
/// What the pool's buffers may grow to in all, roughly (a TSO frame is up to 64 KiB).
const POOL_BYTES: usize = 32 << 20;
/// Frames the device thread collects before handing them to the writer.
const BATCH_FRAMES: usize = 64;
/// The writer looks at the queue this often, and is woken earlier only when a quarter of the
/// pool is waiting: a bulk transfer then costs the host a few writer wake-ups per second, not
/// one per device batch (on a host short of cores those wake-ups compete with the vCPU).
const WRITER_TICK: Duration = Duration::from_millis(50);
/// Initial capacity of a pooled buffer (grown once to the largest frame it carries).
const BUFFER_START: usize = 2048;
/// How long [`CaptureControl::stop`] waits for the writer to finish.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a dropped sink (device teardown) waits for the writer before leaving it.
const DROP_WAIT: Duration = Duration::from_secs(2);

/// Why a capture could not be started.
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
    /// The writer thread could not be started.
    #[error("cannot start the pcap writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The snap length is 0.
    #[error(
        "a pcap snap length of 0 records nothing: give at least 1 byte (e.g. 128 for headers)"
    )]
    SnaplenZero,
    /// A capture is already running on this device.
    #[error("a capture is already running on this network device: stop it first")]
    Busy,
}

/// Counters of one capture.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Frames written to the capture.
    pub written: AtomicU64,
    /// Frames left out because the writer fell behind (the pool was empty).
    pub dropped: AtomicU64,
    /// Write errors (the capture stops writing after the first).
    pub write_errors: AtomicU64,
}

/// One captured frame.
struct Record {
    /// Time since the UNIX epoch when the frame crossed the device.
    ts: Duration,
    /// Frame length on the wire.
    orig_len: u32,
    /// The first `snaplen` bytes.
    data: Vec<u8>,
}

/// What the device thread and the writer share.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// Set by [`CaptureControl::stop`]: record nothing more, the writer drains and ends.
    closed: AtomicBool,
    stats: CaptureStats,
    /// Queued records that make the device wake the writer before its next tick.
    wake_at: usize,
}

#[derive(Default)]
struct QueueState {
    /// Records for the writer.
    full: VecDeque<Record>,
    /// Buffers the writer handed back.
    free: Vec<Vec<u8>>,
    /// The device side is gone: nothing more will come.
    producer_gone: bool,
    /// The writer has written everything and flushed.
    finished: bool,
    /// [`PcapSink::sync`] requests, and the last one the writer completed.
    sync_req: u64,
    sync_done: u64,
}

impl Queue {
    /// Waits up to `limit` until the writer thread has finished; returns whether it has.
    fn wait_finished(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.lock();
        while !st.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The device thread's end of a capture.
pub struct PcapSink {
    queue: Arc<Queue>,
    snaplen: usize,
    /// Records not yet handed to the writer.
    batch: Vec<Record>,
    /// Buffers ready to fill.
    free: Vec<Vec<u8>>,
    writer: Option<JoinHandle<()>>,
    label: String,
    /// Device counters that get this capture's drops and errors when it ends.
    report_to: Option<Arc<NetMetrics>>,
}

impl std::fmt::Debug for PcapSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapSink")
            .field("to", &self.label)
            .field("snaplen", &self.snaplen)
            .finish_non_exhaustive()
    }
}

impl PcapSink {
    /// Creates (truncates) `path` and starts writing whole frames into it.
    pub fn create(path: &Path) -> Result<Self, PcapError> {
        Self::create_with_snaplen(path, SNAPLEN_WHOLE)
    }

    /// Creates (truncates) `path` and starts writing the first `snaplen` bytes of each frame.
    pub fn create_with_snaplen(path: &Path, snaplen: u32) -> Result<Self, PcapError> {
        let file = File::create(path).map_err(|source| PcapError::Create {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::start(Box::new(file), snaplen, path.display().to_string())?.0)
    }

    /// Starts a capture into `out` (the pcap header is written by the writer thread) and
    /// returns the device's end and the embedder's.
    pub fn start(
        out: Box<dyn Write + Send>,
        snaplen: u32,
        label: String,
    ) -> Result<(PcapSink, CaptureControl), PcapError> {
        if snaplen == 0 {
            return Err(PcapError::SnaplenZero);
        }
        let snaplen = snaplen.min(SNAPLEN_WHOLE);
        let largest = (snaplen as usize).min(usize::from(u16::MAX) + 14);
        let pool = (POOL_BYTES / largest).clamp(POOL_FRAMES_MIN, POOL_FRAMES);
        let queue = Arc::new(Queue {
            wake_at: pool / 4,
            ..Queue::default()
        });
        {
            let mut st = queue.lock();
            st.full.reserve(pool);
            st.free.reserve(pool);
        }
        let writer = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("pcap-writer".into())
                .spawn(move || write_loop(&queue, out, snaplen, pool))
                .map_err(PcapError::Thread)?
        };
        let first = (snaplen as usize).min(BUFFER_START);
        let sink = PcapSink {
            queue: queue.clone(),
            snaplen: snaplen as usize,
            batch: Vec::with_capacity(BATCH_FRAMES),
            free: (0..pool).map(|_| Vec::with_capacity(first)).collect(),
            writer: Some(writer),
            label,
            report_to: None,
        };
        Ok((sink, CaptureControl { queue }))
    }

    /// Records the frame in `frame` (guest memory) at `offset`, `len` bytes long: copies its
    /// first `snaplen` bytes. Never blocks; a frame that finds the pool empty is counted as
    /// dropped.
    pub fn record(&mut self, frame: &GuestIov, offset: usize, len: usize) {
        if self.queue.closed.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut data) = self.free.pop() else {
            self.queue.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        data.resize(len.min(self.snaplen), 0);
        let got = frame.read_at(offset, &mut data);
        data.truncate(got);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.batch.push(Record {
            ts,
            orig_len: u32::try_from(len).unwrap_or(u32::MAX),
            data,
        });
        if self.batch.len() >= BATCH_FRAMES {
            self.flush();
        }
    }

    /// Hands the recorded frames to the writer thread and takes back the buffers it has
    /// written (the worker calls this when it goes idle, when a batch is full, and at stop).
    pub fn flush(&mut self) {
        let mut st = self.queue.lock();
        st.full.extend(self.batch.drain(..));
        self.free.append(&mut st.free);
        let wake = st.full.len() >= self.queue.wake_at;
        drop(st);
        if wake {
            self.queue.wake.notify_one();
        }
    }

    /// Adds this capture's dropped frames and write errors to `metrics` when it ends.
    pub fn report_to(&mut self, metrics: Arc<NetMetrics>) {
        self.report_to = Some(metrics);
    }

    /// Hands the recorded frames to the writer and waits (up to 2 s) until it has
    /// written and flushed everything queued. For the worker's stop (device reset, VM end),
    /// never on the datapath.
    pub fn sync(&mut self) {
        self.flush();
        let deadline = Instant::now() + DROP_WAIT;
        let mut st = self.queue.lock();
        st.sync_req += 1;
        let target = st.sync_req;
        self.queue.wake.notify_all();
        while st.sync_done < target && !st.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self
                .queue
                .wake
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Where the capture goes (a file path or the embedder's label).
    pub fn label(&self) -> &str {
        &self.label
    }
}

impl Drop for PcapSink {
    fn drop(&mut self) {
        self.flush();
        self.queue.lock().producer_gone = true;
        self.queue.wake.notify_all();
        // Joined only once it has finished: an output that blocks (a pipe nobody reads) must
        // not hang the device's teardown. Such a writer is left to end on its own.
        if self.queue.wait_finished(DROP_WAIT) {
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
        } else {
            tracing::warn!(to = %self.label, "pcap writer still blocked in its output; leaving it");
        }
        if let Some(m) = &self.report_to {
            let s = &self.queue.stats;
            let lost = s.dropped.load(Ordering::Relaxed) + s.write_errors.load(Ordering::Relaxed);
            NetMetrics::add(&m.pcap_errors, lost);
        }
    }
}

/// The embedder's end of a capture: counters, and stopping it.
#[derive(Clone)]
pub struct CaptureControl {
    queue: Arc<Queue>,
}

impl std::fmt::Debug for CaptureControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureControl")
            .field("stats", &self.queue.stats)
            .finish()
    }
}

impl CaptureControl {
    /// The capture's counters.
    pub fn stats(&self) -> &CaptureStats {
        &self.queue.stats
    }

    /// Stops recording; waits (up to 10 s) until the writer has written and flushed every
    /// frame handed to it. Frames still in the device thread's current batch are not written.
    /// Returns whether the writer finished in time.
    pub fn stop(&self) -> bool {
        self.queue.closed.store(true, Ordering::SeqCst);
        self.queue.wake.notify_all();
        self.queue.wait_finished(STOP_WAIT)
    }

    /// Whether the capture has ended (stopped, or its device is gone) and everything was
    /// written.
    pub fn is_finished(&self) -> bool {
        self.queue.lock().finished
    }
}

/// The writer thread: pcap header, then records as they come, until the capture ends. Looks
/// at the queue every [`WRITER_TICK`] (or when woken); writes its buffer out when it finds the
/// queue empty, so an idle capture is on disk within a tick.
fn write_loop(queue: &Queue, out: Box<dyn Write + Send>, snaplen: u32, pool: usize) {
    // Records of large frames (above the capacity) bypass the buffer: one copy less.
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut ok = write_file_header(&mut out, snaplen).is_ok();
    let mut work: VecDeque<Record> = VecDeque::with_capacity(pool);
    let mut done: Vec<Vec<u8>> = Vec::with_capacity(pool);
    let mut unflushed = true;
    loop {
        {
            let mut st = queue.lock();
            st.free.append(&mut done);
            if st.full.is_empty() {
                if unflushed {
                    drop(st);
                    if ok && out.flush().is_err() {
                        queue.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        ok = false;
                    }
                    unflushed = false;
                    continue;
                }
                if st.sync_done != st.sync_req {
                    st.sync_done = st.sync_req;
                    queue.wake.notify_all();
                }
                if st.producer_gone || queue.closed.load(Ordering::SeqCst) {
                    break;
                }
                st = queue
                    .wake
                    .wait_timeout(st, WRITER_TICK)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut st.full, &mut work);
        }
        unflushed |= !work.is_empty();
        for rec in work.drain(..) {
            if ok {
                ok = write_record(&mut out, &rec).is_ok();
                if ok {
                    queue.stats.written.fetch_add(1, Ordering::Relaxed);
                } else {
                    queue.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            done.push(rec.data);
        }
    }
    if ok && out.flush().is_err() {
        queue.stats.write_errors.fetch_add(1, Ordering::Relaxed);
    }
    drop(out);
    let mut st = queue.lock();
    st.finished = true;
    queue.wake.notify_all();
}

/// The pcap global header: magic, version 2.4, UTC, snap length, LINKTYPE_ETHERNET, in the
/// host's byte order (readers detect it from the magic).
fn write_file_header(out: &mut impl Write, snaplen: u32) -> std::io::Result<()> {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    h[16..20].copy_from_slice(&snaplen.to_ne_bytes());
    h[20..24].copy_from_slice(&1u32.to_ne_bytes());
    out.write_all(&h)
}

/// One record header (seconds, microseconds, captured length, wire length) and its bytes.
fn write_record(out: &mut impl Write, rec: &Record) -> std::io::Result<()> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&(rec.ts.as_secs() as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&rec.ts.subsec_micros().to_ne_bytes());
    h[8..12].copy_from_slice(&(rec.data.len() as u32).to_ne_bytes());
    h[12..16].copy_from_slice(&rec.orig_len.to_ne_bytes());
    out.write_all(&h)?;
    out.write_all(&rec.data)
}

/// Lets an embedder start and stop a capture on a running device: the worker looks at it
/// once per loop round (one atomic load) and swaps its sink when it changed.
#[derive(Default)]
pub struct CaptureSwitch {
    next: Mutex<Option<PcapSink>>,
    changed: AtomicBool,
    active: Mutex<Option<CaptureControl>>,
}

impl std::fmt::Debug for CaptureSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureSwitch").finish_non_exhaustive()
    }
}

impl CaptureSwitch {
    /// Starts capturing into `out` (first `snaplen` bytes of each frame) from the worker's
    /// next loop round. Fails if a capture started here is still running.
    pub fn start(
        &self,
        out: Box<dyn Write + Send>,
        snaplen: u32,
        label: String,
    ) -> Result<CaptureControl, PcapError> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.as_ref().is_some_and(|c| !c.is_finished()) {
            return Err(PcapError::Busy);
        }
        let (sink, control) = PcapSink::start(out, snaplen, label)?;
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        self.changed.store(true, Ordering::SeqCst);
        *active = Some(control.clone());
        Ok(control)
    }

    /// Stops the capture started here, if any (see [`CaptureControl::stop`]); the worker
    /// drops its sink at its next loop round.
    pub fn stop(&self) -> bool {
        let control = self.active.lock().unwrap_or_else(|e| e.into_inner()).take();
        // A sink the worker never picked up is dropped here.
        let pending = self.next.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.changed.store(true, Ordering::SeqCst);
        let finished = control.is_none_or(|c| c.stop());
        drop(pending);
        finished
    }

    /// For the worker: the new sink (or `None` = stop) if the capture changed since the last
    /// call. One atomic load when nothing changed.
    pub(crate) fn take_change(&self) -> Option<Option<PcapSink>> {
        if !self.changed.load(Ordering::Relaxed) || !self.changed.swap(false, Ordering::SeqCst) {
            return None;
        }
        Some(self.next.lock().unwrap_or_else(|e| e.into_inner()).take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn iov(frame: &mut [u8]) -> GuestIov {
        let mut v = GuestIov::with_capacity(1);
        // `frame` outlives every use of `v` in the tests.
        v.push(frame.as_mut_ptr(), frame.len());
        v
    }

    #[test]
    fn records_are_cut_to_the_snap_length_and_written_off_thread() {
        let out = Shared::default();
        let (mut sink, control) = PcapSink::start(Box::new(out.clone()), 128, "t".into()).unwrap();
        let mut frame = vec![7u8; 1500];
        let v = iov(&mut frame);
        for _ in 0..10 {
            sink.record(&v, 0, 1500);
        }
        sink.flush();
        assert!(control.stop());
        drop(sink);
        let bytes = out.0.lock().unwrap().clone();
        assert_eq!(bytes.len(), 24 + 10 * (16 + 128));
        assert_eq!(u32::from_ne_bytes(bytes[16..20].try_into().unwrap()), 128);
        let rec = &bytes[24..40];
        assert_eq!(u32::from_ne_bytes(rec[8..12].try_into().unwrap()), 128);
        assert_eq!(u32::from_ne_bytes(rec[12..16].try_into().unwrap()), 1500);
        assert_eq!(control.stats().written.load(Ordering::Relaxed), 10);
        assert_eq!(control.stats().dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_empty_pool_drops_and_counts_instead_of_blocking() {
        let (mut sink, control) =
            PcapSink::start(Box::new(std::io::sink()), 64, "t".into()).unwrap();
        let mut frame = vec![1u8; 100];
        let v = iov(&mut frame);
        let n = POOL_FRAMES * 8;
        for _ in 0..n {
            sink.record(&v, 0, 100);
        }
        let dropped = control.stats().dropped.load(Ordering::Relaxed);
        assert!(dropped <= n as u64);
        sink.flush();
        control.stop();
        drop(sink);
        let s = control.stats();
        assert_eq!(
            s.written.load(Ordering::Relaxed) + s.dropped.load(Ordering::Relaxed),
            n as u64,
            "every frame is written or counted as dropped"
        );
    }

    /// An output that never returns from `write`.
    struct Stuck(Arc<std::sync::Barrier>);

    impl Write for Stuck {
        fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
            self.0.wait();
            Err(std::io::Error::other("released"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_output_does_not_hang_the_device() {
        let release = Arc::new(std::sync::Barrier::new(2));
        let (sink, _control) =
            PcapSink::start(Box::new(Stuck(release.clone())), 64, "t".into()).unwrap();
        let queue = sink.queue.clone();
        drop(sink); // comes back although the writer is stuck
        assert!(!queue.lock().finished);
        release.wait();
    }

    #[test]
    fn a_zero_snap_length_is_refused() {
        let e = PcapSink::start(Box::new(std::io::sink()), 0, "t".into()).unwrap_err();
        assert!(e.to_string().contains("at least 1 byte"), "{e}");
    }
}

//! Per-drive counters (plain atomics, read by tests and the VMM).
//!
//! Every request is counted once when it completes, by what happened to it; every chain the
//! device refused is counted once by reason. Counters only grow; `Relaxed` ordering is enough
//! because nothing synchronises on them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::virtio::log_gate::LogGate;

/// Why a request failed before any I/O (`VIRTIO_BLK_S_IOERR`), or why a chain had to be
/// dropped without a status (`NoStatus`, `Truncated`, `BadHead`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The avail ring named a head outside the queue, or the head could not be read.
    BadHead,
    /// The chain ended on a descriptor with NEXT set: a loop, a `next` outside the queue or
    /// an unreadable descriptor cut it short. Dropped: its last byte is not trustworthy.
    Truncated,
    /// The last descriptor is not device-writable, is empty, or is outside guest memory or
    /// over a ring: there is no status byte to report in. Dropped.
    NoStatus,
    /// A device-readable descriptor after a device-writable one (virtio 1.2 §2.7.4.2), or
    /// data in the wrong direction for the request type.
    WrongDirection,
    /// A descriptor of length 0.
    ZeroLength,
    /// A buffer lies (partly) outside guest memory.
    OutOfMemory,
    /// A buffer overlaps a descriptor table, avail ring or used ring of the queue.
    OverlapsRing,
    /// Two device-writable buffers overlap (or a data buffer overlaps the status byte).
    Overlap,
    /// Fewer device-readable bytes than the 16-byte request header.
    HeaderTooShort,
    /// The data length is not a whole number of 512-byte sectors.
    Unaligned,
    /// The request reaches past the end of the drive (or its sector arithmetic overflows).
    OutOfRange,
    /// A write to a read-only drive.
    ReadOnly,
    /// More memory segments than the device accepts in one request.
    TooManySegments,
    /// The image file is shorter than the drive (truncated under the running VM).
    ImageShrunk,
}

impl RequestError {
    /// All reasons, in counter order.
    pub const ALL: [RequestError; 14] = [
        RequestError::BadHead,
        RequestError::Truncated,
        RequestError::NoStatus,
        RequestError::WrongDirection,
        RequestError::ZeroLength,
        RequestError::OutOfMemory,
        RequestError::OverlapsRing,
        RequestError::Overlap,
        RequestError::HeaderTooShort,
        RequestError::Unaligned,
        RequestError::OutOfRange,
        RequestError::ReadOnly,
        RequestError::TooManySegments,
        RequestError::ImageShrunk,
    ];

    /// Short name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            RequestError::BadHead => "bad_head",
            RequestError::Truncated => "truncated",
            RequestError::NoStatus => "no_status",
            RequestError::WrongDirection => "wrong_direction",
            RequestError::ZeroLength => "zero_length",
            RequestError::OutOfMemory => "out_of_memory",
            RequestError::OverlapsRing => "overlaps_ring",
            RequestError::Overlap => "overlap",
            RequestError::HeaderTooShort => "header_too_short",
            RequestError::Unaligned => "unaligned",
            RequestError::OutOfRange => "out_of_range",
            RequestError::ReadOnly => "read_only",
            RequestError::TooManySegments => "too_many_segments",
            RequestError::ImageShrunk => "image_shrunk",
        }
    }

    /// Whether a chain refused for this reason is dropped without a status byte.
    pub fn drops_chain(self) -> bool {
        matches!(
            self,
            RequestError::BadHead | RequestError::Truncated | RequestError::NoStatus
        )
    }
}

/// The counters of one drive.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Requests completed with a status (any status).
    pub requests: AtomicU64,
    /// `VIRTIO_BLK_T_IN` requests completed OK.
    pub reads: AtomicU64,
    /// `VIRTIO_BLK_T_OUT` requests completed OK.
    pub writes: AtomicU64,
    /// `VIRTIO_BLK_T_FLUSH` requests completed OK.
    pub flushes: AtomicU64,
    /// `VIRTIO_BLK_T_GET_ID` requests completed OK.
    pub get_ids: AtomicU64,
    /// Bytes read from the image into the guest.
    pub bytes_read: AtomicU64,
    /// Bytes written from the guest to the image.
    pub bytes_written: AtomicU64,
    /// Requests completed with `VIRTIO_BLK_S_IOERR` (refused or failed I/O).
    pub io_errors: AtomicU64,
    /// Of `io_errors`: the host I/O itself failed (an errno, or a short transfer at the end
    /// of a shrunk file).
    pub host_io_errors: AtomicU64,
    /// Requests completed with `VIRTIO_BLK_S_UNSUPP`.
    pub unsupported: AtomicU64,
    /// Chains returned without a status (no usable status byte), counted in `refused` too.
    pub chains_dropped: AtomicU64,
    /// Short transfers resubmitted for their remainder.
    pub resubmits: AtomicU64,
    /// Queue kicks seen by the worker.
    pub kicks: AtomicU64,
    /// Interrupts sent to the guest.
    pub interrupts: AtomicU64,
    /// Device resets by the driver.
    pub resets: AtomicU64,
    /// Register or config-space accesses the transport refused.
    pub mmio_refused: AtomicU64,
    /// Times DEVICE_NEEDS_RESET was raised.
    pub needs_reset: AtomicU64,
    /// Queues given up on (corrupt avail index, unwritable used ring).
    pub queues_broken: AtomicU64,
    /// Requests the device refused, by [`RequestError`].
    refused: [AtomicU64; RequestError::ALL.len()],
    /// Rate limit on refused-request log lines.
    pub(crate) refused_log: LogGate,
}

impl BlockMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts one request refused for `reason`.
    pub fn refuse(&self, reason: RequestError) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
        if reason.drops_chain() {
            Self::add(&self.chains_dropped, 1);
        }
    }

    /// Requests refused for `reason`.
    pub fn refused(&self, reason: RequestError) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// Requests refused for any reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Every counter by name (refusals as `refused_<reason>`), for reports.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = [
            ("requests", &self.requests),
            ("reads", &self.reads),
            ("writes", &self.writes),
            ("flushes", &self.flushes),
            ("get_ids", &self.get_ids),
            ("bytes_read", &self.bytes_read),
            ("bytes_written", &self.bytes_written),
            ("io_errors", &self.io_errors),
            ("host_io_errors", &self.host_io_errors),
            ("unsupported", &self.unsupported),
            ("chains_dropped", &self.chains_dropped),
            ("resubmits", &self.resubmits),
            ("kicks", &self.kicks),
            ("interrupts", &self.interrupts),
            ("resets", &self.resets),
            ("mmio_refused", &self.mmio_refused),
            ("needs_reset", &self.needs_reset),
            ("queues_broken", &self.queues_broken),
        ]
        .into_iter()
        .map(|(k, c)| (k.to_string(), Self::get(c)))
        .collect();
        out.extend(
            RequestError::ALL
                .iter()
                .map(|&r| (format!("refused_{}", r.name()), self.refused(r))),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_count_by_reason_and_drops_separately() {
        let m = BlockMetrics::default();
        m.refuse(RequestError::OutOfRange);
        m.refuse(RequestError::OutOfRange);
        m.refuse(RequestError::NoStatus);
        assert_eq!(m.refused(RequestError::OutOfRange), 2);
        assert_eq!(m.refused_total(), 3);
        assert_eq!(BlockMetrics::get(&m.chains_dropped), 1);
        let snap = m.snapshot();
        assert!(snap.contains(&("refused_out_of_range".to_string(), 2)));
        assert!(snap.contains(&("chains_dropped".to_string(), 1)));
    }
}

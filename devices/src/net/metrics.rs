//! Per-device counters (plain atomics, read by tests, the VMM and benchmarks).
//!
//! Every frame or chain the device drops is counted exactly once, by reason. Counters only
//! grow; `Relaxed` ordering is enough because nothing synchronises on them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a descriptor chain was rejected (returned to the used ring with length 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedReason {
    /// The avail ring named a head index outside the queue, or the head descriptor could not
    /// be read.
    BadHead,
    /// The chain ended on a descriptor with NEXT set: a loop, a `next` outside the queue or an
    /// unreadable descriptor cut it short.
    Truncated,
    /// More descriptors (or memory segments) than the device accepts in one chain.
    TooManyDescriptors,
    /// A buffer lies (partly) outside guest memory.
    OutOfMemory,
    /// A device-writable buffer on TX, or a device-readable one on RX.
    WrongDirection,
    /// Fewer bytes than the 12-byte virtio-net header.
    HeaderTooShort,
    /// More bytes than the device accepts for one frame.
    TooLong,
    /// A TX frame shorter than an Ethernet header.
    FrameTooShort,
    /// A buffer overlaps a descriptor table, avail ring or used ring of the device's queues
    /// (see [`crate::virtio::ring_layout`]).
    OverlapsRing,
}

impl MalformedReason {
    /// All reasons, in counter order.
    pub const ALL: [MalformedReason; 9] = [
        MalformedReason::BadHead,
        MalformedReason::Truncated,
        MalformedReason::TooManyDescriptors,
        MalformedReason::OutOfMemory,
        MalformedReason::WrongDirection,
        MalformedReason::HeaderTooShort,
        MalformedReason::TooLong,
        MalformedReason::FrameTooShort,
        MalformedReason::OverlapsRing,
    ];

    /// Short name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            MalformedReason::BadHead => "bad_head",
            MalformedReason::Truncated => "truncated",
            MalformedReason::TooManyDescriptors => "too_many_descriptors",
            MalformedReason::OutOfMemory => "out_of_memory",
            MalformedReason::WrongDirection => "wrong_direction",
            MalformedReason::HeaderTooShort => "header_too_short",
            MalformedReason::TooLong => "too_long",
            MalformedReason::FrameTooShort => "frame_too_short",
            MalformedReason::OverlapsRing => "overlaps_ring",
        }
    }
}

/// Malformed-chain counters for one queue, one per [`MalformedReason`].
#[derive(Debug, Default)]
pub struct MalformedCounters {
    counts: [AtomicU64; MalformedReason::ALL.len()],
}

impl MalformedCounters {
    /// Counts one chain dropped for `reason`.
    pub fn inc(&self, reason: MalformedReason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Chains dropped for `reason`.
    pub fn get(&self, reason: MalformedReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }

    /// Chains dropped for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Counters of one virtio-net device.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames handed to the backend.
    pub tx_frames: AtomicU64,
    /// Ethernet bytes (without virtio header) handed to the backend.
    pub tx_bytes: AtomicU64,
    /// TX chains dropped as malformed, by reason.
    pub tx_malformed: MalformedCounters,
    /// TX frames the backend refused because it was full (EAGAIN).
    pub tx_dropped_backend_busy: AtomicU64,
    /// TX frames the backend failed to send (other errors).
    pub tx_dropped_backend_error: AtomicU64,
    /// Kicks received on the TX queue.
    pub tx_kicks: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Ethernet bytes (without virtio header) delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// RX chains dropped as malformed, by reason.
    pub rx_malformed: MalformedCounters,
    /// Frames a backend had to discard because the guest posted no (or too small) buffers.
    pub rx_dropped_no_buffer: AtomicU64,
    /// Frames longer than the guest buffers they were written into (cut at the buffer end).
    pub rx_truncated: AtomicU64,
    /// Receive errors reported by the backend.
    pub rx_backend_errors: AtomicU64,
    /// Kicks received on the RX queue.
    pub rx_kicks: AtomicU64,
    /// Interrupts raised (used-buffer notifications).
    pub interrupts: AtomicU64,
    /// Batches completed without an interrupt because the driver suppressed it.
    pub interrupts_suppressed: AtomicU64,
    /// Used rings the device could not write (bad queue addresses).
    pub used_ring_errors: AtomicU64,
    /// Queues the device stopped serving until reset because the driver published an avail
    /// index more than a queue size ahead (virtio 1.2 §2.7.13.3) or the used ring could not
    /// be written.
    pub queues_broken: AtomicU64,
    /// Times the device set DEVICE_NEEDS_RESET and sent a configuration change interrupt
    /// (a broken queue, or an activation that failed on the driver's queue configuration).
    pub needs_reset: AtomicU64,
    /// Driver resets (Status written to 0) of a device that had been initialised.
    pub resets: AtomicU64,
    /// Register and configuration-space accesses refused: bad offset, width or value,
    /// read-only registers and fields, writes the status state machine does not allow now.
    pub mmio_refused: AtomicU64,
    /// Frames left out of pcap captures (the writer fell behind) plus capture write errors,
    /// added when a capture ends.
    pub pcap_errors: AtomicU64,
    /// Event-loop iterations (one `io_uring_enter` or poll round each).
    pub loop_iterations: AtomicU64,
    /// Waits of one polling tick (polling window past its initial spin).
    pub poll_ticks: AtomicU64,
    /// Times RX ran out of guest room with frames pending and waited for the driver to post
    /// a batch of buffers.
    pub rx_starved: AtomicU64,
    /// Feature bits the device offered the driver.
    pub features_offered: AtomicU64,
    /// Feature bits the driver acknowledged, as of the last activation (what the guest's
    /// driver actually uses: offloads, EVENT_IDX, mergeable RX buffers).
    pub features_acked: AtomicU64,
    /// Rate limit on the log lines of malformed chains, both queues (not a counter; it is
    /// here because every place that counts a malformed chain holds the metrics).
    pub malformed_log: crate::virtio::log_gate::LogGate,
    /// The backend's own counters ([`crate::net::backend::NetBackend::counters`]), taken
    /// when its worker stops.
    pub backend: std::sync::Mutex<Vec<(String, u64)>>,
}

impl NetMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter by name, malformed chains as `tx_malformed_<reason>` /
    /// `rx_malformed_<reason>` (only the non-zero ones), then the backend's counters as of
    /// its worker's last stop, for reports such as `--net-stats`.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let plain: [(&str, &AtomicU64); 24] = [
            ("tx_frames", &self.tx_frames),
            ("tx_bytes", &self.tx_bytes),
            ("tx_dropped_backend_busy", &self.tx_dropped_backend_busy),
            ("tx_dropped_backend_error", &self.tx_dropped_backend_error),
            ("tx_kicks", &self.tx_kicks),
            ("rx_frames", &self.rx_frames),
            ("rx_bytes", &self.rx_bytes),
            ("rx_dropped_no_buffer", &self.rx_dropped_no_buffer),
            ("rx_truncated", &self.rx_truncated),
            ("rx_backend_errors", &self.rx_backend_errors),
            ("rx_kicks", &self.rx_kicks),
            ("interrupts", &self.interrupts),
            ("interrupts_suppressed", &self.interrupts_suppressed),
            ("used_ring_errors", &self.used_ring_errors),
            ("queues_broken", &self.queues_broken),
            ("needs_reset", &self.needs_reset),
            ("resets", &self.resets),
            ("mmio_refused", &self.mmio_refused),
            ("pcap_errors", &self.pcap_errors),
            ("loop_iterations", &self.loop_iterations),
            ("poll_ticks", &self.poll_ticks),
            ("rx_starved", &self.rx_starved),
            ("features_offered", &self.features_offered),
            ("features_acked", &self.features_acked),
        ];
        let mut out: Vec<(String, u64)> = plain
            .iter()
            .map(|(name, c)| (name.to_string(), Self::get(c)))
            .collect();
        if let Ok(backend) = self.backend.lock() {
            out.extend(backend.iter().cloned());
        }
        out.push(("tx_malformed".into(), self.tx_malformed.total()));
        out.push(("rx_malformed".into(), self.rx_malformed.total()));
        for (dir, counters) in [("tx", &self.tx_malformed), ("rx", &self.rx_malformed)] {
            for reason in MalformedReason::ALL {
                let n = counters.get(reason);
                if n > 0 {
                    out.push((format!("{dir}_malformed_{}", reason.name()), n));
                }
            }
        }
        out
    }
}

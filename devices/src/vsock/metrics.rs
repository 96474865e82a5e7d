//! Counters of one virtio-vsock device (plain atomics, read by tests and the VMM).
//!
//! Every guest packet the device does not carry is counted exactly once, by reason
//! ([`BadPacket`]); packets answered with an RST are counted under their reason too. Counters
//! only grow; `Relaxed` ordering is enough because nothing synchronises on them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::virtio::log_gate::LogGate;

/// Why a guest TX packet was not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPacket {
    /// The chain ended on a descriptor with NEXT set (a loop, a bad `next`, an unreadable
    /// descriptor), or named no descriptor at all.
    Truncated,
    /// More descriptors or memory segments than the device accepts in one chain.
    TooManyDescriptors,
    /// A buffer lies (partly) outside guest memory.
    OutOfMemory,
    /// A device-writable buffer in a TX chain (or a device-readable one in an RX chain).
    WrongDirection,
    /// A buffer overlaps one of the device's rings.
    OverlapsRing,
    /// Fewer bytes than the 44-byte header (an RX buffer: no byte of room after it). Dropped.
    HeaderTooShort,
    /// `len` is larger than the bytes the chain carries after the header. Dropped.
    LenBeyondBuffer,
    /// `len` is larger than the largest payload the device accepts. Dropped.
    TooLong,
    /// `src_cid` is not the guest's CID. Dropped (there is nobody to answer).
    WrongSrcCid,
    /// `dst_cid` is not the host (2). Answered with an RST.
    WrongDstCid,
    /// `type` is not STREAM. Answered with an RST.
    BadType,
    /// `op` is not one the protocol defines. Answered with an RST.
    BadOp,
    /// No connection has these ports and the packet is not a REQUEST. Answered with an RST
    /// (an RST itself is only counted).
    UnknownConnection,
    /// A packet the connection's state does not allow (a second REQUEST, data before the
    /// connection is up or after the guest shut its sending side). The connection is reset.
    Protocol,
    /// More data than the credit the device advertised. The connection is reset.
    CreditExceeded,
}

impl BadPacket {
    /// All reasons, in counter order.
    pub const ALL: [BadPacket; 15] = [
        BadPacket::Truncated,
        BadPacket::TooManyDescriptors,
        BadPacket::OutOfMemory,
        BadPacket::WrongDirection,
        BadPacket::OverlapsRing,
        BadPacket::HeaderTooShort,
        BadPacket::LenBeyondBuffer,
        BadPacket::TooLong,
        BadPacket::WrongSrcCid,
        BadPacket::WrongDstCid,
        BadPacket::BadType,
        BadPacket::BadOp,
        BadPacket::UnknownConnection,
        BadPacket::Protocol,
        BadPacket::CreditExceeded,
    ];

    /// Short name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            BadPacket::Truncated => "truncated",
            BadPacket::TooManyDescriptors => "too_many_descriptors",
            BadPacket::OutOfMemory => "out_of_memory",
            BadPacket::WrongDirection => "wrong_direction",
            BadPacket::OverlapsRing => "overlaps_ring",
            BadPacket::HeaderTooShort => "header_too_short",
            BadPacket::LenBeyondBuffer => "len_beyond_buffer",
            BadPacket::TooLong => "too_long",
            BadPacket::WrongSrcCid => "wrong_src_cid",
            BadPacket::WrongDstCid => "wrong_dst_cid",
            BadPacket::BadType => "bad_type",
            BadPacket::BadOp => "bad_op",
            BadPacket::UnknownConnection => "unknown_connection",
            BadPacket::Protocol => "protocol",
            BadPacket::CreditExceeded => "credit_exceeded",
        }
    }
}

/// The counters of one vsock device.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    bad: [AtomicU64; BadPacket::ALL.len()],
    /// Host clients whose `CONNECT <port>` line was valid (a REQUEST went to the guest).
    pub host_connects: AtomicU64,
    /// Host-initiated connections the guest accepted (counted before `OK` is written).
    pub host_established: AtomicU64,
    /// Host clients closed for a malformed command line (too long, not CONNECT, bad port,
    /// or end of stream before the newline).
    pub connect_lines_bad: AtomicU64,
    /// Host clients closed because no complete command line arrived in time.
    pub connect_line_timeouts: AtomicU64,
    /// Host-initiated requests the guest did not answer in time.
    pub request_timeouts: AtomicU64,
    /// Guest REQUESTs connected to a host listener at `<uds_path>_<port>`.
    pub guest_connections: AtomicU64,
    /// Guest REQUESTs answered with an RST (no listener, or the connection limit).
    pub guest_refused: AtomicU64,
    /// Connections (or host clients) refused because the device holds its maximum.
    pub connection_limit: AtomicU64,
    /// Connections currently open (a gauge).
    pub connections_open: AtomicU64,
    /// Payload bytes carried from the guest to host sockets.
    pub bytes_guest_to_host: AtomicU64,
    /// Payload bytes carried from host sockets to the guest.
    pub bytes_host_to_guest: AtomicU64,
    /// Guest payload bytes that had to be copied into a connection's buffer because its host
    /// socket was full (the rest went from guest memory straight to the socket).
    pub bytes_buffered: AtomicU64,
    /// TX packets taken from the guest (all, including dropped ones).
    pub tx_packets: AtomicU64,
    /// RX packets given to the guest.
    pub rx_packets: AtomicU64,
    /// RSTs sent to the guest.
    pub rst_sent: AtomicU64,
    /// RSTs received from the guest.
    pub rst_received: AtomicU64,
    /// CREDIT_UPDATEs sent to the guest.
    pub credit_updates_sent: AtomicU64,
    /// CREDIT_REQUESTs sent to the guest.
    pub credit_requests_sent: AtomicU64,
    /// Control packets (RSTs) dropped because the guest posted no RX buffers for too long.
    pub control_dropped: AtomicU64,
    /// Host socket writes or reads that failed (the connection was reset).
    pub host_io_errors: AtomicU64,
    /// Connections closed by a shutdown that did not complete in time.
    pub shutdown_timeouts: AtomicU64,
    /// TX queue kicks.
    pub tx_kicks: AtomicU64,
    /// RX queue kicks.
    pub rx_kicks: AtomicU64,
    /// Interrupts sent.
    pub interrupts: AtomicU64,
    /// Used rings that could not be written (the queue is then broken until a reset).
    pub used_ring_errors: AtomicU64,
    /// Driver resets.
    pub resets: AtomicU64,
    /// Refused MMIO register or config-space accesses.
    pub mmio_refused: AtomicU64,
    /// Times DEVICE_NEEDS_RESET was raised.
    pub needs_reset: AtomicU64,
    /// Event-loop passes.
    pub loop_iterations: AtomicU64,
    /// Rate limit on log lines about bad packets.
    pub(crate) bad_log: LogGate,
}

impl VsockMetrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge (saturating at zero).
    pub fn sub(counter: &AtomicU64, n: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts one packet not carried for `reason`.
    pub fn bad(&self, reason: BadPacket) {
        self.bad[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Packets not carried for `reason`.
    pub fn bad_count(&self, reason: BadPacket) -> u64 {
        self.bad[reason as usize].load(Ordering::Relaxed)
    }

    /// Packets not carried, all reasons.
    pub fn bad_total(&self) -> u64 {
        BadPacket::ALL.iter().map(|&r| self.bad_count(r)).sum()
    }

    /// Every counter by name (bad packets as `bad_<reason>`), for reports.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = [
            ("host_connects", &self.host_connects),
            ("host_established", &self.host_established),
            ("connect_lines_bad", &self.connect_lines_bad),
            ("connect_line_timeouts", &self.connect_line_timeouts),
            ("request_timeouts", &self.request_timeouts),
            ("guest_connections", &self.guest_connections),
            ("guest_refused", &self.guest_refused),
            ("connection_limit", &self.connection_limit),
            ("connections_open", &self.connections_open),
            ("bytes_guest_to_host", &self.bytes_guest_to_host),
            ("bytes_host_to_guest", &self.bytes_host_to_guest),
            ("bytes_buffered", &self.bytes_buffered),
            ("tx_packets", &self.tx_packets),
            ("rx_packets", &self.rx_packets),
            ("rst_sent", &self.rst_sent),
            ("rst_received", &self.rst_received),
            ("credit_updates_sent", &self.credit_updates_sent),
            ("credit_requests_sent", &self.credit_requests_sent),
            ("control_dropped", &self.control_dropped),
            ("host_io_errors", &self.host_io_errors),
            ("shutdown_timeouts", &self.shutdown_timeouts),
            ("tx_kicks", &self.tx_kicks),
            ("rx_kicks", &self.rx_kicks),
            ("interrupts", &self.interrupts),
            ("used_ring_errors", &self.used_ring_errors),
            ("resets", &self.resets),
            ("mmio_refused", &self.mmio_refused),
            ("needs_reset", &self.needs_reset),
            ("loop_iterations", &self.loop_iterations),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Self::get(v)))
        .collect();
        out.extend(
            BadPacket::ALL
                .iter()
                .map(|&r| (format!("bad_{}", r.name()), self.bad_count(r))),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter_and_name() {
        let m = VsockMetrics::default();
        for (i, &r) in BadPacket::ALL.iter().enumerate() {
            assert_eq!(r as usize, i);
            for _ in 0..=i {
                m.bad(r);
            }
        }
        for (i, &r) in BadPacket::ALL.iter().enumerate() {
            assert_eq!(m.bad_count(r), i as u64 + 1, "{}", r.name());
        }
        let names: std::collections::HashSet<_> =
            m.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), m.snapshot().len(), "names are unique");
    }
}

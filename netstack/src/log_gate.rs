//! Rate limiting for log lines about events the guest (or a host peer) controls.
//!
//! A flood of refused flows must not become a flood of log lines. A [`LogGate`] counts every
//! event and lets a line through only for the first [`LogGate::FIRST`] events and then at
//! every power of two, so N events cost at most `FIRST + log2(N)` lines and each line carries
//! the running total. Count-based, not time-based, so what it lets through never depends on
//! timing and tests can assert on it.
//!
//! This mirrors `devices::virtio::log_gate::LogGate` (same rule, same constants): `devices`
//! only depends on this crate with its `user` backend, so the netstack keeps its own copy
//! rather than reaching up the crate graph.

/// Decides which of a stream of similar events gets a log line.
#[derive(Debug, Default)]
pub struct LogGate {
    seen: u64,
}

impl LogGate {
    /// Events that are always logged before the gate starts thinning them out.
    pub const FIRST: u64 = 8;

    /// A gate that has seen nothing yet.
    pub const fn new() -> Self {
        Self { seen: 0 }
    }

    /// Counts one event; returns `Some(total events so far)` if this one should be logged.
    pub fn admit(&mut self) -> Option<u64> {
        self.seen = self.seen.wrapping_add(1);
        let n = self.seen;
        (n <= Self::FIRST || n.is_power_of_two()).then_some(n)
    }

    /// Events counted so far.
    #[cfg(test)]
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_costs_a_logarithmic_number_of_lines() {
        let mut gate = LogGate::new();
        let lines = (0..100_000).filter(|_| gate.admit().is_some()).count() as u64;
        assert_eq!(gate.seen(), 100_000);
        // 1..=8, then 16, 32, ..., 65536.
        assert_eq!(lines, LogGate::FIRST + 13);
    }
}

//! Rate limiting for log lines about guest misbehaviour.
//!
//! A guest controls how often it misbehaves, so a log line per event would let it flood the
//! host's logs (a config-space write storm is 100 000 lines). A [`LogGate`] counts every
//! event and lets a line through only for the first [`LogGate::FIRST`] events and then at
//! every power of two, so N events cost at most `FIRST + log2(N)` lines and each line carries
//! the running total. The gate is count-based, not time-based: what it lets through never
//! depends on timing, so tests can assert on it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Decides which of a stream of similar events gets a log line.
#[derive(Debug, Default)]
pub struct LogGate {
    seen: AtomicU64,
}

impl LogGate {
    /// Events that are always logged before the gate starts thinning them out.
    pub const FIRST: u64 = 8;

    /// A gate that has seen nothing yet.
    pub const fn new() -> Self {
        Self {
            seen: AtomicU64::new(0),
        }
    }

    /// Counts one event; returns `Some(total events so far)` if this one should be logged.
    pub fn admit(&self) -> Option<u64> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        (n <= Self::FIRST || n.is_power_of_two()).then_some(n)
    }

    /// Events counted so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_of_events_costs_a_logarithmic_number_of_lines() {
        let gate = LogGate::new();
        let lines = (0..100_000).filter(|_| gate.admit().is_some()).count() as u64;
        assert_eq!(gate.seen(), 100_000);
        // 1..=8, then 16, 32, ..., 65536.
        assert_eq!(lines, LogGate::FIRST + 13);
    }

    #[test]
    fn the_first_events_are_all_logged_with_their_number() {
        let gate = LogGate::new();
        let admitted: Vec<_> = (0..10).filter_map(|_| gate.admit()).collect();
        assert_eq!(admitted, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }
}

//! The byte budget the TCP out-of-order queues of one netstack share (kept in `Core`, used by
//! `tcp::ooo`). Below both, so neither depends on the other for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Most out-of-order payload bytes all connections of one netstack may hold together.
pub(crate) const MAX_BYTES_TOTAL: usize = 4 * 1024 * 1024;

/// Byte budget shared by the out-of-order queues of one netstack (kept in `Core`).
/// Every queue returns what it took when it is dropped, so closing or resetting a flow
/// frees its share without any bookkeeping by the caller.
#[derive(Clone, Debug)]
pub(crate) struct OooBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Default for OooBudget {
    fn default() -> Self {
        Self::with_limit(MAX_BYTES_TOTAL)
    }
}

impl OooBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn with_limit(limit: usize) -> Self {
        OooBudget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Bytes currently held by all queues.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit under the limit.
    pub(crate) fn take(&self, n: usize) -> bool {
        // One thread owns the netstack; the atomic only makes the budget `Send`.
        let used = self.used.load(Ordering::Relaxed);
        if used + n > self.limit {
            return false;
        }
        self.used.store(used + n, Ordering::Relaxed);
        true
    }

    /// Gives `n` bytes back.
    pub(crate) fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

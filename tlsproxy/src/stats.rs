//! Counters of the interception proxy, shared between its thread and whoever reports them
//! (`--net-stats`, the embedding API).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters (relaxed atomics: each is exact, the set is not a snapshot).
        #[derive(Debug, Default)]
        pub struct ProxyStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl ProxyStats {
            /// Every counter by name.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((concat!("tls_proxy_", stringify!($name)), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Flows the netstack handed over.
    flows,
    /// Flows whose guest handshake completed with a minted certificate.
    guest_handshakes,
    /// Flows whose upstream could not be reached (connect failed or timed out).
    upstream_unreachable,
    /// Flows refused because the upstream's certificate did not verify.
    upstream_verify_failed,
    /// Flows that failed in the guest's handshake (it does not trust our CA, or hung up).
    guest_handshake_failed,
    /// HTTP requests relayed.
    http_requests,
    /// Requests refused because the Host/:authority named another host than the SNI.
    fronting_refused,
    /// Placeholders replaced by secret values.
    secrets_substituted,
    /// Requests cut because a placeholder was headed where its secret may not go.
    secret_violations,
    /// Flows relayed as opaque bytes (not HTTP).
    opaque_flows,
    /// Bytes of plaintext from the guest relayed upstream.
    bytes_up,
    /// Bytes of plaintext from the upstream relayed to the guest.
    bytes_down,
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_every_counter() {
        let s = ProxyStats::default();
        add(&s.flows, 2);
        let snap = s.snapshot();
        assert!(snap.contains(&("tls_proxy_flows", 2)));
        assert!(snap.iter().any(|(n, _)| *n == "tls_proxy_bytes_down"));
    }
}

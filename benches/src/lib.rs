//! Shared helpers for ringfence benchmarks (host-side sink/source/echo servers).

//! Shared pieces of the ringfence benchmarks: the host-side traffic peers ([`peer`]) used by
//! `cargo xtask bench` and the network tests, the same for every system under test.

pub mod dns;
pub mod peer;

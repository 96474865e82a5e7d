//! In-process datapath tests: smoltcp plays the guest, real host sockets on loopback.
//! Each test builds a [`Harness`] and drives it with bounded loops.

mod basic;
mod common;
mod dns_tcp;
mod embedder;
mod ipv6;
mod netns;
mod policy;
mod tcp;
mod tcp_edge;
mod tcp_ooo;
mod timers;
mod tls_sni;
mod udp;

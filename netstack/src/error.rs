//! Errors surfaced by [`crate::Netstack::new`]. Per-packet problems are never errors:
//! they are counted in [`crate::NetMetrics`] and the frame is dropped.

use std::net::SocketAddr;

/// Why the netstack could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The IPv4 pool cannot hold the requested per-VM /30.
    #[error("IPv4 pool {pool}/{prefix} has no /30 number {index}: use a larger pool or a smaller VM index")]
    Ipv4PoolTooSmall {
        /// Pool base address.
        pool: std::net::Ipv4Addr,
        /// Pool prefix length.
        prefix: u8,
        /// Requested /30 index.
        index: u32,
    },
    /// The IPv6 pool cannot hold the requested per-VM /64.
    #[error("IPv6 pool {pool}/{prefix} has no /64 number {index}: the pool must be /64 or shorter and large enough")]
    Ipv6PoolTooSmall {
        /// Pool base address.
        pool: std::net::Ipv6Addr,
        /// Pool prefix length.
        prefix: u8,
        /// Requested /64 index.
        index: u32,
    },
    /// A configured value is outside its allowed range.
    #[error("invalid network configuration: {what} = {value} ({hint})")]
    InvalidConfig {
        /// Name of the field.
        what: &'static str,
        /// The offending value.
        value: String,
        /// What is allowed.
        hint: &'static str,
    },
    /// A published port could not be bound on the host.
    #[error("cannot publish {proto} port {bind} -> guest port {guest_port}: {source} (is the port already in use?)")]
    PublishBind {
        /// Host address that failed to bind.
        bind: SocketAddr,
        /// Guest port it was meant for.
        guest_port: u16,
        /// "tcp" or "udp".
        proto: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

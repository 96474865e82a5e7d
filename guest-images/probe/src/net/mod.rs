//! Networking: the virtio-net driver, the smoltcp interface around it, and
//! address configuration (static from the command line, or DHCP) and DNS.

pub mod csum_offload;
pub mod stack;
pub mod virtio_net;
pub mod wait;

pub use stack::{NetError, Stack};

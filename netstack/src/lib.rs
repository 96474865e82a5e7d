//! Zero-copy userspace netstack (design §6): the `--net user` backend of ringfence.
//!
//! The guest speaks Ethernet; the host speaks sockets. This crate translates between the
//! two without a TCP/IP stack in the middle:
//!
//! * ARP, NDP, DHCPv4 and router advertisements are answered locally: the guest gets a
//!   /30 out of an IPv4 pool (network .0, gateway .1, guest .2) and a /64 for SLAAC.
//! * Each guest TCP connection or UDP 4-tuple becomes a host socket, opened only if the
//!   [`FlowGate`] (the compiled policy) allows it. The gateway address and the host alias
//!   name reach the host's loopback.
//! * Payload is never copied by us: guest TX buffers are passed to `sendmsg()` as iovecs,
//!   and host data is received straight into guest RX buffers behind headers we build
//!   (the `tcp` module documentation explains copies, ACKs and windows in detail).
//! * DNS queries to the gateway are intercepted: the host alias is answered locally,
//!   denied names get REFUSED, others are relayed to the upstream resolver.
//!
//! The device loop drives a [`Netstack`] with guest frames, readiness of the host fds it
//! is told to watch ([`Netstack::take_interest_changes`]) and timers. Host sockets are
//! non-blocking and used with plain syscalls, one per operation; batching happens in
//! the device loop. Everything runs on the device thread; there are no locks.

mod arp;
mod checksum;
mod config;
mod core;
mod dhcp;
mod dns;
mod error;
mod flow_key;
mod flow_table;
mod frame;
mod gate;
mod icmp;
mod interest_set;
mod ipaddr;
mod log_gate;
mod metrics;
mod ndp;
mod ooo_budget;
mod ping;
mod publish;
mod secret_guard;
mod stack;
mod sys;
mod tcp;
mod tls;
mod udp;

#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_entry;

pub use crate::config::{
    Limits, NetConfig, PortProto, PublishedPort, TlsInspection, DEFAULT_TLS_PORT,
};
pub use crate::core::{FdInterest, InterestOp, RxGso, RxMeta, TxMeta};
pub use crate::error::NetError;
pub use crate::gate::{AllowAll, Direction, FlowGate, FlowInfo, FlowProto, SwappableGate, Verdict};
pub use crate::interest_set::InterestSet;
pub use crate::metrics::NetMetrics;
pub use crate::secret_guard::PlaceholderGuard;
pub use crate::stack::{EmbedderError, Netstack, ServiceQueue, ServiceRefusal};
pub use crate::sys::{poll, seqpacket_pair};
pub use crate::tls::{
    parse_client_hello, ClientHello, HandedFlow, HandoffRef, HelloError, TlsHandoff,
    MAX_CLIENT_HELLO,
};

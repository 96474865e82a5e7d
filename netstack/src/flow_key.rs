//! How flows are named: the guest-side key of a flow ([`FlowKey`]) and the token tags of the
//! sockets that are not flows. Below the flow table and the protocols that fill it.

use std::net::SocketAddr;

/// Tokens with this bit set name published-port listeners, not flows.
pub(crate) const LISTENER_TAG: u64 = 1 << 63;
/// Tokens with this bit set name the shared raw ICMP sockets.
pub(crate) const ICMP_TAG: u64 = 1 << 62;

/// Transport of a flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KeyProto {
    Tcp,
    Udp,
}

/// A flow as the guest sees it: its own endpoint and the remote endpoint it talks to
/// (the original destination, or the gateway for published ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub proto: KeyProto,
    pub guest: SocketAddr,
    pub remote: SocketAddr,
}

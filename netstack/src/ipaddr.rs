//! Conversions between std and smoltcp address types, and address classification helpers.
//! Owns nothing stateful.

use std::net::IpAddr;

use smoltcp::wire::IpAddress;

/// std address -> smoltcp address.
pub(crate) fn sip(ip: IpAddr) -> IpAddress {
    match ip {
        IpAddr::V4(a) => IpAddress::Ipv4(a),
        IpAddr::V6(a) => IpAddress::Ipv6(a),
    }
}

/// Whether a guest may open a flow to `ip` at all (not multicast/broadcast/unspecified).
pub(crate) fn is_unicast_destination(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_broadcast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

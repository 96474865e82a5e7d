//! Header parsing of guest frames (Ethernet, ARP, IPv4, IPv6) from the header copy.
//!
//! Owns length validation: every offset handed out is checked against the frame's real
//! length, and IP padding added by Ethernet is cut off using the IP length field.

use std::net::IpAddr;

use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet,
    Ipv6Packet,
};

use super::GuestFrame;

/// Why a frame was not processed; maps 1:1 to drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Drop {
    /// Lengths inconsistent or too short.
    Malformed,
    /// Protocol we do not handle.
    Unsupported,
}

/// Network-layer view of a guest IP packet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Next protocol.
    pub proto: IpProtocol,
    /// Offset of the L4 header in the frame.
    pub l4_off: usize,
    /// L4 length (header + payload), from the IP length field.
    pub l4_len: usize,
}

/// What the Ethernet payload turned out to be.
#[derive(Debug)]
pub(crate) enum L3 {
    /// An ARP packet.
    Arp(ArpRepr),
    /// An IPv4 or IPv6 packet.
    Ip(IpInfo),
}

/// Ethernet + network-layer parse.
pub(crate) fn parse_l3(frame: &GuestFrame<'_, '_>) -> Result<(EthernetAddress, L3), Drop> {
    let hdr = frame.header();
    let eth = EthernetFrame::new_checked(hdr).map_err(|_| Drop::Malformed)?;
    let src_mac = eth.src_addr();
    let l3 = &hdr[14..];
    let avail = frame.len() - 14;
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let pkt = ArpPacket::new_checked(l3).map_err(|_| Drop::Malformed)?;
            let repr = ArpRepr::parse(&pkt).map_err(|_| Drop::Unsupported)?;
            Ok((src_mac, L3::Arp(repr)))
        }
        EthernetProtocol::Ipv4 => {
            if l3.len() < 20 {
                return Err(Drop::Malformed);
            }
            let pkt = Ipv4Packet::new_unchecked(l3);
            let ihl = usize::from(pkt.header_len());
            let total = usize::from(pkt.total_len());
            if pkt.version() != 4 || ihl < 20 || ihl > l3.len() || total < ihl || total > avail {
                return Err(Drop::Malformed);
            }
            if pkt.more_frags() || pkt.frag_offset() != 0 {
                return Err(Drop::Unsupported);
            }
            Ok((
                src_mac,
                L3::Ip(IpInfo {
                    src: IpAddr::V4(pkt.src_addr()),
                    dst: IpAddr::V4(pkt.dst_addr()),
                    proto: pkt.next_header(),
                    l4_off: 14 + ihl,
                    l4_len: total - ihl,
                }),
            ))
        }
        EthernetProtocol::Ipv6 => {
            if l3.len() < 40 {
                return Err(Drop::Malformed);
            }
            let pkt = Ipv6Packet::new_unchecked(l3);
            let plen = usize::from(pkt.payload_len());
            if pkt.version() != 6 || 40 + plen > avail {
                return Err(Drop::Malformed);
            }
            Ok((
                src_mac,
                L3::Ip(IpInfo {
                    src: IpAddr::V6(pkt.src_addr()),
                    dst: IpAddr::V6(pkt.dst_addr()),
                    proto: pkt.next_header(),
                    l4_off: 14 + 40,
                    l4_len: plen,
                }),
            ))
        }
        _ => Err(Drop::Unsupported),
    }
}

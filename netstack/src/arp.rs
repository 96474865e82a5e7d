//! ARP (RFC 826): the gateway answers for every IPv4 address except the guest's own, so a
//! guest with any static route still reaches us. Owns nothing else; never learns ARP
//! entries (the guest's MAC comes from its Ethernet source address).

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr,
};

use crate::core::Core;

/// Answers an ARP request from the guest.
pub(crate) fn handle(core: &mut Core, repr: ArpRepr) {
    core.metrics.arp_frames += 1;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = repr
    else {
        core.metrics.drop_unsupported += 1;
        return;
    };
    if operation != ArpOperation::Request
        || target_protocol_addr == core.addrs.guest4
        || target_protocol_addr == source_protocol_addr
        || target_protocol_addr.is_unspecified()
    {
        // Replies, probes for the guest's own address and gratuitous ARP need no answer.
        return;
    }
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: core.addrs.gateway_mac,
        source_protocol_addr: target_protocol_addr,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let eth = EthernetRepr {
        src_addr: core.addrs.gateway_mac,
        dst_addr: source_hardware_addr,
        ethertype: EthernetProtocol::Arp,
    };
    core.push_raw(14 + reply.buffer_len(), |buf| {
        eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..14]));
        reply.emit(&mut ArpPacket::new_unchecked(&mut buf[14..]));
    });
}

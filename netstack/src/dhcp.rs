//! DHCPv4 server (RFC 2131) for the VM's /30: the guest always gets the same address.
//!
//! Owns OFFER/ACK/NAK construction. Answers are broadcast at L3 to 255.255.255.255 and
//! unicast at L2 to the client's MAC, which every client accepts before it has an address.

use std::net::{IpAddr, Ipv4Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, IpProtocol, UdpPacket, UdpRepr,
};

use crate::core::Core;
use crate::ipaddr::sip;

/// DHCP server port.
pub(crate) const SERVER_PORT: u16 = 67;
/// DHCP client port.
pub(crate) const CLIENT_PORT: u16 = 68;
/// Option 26, Interface MTU (RFC 2132 §5.1).
const OPT_MTU: u8 = 26;

/// Handles one DHCP message (the UDP payload) from the guest.
pub(crate) fn handle(core: &mut Core, payload: &[u8]) {
    core.metrics.dhcp_frames += 1;
    let Ok(pkt) = DhcpPacket::new_checked(payload) else {
        core.metrics.drop_malformed += 1;
        return;
    };
    let Ok(req) = DhcpRepr::parse(&pkt) else {
        core.metrics.drop_malformed += 1;
        return;
    };
    let a = &core.addrs;
    let reply_type = match req.message_type {
        DhcpMessageType::Discover => DhcpMessageType::Offer,
        DhcpMessageType::Request => {
            let wanted = req.requested_ip.unwrap_or(req.client_ip);
            let for_us = req.server_identifier.is_none_or(|s| s == a.gateway4);
            if !for_us {
                // The client chose another server; stay silent (RFC 2131 §4.3.2).
                return;
            }
            if wanted == a.guest4 {
                DhcpMessageType::Ack
            } else {
                DhcpMessageType::Nak
            }
        }
        _ => return,
    };
    let nak = reply_type == DhcpMessageType::Nak;
    let mtu = core.cfg.mtu.to_be_bytes();
    let extra = [DhcpOption {
        kind: OPT_MTU,
        data: &mtu,
    }];
    let mut dns: heapless::Vec<Ipv4Addr, 3> = heapless::Vec::new(); // capacity = smoltcp's MAX_DNS_SERVER_COUNT
    if !nak {
        let _ = dns.push(a.gateway4);
    }
    let lease = u32::try_from(core.cfg.dhcp_lease.as_secs()).unwrap_or(u32::MAX);
    let reply = DhcpRepr {
        message_type: reply_type,
        transaction_id: req.transaction_id,
        secs: 0,
        client_hardware_address: req.client_hardware_address,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: if nak { Ipv4Addr::UNSPECIFIED } else { a.guest4 },
        server_ip: a.gateway4,
        router: (!nak).then_some(a.gateway4),
        subnet_mask: (!nak).then_some(a.netmask4),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(a.gateway4),
        parameter_request_list: None,
        dns_servers: (!nak).then_some(dns),
        max_size: None,
        lease_duration: (!nak).then_some(lease),
        renew_duration: None,
        rebind_duration: None,
        additional_options: if nak { &[] } else { &extra },
    };
    let src = IpAddr::V4(a.gateway4);
    let dst = IpAddr::V4(Ipv4Addr::BROADCAST);
    let mut ep = core.to_guest(src, dst);
    ep.dst_mac = req.client_hardware_address;
    let dhcp_len = reply.buffer_len();
    let udp = UdpRepr {
        src_port: SERVER_PORT,
        dst_port: CLIENT_PORT,
    };
    core.push_ctrl(&ep, IpProtocol::Udp, 8 + dhcp_len, |buf| {
        udp.emit(
            &mut UdpPacket::new_unchecked(buf),
            &sip(src),
            &sip(dst),
            dhcp_len,
            |p| {
                // The buffer was sized with buffer_len(), so emit cannot run out of room.
                let _ = reply.emit(&mut DhcpPacket::new_unchecked(p));
            },
            &ChecksumCapabilities::default(),
        );
    });
}

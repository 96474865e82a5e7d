//! ARP, DHCP, ICMP echo to the gateway, malformed input.

use std::time::Duration;

use netstack::testkit::Harness;
use smoltcp::socket::{dhcpv4, icmp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address};

use crate::common::cfg;

#[test]
fn dhcp_lease_is_the_first_slash30() {
    let mut h = Harness::unconfigured(cfg());
    let dhcp = h.sockets.add(dhcpv4::Socket::new());
    let mut got = None;
    h.run_until(10_000, Duration::from_secs(10), |h| {
        if let Some(dhcpv4::Event::Configured(c)) = h.sockets.get_mut::<dhcpv4::Socket>(dhcp).poll()
        {
            got = Some((c.address, c.router, c.dns_servers.to_vec()));
        }
        got.is_some()
    });
    let (addr, router, dns) = got.expect("no DHCP lease within the step budget");
    assert_eq!(
        addr,
        "172.16.0.2/30".parse::<smoltcp::wire::Ipv4Cidr>().unwrap()
    );
    assert_eq!(router, Some(Ipv4Address::new(172, 16, 0, 1)));
    assert_eq!(dns, vec![Ipv4Address::new(172, 16, 0, 1)]);
    assert!(h.ns.metrics().dhcp_frames >= 2, "discover + request");
}

#[test]
fn ping_gateway_gets_echo_reply_after_arp() {
    let mut h = Harness::new(cfg());
    let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let s = h.sockets.add(icmp::Socket::new(rx, tx));
    h.sockets
        .get_mut::<icmp::Socket>(s)
        .bind(icmp::Endpoint::Ident(0x4242))
        .unwrap();
    let gw = IpAddress::Ipv4(h.gateway());
    let req = Icmpv4Repr::EchoRequest {
        ident: 0x4242,
        seq_no: 7,
        data: b"ringfence",
    };
    {
        let sock = h.sockets.get_mut::<icmp::Socket>(s);
        let buf = sock.send(req.buffer_len(), gw).unwrap();
        req.emit(
            &mut Icmpv4Packet::new_unchecked(buf),
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
    }
    let mut reply = None;
    h.run_until(10_000, Duration::from_secs(5), |h| {
        let sock = h.sockets.get_mut::<icmp::Socket>(s);
        if sock.can_recv() {
            let (data, from) = sock.recv().unwrap();
            let pkt = Icmpv4Packet::new_checked(data).unwrap();
            let r = Icmpv4Repr::parse(&pkt, &Default::default()).unwrap();
            if let Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } = r
            {
                reply = Some((ident, seq_no, data.to_vec(), from));
            }
        }
        reply.is_some()
    });
    let (ident, seq_no, data, from) = reply.expect("no echo reply");
    assert_eq!(
        (ident, seq_no, &data[..], from),
        (0x4242, 7, &b"ringfence"[..], gw)
    );
    assert!(
        h.ns.metrics().arp_frames >= 1,
        "guest resolved the gateway by ARP"
    );
    let _ = IpCidr::new(gw, 30);
}

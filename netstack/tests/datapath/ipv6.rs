//! IPv6: router advertisement for SLAAC, NDP for the gateway, TCP over v6 to host ::1.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv6Addr, TcpListener};
use std::time::{Duration, Instant};

use netstack::testkit::Harness;
use netstack::{Netstack, TxMeta};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpCidr, IpEndpoint, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscRepr, RawHardwareAddress,
};

use crate::common::{cfg, tcp_socket};

/// Builds an ICMPv6 frame from the guest.
fn icmpv6_frame(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: EthernetAddress,
    repr: &Icmpv6Repr<'_>,
) -> Vec<u8> {
    let mac = EthernetAddress(cfg().guest_mac);
    let len = repr.buffer_len();
    let mut f = vec![0u8; 14 + 40 + len];
    EthernetRepr {
        src_addr: mac,
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv6,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut f[..14]));
    Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: len,
        hop_limit: 255,
    }
    .emit(&mut Ipv6Packet::new_unchecked(&mut f[14..54]));
    repr.emit(
        &src,
        &dst,
        &mut Icmpv6Packet::new_unchecked(&mut f[54..]),
        &ChecksumCapabilities::default(),
    );
    f
}

fn one_reply(ns: &mut Netstack) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut b = [IoSliceMut::new(&mut buf)];
    let (n, _) = ns
        .next_guest_frame(&mut b, Instant::now())
        .expect("no reply");
    buf[..n].to_vec()
}

#[test]
fn router_solicitation_gets_prefix_for_slaac() {
    let mut ns = Netstack::new(cfg()).unwrap();
    let ll: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
    let rs = Icmpv6Repr::Ndisc(NdiscRepr::RouterSolicit {
        lladdr: Some(RawHardwareAddress::from(EthernetAddress(cfg().guest_mac))),
    });
    let f = icmpv6_frame(
        ll,
        "ff02::2".parse().unwrap(),
        EthernetAddress([0x33, 0x33, 0, 0, 0, 2]),
        &rs,
    );
    ns.handle_guest_frame(&[IoSlice::new(&f)], TxMeta::default(), Instant::now());
    let r = one_reply(&mut ns);
    let eth = EthernetFrame::new_checked(&r[..]).unwrap();
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.src_addr(), "fe80::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(ip.dst_addr(), ll);
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv6Repr::parse(
        &ip.src_addr(),
        &ip.dst_addr(),
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    let Icmpv6Repr::Ndisc(NdiscRepr::RouterAdvert {
        prefix_info: Some(p),
        mtu,
        ..
    }) = repr
    else {
        panic!("not an RA: {repr:?}");
    };
    assert_eq!(p.prefix, "fd42:6d73:62::".parse::<Ipv6Addr>().unwrap());
    assert_eq!(p.prefix_len, 64);
    assert_eq!(mtu, Some(1500));
}

#[test]
fn neighbor_solicitation_for_gateway_is_answered() {
    let mut ns = Netstack::new(cfg()).unwrap();
    let me: Ipv6Addr = "fd42:6d73:62::2".parse().unwrap();
    let gw: Ipv6Addr = "fd42:6d73:62::1".parse().unwrap();
    let ns_repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: gw,
        lladdr: Some(RawHardwareAddress::from(EthernetAddress(cfg().guest_mac))),
    });
    let f = icmpv6_frame(
        me,
        "ff02::1:ff00:1".parse().unwrap(),
        EthernetAddress([0x33, 0x33, 0xff, 0, 0, 1]),
        &ns_repr,
    );
    ns.handle_guest_frame(&[IoSlice::new(&f)], TxMeta::default(), Instant::now());
    let r = one_reply(&mut ns);
    let eth = EthernetFrame::new_checked(&r[..]).unwrap();
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv6Repr::parse(
        &ip.src_addr(),
        &ip.dst_addr(),
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    match repr {
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            target_addr,
            lladdr,
            ..
        }) => {
            assert_eq!(target_addr, gw);
            assert_eq!(
                lladdr,
                Some(RawHardwareAddress::from(EthernetAddress(cfg().gateway_mac)))
            );
        }
        other => panic!("not an NA: {other:?}"),
    }
}

#[test]
fn tcp_over_ipv6_reaches_host_loopback() {
    let l = match TcpListener::bind("[::1]:0") {
        Ok(l) => l,
        Err(e) => {
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("SKIPPED: no IPv6 loopback ({e})\n"),
            ); // uncaptured, so CI logs show it
            return;
        }
    };
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        c.write_all(&b).unwrap();
    });
    let mut h = Harness::new(cfg());
    let (prefix, gw6) = h.ns.ipv6_addresses();
    let me = Ipv6Addr::from(u128::from(prefix) | 2);
    h.iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv6(me), 64)).unwrap();
    });
    h.iface.routes_mut().add_default_ipv6_route(gw6).unwrap();
    let s = tcp_socket(&mut h, 4096);
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .connect(cx, IpEndpoint::new(IpAddress::Ipv6(gw6), port), 44000)
        .unwrap();
    let mut echo = Vec::new();
    let mut sent = false;
    let ok = h.run_until(100_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        if sock.state() == tcp::State::Established && !sent {
            sent = sock.send_slice(b"six!!").unwrap() == 5;
        }
        let mut b = [0u8; 8];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut b).unwrap();
            echo.extend_from_slice(&b[..n]);
        }
        echo.len() == 5
    });
    assert!(
        ok,
        "state {} metrics {:?}",
        h.sockets.get::<tcp::Socket>(s).state(),
        h.ns.metrics()
    );
    assert_eq!(echo, b"six!!");
    server.join().unwrap();
}

#[test]
fn icmpv6_echo_to_gateway_is_answered() {
    let mut ns = Netstack::new(cfg()).unwrap();
    let me: Ipv6Addr = "fd42:6d73:62::2".parse().unwrap();
    let gw: Ipv6Addr = "fd42:6d73:62::1".parse().unwrap();
    let req = Icmpv6Repr::EchoRequest {
        ident: 9,
        seq_no: 1,
        data: b"v6",
    };
    let f = icmpv6_frame(me, gw, EthernetAddress(cfg().gateway_mac), &req);
    ns.handle_guest_frame(&[IoSlice::new(&f)], TxMeta::default(), Instant::now());
    let r = one_reply(&mut ns);
    let eth = EthernetFrame::new_checked(&r[..]).unwrap();
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (gw, me));
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv6Repr::parse(
        &ip.src_addr(),
        &ip.dst_addr(),
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    assert_eq!(
        repr,
        Icmpv6Repr::EchoReply {
            ident: 9,
            seq_no: 1,
            data: b"v6"
        }
    );
}

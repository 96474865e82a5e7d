//! The compiled policy as the flow gate: denied flows get a RST, DNS names are refused
//! locally, and swapping in a stricter policy cuts live flows.

use std::io::Read;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::time::Duration;

use netstack::testkit::Harness;
use netstack::NetConfig;
use policy::{parse_rules, Action, CompiledPolicy, Policy, PolicyContext};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::common::{cfg, connect_gateway, serve_one, tcp_socket, wait_established};

pub fn compiled(rules: &str, default_egress: Action) -> Box<CompiledPolicy> {
    let (_, gw) = Harness::new(cfg()).ns.ipv4_addresses();
    let ctx = PolicyContext {
        host_addrs: vec![IpAddr::V4(gw)],
    };
    let p = Policy::new(default_egress, Action::Allow, parse_rules(rules).unwrap());
    Box::new(CompiledPolicy::new(&p, &ctx).unwrap())
}

#[test]
fn denied_port_gets_rst_allowed_port_connects() {
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pd) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let rules = format!("allow@host:tcp:{pa}");
    let mut h = Harness::with_gate(cfg(), compiled(&rules, Action::Deny));
    let s1 = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s1, pd, 43000);
    assert!(
        !wait_established(&mut h, s1),
        "denied flow must not connect"
    );
    assert_eq!(h.ns.metrics().flows_denied, 1);
    let s2 = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s2, pa, 43001);
    assert!(wait_established(&mut h, s2));
    denied.set_nonblocking(true).unwrap();
    assert!(
        denied.accept().is_err(),
        "no host connection for the denied flow"
    );
}

#[test]
fn dns_name_not_allowed_is_refused_locally() {
    let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
    resolver.set_nonblocking(true).unwrap();
    let cfg = NetConfig {
        dns_upstreams: vec![resolver.local_addr().unwrap()],
        ..cfg()
    };
    let mut h = Harness::with_gate(cfg, compiled("allow@.example.com:tcp:443", Action::Deny));
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let s = h.sockets.add(udp::Socket::new(rx, tx));
    h.sockets.get_mut::<udp::Socket>(s).bind(5555).unwrap();
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["secret-data", "evil", "test"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let dns = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), 53);
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(&q, dns)
        .unwrap();
    let mut answer = None;
    h.run_until(10_000, Duration::from_secs(5), |h| {
        if let Ok((d, _)) = h.sockets.get_mut::<udp::Socket>(s).recv() {
            answer = Some(d.to_vec());
        }
        answer.is_some()
    });
    let a = answer.expect("no local answer");
    assert_eq!(a[3] & 0x0f, 5, "REFUSED");
    let mut buf = [0u8; 512];
    assert!(
        resolver.recv_from(&mut buf).is_err(),
        "query leaked upstream"
    );
}

#[test]
fn stricter_policy_cuts_live_flow() {
    let (port, server) = serve_one(move |mut c| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 8];
        c.read(&mut b).map_err(|e| e.kind())
    });
    let mut h = Harness::with_gate(cfg(), compiled("allow@host:tcp", Action::Deny));
    let s = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s, port, 43002);
    assert!(wait_established(&mut h, s));
    let cut = h.ns.set_gate(compiled("deny@host", Action::Deny));
    assert_eq!(cut, 1);
    let closed = h.run_until(10_000, Duration::from_secs(5), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    });
    assert!(closed);
    assert_eq!(
        server.join().unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

/// Names the netstack saw in DNS answers are attributed to later connections, so a
/// domain rule allows `www.example.com`'s address while the bare address is denied; an
/// answer pointing into a private range is dropped (rebind protection). Runs in a test
/// netns so the "public" TEST-NET server is ours.
#[test]
fn domain_rules_follow_dns_answers_and_block_rebinding() {
    let Some(_ns) = crate::netns::enter_netns(false) else {
        return;
    };
    let server = TcpListener::bind("192.0.2.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        while let Ok((c, _)) = server.accept() {
            drop(c);
        }
    });
    let up = fake_resolver(|q, r| {
        // Every name resolves to 192.0.2.1, except names starting with "evil".
        let addr = if q[13..17] == *b"evil" {
            [10, 0, 0, 1]
        } else {
            [192, 0, 2, 1]
        };
        r[7] = 1;
        a_record(r, addr);
    });
    let cfg = NetConfig {
        dns_upstreams: vec![up],
        ..cfg()
    };
    let rules = format!("allow@.example.com:tcp:{port}");
    let mut h = Harness::with_gate(cfg, compiled(&rules, Action::Deny));
    let target = IpEndpoint::new(
        IpAddress::Ipv4(smoltcp::wire::Ipv4Address::new(192, 0, 2, 1)),
        port,
    );
    // Before any DNS answer the address is just "public": denied.
    let s0 = tcp_socket(&mut h, 4096);
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s0)
        .connect(cx, target, 43010)
        .unwrap();
    assert!(
        !wait_established(&mut h, s0),
        "unattributed address must be denied"
    );
    // Resolve www.example.com through the gateway.
    let answer = dns_roundtrip(&mut h, "www.example.com").expect("no answer");
    assert_eq!(&answer[answer.len() - 4..], &[192, 0, 2, 1]);
    let s1 = tcp_socket(&mut h, 4096);
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s1)
        .connect(cx, target, 43011)
        .unwrap();
    assert!(
        wait_established(&mut h, s1),
        "attributed address must be allowed"
    );
    // Rebinding under public-only: a name whose answer points into a private range is
    // dropped before the guest sees it; a public answer passes.
    let mut h = Harness::with_gate(
        NetConfig {
            dns_upstreams: vec![up],
            ..crate::common::cfg()
        },
        compiled("allow@public", Action::Deny),
    );
    assert!(dns_roundtrip(&mut h, "evil.test").is_none());
    assert_eq!(h.ns.metrics().drop_dns_rebind, 1);
    assert!(dns_roundtrip(&mut h, "good.test").is_some());
}

/// Rebind protection fails closed: an answer whose 65th record points into a private range
/// is judged whole (only 64 records used to be read), and an answer that cannot be read is
/// dropped instead of passed on unjudged (both found while comparing the `dns` fuzz corpus
/// with hickory-proto).
#[test]
fn long_and_unreadable_dns_answers_fail_closed() {
    let up = fake_resolver(|q, r| match &q[13..17] {
        // 64 public addresses, then a private one.
        b"many" => {
            r[6..8].copy_from_slice(&65u16.to_be_bytes());
            for i in 0..64u8 {
                a_record(r, [192, 0, 2, i]);
            }
            a_record(r, [10, 0, 0, 1]);
        }
        // A private address, then a record cut short.
        b"trnc" => {
            r[7] = 2;
            a_record(r, [10, 0, 0, 1]);
            r.extend_from_slice(&[0xc0, 12, 0, 1]);
        }
        _ => {
            r[7] = 1;
            a_record(r, [192, 0, 2, 1]);
        }
    });
    let mut h = Harness::with_gate(
        NetConfig {
            dns_upstreams: vec![up],
            ..cfg()
        },
        compiled("allow@public", Action::Deny),
    );
    assert!(dns_roundtrip(&mut h, "many.test").is_none());
    assert_eq!(h.ns.metrics().drop_dns_rebind, 1);
    assert!(dns_roundtrip(&mut h, "trnc.test").is_none());
    assert_eq!(h.ns.metrics().drop_dns_malformed, 1);
    assert!(dns_roundtrip(&mut h, "good.test").is_some());
}

pub(crate) fn dns_roundtrip(h: &mut Harness, name: &str) -> Option<Vec<u8>> {
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]);
    let s = h.sockets.add(udp::Socket::new(rx, tx));
    // A fresh local port per query (earlier sockets stay bound).
    let port = 5600 + h.sockets.iter().count() as u16;
    h.sockets.get_mut::<udp::Socket>(s).bind(port).unwrap();
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let dns = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), 53);
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(&q, dns)
        .unwrap();
    let mut answer = None;
    h.run_until(5_000, Duration::from_secs(2), |h| {
        if let Ok((d, _)) = h.sockets.get_mut::<udp::Socket>(s).recv() {
            answer = Some(d.to_vec());
        }
        answer.is_some()
    });
    answer
}

#[test]
fn swappable_gate_swap_then_rejudge_cuts_flow() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let _server = std::thread::spawn(move || l.accept().map(|(c, _)| c));
    let shared: netstack::SwappableGate = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
        *compiled("allow@host:tcp", Action::Deny),
    ));
    let mut h = Harness::with_gate(cfg(), Box::new(shared.clone()));
    let s = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s, port, 43020);
    assert!(wait_established(&mut h, s));
    assert_eq!(h.ns.rejudge_flows(), 0, "still allowed");
    // The control plane swaps the policy from another thread.
    std::thread::scope(|sc| {
        sc.spawn(|| shared.store(std::sync::Arc::new(*compiled("deny@host", Action::Deny))));
    });
    assert_eq!(h.ns.rejudge_flows(), 1);
    assert!(h.run_until(10_000, Duration::from_secs(5), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    }));
}

/// A DNS server on 127.0.0.1 that answers every query with the query itself turned into a
/// response (flags 0x8180), to which `answer(query, response)` adds records and counts.
pub(crate) fn fake_resolver(
    answer: impl Fn(&[u8], &mut Vec<u8>) + Send + 'static,
) -> std::net::SocketAddr {
    let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up = resolver.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = resolver.recv_from(&mut buf) {
            let q = &buf[..n];
            let mut r = q.to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            answer(q, &mut r);
            let _ = resolver.send_to(&r, from);
        }
    });
    up
}

/// Appends an A record for the question's name (compression pointer to offset 12), TTL 60.
fn a_record(r: &mut Vec<u8>, addr: [u8; 4]) {
    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    r.extend_from_slice(&addr);
}

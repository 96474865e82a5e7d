//! UDP flows, DNS interception and port publishing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use netstack::testkit::Harness;
use netstack::{NetConfig, PortProto, PublishedPort};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::common::{cfg, tcp_socket};

fn udp_socket(h: &mut Harness, port: u16) -> smoltcp::iface::SocketHandle {
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
    let s = h.sockets.add(udp::Socket::new(rx, tx));
    h.sockets.get_mut::<udp::Socket>(s).bind(port).unwrap();
    s
}

/// Sends `msg` from the guest to `to` and waits for one datagram back.
fn udp_roundtrip(
    h: &mut Harness,
    s: smoltcp::iface::SocketHandle,
    to: IpEndpoint,
    msg: &[u8],
) -> Option<(Vec<u8>, IpEndpoint)> {
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(msg, to)
        .unwrap();
    let mut got = None;
    h.run_until(20_000, Duration::from_secs(5), |h| {
        let sock = h.sockets.get_mut::<udp::Socket>(s);
        if let Ok((d, meta)) = sock.recv() {
            got = Some((d.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    got
}

#[test]
fn udp_echo_through_gateway() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            let (n, from) = server.recv_from(&mut buf).unwrap();
            server.send_to(&buf[..n], from).unwrap();
        }
    });
    let mut h = Harness::new(cfg());
    let s = udp_socket(&mut h, 5000);
    let gw = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), port);
    for i in 0..3u8 {
        let msg = vec![i; 1000 + usize::from(i)];
        let (d, from) = udp_roundtrip(&mut h, s, gw, &msg).expect("no echo");
        assert_eq!(d, msg);
        assert_eq!(from, gw);
    }
    t.join().unwrap();
    assert_eq!(h.ns.flow_count(), 1, "one flow for one 4-tuple");
}

/// A query with id 0x1234 for `name`, type A.
fn dns_query(name: &str) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

#[test]
fn dns_host_alias_is_answered_locally() {
    let mut h = Harness::new(cfg());
    let s = udp_socket(&mut h, 5353);
    let dns = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), 53);
    let (answer, _) =
        udp_roundtrip(&mut h, s, dns, &dns_query("host.ringfence.internal")).expect("no answer");
    assert_eq!(&answer[0..2], &[0x12, 0x34]);
    assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([answer[6], answer[7]]), 1, "one answer");
    assert_eq!(&answer[answer.len() - 4..], &h.gateway().octets());
}

#[test]
fn dns_forwarded_to_loopback_resolver() {
    let resolver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up = resolver.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, from) = resolver.recv_from(&mut buf).unwrap();
        // Answer: copy the question, add one A record 192.0.2.7.
        let mut r = buf[..n].to_vec();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        resolver.send_to(&r, from).unwrap();
        buf[..n].to_vec()
    });
    let cfg = NetConfig {
        dns_upstreams: vec![up],
        ..cfg()
    };
    let mut h = Harness::new(cfg);
    let s = udp_socket(&mut h, 5354);
    let dns = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), 53);
    let q = dns_query("example.test");
    let (answer, from) = udp_roundtrip(&mut h, s, dns, &q).expect("no answer");
    assert_eq!(
        t.join().unwrap(),
        q,
        "resolver got the guest's query verbatim"
    );
    assert_eq!(from, dns, "answer appears to come from the gateway");
    assert_eq!(&answer[answer.len() - 4..], &[192, 0, 2, 7]);
    assert_eq!(h.ns.metrics().dns_queries, 1);
}

#[test]
fn published_port_reaches_guest_listener() {
    let cfg = NetConfig {
        published: vec![PublishedPort {
            bind: "127.0.0.1:0".parse().unwrap(),
            guest_port: 8080,
            proto: PortProto::Tcp,
        }],
        ..cfg()
    };
    let mut h = Harness::new(cfg);
    let host_addr: SocketAddr = h.ns.published_addrs()[0].1;
    let s = tcp_socket(&mut h, 65536);
    h.sockets.get_mut::<tcp::Socket>(s).listen(8080).unwrap();
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(host_addr).unwrap();
        c.write_all(b"hello guest").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        back
    });
    let mut got = Vec::new();
    let ok = h.run_until(100_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut b = [0u8; 64];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        sock.state() == tcp::State::CloseWait
    });
    assert!(
        ok,
        "guest saw {:?}",
        h.sockets.get::<tcp::Socket>(s).state()
    );
    assert_eq!(got, b"hello guest");
    let peer = h.sockets.get::<tcp::Socket>(s).remote_endpoint().unwrap();
    assert_eq!(
        peer.addr,
        IpAddress::Ipv4(h.gateway()),
        "connection comes from the gateway"
    );
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .send_slice(b"hello host")
        .unwrap();
    h.sockets.get_mut::<tcp::Socket>(s).close();
    let done = h.run_until(100_000, Duration::from_secs(10), |h| h.ns.flow_count() == 0);
    assert!(done);
    assert_eq!(client.join().unwrap(), b"hello host");
    assert_eq!(h.ns.metrics().published_accepts, 1);
}

#[test]
fn publish_bind_conflict_names_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = NetConfig {
        published: vec![PublishedPort {
            bind: addr,
            guest_port: 80,
            proto: PortProto::Tcp,
        }],
        ..cfg()
    };
    let err = match netstack::Netstack::new(cfg) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("bind to a taken port succeeded"),
    };
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(err.contains("guest port 80"), "{err}");
}

#[test]
fn flow_table_overflow_refuses_new_flows_only() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    server
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut seen = 0;
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            seen += 1;
            server.send_to(&buf[..n], from).unwrap();
            if &buf[..n] == b"again" {
                break;
            }
        }
        seen
    });
    let cfg = NetConfig {
        limits: netstack::Limits {
            max_flows: 4,
            // The whole table (no TCP reserve; that has its own test in floods/).
            tcp_reserved_flows: 0,
            ..netstack::Limits::default()
        },
        ..cfg()
    };
    let mut h = Harness::new(cfg);
    // Count "communication administratively prohibited" (ICMP 3/13) sent to the guest.
    let prohibited = std::rc::Rc::new(std::cell::Cell::new(0));
    let p2 = prohibited.clone();
    h.observe = Some(Box::new(move |f| {
        if f.len() > 36 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 3 && f[35] == 13 {
            p2.set(p2.get() + 1);
        }
    }));
    let gw = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), port);
    let socks: Vec<_> = (0..6).map(|i| udp_socket(&mut h, 6000 + i)).collect();
    for (i, &s) in socks.iter().enumerate() {
        let got = udp_roundtrip(&mut h, s, gw, &[i as u8; 8]);
        if i < 4 {
            assert_eq!(got.map(|g| g.0), Some(vec![i as u8; 8]), "flow {i}");
        } else {
            assert!(got.is_none(), "flow {i} must be refused");
        }
    }
    assert_eq!(h.ns.flow_count(), 4);
    assert_eq!(h.ns.metrics().flows_over_limit, 2);
    assert_eq!(
        prohibited.get(),
        2,
        "each refused datagram gets an ICMP unreachable"
    );
    // The existing flows keep working.
    let got = udp_roundtrip(&mut h, socks[0], gw, b"again");
    assert_eq!(got.map(|g| g.0), Some(b"again".to_vec()));
    drop(h);
    assert_eq!(t.join().unwrap(), 5);
}

#[test]
fn published_udp_port_round_trip() {
    let cfg = NetConfig {
        published: vec![PublishedPort {
            bind: "127.0.0.1:0".parse().unwrap(),
            guest_port: 5300,
            proto: PortProto::Udp,
        }],
        ..cfg()
    };
    let mut h = Harness::new(cfg);
    let host_addr = h.ns.published_addrs()[0].1;
    let s = udp_socket(&mut h, 5300);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.send_to(b"ping guest", host_addr).unwrap();
    let mut got = None;
    h.run_until(20_000, Duration::from_secs(5), |h| {
        if let Ok((d, meta)) = h.sockets.get_mut::<udp::Socket>(s).recv() {
            got = Some((d.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    let (d, from) = got.expect("guest got nothing");
    assert_eq!(d, b"ping guest");
    assert_eq!(from.addr, IpAddress::Ipv4(h.gateway()));
    assert_eq!(from.port, client.local_addr().unwrap().port());
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(b"pong host", from)
        .unwrap();
    for _ in 0..100 {
        h.step(1);
    }
    let mut buf = [0u8; 64];
    let (n, src) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"pong host");
    assert_eq!(src, host_addr, "reply leaves through the published socket");
}

#[test]
fn published_port_without_guest_listener_resets_host_client() {
    let cfg = NetConfig {
        published: vec![PublishedPort {
            bind: "127.0.0.1:0".parse().unwrap(),
            guest_port: 9999,
            proto: PortProto::Tcp,
        }],
        ..cfg()
    };
    let mut h = Harness::new(cfg);
    let host_addr: SocketAddr = h.ns.published_addrs()[0].1;
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(host_addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 8];
        c.read(&mut b).map_err(|e| e.kind())
    });
    let done = h.run_until(100_000, Duration::from_secs(10), |h| {
        h.ns.metrics().published_accepts == 1 && h.ns.flow_count() == 0
    });
    assert!(done, "flow not torn down: {:?}", h.ns.metrics());
    assert_eq!(
        client.join().unwrap(),
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

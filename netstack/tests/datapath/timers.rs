//! Timers: connect timeout, TCP and UDP idle timeouts.

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use netstack::testkit::Harness;
use netstack::{Limits, NetConfig};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

use crate::common::{cfg, connect_gateway, tcp_socket, wait_established};

fn with_limits(l: Limits) -> NetConfig {
    NetConfig { limits: l, ..cfg() }
}

#[test]
fn tcp_idle_flow_is_reset() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || l.accept().map(|(c, _)| c));
    let mut h = Harness::new(with_limits(Limits {
        tcp_idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    }));
    let s = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s, port, 47000);
    assert!(wait_established(&mut h, s));
    let _host = server.join().unwrap().unwrap();
    let closed = h.run_until(100_000, Duration::from_secs(5), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    });
    assert!(closed, "idle flow not reset");
    assert_eq!(h.ns.flow_count(), 0);
}

#[test]
fn udp_idle_flow_is_closed() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let mut h = Harness::new(with_limits(Limits {
        udp_idle_timeout: Duration::from_millis(200),
        ..Limits::default()
    }));
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let s = h.sockets.add(udp::Socket::new(rx, tx));
    h.sockets.get_mut::<udp::Socket>(s).bind(7000).unwrap();
    let gw = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), port);
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(b"x", gw)
        .unwrap();
    assert!(h.run_until(1000, Duration::from_secs(2), |h| h.ns.flow_count() == 1));
    let mut buf = [0u8; 4];
    assert_eq!(server.recv_from(&mut buf).unwrap().0, 1);
    let gone = h.run_until(100_000, Duration::from_secs(5), |h| h.ns.flow_count() == 0);
    assert!(gone, "idle UDP flow still open");
    assert_eq!(h.ns.metrics().flows_closed, 1);
}

/// A destination that never answers: inside our own netns, 192.0.2.2 is routed to the
/// loopback but not owned, so the SYN goes nowhere.
#[test]
fn connect_timeout_resets_guest() {
    let Some(_ns) = crate::netns::enter_netns(false) else {
        return;
    };
    let mut h = Harness::new(with_limits(Limits {
        connect_timeout: Duration::from_millis(300),
        ..Limits::default()
    }));
    let s = tcp_socket(&mut h, 4096);
    let cx = h.iface.context();
    let dst = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::new(192, 0, 2, 2)), 80);
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .connect(cx, dst, 47001)
        .unwrap();
    let closed = h.run_until(100_000, Duration::from_secs(5), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    });
    assert!(
        closed,
        "guest still {}",
        h.sockets.get::<tcp::Socket>(s).state()
    );
    assert_eq!(h.ns.metrics().connect_failures, 1);
    assert_eq!(h.ns.flow_count(), 0);
}

#[test]
fn next_deadline_tracks_idle_timers() {
    let mut h = Harness::new(cfg());
    assert_eq!(h.ns.next_deadline(), None, "no flows, no timers");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s = tcp_socket(&mut h, 4096);
    connect_gateway(&mut h, s, port, 47002);
    assert!(wait_established(&mut h, s));
    assert!(h.ns.next_deadline().is_some());
}

//! The embedder's connections (socket pairs, no host port): into a guest service
//! (`connect_guest`), and a service on the gateway the guest connects to
//! (`add_guest_service`), under a gate that denies everything.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use netstack::testkit::Harness;
use netstack::{FlowGate, FlowInfo, FlowProto, Verdict};
use smoltcp::socket::tcp;

use crate::common::{cfg, connect_gateway, tcp_socket};

/// Denies every flow and DNS query.
struct DenyAll;

impl FlowGate for DenyAll {
    fn decide(&self, _flow: &FlowInfo<'_>) -> Verdict {
        Verdict {
            allow: false,
            rule: None,
        }
    }
}

/// Bytes of the test pattern.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn connect_guest_carries_a_socket_pair_into_a_guest_listener() {
    let mut h = Harness::with_gate(cfg(), Box::new(DenyAll));
    let s = tcp_socket(&mut h, 256 * 1024);
    h.sockets.get_mut::<tcp::Socket>(s).listen(8080).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    h.ns.connect_guest(theirs, 8080, Instant::now()).unwrap();
    // Host -> guest: more than one window, so acknowledged bytes are discarded many times.
    let sent = pattern(300_000);
    let writer = {
        let mut w = ours.try_clone().unwrap();
        let sent = sent.clone();
        std::thread::spawn(move || {
            w.write_all(&sent).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    let ok = h.run_until(200_000, Duration::from_secs(20), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut b = [0u8; 16384];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        sock.state() == tcp::State::CloseWait
    });
    writer.join().unwrap();
    assert!(
        ok,
        "guest saw {:?}",
        h.sockets.get::<tcp::Socket>(s).state()
    );
    assert!(
        got == sent,
        "the guest got {} of {} bytes, or wrong ones",
        got.len(),
        sent.len()
    );
    let peer = h.sockets.get::<tcp::Socket>(s).remote_endpoint().unwrap();
    assert_eq!(peer.addr, smoltcp::wire::IpAddress::Ipv4(h.gateway()));
    // Guest -> host, then close.
    let sock = h.sockets.get_mut::<tcp::Socket>(s);
    sock.send_slice(b"hello embedder").unwrap();
    sock.close();
    assert!(h.run_until(100_000, Duration::from_secs(10), |h| h.ns.flow_count() == 0));
    let mut back = Vec::new();
    let mut r = ours;
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"hello embedder");
    assert_eq!(h.ns.metrics().flows_denied, 0, "the gate was never asked");
}

#[test]
fn a_guest_service_is_reached_at_the_gateway_whatever_the_gate_says() {
    let mut h = Harness::with_gate(cfg(), Box::new(DenyAll));
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    h.ns.add_guest_service(9000, tx);
    let s = tcp_socket(&mut h, 65536);
    connect_gateway(&mut h, s, 9000, 40000);
    let upload = pattern(100_000);
    let mut sent = 0;
    let mut accepted: Option<UnixStream> = None;
    let mut got = Vec::new();
    let ok = h.run_until(200_000, Duration::from_secs(20), |h| {
        if accepted.is_none() {
            accepted = rx.try_recv().ok();
            if let Some(a) = &accepted {
                a.set_nonblocking(true).unwrap();
            }
        }
        if let Some(a) = accepted.as_mut() {
            let mut b = [0u8; 16384];
            while let Ok(n) = a.read(&mut b) {
                if n == 0 {
                    return true;
                }
                got.extend_from_slice(&b[..n]);
            }
        }
        crate::common::upload_step(h, s, &upload, &mut sent);
        false
    });
    assert!(ok, "the service never saw EOF; got {} bytes", got.len());
    assert!(got == upload);
    // A port that is not a service is judged by the gate as before: denied.
    let s2 = tcp_socket(&mut h, 65536);
    connect_gateway(&mut h, s2, 9001, 40001);
    let refused = h.run_until(10_000, Duration::from_secs(10), |h| {
        h.sockets.get::<tcp::Socket>(s2).state() == tcp::State::Closed
    });
    assert!(refused);
    assert!(h.ns.metrics().flows_denied >= 1);
    assert!(h.ns.remove_guest_service(9000));
    assert!(!h.ns.remove_guest_service(9000));
}

#[test]
fn judge_egress_maps_the_gateway_to_loopback_and_applies_the_gate() {
    let h = Harness::with_gate(cfg(), Box::new(DenyAll));
    let gw = std::net::SocketAddr::new(h.gateway().into(), 80);
    assert!(h.ns.judge_egress(FlowProto::Tcp, gw).is_err());
    let h = Harness::new(cfg());
    let gw = std::net::SocketAddr::new(h.gateway().into(), 80);
    let target = h.ns.judge_egress(FlowProto::Tcp, gw).unwrap();
    assert!(target.ip().is_loopback());
    assert_eq!(target.port(), 80);
}

fn guest_udp_socket(h: &mut Harness, port: u16) -> smoltcp::iface::SocketHandle {
    use smoltcp::socket::udp;
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 16384]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 16384]);
    let s = h.sockets.add(udp::Socket::new(rx, tx));
    h.sockets.get_mut::<udp::Socket>(s).bind(port).unwrap();
    s
}

#[test]
fn a_guest_udp_service_gets_each_flow_as_a_datagram_socket() {
    use smoltcp::socket::udp;
    use smoltcp::wire::{IpAddress, IpEndpoint};
    let mut h = Harness::with_gate(cfg(), Box::new(DenyAll));
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    h.ns.add_guest_udp_service(5353, tx);
    let s = guest_udp_socket(&mut h, 41000);
    let gw = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), 5353);
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(b"ping", gw)
        .unwrap();
    let mut service: Option<std::os::unix::net::UnixDatagram> = None;
    let ok = h.run_until(10_000, Duration::from_secs(10), |_| {
        service = rx
            .try_recv()
            .ok()
            .map(std::os::unix::net::UnixDatagram::from);
        service.is_some()
    });
    assert!(ok, "the service got no flow");
    let service = service.unwrap();
    service.set_nonblocking(false).unwrap();
    service
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 64];
    let n = service.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"ping");
    service.send(b"pong").unwrap();
    let mut got = None;
    let ok = h.run_until(10_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<udp::Socket>(s);
        if let Ok((data, meta)) = sock.recv() {
            got = Some((data.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    assert!(ok, "the guest got no answer");
    let (data, from) = got.unwrap();
    assert_eq!(data, b"pong");
    assert_eq!(from, gw, "the answer comes from the service's address");
    assert_eq!(h.ns.metrics().flows_denied, 0);
    assert!(h.ns.remove_guest_udp_service(5353));
}

#[test]
fn connect_guest_udp_carries_datagrams_both_ways() {
    use smoltcp::socket::udp;
    let mut h = Harness::with_gate(cfg(), Box::new(DenyAll));
    let s = guest_udp_socket(&mut h, 7000);
    let (ours, theirs) = netstack::seqpacket_pair().unwrap();
    let ours = std::os::unix::net::UnixDatagram::from(ours);
    ours.set_nonblocking(false).unwrap();
    h.ns.connect_guest_udp(theirs, 7000, Instant::now())
        .unwrap();
    ours.send(b"hello guest").unwrap();
    let mut got = None;
    let ok = h.run_until(10_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<udp::Socket>(s);
        if let Ok((data, meta)) = sock.recv() {
            got = Some((data.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    assert!(ok, "the guest got nothing");
    let (data, from) = got.unwrap();
    assert_eq!(data, b"hello guest");
    assert_eq!(from.addr, smoltcp::wire::IpAddress::Ipv4(h.gateway()));
    h.sockets
        .get_mut::<udp::Socket>(s)
        .send_slice(b"hello embedder", from)
        .unwrap();
    for _ in 0..100 {
        h.step(1);
    }
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    let n = ours.recv(&mut b).unwrap();
    assert_eq!(&b[..n], b"hello embedder");
    // The flow's end reads as EOF (SOCK_SEQPACKET), not as a read that never returns.
    drop(h);
    assert_eq!(ours.recv(&mut b).unwrap(), 0);
}

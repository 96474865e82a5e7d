//! DNS over TCP to the gateway: relayed to the upstream resolver, each query checked.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use netstack::testkit::Harness;
use netstack::NetConfig;
use policy::Action;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::common::{cfg, tcp_socket, wait_established};

fn query(name: &str) -> Vec<u8> {
    let mut m = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// A TCP resolver that reads one length-prefixed query, answers it with the same bytes
/// (QR set) and returns what it read.
fn fake_resolver() -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        l.set_nonblocking(false).unwrap();
        let Ok((mut c, _)) = l.accept() else {
            return Vec::new();
        };
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut len = [0u8; 2];
        if c.read_exact(&mut len).is_err() {
            return Vec::new();
        }
        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if c.read_exact(&mut q).is_err() {
            return Vec::new();
        }
        let mut a = q.clone();
        a[2] |= 0x80;
        c.write_all(&len).unwrap();
        c.write_all(&a).unwrap();
        q
    });
    (addr, t)
}

fn connect_dns(h: &mut Harness, local_port: u16) -> smoltcp::iface::SocketHandle {
    let s = tcp_socket(h, 4096);
    let dns = IpEndpoint::new(IpAddress::Ipv4(h.gateway()), 53);
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .connect(cx, dns, local_port)
        .unwrap();
    s
}

#[test]
fn tcp_query_with_separate_length_prefix_is_relayed() {
    let (up, resolver) = fake_resolver();
    let mut h = Harness::new(NetConfig {
        dns_upstreams: vec![up],
        ..cfg()
    });
    let s = connect_dns(&mut h, 48000);
    assert!(wait_established(&mut h, s));
    let q = query("www.example.com");
    // Length prefix alone first (like stub resolvers that write twice).
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .send_slice(&(q.len() as u16).to_be_bytes())
        .unwrap();
    for _ in 0..20 {
        h.step(1);
    }
    h.sockets.get_mut::<tcp::Socket>(s).send_slice(&q).unwrap();
    let mut answer = Vec::new();
    let ok = h.run_until(10_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut b = [0u8; 512];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut b).unwrap();
            answer.extend_from_slice(&b[..n]);
        }
        answer.len() == 2 + q.len()
    });
    assert!(ok, "answer {answer:?}");
    assert_eq!(
        resolver.join().unwrap(),
        q,
        "resolver got the query verbatim"
    );
    assert_eq!(answer[2], 0x42, "same id");
    assert!(answer[4] & 0x80 != 0, "QR set");
}

#[test]
fn tcp_query_for_denied_name_resets_and_never_leaves() {
    let (up, resolver) = fake_resolver();
    let gate = crate::policy::compiled("allow@.example.com:tcp:443", Action::Deny);
    let mut h = Harness::with_gate(
        NetConfig {
            dns_upstreams: vec![up],
            ..cfg()
        },
        gate,
    );
    let s = connect_dns(&mut h, 48001);
    assert!(wait_established(&mut h, s));
    let q = query("secret-data.evil.test");
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&q);
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .send_slice(&msg)
        .unwrap();
    let closed = h.run_until(10_000, Duration::from_secs(10), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    });
    assert!(closed, "guest socket not reset");
    assert!(h.ns.metrics().flows_denied >= 1);
    assert!(
        resolver.join().unwrap().is_empty(),
        "denied query reached the resolver"
    );
}

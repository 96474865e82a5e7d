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

/// The answer records a rebinding resolver gives for the first label of a question, in the
/// rebinding variants of the bypass matrix (docs/security.md); one public A record for
/// any other name. Each record is (type, rdata); the owner is the question name (pointer to 12).
fn rebind_records(label: &[u8]) -> Vec<(u16, Vec<u8>)> {
    match label {
        // TTL 0 is written by `answer_for`; the address is private.
        b"ttl0" => vec![(1, vec![10, 1, 2, 3])],
        // Two answers, the second one private.
        b"twoa" => vec![(1, vec![192, 0, 2, 1]), (1, vec![10, 0, 0, 1])],
        // A CNAME chain (to "in.test", then "in.test" to a private address).
        b"cnam" => vec![
            (5, b"\x02in\x04test\x00".to_vec()),
            (1, vec![169, 254, 169, 254]),
        ],
        // An IPv6 answer into the loopback group.
        b"six6" => vec![(28, std::net::Ipv6Addr::LOCALHOST.octets().to_vec())],
        _ => vec![(1, vec![192, 0, 2, 1])],
    }
}

/// A response to `q` (one question) with the records [`rebind_records`] picks. TTL 0 for
/// the `ttl0` name, 60 otherwise.
fn answer_for(q: &[u8]) -> Vec<u8> {
    let mut r = q.to_vec();
    r[2] = 0x81;
    r[3] = 0x80;
    let label = &q[13..17];
    let records = rebind_records(label);
    r[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
    let ttl: u32 = if label == b"ttl0" { 0 } else { 60 };
    for (ty, data) in records {
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&ty.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    r
}

/// A TCP resolver that answers every query of every connection with [`answer_for`],
/// writing each answer in two parts (the length prefix and 3 bytes, then the rest after
/// 20 ms) so the netstack sees incomplete answers too. Serves at most `conns` connections.
fn rebinding_resolver(conns: usize) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..conns {
            let Ok((mut c, _)) = l.accept() else {
                return;
            };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            loop {
                let mut len = [0u8; 2];
                if c.read_exact(&mut len).is_err() {
                    break;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if c.read_exact(&mut q).is_err() || q.len() < 17 {
                    break;
                }
                let a = answer_for(&q);
                let mut msg = (a.len() as u16).to_be_bytes().to_vec();
                msg.extend_from_slice(&a);
                if c.write_all(&msg[..5]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                if c.write_all(&msg[5..]).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

/// Sends `name`'s query on the guest's DNS-over-TCP socket `s` and collects what comes
/// back until a whole answer arrived or the socket closed. Returns (bytes, closed).
fn tcp_roundtrip(h: &mut Harness, s: smoltcp::iface::SocketHandle, name: &str) -> (Vec<u8>, bool) {
    let q = query(name);
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&q);
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .send_slice(&msg)
        .unwrap();
    let mut got = Vec::new();
    let mut closed = false;
    h.run_until(10_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut b = [0u8; 512];
        while sock.can_recv() {
            let n = sock.recv_slice(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        closed = !sock.is_open() || sock.state() == tcp::State::CloseWait;
        let whole =
            got.len() >= 2 && got.len() >= 2 + usize::from(u16::from_be_bytes([got[0], got[1]]));
        whole || closed
    });
    (got, closed)
}

/// Rebind protection on DNS over TCP (it used to apply to UDP answers only): under
/// public-only, an answer pointing into private, link-local/metadata or loopback space (TTL
/// 0, two answers one private, a CNAME chain into private space, AAAA ::1) resets the
/// connection before the guest sees one byte of it, and is counted; public answers on the
/// same connection, arriving in pieces, pass whole. The same variants over UDP are dropped.
#[test]
fn tcp_dns_answers_get_rebind_protection() {
    let up = rebinding_resolver(16);
    let mut h = Harness::with_gate(
        NetConfig {
            dns_upstreams: vec![up],
            ..cfg()
        },
        crate::policy::compiled("allow@public", Action::Deny),
    );
    let mut port = 48100;
    for bad in ["ttl0.test", "twoa.test", "cnam.test", "six6.test"] {
        port += 1;
        let s = connect_dns(&mut h, port);
        assert!(wait_established(&mut h, s));
        // A public answer first, on the same connection: passes whole.
        let (good, closed) = tcp_roundtrip(&mut h, s, "good.test");
        assert!(!closed, "{bad}: good answer closed the stream");
        assert_eq!(good[2..], answer_for(&query("good.test")), "{bad}");
        let before = h.ns.metrics().drop_dns_rebind;
        let (got, closed) = tcp_roundtrip(&mut h, s, bad);
        assert!(closed, "{bad}: stream not reset");
        assert!(got.is_empty(), "{bad}: the guest got {} bytes", got.len());
        assert_eq!(h.ns.metrics().drop_dns_rebind, before + 1, "{bad}");
    }
    // Allow-all: the same answers pass (the filter, not the resolver, refused them).
    let mut h = Harness::new(NetConfig {
        dns_upstreams: vec![up],
        ..cfg()
    });
    let s = connect_dns(&mut h, 48200);
    assert!(wait_established(&mut h, s));
    for name in ["ttl0.test", "twoa.test", "cnam.test", "six6.test"] {
        let (got, closed) = tcp_roundtrip(&mut h, s, name);
        assert!(!closed, "{name}");
        assert_eq!(got[2..], answer_for(&query(name)), "{name}");
    }
    assert_eq!(h.ns.metrics().drop_dns_rebind, 0);
    // Over UDP the same variants are dropped (the filter both paths share).
    let up = crate::policy::fake_resolver(|q, r| *r = answer_for(q));
    let mut h = Harness::with_gate(
        NetConfig {
            dns_upstreams: vec![up],
            ..cfg()
        },
        crate::policy::compiled("allow@public", Action::Deny),
    );
    for (i, bad) in ["ttl0.test", "twoa.test", "cnam.test", "six6.test"]
        .into_iter()
        .enumerate()
    {
        assert!(crate::policy::dns_roundtrip(&mut h, bad).is_none(), "{bad}");
        assert_eq!(h.ns.metrics().drop_dns_rebind, i as u64 + 1, "{bad}");
    }
    assert!(crate::policy::dns_roundtrip(&mut h, "good.test").is_some());
}

/// A resolver that closes in the middle of an answer: the part never reaches the guest, the
/// stream is reset at once (not left open until the idle timeout) and counted as unreadable.
#[test]
fn a_tcp_answer_cut_short_resets_the_stream() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = l.accept() else {
            return;
        };
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut len = [0u8; 2];
        if c.read_exact(&mut len).is_err() {
            return;
        }
        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if c.read_exact(&mut q).is_err() {
            return;
        }
        let a = answer_for(&q);
        let mut msg = (a.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&a[..a.len() / 2]);
        let _ = c.write_all(&msg);
        // Dropped here: FIN after half an answer.
    });
    let mut h = Harness::new(NetConfig {
        dns_upstreams: vec![up],
        ..cfg()
    });
    let s = connect_dns(&mut h, 48300);
    assert!(wait_established(&mut h, s));
    let (got, closed) = tcp_roundtrip(&mut h, s, "good.test");
    assert!(closed, "stream left open");
    assert!(
        got.is_empty(),
        "the guest got {} bytes of a cut answer",
        got.len()
    );
    assert_eq!(h.ns.metrics().drop_dns_malformed, 1);
}

/// Names in answers over TCP are attributed like those over UDP: a domain rule allows
/// `www.example.com`'s address once the guest resolved it over TCP, while the bare address
/// was denied before. Runs in a test netns so the "public" TEST-NET server is ours.
#[test]
fn tcp_dns_answers_attribute_names_to_addresses() {
    let Some(_ns) = crate::netns::enter_netns(false) else {
        return;
    };
    let server = TcpListener::bind("192.0.2.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || while server.accept().is_ok() {});
    // Answers every name but the rebinding variants with 192.0.2.1.
    let up = rebinding_resolver(2);
    let rules = format!("allow@.example.com:tcp:{port}");
    let mut h = Harness::with_gate(
        NetConfig {
            dns_upstreams: vec![up],
            ..cfg()
        },
        crate::policy::compiled(&rules, Action::Deny),
    );
    let target = IpEndpoint::new(
        IpAddress::Ipv4(smoltcp::wire::Ipv4Address::new(192, 0, 2, 1)),
        port,
    );
    let s0 = tcp_socket(&mut h, 4096);
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s0)
        .connect(cx, target, 43110)
        .unwrap();
    assert!(
        !wait_established(&mut h, s0),
        "unattributed address must be denied"
    );
    let d = connect_dns(&mut h, 48400);
    assert!(wait_established(&mut h, d));
    let (answer, closed) = tcp_roundtrip(&mut h, d, "www.example.com");
    assert!(!closed && answer.ends_with(&[192, 0, 2, 1]), "{answer:?}");
    let s1 = tcp_socket(&mut h, 4096);
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s1)
        .connect(cx, target, 43111)
        .unwrap();
    assert!(
        wait_established(&mut h, s1),
        "attributed address must be allowed"
    );
}

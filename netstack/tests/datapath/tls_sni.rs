//! SNI policy on TLS ports: a real rustls ClientHello sent by the smoltcp guest is read
//! before the host connection opens; allowed names pass with every byte intact and in
//! order, denied names are refused even when the address is allowed, a missing name is
//! judged by address unless one is required, and silent, non-TLS or oversized starts are
//! reset and counted. The host side is a plain TCP server on 127.0.0.1 that checks the
//! bytes (no TLS server is needed to judge a ClientHello).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use netstack::testkit::{rustls_client_hello, tls_records, Harness};
use netstack::{NetConfig, TlsInspection};
use policy::Action;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use crate::common::{
    cfg, connect_gateway, drain_guest_socket, pattern, tcp_socket, wait_established,
};
use crate::policy::compiled;

/// A hand-built ClientHello for `name` padded to about `size` bytes, in records of at most
/// `frag` bytes (the netstack must reassemble them).
fn big_hello(name: &str, size: usize, frag: usize) -> Vec<u8> {
    let mut sni = vec![0, 0];
    let list_len = 3 + name.len();
    sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    sni.extend_from_slice(&(list_len as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name.as_bytes());
    let pad = size.saturating_sub(100);
    let mut exts = sni;
    exts.extend_from_slice(&[0, 21]);
    exts.extend_from_slice(&(pad as u16).to_be_bytes());
    exts.extend(std::iter::repeat_n(0u8, pad));
    let mut body = vec![3, 3];
    body.extend_from_slice(&[1u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    tls_records(&msg, frag)
}

/// The test config with `port` as the only TLS port, changed by `f`.
fn tls_cfg(port: u16, f: impl FnOnce(&mut TlsInspection)) -> NetConfig {
    let mut tls = TlsInspection {
        ports: vec![port],
        ..TlsInspection::default()
    };
    f(&mut tls);
    NetConfig { tls, ..cfg() }
}

/// A host server that reads `expect` bytes from its first connection and answers `pong`;
/// the thread returns what it read.
fn serve_reading(expect: usize) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; expect];
        let n = c.read_exact(&mut got).map(|_| expect).unwrap_or(0);
        got.truncate(n);
        c.write_all(b"pong").unwrap();
        got
    });
    (port, t)
}

/// Connects the guest to the gateway's `port`, sends `data` and steps until the guest
/// socket has received `want` bytes or is closed. Returns what it received and whether it
/// was reset (closed without the reply).
fn exchange(h: &mut Harness, port: u16, local: u16, data: &[u8], want: usize) -> (Vec<u8>, bool) {
    let s = tcp_socket(h, 65536);
    connect_gateway(h, s, port, local);
    assert!(
        wait_established(h, s),
        "the guest gets its SYN-ACK at once on a TLS port"
    );
    send_and_wait(h, s, data, want)
}

fn send_and_wait(h: &mut Harness, s: SocketHandle, data: &[u8], want: usize) -> (Vec<u8>, bool) {
    let mut sent = 0;
    let mut got = Vec::new();
    h.run_until(200_000, Duration::from_secs(10), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        if sent < data.len() && sock.can_send() {
            sent += sock.send_slice(&data[sent..]).unwrap();
        }
        drain_guest_socket(h, s, &mut got);
        got.len() >= want || h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed
    });
    let closed = h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Closed;
    let reset = closed && got.len() < want;
    (got, reset)
}

/// A listener nobody must reach, and the check that nobody did.
fn untouched_listener() -> (u16, TcpListener) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    (l.local_addr().unwrap().port(), l)
}

fn assert_never_connected(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the refused flow reached the host: {other:?}"),
    }
}

#[test]
fn allowed_server_name_passes_with_every_byte_in_order() {
    let hello = rustls_client_hello("api.example.com", true);
    let mut data = hello.clone();
    data.extend_from_slice(&pattern(5000, 3));
    let (port, server) = serve_reading(data.len());
    let gate = compiled("allow@host:tcp,deny@evil.test", Action::Deny);
    let mut h = Harness::with_gate(tls_cfg(port, |_| {}), gate);
    let (reply, reset) = exchange(&mut h, port, 44100, &data, 4);
    assert!(!reset, "allowed flow was reset: {:?}", h.ns.metrics());
    assert_eq!(reply, b"pong");
    assert_eq!(server.join().unwrap(), data, "bytes lost or reordered");
    let m = h.ns.metrics();
    assert_eq!((m.tls_hellos_judged, m.tls_server_name_denied), (1, 0));
}

#[test]
fn a_hello_over_several_segments_and_records_passes() {
    let hello = big_hello("big.example.com", 6000, 700);
    let (port, server) = serve_reading(hello.len());
    let mut h = Harness::with_gate(
        tls_cfg(port, |_| {}),
        compiled("allow@host:tcp", Action::Deny),
    );
    let (reply, reset) = exchange(&mut h, port, 44101, &hello, 4);
    assert!(!reset && reply == b"pong", "{:?}", h.ns.metrics());
    assert_eq!(server.join().unwrap(), hello);
    assert_eq!(h.ns.metrics().tls_hellos_judged, 1);
}

#[test]
fn denied_server_name_is_refused_even_when_the_address_is_allowed() {
    let (port, listener) = untouched_listener();
    // Rule 0 allows the address; rule 1 denies the name the ClientHello claims.
    let gate = compiled("allow@host:tcp,deny@.evil.test", Action::Deny);
    let mut h = Harness::with_gate(tls_cfg(port, |_| {}), gate);
    let (_, reset) = exchange(
        &mut h,
        port,
        44102,
        &rustls_client_hello("www.evil.test", true),
        1,
    );
    assert!(reset, "denied name must get a RST");
    assert_never_connected(&listener);
    let m = h.ns.metrics();
    assert_eq!((m.tls_server_name_denied, m.flows_denied), (1, 1));
    assert_eq!(h.ns.flow_count(), 0);
}

#[test]
fn no_server_name_is_judged_by_address_unless_one_is_required() {
    let hello = rustls_client_hello("api.example.com", false);
    let (port, server) = serve_reading(hello.len());
    let gate = || compiled("allow@host:tcp,deny@.evil.test", Action::Deny);
    let mut h = Harness::with_gate(tls_cfg(port, |_| {}), gate());
    let (reply, reset) = exchange(&mut h, port, 44103, &hello, 4);
    assert!(!reset && reply == b"pong");
    assert_eq!(server.join().unwrap(), hello);
    assert_eq!(h.ns.metrics().tls_no_server_name, 1);

    let (port, listener) = untouched_listener();
    let mut h = Harness::with_gate(tls_cfg(port, |t| t.require_sni = true), gate());
    let (_, reset) = exchange(&mut h, port, 44104, &hello, 1);
    assert!(
        reset,
        "--tls-require-sni refuses a ClientHello without a name"
    );
    assert_never_connected(&listener);
    let m = h.ns.metrics();
    assert_eq!((m.tls_no_server_name, m.tls_server_name_denied), (1, 1));
}

#[test]
fn silent_and_slow_guests_are_reset_at_the_deadline() {
    let (port, listener) = untouched_listener();
    let short = |t: &mut TlsInspection| t.hello_timeout = Duration::from_millis(300);
    let mut h = Harness::with_gate(
        tls_cfg(port, short),
        compiled("allow@host:tcp", Action::Deny),
    );
    let started = std::time::Instant::now();
    let (_, reset) = exchange(&mut h, port, 44105, &[], 1);
    assert!(reset, "a guest that sends nothing must be reset");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let hello = rustls_client_hello("api.example.com", true);
    let (_, reset) = exchange(&mut h, port, 44106, &hello[..20], 1);
    assert!(reset, "a guest that sends too little must be reset");
    assert_never_connected(&listener);
    assert_eq!(h.ns.metrics().tls_hello_timeouts, 2);
}

#[test]
fn non_tls_bytes_on_a_tls_port_are_refused_and_other_ports_are_untouched() {
    let (port, listener) = untouched_listener();
    let gate = || compiled("allow@host:tcp", Action::Deny);
    let mut h = Harness::with_gate(tls_cfg(port, |_| {}), gate());
    let (_, reset) = exchange(&mut h, port, 44107, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1);
    assert!(reset);
    assert_never_connected(&listener);
    assert_eq!(h.ns.metrics().tls_hello_malformed, 1);

    // The same bytes to a port that is not a TLS port go straight through.
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    let (other, server) = serve_reading(get.len());
    let mut h = Harness::with_gate(tls_cfg(port, |_| {}), gate());
    let (reply, reset) = exchange(&mut h, other, 44108, &get, 4);
    assert!(!reset && reply == b"pong");
    assert_eq!(server.join().unwrap(), get);
    assert_eq!(h.ns.metrics().tls_hellos_judged, 0);
}

#[test]
fn an_oversized_hello_is_refused_and_counted() {
    let (port, listener) = untouched_listener();
    let mut h = Harness::with_gate(
        tls_cfg(port, |_| {}),
        compiled("allow@host:tcp", Action::Deny),
    );
    let hello = big_hello("big.example.com", 20_000, 4000);
    let (_, reset) = exchange(&mut h, port, 44109, &hello, 1);
    assert!(reset);
    assert_never_connected(&listener);
    assert_eq!(h.ns.metrics().tls_hello_oversized, 1);
}

#[test]
fn a_policy_swap_re_judges_the_server_name_of_live_flows() {
    let hello = rustls_client_hello("api.example.com", true);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"pong").unwrap();
        let mut b = [0u8; 4096];
        // Read until the netstack cuts the flow.
        loop {
            match c.read(&mut b) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.kind()),
            }
        }
    });
    let mut h = Harness::with_gate(
        tls_cfg(port, |_| {}),
        compiled("allow@host:tcp", Action::Deny),
    );
    let (reply, reset) = exchange(&mut h, port, 44110, &hello, 4);
    assert!(!reset && reply == b"pong");
    // The address stays allowed; only the name is now denied.
    let cut = h.ns.set_gate(compiled(
        "deny@api.example.com,allow@host:tcp",
        Action::Deny,
    ));
    assert_eq!(cut, 1);
    assert_eq!(server.join().unwrap(), Err(ErrorKind::ConnectionReset));
}

//! Floods from the host side: a connection flood at a published port, and a host peer that
//! keeps sending to a guest that never reads.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netstack::testkit::Harness;
use netstack::{PortProto, PublishedPort};
use smoltcp::socket::tcp;

use crate::common::{connect_gateway, pattern, tcp_socket, wait_established};
use crate::{
    deaf_except, drain, flood_cfg, gated_lines, open_fds, serial, CountWarnings, Download,
};

/// Host connections opened against the published port.
const CONNECTIONS: usize = 2000;
/// Guest port of the published service (the guest never answers its SYNs: half-open).
const GUEST_PORT: u16 = 8080;
/// Guest port of a connection the guest opens in the middle of the flood.
const LATE_PORT: u16 = 40001;

#[test]
fn a_host_connection_flood_at_a_published_port_is_bounded_and_leaves_room_for_the_guest() {
    let _serial = serial();
    let fds0 = open_fds();
    let warnings = Arc::new(AtomicU64::new(0));
    let _log = tracing::subscriber::set_default(CountWarnings(warnings.clone()));
    let mut cfg = flood_cfg();
    cfg.published = vec![PublishedPort {
        bind: "127.0.0.1:0".parse().unwrap(),
        guest_port: GUEST_PORT,
        proto: PortProto::Tcp,
    }];
    let limits = cfg.limits.clone();
    let mut h = Harness::new(cfg);
    let published: SocketAddr = h.ns.published_addrs()[0].1;
    let mut dl = Download::start(&mut h, 8 << 20);
    // The guest ignores the published port's SYNs, so every accepted connection stays
    // half-open until its SYN retransmissions run out.
    h.fault_to_guest = Some(deaf_except(&[LATE_PORT]));
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let mut connected = 0usize;
            for _ in 0..CONNECTIONS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = TcpStream::connect_timeout(&published, Duration::from_millis(200)) {
                    connected += 1;
                    held.push(c);
                }
            }
            connected
        })
    };
    // A server for the connection the guest opens during the flood.
    let late_srv = TcpListener::bind("127.0.0.1:0").unwrap();
    let late_port = late_srv.local_addr().unwrap().port();
    let (mut max_tcp, mut done, mut late) = (0, false, None);
    for _ in 0..4_000_000 {
        h.step(1);
        max_tcp = max_tcp.max(h.ns.tcp_flow_count());
        done = done || dl.poll(&mut h);
        if late.is_none() && h.ns.metrics().flows_over_limit > 0 {
            // The published limit is reached: the guest can still connect out.
            let s = tcp_socket(&mut h, 65536);
            connect_gateway(&mut h, s, late_port, LATE_PORT);
            assert!(
                wait_established(&mut h, s),
                "guest connection during the flood"
            );
            late = Some(s);
        }
        if done && flooder.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let connected = flooder.join().unwrap();
    let m = h.ns.metrics().clone();
    eprintln!(
        "published flood: {connected} host connects, accepts {}, over limit {}, max tcp \
         {max_tcp}, warnings {}",
        m.published_accepts,
        m.flows_over_limit,
        warnings.load(Ordering::Relaxed)
    );
    assert!(done, "transfer did not complete: {} bytes", dl.received());
    assert!(late.is_some(), "the published limit was never reached");
    // Published flows + the transfer + the guest's late connection.
    assert!(max_tcp <= limits.max_published_connections + 2, "{max_tcp}");
    assert!(m.flows_over_limit > 0);
    let lines = warnings.load(Ordering::Relaxed);
    assert!(
        lines >= 1 && lines <= gated_lines(m.flows_over_limit),
        "{lines}"
    );
    dl.finish(&mut h);
    if let Some(s) = late {
        h.sockets.get_mut::<tcp::Socket>(s).abort();
    }
    assert!(drain(&mut h), "{} flows left", h.ns.flow_count());
    drop(h);
    drop(late_srv);
    assert_eq!(open_fds(), fds0, "host sockets left open");
}

#[test]
fn a_guest_that_never_reads_pushes_back_on_the_host_sender() {
    let _serial = serial();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut h = Harness::new(flood_cfg());
    // A 64 KiB receive buffer the guest never reads from.
    let s = tcp_socket(&mut h, 64 * 1024);
    connect_gateway(&mut h, s, port, 40002);
    assert!(wait_established(&mut h, s));
    let (mut c, _) = l.accept().unwrap();
    c.set_nonblocking(true).unwrap();
    let data = pattern(64 << 20, 5);
    let mut written = 0usize;
    let mut blocked = 0;
    // The host writes as fast as it can; the netstack steps. Backpressure: the host's
    // writes stop being accepted once the guest window, our socket's receive buffer and
    // the peer's send buffer are full.
    for _ in 0..200_000 {
        match c.write(&data[written..]) {
            Ok(n) => {
                written += n;
                blocked = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => blocked += 1,
            Err(e) => panic!("host write: {e}"),
        }
        if blocked > 200 || written == data.len() {
            break;
        }
        h.step(0);
    }
    let m = h.ns.metrics().clone();
    eprintln!(
        "never reads: host wrote {written} bytes before blocking, {} delivered to the guest, \
         {} window probes",
        m.bytes_host_to_guest, m.tcp_window_probes
    );
    assert!(
        blocked > 200,
        "the host sender never blocked ({written} bytes written)"
    );
    assert!(written < 32 << 20, "{written} bytes accepted");
    // The guest got at most its window (plus probes); the rest stays in host sockets.
    assert!(
        m.bytes_host_to_guest <= 64 * 1024 + 4096,
        "{}",
        m.bytes_host_to_guest
    );
    // Now the guest reads: every byte arrives in order.
    let mut got = Vec::with_capacity(written);
    let ok = h.run_until(2_000_000, Duration::from_secs(60), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        let mut buf = [0u8; 65536];
        while sock.can_recv() {
            match sock.recv_slice(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got.len() >= written
    });
    assert!(ok, "{} of {written} bytes", got.len());
    assert!(got == data[..written], "bytes differ");
    drop(c);
    h.sockets.get_mut::<tcp::Socket>(s).abort();
    assert!(drain(&mut h));
}

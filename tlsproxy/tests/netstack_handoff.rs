//! The proxy behind the real netstack: a smoltcp guest runs a rustls client over its TCP
//! socket to the gateway's TLS port; the netstack judges the ClientHello, hands the flow to
//! the proxy over a socket pair, and the proxy reaches the HTTPS upstream on 127.0.0.1.
//! Also: a bypassed name is spliced (the guest sees the upstream's certificate), and UDP to
//! an intercepted port is refused when QUIC is blocked.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use netstack::testkit::Harness;
use netstack::{HandoffRef, NetConfig, TlsInspection};
use smoltcp::socket::tcp;

/// Runs one HTTP/1.1 request over TLS from the smoltcp guest to the gateway's `port`,
/// trusting `ca_pem`. Returns the response text, or why it failed.
fn guest_https(
    h: &mut Harness,
    port: u16,
    local: u16,
    sni: &str,
    ca_pem: &str,
    request: &str,
) -> Result<String, String> {
    let cfg = client_config(ca_pem, Vec::new());
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let mut tls = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    tls.writer()
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let s = h.connect_gateway_tcp(port, local, 256 * 1024);
    let mut response = Vec::new();
    let mut error = None;
    let mut out = Vec::new();
    h.run_until(400_000, Duration::from_secs(30), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        while sock.can_recv() {
            let got = sock.recv(|b| (b.len(), b.to_vec())).unwrap_or_default();
            if got.is_empty() {
                break;
            }
            let mut rd = &got[..];
            while !rd.is_empty() {
                if tls.read_tls(&mut rd).is_err() {
                    break;
                }
                if let Err(e) = tls.process_new_packets() {
                    error = Some(format!("guest TLS: {e}"));
                    return true;
                }
            }
            let _ = tls.reader().read_to_end(&mut response);
        }
        while tls.wants_write() {
            let _ = tls.write_tls(&mut out);
        }
        if !out.is_empty() && sock.can_send() {
            let n = sock.send_slice(&out).unwrap_or(0);
            out.drain(..n);
        }
        let st = sock.state();
        response.ends_with(b"upstream-ok")
            || matches!(
                st,
                tcp::State::Closed | tcp::State::CloseWait | tcp::State::TimeWait
            )
    });
    if let Some(e) = error {
        return Err(e);
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn harness(env: &ProxyEnv, port: u16) -> Harness {
    let cfg = NetConfig {
        tls: TlsInspection {
            ports: vec![port],
            handoff: Some(HandoffRef(env.proxy.clone())),
            ..TlsInspection::default()
        },
        ..NetConfig::default()
    };
    Harness::new(cfg)
}

#[test]
fn a_guest_flow_is_judged_handed_over_and_its_secret_swapped_in() {
    let up = Upstream::start("api.example.test", Alpn::H1);
    let env = ProxyEnv::start(up.ca_pem(), |c| {
        c.secrets = secrets("API_KEY=the-real-key@api.example.test");
        c.bypass = vec![tlsproxy::HostPattern::parse("*.pinned.test").unwrap()];
        c.block_quic = true;
    });
    let ph = env.placeholder("API_KEY");
    let port = up.addr.port();
    let mut h = harness(&env, port);
    let req = format!("GET /v1 HTTP/1.1\r\nHost: api.example.test\r\nx-api-key: {ph}\r\nConnection: close\r\n\r\n");
    let ca = env.proxy.ca_pem().to_string();
    let resp = guest_https(&mut h, port, 40001, "api.example.test", &ca, &req).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .headers
            .contains(&("x-api-key".into(), "the-real-key".into())),
        "{:?}",
        seen[0]
    );
    assert_eq!(h.ns.metrics().tls_intercepted, 1);
    assert_eq!(stat(&env.stats(), "tls_proxy_secrets_substituted"), 1);
    // The guest's CA is ours: a guest trusting only the upstream's CA fails.
    let e = guest_https(&mut h, port, 40002, "api.example.test", &up.ca_pem(), &req).unwrap_err();
    assert!(e.contains("guest TLS"), "{e}");
}

#[test]
fn a_bypassed_name_is_spliced_with_the_upstreams_own_certificate() {
    let up = Upstream::start("api.pinned.test", Alpn::H1);
    let env = ProxyEnv::start(up.ca_pem(), |c| {
        c.bypass = vec![tlsproxy::HostPattern::parse("*.pinned.test").unwrap()];
    });
    let port = up.addr.port();
    let mut h = harness(&env, port);
    let req = "GET / HTTP/1.1\r\nHost: api.pinned.test\r\nConnection: close\r\n\r\n";
    let resp = guest_https(&mut h, port, 40003, "api.pinned.test", &up.ca_pem(), req).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(h.ns.metrics().tls_spliced, 1);
    assert_eq!(h.ns.metrics().tls_intercepted, 0);
    assert_eq!(stat(&env.stats(), "tls_proxy_flows"), 0);
}

#[test]
fn udp_to_an_intercepted_port_is_refused_when_quic_is_blocked() {
    let up = Upstream::start("api.example.test", Alpn::H1);
    let env = ProxyEnv::start(up.ca_pem(), |c| c.block_quic = true);
    let port = up.addr.port();
    let mut h = harness(&env, port);
    let sink = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    sink.set_nonblocking(true).unwrap();
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    let frame = forge.udp(50000, gw, port, b"quic initial").to_vec();
    h.inject(&frame);
    for _ in 0..50 {
        h.step(2);
    }
    assert_eq!(h.ns.metrics().quic_blocked, 1);
    let mut buf = [0u8; 64];
    assert!(
        sink.recv(&mut buf).is_err(),
        "the datagram reached the host"
    );
}

#[test]
fn a_placeholder_on_a_plaintext_flow_resets_it_and_a_datagram_is_dropped() {
    let up = Upstream::start("api.example.test", Alpn::H1);
    let env = ProxyEnv::start(up.ca_pem(), |c| {
        c.secrets = secrets("API_KEY=the-real-key@api.example.test");
    });
    let ph = env.placeholder("API_KEY");
    let guard = netstack::PlaceholderGuard::new(
        tlsproxy::PLACEHOLDER_PREFIX.as_bytes(),
        vec![ph.clone().into_bytes()],
    )
    .map(Arc::new);
    let mut cfg = NetConfig::default();
    cfg.tls.handoff = Some(HandoffRef(env.proxy.clone()));
    cfg.tls.placeholders = guard;
    let mut h = Harness::new(cfg);
    // Plain HTTP to a host server: the request carrying the placeholder never arrives.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut all = Vec::new();
        let _ = c.read_to_end(&mut all);
        all
    });
    let s = h.connect_gateway_tcp(port, 40010, 65536);
    let req = format!("GET /?key={ph} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut sent = 0;
    h.run_until(200_000, Duration::from_secs(20), |h| {
        let sock = h.sockets.get_mut::<tcp::Socket>(s);
        if sock.may_send() && sent < req.len() {
            sent += sock.send_slice(&req.as_bytes()[sent..]).unwrap_or(0);
        }
        matches!(sock.state(), tcp::State::Closed)
    });
    assert_eq!(
        h.sockets.get::<tcp::Socket>(s).state(),
        tcp::State::Closed,
        "the flow was reset"
    );
    let received = got.join().unwrap();
    assert!(
        !String::from_utf8_lossy(&received).contains("rf_secret_"),
        "{received:?}"
    );
    assert_eq!(h.ns.metrics().secret_plaintext_violations, 1);
    // A datagram carrying it is dropped; one without it goes through.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let uport = sink.local_addr().unwrap().port();
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    let bad = forge
        .udp(50001, gw, uport, format!("k={ph}").as_bytes())
        .to_vec();
    let good = forge.udp(50001, gw, uport, b"clean").to_vec();
    h.inject(&bad);
    h.inject(&good);
    for _ in 0..20 {
        h.step(2);
    }
    let mut buf = [0u8; 128];
    let n = sink.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"clean");
    assert_eq!(h.ns.metrics().secret_plaintext_violations, 2);
}

//! One TLS flow, direct vs through the interception proxy (issue 17 item 5), measured in one
//! run with the repetitions interleaved: an HTTPS server on 127.0.0.1 (rustls, its own CA)
//! and a rustls client that either connects to it over loopback TCP (direct) or is handed to
//! a `tlsproxy::TlsProxy` over a Unix socket pair exactly as the netstack hands a guest flow
//! (intercepted: decrypt, HTTP through hyper, re-encrypt to the server).
//!
//! A spliced flow is the direct flow plus the netstack's translation, which is the same for
//! spliced and intercepted flows (both are guest TCP through the netstack; docs/benchmarks.md
//! has its figures), so this isolates what interception adds: throughput of one 256 MiB
//! download and the time to the first byte of a 1-byte response (TCP connect, both
//! handshakes, request, response), median of the rounds, and the ratio.
//!
//! `cargo bench -p benches --bench tls` (`RF_TLS_BENCH_ROUNDS`, default 5).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tlsproxy::{CertAuthority, ProxyConfig, TlsProxy, UpstreamTrust};

const NAME: &str = "bench.test";
const BULK: u64 = 256 << 20;
const LATENCY_SAMPLES: usize = 30;

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HTTPS server: `GET /N` answers N bytes. Returns its address and CA (PEM).
fn server() -> (SocketAddr, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec![NAME.to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("cert"),
    );
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let conn = rustls::ServerConnection::new(cfg).expect("server");
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let n: u64 = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse().ok())
                    .unwrap_or(1);
                let _ = write!(tls, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                let chunk = vec![0x5au8; 256 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    if tls.write_all(&chunk[..k]).is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (addr, ca.pem())
}

fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        let c: CertificateDer<'static> = c.expect("pem");
        roots.add(c).expect("root");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Fetches `/n` over `sock`; returns (time to the first body byte, total time).
fn fetch<S: Read + Write>(
    sock: S,
    cfg: &Arc<rustls::ClientConfig>,
    n: u64,
    t0: Instant,
) -> (Duration, Duration) {
    let name = ServerName::try_from(NAME).expect("name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET /{n} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut body = 0u64;
    let mut first = None;
    loop {
        let k = match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read: {e}"),
        };
        if first.is_none() {
            head.extend_from_slice(&buf[..k]);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let after = (head.len() - p - 4) as u64;
                if after > 0 {
                    first = Some(t0.elapsed());
                }
                body += after;
            }
        } else {
            body += k as u64;
        }
        if first.is_none() && body > 0 {
            first = Some(t0.elapsed());
        }
        if body >= n {
            break;
        }
    }
    assert_eq!(body, n, "short body");
    (first.unwrap_or_else(|| t0.elapsed()), t0.elapsed())
}

struct Rig {
    upstream: SocketAddr,
    direct_cfg: Arc<rustls::ClientConfig>,
    proxied_cfg: Arc<rustls::ClientConfig>,
    proxy: Arc<TlsProxy>,
}

impl Rig {
    fn run(&self, intercepted: bool, n: u64) -> (Duration, Duration) {
        let t0 = Instant::now();
        if intercepted {
            let (ours, theirs) = UnixStream::pair().expect("pair");
            theirs.set_nonblocking(true).expect("nonblocking");
            let flow = netstack::HandedFlow {
                stream: theirs,
                target: self.upstream,
                guest: "172.16.0.2:40000".parse().expect("addr"),
                server_name: NAME.into(),
            };
            assert!(netstack::TlsHandoff::take(&*self.proxy, flow));
            fetch(ours, &self.proxied_cfg, n, t0)
        } else {
            let s = TcpStream::connect(self.upstream).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            fetch(s, &self.direct_cfg, n, t0)
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("RF_TLS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (upstream, upstream_ca) = server();
    let ca = Arc::new(CertAuthority::generate("bench").expect("ca"));
    let trust = UpstreamTrust::new(
        &[("bench-ca".into(), upstream_ca.clone().into_bytes())],
        true,
    )
    .expect("trust");
    let (proxy, worker) = TlsProxy::new(ProxyConfig::new(ca, trust)).expect("proxy");
    let proxied_cfg = client_config(proxy.ca_pem());
    let thread = std::thread::spawn(move || worker.run().expect("proxy runs"));
    let rig = Rig {
        upstream,
        direct_cfg: client_config(&upstream_ca),
        proxied_cfg,
        proxy: proxy.clone(),
    };
    // The first intercepted flow mints the leaf for the name: shown apart from the rest.
    let cold = rig.run(true, 1).0;
    let (mut ttfb, mut gbit) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..rounds {
        for (i, intercepted) in [(0, false), (1, true)] {
            // Alternate which system goes first in each round.
            let i = if round % 2 == 0 { i } else { 1 - i };
            let intercepted = if round % 2 == 0 {
                intercepted
            } else {
                !intercepted
            };
            for _ in 0..LATENCY_SAMPLES / rounds.max(1) + 1 {
                ttfb[i].push(rig.run(intercepted, 1).0.as_secs_f64() * 1e3);
            }
            let (_, total) = rig.run(intercepted, BULK);
            gbit[i].push(BULK as f64 * 8.0 / total.as_secs_f64() / 1e9);
        }
    }
    let (d_t, i_t) = (median(ttfb[0].clone()), median(ttfb[1].clone()));
    let (d_g, i_g) = (median(gbit[0].clone()), median(gbit[1].clone()));
    println!(
        "TLS, one flow, {rounds} interleaved rounds (medians), 256 MiB download / 1-byte response:"
    );
    println!();
    println!("| | direct | intercepted | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| throughput (Gbit/s) | {d_g:.2} | {i_g:.2} | {:.2}x |",
        i_g / d_g
    );
    println!(
        "| time to first byte (ms) | {d_t:.3} | {i_t:.3} | +{:.3} ms |",
        i_t - d_t
    );
    println!();
    println!(
        "first intercepted flow to a new name (leaf minted): {:.3} ms to first byte",
        cold.as_secs_f64() * 1e3
    );
    // Every sample, for `cargo xtask bench tls` (one line, parsed by xtask/src/bench/tls.rs).
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "RF_TLS_SAMPLES {{\"direct_gbit\":[{}],\"intercepted_gbit\":[{}],\"direct_ttfb_ms\":[{}],\"intercepted_ttfb_ms\":[{}],\"cold_ttfb_ms\":[{:.4}]}}",
        list(&gbit[0]),
        list(&gbit[1]),
        list(&ttfb[0]),
        list(&ttfb[1]),
        cold.as_secs_f64() * 1e3
    );
    proxy.stop();
    let _ = thread.join();
}

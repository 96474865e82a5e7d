//! Test rig: an HTTPS upstream with its own CA, the proxy on a worker thread, and a guest
//! client speaking HTTP/1.1 or HTTP/2 over the socket pair the netstack would hand over.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tlsproxy::{CertAuthority, ProxyConfig, SecretSet, SecretSpec, TlsProxy, UpstreamTrust};

/// ALPN offered (guest) or accepted (upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H1,
    H2,
    Both,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::H1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Alpn::H2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        }
    }
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub version: String,
    pub uri: String,
    pub authorization: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub content_length: Option<u64>,
}

/// An HTTPS server on 127.0.0.1 with a certificate for `name` from its own CA.
pub struct Upstream {
    pub addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Upstream {
    pub fn start(name: &str, alpn: Alpn) -> Upstream {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "upstream test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        cfg.alpn_protocols = alpn.protocols();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            rt().block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((tcp, _)) = l.accept().await {
                    let (acceptor, log) = (acceptor.clone(), log.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let log = log.clone();
                            async move { Ok::<_, std::convert::Infallible>(record(log, req).await) }
                        });
                        let io = TokioIo::new(tls);
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .with_upgrades()
                                .await;
                        }
                    });
                }
            })
        });
        Upstream {
            addr,
            ca_pem: ca.pem(),
            seen,
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(log: Arc<Mutex<Vec<Seen>>>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.headers().contains_key("upgrade") {
        // `Upgrade: echo`: switch protocols, then echo every byte back.
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(u) = on.await else { return };
            let mut io = TokioIo::new(u);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        resp.headers_mut()
            .insert("upgrade", "echo".parse().unwrap());
        return resp;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = Seen {
        version: format!("{:?}", parts.version),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        authorization: header("authorization"),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        content_length: header("content-length").and_then(|v| v.parse().ok()),
        body,
    };
    let mut log = log.lock().unwrap();
    log.push(seen);
    let mut resp = Response::new(Full::new(Bytes::from_static(b"upstream-ok")));
    resp.headers_mut()
        .insert("x-seen", (log.len() - 1).to_string().parse().unwrap());
    resp
}

/// A guest request.
#[derive(Clone, Debug)]
pub struct TestReq {
    pub method: &'static str,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

pub fn get_path(host: &str, path: &str, headers: &[(&str, &str)]) -> TestReq {
    TestReq {
        method: "GET",
        host: host.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: Vec::new(),
        chunked: false,
    }
}

pub fn get(host: &str, headers: &[(&str, &str)]) -> TestReq {
    get_path(host, "/path?q=1", headers)
}

pub fn post(host: &str, body: Vec<u8>, chunked: bool) -> TestReq {
    TestReq {
        method: "POST",
        body,
        chunked,
        ..get_path(host, "/upload", &[])
    }
}

/// A body in 16 KiB pieces with no known length (sent chunked over HTTP/1.1).
struct Chunks(Vec<u8>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.0.len().min(16 * 1024);
        let piece: Vec<u8> = self.0.drain(..n).collect();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(piece)))))
    }
}

/// What the guest got.
#[derive(Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub negotiated: Option<Vec<u8>>,
    pub seen: Option<Seen>,
    pub error: Option<String>,
}

/// The proxy on its worker thread.
pub struct ProxyEnv {
    pub proxy: Arc<TlsProxy>,
    thread: Option<std::thread::JoinHandle<()>>,
    terminated: Arc<AtomicBool>,
}

pub fn secrets(spec: &str) -> SecretSet {
    let spec: SecretSpec = spec.parse().unwrap();
    SecretSet::new(vec![spec.resolve().unwrap()])
}

impl ProxyEnv {
    pub fn start(upstream_ca: String, f: impl FnOnce(&mut ProxyConfig)) -> ProxyEnv {
        let trust =
            UpstreamTrust::new(&[("test-ca.pem".into(), upstream_ca.into_bytes())], true).unwrap();
        Self::with(trust, f)
    }

    pub fn start_unverified(f: impl FnOnce(&mut ProxyConfig)) -> ProxyEnv {
        Self::with(UpstreamTrust::new(&[], false).unwrap(), f)
    }

    fn with(trust: UpstreamTrust, f: impl FnOnce(&mut ProxyConfig)) -> ProxyEnv {
        let ca = Arc::new(CertAuthority::generate("test").unwrap());
        let mut cfg = ProxyConfig::new(ca, trust);
        cfg.timeout = Duration::from_secs(5);
        f(&mut cfg);
        let (proxy, worker) = TlsProxy::new(cfg).unwrap();
        let terminated = Arc::new(AtomicBool::new(false));
        let flag = terminated.clone();
        proxy.on_terminate(Box::new(move |_| flag.store(true, Ordering::SeqCst)));
        let thread = std::thread::spawn(move || worker.run().unwrap());
        ProxyEnv {
            proxy,
            thread: Some(thread),
            terminated,
        }
    }

    /// Hands the proxy a flow to `up` naming `sni`, as the netstack would; returns the
    /// guest's end of the pair.
    pub fn hand_over(&self, up: &Upstream, sni: &str) -> StdUnixStream {
        let (ours, theirs) = StdUnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        ours.set_nonblocking(true).unwrap();
        let flow = netstack::HandedFlow {
            stream: theirs,
            target: up.addr,
            guest: "10.0.2.15:40000".parse().unwrap(),
            server_name: sni.to_string(),
        };
        assert!(netstack::TlsHandoff::take(&*self.proxy, flow));
        ours
    }

    pub fn placeholder(&self, env: &str) -> String {
        self.proxy
            .secrets()
            .iter()
            .find(|s| s.env() == env)
            .unwrap()
            .placeholder()
            .to_string()
    }

    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        self.proxy.stats().snapshot()
    }

    pub fn terminated(&self) -> bool {
        self.terminated.load(Ordering::SeqCst)
    }

    pub fn request(&self, up: &Upstream, sni: &str, alpn: Alpn, req: TestReq) -> Reply {
        let ca = self.proxy.ca_pem().to_string();
        self.request_trusting(up, sni, alpn, &ca, req)
    }

    pub fn request_trusting(
        &self,
        up: &Upstream,
        sni: &str,
        alpn: Alpn,
        ca_pem: &str,
        req: TestReq,
    ) -> Reply {
        let ours = self.hand_over(up, sni);
        let mut reply = rt().block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                guest_exchange(ours, sni, alpn, ca_pem, req),
            )
            .await
            .unwrap_or_else(|_| Reply {
                error: Some("timed out".into()),
                ..Reply::default()
            })
        });
        if let Some(i) = reply.seen_index() {
            reply.seen = up.seen().get(i).cloned();
        }
        reply
    }
}

impl Reply {
    fn seen_index(&self) -> Option<usize> {
        self.body
            .strip_prefix("upstream-ok#")
            .and_then(|i| i.parse().ok())
    }
}

impl Drop for ProxyEnv {
    fn drop(&mut self) {
        self.proxy.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn guest_exchange(
    sock: StdUnixStream,
    sni: &str,
    alpn: Alpn,
    ca_pem: &str,
    req: TestReq,
) -> Reply {
    let fail = |e: String| Reply {
        error: Some(e),
        ..Reply::default()
    };
    let sock = tokio::net::UnixStream::from_std(sock).unwrap();
    let cfg = client_config(ca_pem, alpn.protocols());
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = match tokio_rustls::TlsConnector::from(cfg)
        .connect(name, sock)
        .await
    {
        Ok(t) => t,
        Err(e) => return fail(format!("handshake: {e}")),
    };
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let h2 = negotiated.as_deref() == Some(b"h2");
    let uri = if h2 {
        format!("https://{}{}", req.host, req.path)
    } else {
        req.path.clone()
    };
    let mut b = Request::builder().method(req.method).uri(uri);
    if !h2 {
        b = b.header("host", &req.host);
    }
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    if !req.chunked && req.method == "POST" {
        b = b.header("content-length", req.body.len());
    }
    let body: http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> = if req.chunked
    {
        Chunks(req.body).boxed()
    } else {
        Full::new(Bytes::from(req.body)).boxed()
    };
    let request = b.body(body).unwrap();
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut s, c) = match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
        {
            Ok(x) => x,
            Err(e) => return fail(format!("h2: {e}")),
        };
        tokio::spawn(c);
        s.send_request(request).await
    } else {
        let (mut s, c) = match hyper::client::conn::http1::handshake(io).await {
            Ok(x) => x,
            Err(e) => return fail(format!("h1: {e}")),
        };
        tokio::spawn(c);
        s.send_request(request).await
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return fail(format!("request: {e}")),
    };
    let status = resp.status().as_u16();
    let seen = resp
        .headers()
        .get("x-seen")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut body = String::from_utf8_lossy(&body).into_owned();
    if let Some(i) = seen {
        body = format!("{body}#{i}");
    }
    Reply {
        status,
        body,
        negotiated,
        seen: None,
        error: None,
    }
}

impl ProxyEnv {
    /// Upgrades an HTTP/1.1 request to `sni` to the upstream's echo protocol, sends `msg`
    /// and returns what comes back (until `want` bytes or the end).
    pub fn upgrade_echo(
        &self,
        up: &Upstream,
        sni: &str,
        msg: &[u8],
        want: usize,
    ) -> Result<Vec<u8>, String> {
        let ours = self.hand_over(up, sni);
        let ca = self.proxy.ca_pem().to_string();
        let (sni, msg) = (sni.to_string(), msg.to_vec());
        rt().block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let sock = tokio::net::UnixStream::from_std(ours).unwrap();
            let cfg = client_config(&ca, Alpn::H1.protocols());
            let name = ServerName::try_from(sni.clone()).unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, sock)
                .await
                .map_err(|e| e.to_string())?;
            let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c.with_upgrades());
            let req = Request::builder()
                .uri("/ws")
                .header("host", &sni)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let mut resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                return Err(format!("status {}", resp.status()));
            }
            let u = hyper::upgrade::on(&mut resp)
                .await
                .map_err(|e| e.to_string())?;
            let mut io = TokioIo::new(u);
            io.write_all(&msg).await.map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                while got.len() < want {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
            let _ = read.await;
            Ok(got)
        })
    }
}

/// A guest's client configuration: trusting the certificates of `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &str, alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        let c: CertificateDer<'static> = c.unwrap();
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn;
    Arc::new(cfg)
}

pub fn stat(s: &[(&'static str, u64)], name: &str) -> u64 {
    s.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

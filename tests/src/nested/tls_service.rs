//! The harness's TLS server: tcp [`TLS_PORT`], a certificate made at start for every name of
//! [`super::services::ZONE`] and [`EXTRA_NAMES`] (not `wrong.test`), signed by a test CA
//! whose certificate is written to [`CA_FILE`] (so `--tls-upstream-ca` can trust it). One
//! HTTP/1.0 answer per connection names the server name the client sent, so a test sees which
//! name reached the server, and, when the request has an `x-api-key` header, whether it was
//! [`TEST_SECRET`] (`key=ok`), a ringfence placeholder (`key=placeholder`) or something
//! else (`key=other`): the upstream checks the secret, the guest never sees it.
//!
//! The SNI tests do not verify it (`curl -k`): what is under test there is the policy's view
//! of the ClientHello; the interception tests do (through ringfence's CA).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// TLS port.
pub const TLS_PORT: u16 = 8443;

/// Names the certificate covers beyond the DNS zone's (reached with `curl --resolve`).
pub const EXTRA_NAMES: &[&str] = &["other.test", "bypass.test"];

/// Where the test CA's certificate (PEM) is written.
pub const CA_FILE: &str = "/tmp/rf-upstream-ca.pem";

/// The secret value the server expects in `x-api-key`.
pub const TEST_SECRET: &str = "rf-nested-secret-4242";

/// How long a TLS connection may sit idle before the server gives up on it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the server on all addresses; `Err` says why it cannot.
pub fn start() -> Result<(), String> {
    let config = Arc::new(server_config()?);
    let listener = TcpListener::bind(SocketAddr::from((IpAddr::from([0u16; 8]), TLS_PORT)))
        .map_err(|e| format!("tcp port {TLS_PORT}: {e}"))?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                let _ = serve(stream, config);
            });
        }
    });
    Ok(())
}

fn server_config() -> Result<ServerConfig, String> {
    let mut names: Vec<String> = super::services::ZONE
        .iter()
        .map(|(n, _)| (*n).to_string())
        .collect();
    names.extend(EXTRA_NAMES.iter().map(|n| (*n).to_string()));
    names.dedup();
    let bad = |e: rcgen::Error| format!("making the TLS server's certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(bad)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ringfence test upstream CA");
    let ca = ca_params.self_signed(&ca_key).map_err(bad)?;
    let leaf_key = rcgen::KeyPair::generate().map_err(bad)?;
    let leaf = rcgen::CertificateParams::new(names)
        .map_err(bad)?
        .signed_by(&leaf_key, &ca, &ca_key)
        .map_err(bad)?;
    std::fs::write(CA_FILE, ca.pem()).map_err(|e| format!("writing {CA_FILE}: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    // ring's provider is deprecated only for lacking post-quantum key exchange, which a test
    // server does not need (the aws-lc-rs provider would add cmake to the build).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .map_err(|e| format!("TLS server configuration: {e}"))
}

/// Completes the handshake, reads the request head, answers `hello tls sni=<name or ->`.
fn serve(sock: TcpStream, config: Arc<ServerConfig>) -> io::Result<()> {
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        match tls.read(&mut buf)? {
            0 => break,
            n => req.extend_from_slice(&buf[..n]),
        }
    }
    let sni = tls.conn.server_name().unwrap_or("-").to_string();
    let key = match api_key(&req) {
        None => String::new(),
        Some(k) if k == TEST_SECRET.as_bytes() => " key=ok".into(),
        Some(k) if k.starts_with(b"rf_secret_") => " key=placeholder".into(),
        Some(_) => " key=other".into(),
    };
    let body = format!("hello tls sni={sni}{key}\n");
    write!(
        tls,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// The value of the `x-api-key` header of a request head, if it has one.
fn api_key(head: &[u8]) -> Option<&[u8]> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(b"x-api-key")
            .then(|| line[colon + 1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_key_header_is_found_in_any_case() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key:  v1 \r\n\r\n";
        assert_eq!(super::api_key(head), Some(&b"v1"[..]));
        assert_eq!(super::api_key(b"GET / HTTP/1.1\r\n\r\n"), None);
    }
}

//! The harness's TLS server: tcp [`TLS_PORT`], a certificate made at start (rcgen, self-signed,
//! for every name of [`super::services::ZONE`]), one HTTP/1.0 answer per connection naming
//! the server name the client sent, so a test sees which name reached the server.
//!
//! Clients in tests do not verify it (`curl -k`): what is under test is the policy's view of
//! the ClientHello, not the certificate.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// TLS port.
pub const TLS_PORT: u16 = 8443;

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
    names.dedup();
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("making the TLS server's certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    // ring's provider is deprecated only for lacking post-quantum key exchange, which a test
    // server does not need (the aws-lc-rs provider would add cmake to the build).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
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
    let body = format!("hello tls sni={sni}\n");
    write!(
        tls,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    tls.conn.send_close_notify();
    tls.flush()
}

//! A real TLS client's first flight, for the SNI tests.

use std::sync::Arc;

/// The ClientHello a rustls client sends for `name` (no SNI for an IP address or when `sni`
/// is false). Panics on a name rustls refuses (test input).
pub fn rustls_client_hello(name: &str, sni: bool) -> Vec<u8> {
    // `ring` has no post-quantum key exchange, which a test client does not need.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni;
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// `msg` (a handshake message) in TLS handshake records of at most `frag` bytes each.
pub fn tls_records(msg: &[u8], frag: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in msg.chunks(frag.max(1)) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

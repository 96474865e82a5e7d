//! TLS interception for ringfence guests (issue 17; design §2 wave 2, §6–§7).
//!
//! The netstack judges a guest's ClientHello by its server name and, when this proxy wants
//! the flow ([`netstack::TlsHandoff`]), hands it over as one end of a Unix socket pair. The
//! proxy then:
//!
//! 1. reads the ClientHello (rustls's `Acceptor`) and opens a new TLS connection to the
//!    original destination, offering the guest's ALPN list and verifying the upstream's
//!    certificate for the server name against the host's roots plus configured CAs
//!    ([`UpstreamTrust`]);
//! 2. completes the guest's handshake with a leaf certificate for that name, minted by the
//!    VM's own CA ([`CertAuthority`]) and offering only the protocol the upstream picked;
//! 3. relays HTTP/1.1 and HTTP/2 request by request (refusing domain fronting and swapping
//!    secret placeholders for values where allowed: [`SecretSet`]), or other protocols as
//!    opaque bytes.
//!
//! It runs on a thread of its own (a single-threaded tokio runtime, [`ProxyWorker`]); the
//! netstack's zero-copy path is untouched for every flow it does not take. Names matching a
//! `bypass` pattern are spliced by the netstack as before (still judged by the policy).

mod ca;
mod config;
mod error;
mod flow;
mod http;
mod opaque;
mod pattern;
mod proxy;
mod rewind;
mod secrets;
mod shared;
mod stats;
mod upstream;

pub use ca::CertAuthority;
pub use config::{ProxyConfig, TerminateHook, DEFAULT_MAX_FLOWS, DEFAULT_TIMEOUT};
pub use error::ProxyError;
pub use http::BUFFER_MAX;
pub use pattern::HostPattern;
pub use proxy::{ProxyWorker, TlsProxy};
pub use secrets::{
    Rewrite, Secret, SecretSet, SecretSource, SecretSpec, StreamRewriter, Violation, ViolationMode,
    PLACEHOLDER_LEN, PLACEHOLDER_PREFIX,
};
pub use shared::BUFFER_BUDGET;
pub use stats::ProxyStats;
pub use upstream::UpstreamTrust;

/// The crypto provider of both sides of every intercepted flow: *ring*'s, shared.
///
/// rustls 0.23.48 deprecates it only for lacking post-quantum key exchange; the aws-lc-rs
/// provider has it but needs cmake and a C build several times longer (docs/decisions.md).
/// The guest side is our own CA's connection, and upstreams all offer classical groups too.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    #[allow(deprecated)]
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

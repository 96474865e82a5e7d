//! The upstream side of an intercepted flow: a new TLS connection to where the guest was
//! going, verified against the host's roots plus any extra CA the configuration names
//! (or, when asked, not verified at all: then no secret is ever sent on it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::ProxyError;

/// Client configurations kept, one per ALPN offer: reusing one keeps its session cache, so
/// a second flow to an upstream resumes its TLS session instead of a full handshake.
const CONFIG_CACHE_MAX: usize = 16;

/// The roots upstream certificates are checked against.
pub struct UpstreamTrust {
    roots: Arc<RootCertStore>,
    verify: bool,
    provider: Arc<CryptoProvider>,
    configs: Mutex<HashMap<Vec<Vec<u8>>, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for UpstreamTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTrust")
            .field("roots", &self.roots.len())
            .field("verify", &self.verify)
            .finish()
    }
}

impl UpstreamTrust {
    /// The host's roots (`rustls-native-certs`: `SSL_CERT_FILE`/`SSL_CERT_DIR` or the
    /// distribution's store), plus `extra_pem` (each a PEM bundle), verifying unless `verify`
    /// is false. Fails when an extra bundle holds no certificate or when, verifying, no root
    /// at all is known.
    pub fn new(extra_pem: &[(String, Vec<u8>)], verify: bool) -> Result<Self, ProxyError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, errors = native.errors.len(), "host CA roots loaded");
        for (name, pem) in extra_pem {
            let certs: Vec<CertificateDer<'static>> =
                rustls::pki_types::pem::PemObject::pem_slice_iter(pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        ProxyError::Config(format!("--tls-upstream-ca {name}: not PEM: {e}"))
                    })?;
            if certs.is_empty() {
                return Err(ProxyError::Config(format!(
                    "--tls-upstream-ca {name}: holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)"
                )));
            }
            for c in certs {
                roots.add(c).map_err(|e| {
                    ProxyError::Config(format!(
                        "--tls-upstream-ca {name}: unusable certificate: {e}"
                    ))
                })?;
            }
        }
        if verify && roots.is_empty() {
            return Err(ProxyError::Config(
                "no CA roots to verify upstream servers with: the host has none and no --tls-upstream-ca was given (or pass --tls-no-verify-upstream)".into(),
            ));
        }
        Ok(UpstreamTrust {
            roots: Arc::new(roots),
            verify,
            provider: crate::provider(),
            configs: Mutex::new(HashMap::new()),
        })
    }

    /// Whether upstream certificates are verified.
    pub fn verifies(&self) -> bool {
        self.verify
    }

    /// A client configuration offering `alpn` (the guest's list, carried through), shared by
    /// every flow with the same offer.
    pub(crate) fn client_config(
        &self,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ClientConfig>, ProxyError> {
        let mut cache = self.configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cfg) = cache.get(&alpn) {
            return Ok(cfg.clone());
        }
        let cfg = self.new_client_config(alpn.clone())?;
        if cache.len() >= CONFIG_CACHE_MAX {
            cache.clear();
        }
        cache.insert(alpn, cfg.clone());
        Ok(cfg)
    }

    fn new_client_config(&self, alpn: Vec<Vec<u8>>) -> Result<Arc<ClientConfig>, ProxyError> {
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProxyError::Config(e.to_string()))?;
        let mut cfg = if self.verify {
            builder
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(self.provider.clone())))
                .with_no_client_auth()
        };
        cfg.alpn_protocols = alpn;
        Ok(Arc::new(cfg))
    }
}

/// Accepts any upstream certificate (`--tls-no-verify-upstream`); signatures are still
/// checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

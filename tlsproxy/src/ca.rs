//! The interception CA: made fresh for each VM (or loaded from PEM files), and the leaf
//! certificates it mints on demand, one per server name, cached.
//!
//! The guest trusts this CA (its agent installs [`CertAuthority::cert_pem`]), so a leaf minted
//! for the name the guest asked for completes its handshake with us. Leaves are ECDSA P-256,
//! valid from a year before today to a year after, with the name as their only SAN.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::ProxyError;

/// Leaves kept at once; the cache is emptied when it would grow past this (a guest asking
/// for endless names costs mint time, not memory).
const LEAF_CACHE_MAX: usize = 1024;

/// A CA that signs leaf certificates for the names guests connect to.
pub struct CertAuthority {
    issuer: Certificate,
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

/// This year (UTC), from the system clock.
fn this_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // 365.2425 days a year: exact enough for a validity window of whole years.
    1970 + (secs / 31_556_952) as i32
}

fn validity(params: &mut CertificateParams, years_after: i32) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years_after, 12, 31);
}

impl CertAuthority {
    /// A new CA with a fresh P-256 key, named after `label` (for example the VM).
    pub fn generate(label: &str) -> Result<Self, ProxyError> {
        let key = KeyPair::generate().map_err(|e| ProxyError::Ca(format!("key: {e}")))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| ProxyError::Ca(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ringfence");
        dn.push(
            DnType::CommonName,
            format!("ringfence interception CA {label}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 1);
        let issuer = params
            .self_signed(&key)
            .map_err(|e| ProxyError::Ca(e.to_string()))?;
        Self::assemble(issuer, key)
    }

    /// The CA of a PEM certificate and its PEM (PKCS#8, SEC1 or PKCS#1) private key. Fails
    /// when either does not parse, the certificate is not a CA, or the key is not the
    /// certificate's (a leaf it signs would not verify).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ProxyError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| ProxyError::Ca(format!("the CA key does not parse: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| ProxyError::Ca(format!("the CA certificate does not parse: {e}")))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(ProxyError::Ca(
                "the certificate is not a CA (no basicConstraints CA:TRUE)".into(),
            ));
        }
        // Signing needs rcgen's own issuer object: the same name and key as the file's.
        let issuer = params
            .self_signed(&key)
            .map_err(|e| ProxyError::Ca(e.to_string()))?;
        let file_der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ProxyError::Ca(format!("the CA certificate does not parse: {e}")))?;
        let mut ca = Self::assemble(issuer, key)?;
        ca.cert_der = file_der;
        ca.cert_pem = cert_pem.to_string();
        ca.check_signs_for_itself()?;
        Ok(ca)
    }

    fn assemble(issuer: Certificate, key: KeyPair) -> Result<Self, ProxyError> {
        Ok(CertAuthority {
            cert_der: issuer.der().clone(),
            cert_pem: issuer.pem(),
            issuer,
            key,
            provider: crate::provider(),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// Mints a leaf and verifies it against the CA certificate as a client would: proves the
    /// key belongs to the certificate.
    fn check_signs_for_itself(&self) -> Result<(), ProxyError> {
        let leaf = self.mint("ca-check.ringfence.invalid")?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .map_err(|e| ProxyError::Ca(format!("the CA certificate is not usable: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| ProxyError::Ca(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from("ca-check.ringfence.invalid")
            .map_err(|e| ProxyError::Ca(e.to_string()))?;
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map_err(|e| {
                ProxyError::Ca(format!(
                    "a certificate signed with this key does not verify against this CA certificate ({e}): is the key the certificate's?"
                ))
            })?;
        Ok(())
    }

    /// The CA certificate, PEM: what the guest must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The leaf for `name`, minted now or from the cache.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, ProxyError> {
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.cache().get(&name) {
            return Ok(k.clone());
        }
        let minted = Arc::new(self.mint(&name)?);
        let mut cache = self.cache();
        if cache.len() >= LEAF_CACHE_MAX {
            cache.clear();
        }
        cache.insert(name, minted.clone());
        Ok(minted)
    }

    /// Leaves in the cache now.
    pub fn cached_leaves(&self) -> usize {
        self.cache().len()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        // A panic while holding the lock left a consistent map (inserts are single calls).
        self.leaves.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, ProxyError> {
        let bad = |e: rcgen::Error| ProxyError::Leaf {
            name: name.to_string(),
            reason: e.to_string(),
        };
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(bad)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, 0);
        let key = KeyPair::generate().map_err(bad)?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(bad)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| ProxyError::Leaf {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signing,
        ))
    }
}

/// Serves each handshake the leaf for the name its ClientHello asks for.
#[derive(Debug)]
pub(crate) struct LeafResolver(pub Arc<CertAuthority>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.0.leaf(name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "cannot mint a leaf certificate");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_cached_and_chain_to_the_ca() {
        let ca = CertAuthority::generate("test").unwrap();
        let a = ca.leaf("api.example.com").unwrap();
        let b = ca.leaf("API.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(ca.cached_leaves(), 1);
        assert_eq!(a.cert.len(), 2);
        assert_eq!(&a.cert[1], ca.cert_der());
        ca.check_signs_for_itself().unwrap();
    }

    #[test]
    fn a_ca_from_files_round_trips_and_a_foreign_key_is_refused() {
        let ca = CertAuthority::generate("files").unwrap();
        let key_pem = ca.key.serialize_pem();
        let again = CertAuthority::from_pem(ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let other = CertAuthority::generate("other").unwrap();
        let e = CertAuthority::from_pem(ca.cert_pem(), &other.key.serialize_pem()).unwrap_err();
        assert!(
            e.to_string().contains("is the key the certificate's"),
            "{e}"
        );
        let e = CertAuthority::from_pem("junk", &key_pem).unwrap_err();
        assert!(e.to_string().contains("does not parse"), "{e}");
    }
}

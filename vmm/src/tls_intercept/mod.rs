//! `--tls-intercept` and secrets (issue 17): the settings as the user gives them, checked
//! before boot, and the VM's TLS proxy built from them, with the files the guest needs to
//! trust it (the CA) and to hold its secrets' placeholders (an environment file), both
//! shipped in an initrd appended at boot (docs/architecture.md, "TLS interception").

mod args;
mod section;

pub use args::InterceptArgs;
pub use section::{from_section, SectionSettings};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tlsproxy::{
    CertAuthority, HostPattern, ProxyConfig, ProxyWorker, SecretSet, SecretSpec, TlsProxy,
    UpstreamTrust, ViolationMode,
};

/// Where the guest finds the interception CA (PEM).
pub const GUEST_CA_PATH: &str = "etc/ringfence/ca.pem";
/// Where the guest finds `NAME=placeholder` lines for its environment.
pub const GUEST_ENV_PATH: &str = "etc/ringfence/env";
/// Where the host's extra CA bundles are looked for (`--trust-host-cas`).
pub const HOST_EXTRA_CA_DIR: &str = "/usr/local/share/ca-certificates";

/// TLS interception as configured.
#[derive(Clone, Debug, Default)]
pub struct InterceptSettings {
    /// `--tls-ca-cert` and `--tls-ca-key` (both or neither; neither: a fresh CA per VM).
    pub ca_files: Option<(PathBuf, PathBuf)>,
    /// `--tls-upstream-ca`: extra roots for upstream certificates.
    pub upstream_ca: Vec<PathBuf>,
    /// `--tls-no-verify-upstream`.
    pub no_verify_upstream: bool,
    /// `--tls-bypass`: names spliced untouched.
    pub bypass: Vec<HostPattern>,
    /// `--tls-block-quic`.
    pub block_quic: bool,
    /// `--trust-host-cas`: ship the host's extra CA bundles into the guest too.
    pub trust_host_cas: bool,
    /// `--tls-ca-out`: write the CA certificate (PEM) here.
    pub ca_out: Option<PathBuf>,
    /// `--secret`, `--secret-file`, `--secret-env`.
    pub secrets: Vec<SecretSpec>,
    /// `--secret-violation`.
    pub violation: ViolationMode,
}

/// A VM's proxy, ready to run, and what the guest must be given.
pub struct PreparedIntercept {
    /// The handle (the netstack's handoff; stats, stop).
    pub proxy: Arc<TlsProxy>,
    /// The loop to run on a thread of its own.
    pub worker: ProxyWorker,
    /// Files for the guest's initrd: (path without leading '/', contents).
    pub guest_files: Vec<(String, Vec<u8>)>,
    /// The placeholders, for the netstack to refuse on plaintext flows (`None`: no secrets).
    pub guard: Option<Arc<netstack::PlaceholderGuard>>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// The host's extra CA bundles (`*.crt`, `*.pem` under [`HOST_EXTRA_CA_DIR`]), concatenated.
fn host_extra_cas() -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(HOST_EXTRA_CA_DIR) else {
        return Ok(out);
    };
    let mut paths: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("crt" | "pem")))
        .collect();
    paths.sort();
    for p in paths {
        out.extend(read("--trust-host-cas bundle", &p)?);
        out.push(b'\n');
    }
    Ok(out)
}

/// Builds the proxy: loads or makes the CA, loads roots, resolves secrets (values read now,
/// placeholders made now). Every error names the flag and the value to fix.
pub fn prepare(settings: &InterceptSettings) -> Result<PreparedIntercept, String> {
    let ca = match &settings.ca_files {
        Some((cert, key)) => {
            let cert_pem = String::from_utf8(read("--tls-ca-cert", cert)?)
                .map_err(|_| format!("--tls-ca-cert {}: not PEM text", cert.display()))?;
            let key_pem = String::from_utf8(read("--tls-ca-key", key)?)
                .map_err(|_| format!("--tls-ca-key {}: not PEM text", key.display()))?;
            CertAuthority::from_pem(&cert_pem, &key_pem).map_err(|e| {
                format!(
                    "--tls-ca-cert {} / --tls-ca-key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        None => CertAuthority::generate(&format!("pid {}", std::process::id()))
            .map_err(|e| e.to_string())?,
    };
    let ca = Arc::new(ca);
    let extra = settings
        .upstream_ca
        .iter()
        .map(|p| Ok((p.display().to_string(), read("--tls-upstream-ca", p)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let trust =
        UpstreamTrust::new(&extra, !settings.no_verify_upstream).map_err(|e| e.to_string())?;
    let secrets = settings
        .secrets
        .iter()
        .map(|s| s.resolve().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    let mut names: Vec<&str> = secrets.iter().map(|s| s.env()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "secret {} is given twice; give each variable once",
            w[0]
        ));
    }
    let mut guest_ca = ca.cert_pem().as_bytes().to_vec();
    if settings.trust_host_cas {
        guest_ca.extend(host_extra_cas()?);
    }
    let mut env = Vec::new();
    for s in &secrets {
        env.extend_from_slice(format!("{}={}\n", s.env(), s.placeholder()).as_bytes());
    }
    if let Some(out) = &settings.ca_out {
        std::fs::write(out, ca.cert_pem())
            .map_err(|e| format!("--tls-ca-out {}: cannot write: {e}", out.display()))?;
    }
    let guard = netstack::PlaceholderGuard::new(
        tlsproxy::PLACEHOLDER_PREFIX.as_bytes(),
        secrets
            .iter()
            .map(|s| s.placeholder().as_bytes().to_vec())
            .collect(),
    )
    .map(Arc::new);
    let mut cfg = ProxyConfig::new(ca, trust);
    cfg.bypass = settings.bypass.clone();
    cfg.secrets = SecretSet::new(secrets);
    cfg.violation = settings.violation;
    cfg.block_quic = settings.block_quic;
    let (proxy, worker) = TlsProxy::new(cfg).map_err(|e| e.to_string())?;
    let mut guest_files = vec![(GUEST_CA_PATH.to_string(), guest_ca)];
    if !env.is_empty() {
        guest_files.push((GUEST_ENV_PATH.to_string(), env));
    }
    Ok(PreparedIntercept {
        proxy,
        worker,
        guest_files,
        guard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_ca_and_secrets_become_guest_files_without_the_value() {
        let dir = std::env::temp_dir().join(format!("rf-intercept-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("ca.pem");
        let settings = InterceptSettings {
            secrets: vec!["API_KEY=hunter2-value@api.example.com".parse().unwrap()],
            ca_out: Some(out.clone()),
            no_verify_upstream: true,
            ..InterceptSettings::default()
        };
        let p = prepare(&settings).unwrap();
        let files: Vec<&str> = p.guest_files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(files, [GUEST_CA_PATH, GUEST_ENV_PATH]);
        let env = String::from_utf8(p.guest_files[1].1.clone()).unwrap();
        assert!(env.starts_with("API_KEY=rf_secret_"), "{env}");
        assert!(!env.contains("hunter2"));
        assert!(p.guard.is_some());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), p.proxy.ca_pem());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_and_duplicate_secrets_are_named() {
        let e = prepare(&InterceptSettings {
            ca_files: Some(("/nonexistent/ca.pem".into(), "/nonexistent/key.pem".into())),
            ..InterceptSettings::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("--tls-ca-cert /nonexistent/ca.pem"), "{e}");
        let e = prepare(&InterceptSettings {
            upstream_ca: vec!["/nonexistent/up.pem".into()],
            ..InterceptSettings::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("--tls-upstream-ca /nonexistent/up.pem"), "{e}");
        let twice: SecretSpec = "K=a@h.example".parse().unwrap();
        let e = prepare(&InterceptSettings {
            secrets: vec![twice.clone(), twice],
            no_verify_upstream: true,
            ..InterceptSettings::default()
        })
        .err()
        .unwrap();
        assert!(e.contains("given twice"), "{e}");
    }
}

//! The `tls` section of `--net-config` (policy::TlsSection) as the same settings the
//! `--tls-*` and `--secret*` flags give.

use std::path::PathBuf;

use policy::TlsSection;
use tlsproxy::{HostPattern, SecretSource, SecretSpec};

use super::InterceptSettings;

/// TLS settings from a configuration document: (ports, require_sni, interception).
pub type SectionSettings = (Option<Vec<u16>>, bool, Option<InterceptSettings>);

/// Converts `sec`; errors name the key to fix.
pub fn from_section(sec: &TlsSection) -> Result<SectionSettings, String> {
    let bad = |what: String| format!("--net-config tls: {what}");
    let any_intercept_key = !sec.bypass.is_empty()
        || sec.verify_upstream.is_some()
        || sec.block_quic
        || sec.ca_cert.is_some()
        || sec.ca_key.is_some()
        || !sec.upstream_ca.is_empty()
        || sec.trust_host_cas
        || !sec.secrets.is_empty()
        || sec.on_secret_violation.is_some();
    if !sec.intercept {
        if any_intercept_key {
            return Err(bad(
                "bypass, verify_upstream, block_quic, ca_*, upstream_ca, trust_host_cas, secrets and on_secret_violation need intercept = true".into(),
            ));
        }
        return Ok((sec.ports.clone(), sec.require_sni, None));
    }
    let ca_files = match (&sec.ca_cert, &sec.ca_key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        _ => return Err(bad("ca_cert and ca_key go together".into())),
    };
    let mut secrets = Vec::new();
    for s in &sec.secrets {
        let source = match (&s.value, &s.file, &s.host_env) {
            (Some(v), None, None) => SecretSource::Literal(v.clone()),
            (None, Some(f), None) => SecretSource::File(f.into()),
            (None, None, Some(e)) => SecretSource::HostEnv(e.clone()),
            _ => {
                return Err(bad(format!(
                    "secret {}: give exactly one of value, file and host_env",
                    s.env
                )))
            }
        };
        // The same checks as the flag: a name, at least one valid host.
        let hosts = s.hosts.join(",");
        let mut spec =
            SecretSpec::parse_with(&format!("{}=x@{hosts}", s.env), "tls.secrets", |_| {
                SecretSource::Literal(String::new())
            })
            .map_err(bad)?;
        spec.source = source;
        secrets.push(spec);
    }
    let bypass = sec
        .bypass
        .iter()
        .map(|p| HostPattern::parse(p).map_err(|e| bad(format!("bypass: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let violation = match &sec.on_secret_violation {
        Some(v) => v.parse().map_err(bad)?,
        None => Default::default(),
    };
    let intercept = InterceptSettings {
        ca_files,
        upstream_ca: sec.upstream_ca.iter().map(PathBuf::from).collect(),
        no_verify_upstream: sec.verify_upstream == Some(false),
        bypass,
        block_quic: sec.block_quic,
        trust_host_cas: sec.trust_host_cas,
        ca_out: None,
        secrets,
        violation,
    };
    Ok((sec.ports.clone(), sec.require_sni, Some(intercept)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::SecretSection;

    #[test]
    fn a_section_becomes_the_flags_settings_or_names_the_key() {
        let sec = TlsSection {
            intercept: true,
            ports: Some(vec![443]),
            bypass: vec!["*.p.example".into()],
            secrets: vec![SecretSection {
                env: "K".into(),
                host_env: Some("HOST_K".into()),
                hosts: vec!["api.example".into()],
                ..SecretSection::default()
            }],
            on_secret_violation: Some("terminate".into()),
            ..TlsSection::default()
        };
        let (ports, _, i) = from_section(&sec).unwrap();
        assert_eq!(ports, Some(vec![443]));
        let i = i.unwrap();
        assert_eq!(i.secrets[0].source, SecretSource::HostEnv("HOST_K".into()));
        assert_eq!(i.violation, tlsproxy::ViolationMode::Terminate);
        let mut two = sec.clone();
        two.secrets[0].value = Some("v".into());
        assert!(from_section(&two).unwrap_err().contains("exactly one"));
        let mut no_host = sec.clone();
        no_host.secrets[0].hosts.clear();
        assert!(from_section(&no_host).unwrap_err().contains("no host"));
        let off = TlsSection {
            block_quic: true,
            ..TlsSection::default()
        };
        assert!(from_section(&off).unwrap_err().contains("intercept = true"));
    }
}

//! The `tls` section of a network configuration document: SNI policy, interception and
//! secrets as data (the VMM turns it into its TLS proxy; this crate only reads and writes it).
//!
//! ```toml
//! [tls]
//! ports = [443]
//! intercept = true
//! bypass = ["*.pinned.example"]
//! block_quic = true
//! on_secret_violation = "block-and-log"
//!
//! [[tls.secrets]]
//! env = "OPENAI_API_KEY"
//! host_env = "OPENAI_KEY_VALUE"     # or `value = "..."`, or `file = "/run/keys/openai"`
//! hosts = ["api.openai.com"]
//! ```

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::parse::document::PolicyDocument;

/// TLS settings as written (every field optional; see `ringfence run --help` for meanings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Ports whose ClientHello is judged (and intercepted); default 443; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// Refuse a ClientHello naming no server.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_sni: bool,
    /// Terminate the guest's TLS with a per-VM CA (`--tls-intercept`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub intercept: bool,
    /// Server names never intercepted (`name` or `*.suffix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bypass: Vec<String>,
    /// Verify upstream certificates (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_upstream: Option<bool>,
    /// Refuse UDP to intercepted ports (QUIC).
    #[serde(default, skip_serializing_if = "is_false")]
    pub block_quic: bool,
    /// CA certificate to sign with (PEM file), with `ca_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// The CA's private key (PEM file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
    /// Extra CA bundles (PEM files) for upstream certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_ca: Vec<String>,
    /// Ship the host's extra CA bundles into the guest.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trust_host_cas: bool,
    /// Secrets that never enter the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretSection>,
    /// `block`, `block-and-log` (default) or `terminate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_secret_violation: Option<String>,
}

/// One secret: the guest variable, exactly one source of the value, and its hosts.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSection {
    /// The guest environment variable holding the placeholder.
    pub env: String,
    /// The value itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A file holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A host environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_env: Option<String>,
    /// Host patterns the value may be sent to.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for SecretSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSection")
            .field("env", &self.env)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .field("host_env", &self.host_env)
            .field("hosts", &self.hosts)
            .finish()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The `tls` section of a JSON (`toml == false`) or TOML configuration document, if any.
pub fn tls_section(text: &str, toml: bool) -> Result<Option<TlsSection>, PolicyError> {
    let doc: PolicyDocument = if toml {
        toml::from_str(text).map_err(|e| PolicyError::Document {
            format: "TOML",
            message: e.to_string(),
        })?
    } else {
        serde_json::from_str(text).map_err(|e| PolicyError::Document {
            format: "JSON",
            message: e.to_string(),
        })?
    };
    Ok(doc.tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_section_reads_from_toml_and_json_and_rejects_unknown_keys() {
        let toml = "[tls]\nports = [443, 8443]\nintercept = true\nbypass = [\"*.p.example\"]\n\n[[tls.secrets]]\nenv = \"K\"\nhost_env = \"V\"\nhosts = [\"api.example\"]\n";
        let t = tls_section(toml, true).unwrap().unwrap();
        assert_eq!(t.ports, Some(vec![443, 8443]));
        assert!(t.intercept);
        assert_eq!(t.secrets[0].host_env.as_deref(), Some("V"));
        let json = r#"{"tls": {"intercept": true, "secrets": [{"env": "K", "value": "s", "hosts": ["a.example"]}]}}"#;
        let t = tls_section(json, false).unwrap().unwrap();
        assert!(
            !format!("{t:?}").contains("\"s\""),
            "the value shows in Debug"
        );
        assert!(tls_section("{\"tls\": {\"intercep\": true}}", false).is_err());
        assert_eq!(tls_section("{}", false).unwrap(), None);
        // The policy itself ignores the section.
        assert!(crate::Policy::from_toml(toml).is_ok());
    }
}

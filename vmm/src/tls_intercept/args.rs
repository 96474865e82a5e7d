//! The `ringfence run` flags of TLS interception and secrets, and their check.

use std::path::PathBuf;

use tlsproxy::{HostPattern, SecretSource, SecretSpec, ViolationMode};

use super::InterceptSettings;

/// TLS interception and secrets (flattened into `ringfence run`).
#[derive(clap::Args, Debug, Default)]
pub struct InterceptArgs {
    /// Terminate the guest's TLS on --tls-ports with a per-VM CA (the Linux image's agent
    /// installs it into the guest's trust store) and open a verified TLS connection upstream,
    /// so requests can be checked (domain fronting refused) and secrets swapped in. Names
    /// matching --tls-bypass are spliced untouched (still judged by the policy).
    #[arg(long)]
    pub tls_intercept: bool,
    /// With --tls-intercept: the CA certificate (PEM) to sign with instead of a fresh one.
    #[arg(long, value_name = "FILE", requires = "tls_ca_key")]
    pub tls_ca_cert: Option<PathBuf>,
    /// With --tls-ca-cert: its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_ca_cert")]
    pub tls_ca_key: Option<PathBuf>,
    /// With --tls-intercept: write the CA certificate (PEM) to FILE, for programs that talk
    /// to the guest's services or check what it saw.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_out: Option<PathBuf>,
    /// With --tls-intercept: also trust these CAs (PEM bundle) for upstream certificates,
    /// beside the host's roots. Repeatable.
    #[arg(long, value_name = "FILE")]
    pub tls_upstream_ca: Vec<PathBuf>,
    /// With --tls-intercept: do not verify upstream certificates (self-signed peers). No
    /// secret is ever sent over such a connection.
    #[arg(long)]
    pub tls_no_verify_upstream: bool,
    /// With --tls-intercept: server names never intercepted (NAME or *.SUFFIX, comma-separated
    /// or repeated), e.g. for certificate-pinning clients.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    pub tls_bypass: Vec<String>,
    /// With --tls-intercept: refuse guest UDP to the TLS ports (QUIC), so clients fall back
    /// to TLS over TCP where they can be inspected.
    #[arg(long)]
    pub tls_block_quic: bool,
    /// With --tls-intercept: also install the host's extra CA bundles
    /// (/usr/local/share/ca-certificates) into the guest's trust store.
    #[arg(long)]
    pub trust_host_cas: bool,
    /// A secret the guest never sees: NAME=VALUE@HOST[,HOST...]. The guest's environment gets
    /// `NAME=<placeholder>`; on intercepted TLS to a matching host (NAME or *.SUFFIX, with a
    /// verified certificate) the placeholder in the request line, headers and body is replaced
    /// by VALUE. Anywhere else it is a violation. The value shows in `ps`: prefer
    /// --secret-file or --secret-env. Repeatable; needs --tls-intercept.
    #[arg(long, value_name = "NAME=VALUE@HOSTS")]
    pub secret: Vec<String>,
    /// As --secret, the value read from FILE: NAME=FILE@HOST[,HOST...].
    #[arg(long, value_name = "NAME=FILE@HOSTS")]
    pub secret_file: Vec<String>,
    /// As --secret, the value taken from the host variable VAR: NAME=VAR@HOST[,HOST...].
    #[arg(long, value_name = "NAME=VAR@HOSTS")]
    pub secret_env: Vec<String>,
    /// What a placeholder headed to another host costs: block (the request is cut),
    /// block-and-log (cut, and said on stderr and in --net-stats; the default) or terminate
    /// (cut, logged, and the VM stopped).
    #[arg(long, value_name = "MODE")]
    pub secret_violation: Option<ViolationMode>,
}

impl InterceptArgs {
    /// Whether any of these flags was given.
    pub fn any(&self) -> bool {
        self.tls_intercept
            || self.tls_ca_cert.is_some()
            || self.tls_ca_out.is_some()
            || !self.tls_upstream_ca.is_empty()
            || self.tls_no_verify_upstream
            || !self.tls_bypass.is_empty()
            || self.tls_block_quic
            || self.trust_host_cas
            || !self.secret.is_empty()
            || !self.secret_file.is_empty()
            || !self.secret_env.is_empty()
            || self.secret_violation.is_some()
    }

    /// The settings, or what to fix: every flag but --tls-intercept needs it.
    pub fn settings(self) -> Result<Option<InterceptSettings>, String> {
        if !self.tls_intercept {
            if self.any() {
                return Err("--tls-ca-*, --tls-upstream-ca, --tls-no-verify-upstream, --tls-bypass, --tls-block-quic, --trust-host-cas and --secret* need --tls-intercept".into());
            }
            return Ok(None);
        }
        let mut secrets = Vec::new();
        for s in &self.secret {
            secrets.push(s.parse::<SecretSpec>()?);
        }
        for s in &self.secret_file {
            secrets.push(SecretSpec::parse_with(s, "--secret-file", |v| {
                SecretSource::File(v.into())
            })?);
        }
        for s in &self.secret_env {
            secrets.push(SecretSpec::parse_with(s, "--secret-env", |v| {
                SecretSource::HostEnv(v.into())
            })?);
        }
        let bypass = self
            .tls_bypass
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| HostPattern::parse(p).map_err(|e| format!("--tls-bypass: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(InterceptSettings {
            ca_files: self.tls_ca_cert.zip(self.tls_ca_key),
            upstream_ca: self.tls_upstream_ca,
            no_verify_upstream: self.tls_no_verify_upstream,
            bypass,
            block_quic: self.tls_block_quic,
            trust_host_cas: self.trust_host_cas,
            ca_out: self.tls_ca_out,
            secrets,
            violation: self.secret_violation.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_without_tls_intercept_are_refused() {
        let args = InterceptArgs {
            secret: vec!["K=v@h.example".into()],
            ..InterceptArgs::default()
        };
        assert!(args
            .settings()
            .unwrap_err()
            .contains("need --tls-intercept"));
        assert!(InterceptArgs::default().settings().unwrap().is_none());
    }

    #[test]
    fn secrets_and_bypass_parse_or_name_the_flag() {
        let args = InterceptArgs {
            tls_intercept: true,
            secret: vec!["A=1@a.example".into()],
            secret_file: vec!["B=/run/b@*.b.example".into()],
            secret_env: vec!["C=HOST_C@c.example".into()],
            tls_bypass: vec!["*.pinned.example".into()],
            ..InterceptArgs::default()
        };
        let s = args.settings().unwrap().unwrap();
        assert_eq!(s.secrets.len(), 3);
        assert_eq!(s.secrets[1].source, SecretSource::File("/run/b".into()));
        assert_eq!(s.bypass.len(), 1);
        let bad = InterceptArgs {
            tls_intercept: true,
            secret_file: vec!["B=/run/b".into()],
            ..InterceptArgs::default()
        };
        assert!(bad.settings().unwrap_err().contains("--secret-file"));
        let bad = InterceptArgs {
            tls_intercept: true,
            tls_bypass: vec!["not a name".into()],
            ..InterceptArgs::default()
        };
        assert!(bad.settings().unwrap_err().contains("--tls-bypass"));
    }
}

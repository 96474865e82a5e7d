//! Files ringfence ships to the guest in an initrd it appends at boot (see the VMM's
//! `tls_intercept` module): the TLS interception CA, which the agent installs into the
//! guest's trust store, and `NAME=placeholder` lines for secrets, which it adds to the
//! command's environment. Absent files mean the feature is off.
//!
//! The decisions are pure functions here; `runtime` does the file system work.

/// The interception CA (PEM).
pub const CA_FILE: &str = "/etc/ringfence/ca.pem";
/// Secret placeholders, one `NAME=VALUE` a line.
pub const ENV_FILE: &str = "/etc/ringfence/env";
/// The system bundle OpenSSL-based tools (curl, Python, ...) read by default on Debian.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Variables that point common TLS stacks at the bundle holding the CA, as (name, value).
pub fn trust_env() -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        ("SSL_CERT_FILE", SYSTEM_BUNDLE),
        ("CURL_CA_BUNDLE", SYSTEM_BUNDLE),
        ("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE),
        ("NODE_EXTRA_CA_CERTS", CA_FILE),
    ]
    .into_iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

/// The `NAME=VALUE` lines of an environment file; lines without `=` or with an empty or
/// invalid name are skipped.
pub fn parse_env(text: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|&b| b == b'=')?;
            let (k, v) = (&line[..eq], &line[eq + 1..]);
            let valid = !k.is_empty()
                && !k[0].is_ascii_digit()
                && k.iter().all(|b| *b == b'_' || b.is_ascii_alphanumeric());
            valid.then(|| (k.to_vec(), v.to_vec()))
        })
        .collect()
}

/// The bundle with `ca` added: the existing bundle (if any), a newline if it lacks one, then
/// the CA. Adding the same CA twice is a no-op.
pub fn bundle_with(existing: &[u8], ca: &[u8]) -> Vec<u8> {
    if !ca.is_empty() && existing.windows(ca.len()).any(|w| w == ca) {
        return existing.to_vec();
    }
    let mut out = existing.to_vec();
    if !out.is_empty() && out.last() != Some(&b'\n') {
        out.push(b'\n');
    }
    out.extend_from_slice(ca);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_parse_and_junk_is_skipped() {
        let env = parse_env(b"API_KEY=rf_secret_00\nnoequals\n1BAD=x\n=x\nB=a=b\n");
        assert_eq!(
            env,
            vec![
                (b"API_KEY".to_vec(), b"rf_secret_00".to_vec()),
                (b"B".to_vec(), b"a=b".to_vec())
            ]
        );
    }

    #[test]
    fn the_ca_is_appended_once() {
        let ca = b"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n";
        let b = bundle_with(b"OTHER", ca);
        assert!(b.starts_with(b"OTHER\n-----BEGIN"));
        assert_eq!(bundle_with(&b, ca), b);
        assert_eq!(bundle_with(b"", ca), ca.to_vec());
    }
}

//! Secrets that never enter the guest: the guest's environment holds a random placeholder,
//! the value lives only here, and the proxy swaps one for the other on intercepted requests
//! to the hosts the secret is for (and only when the upstream's certificate was verified for
//! that name). Anywhere else a placeholder is a violation.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use memchr::memmem;

use crate::error::ProxyError;
use crate::pattern::{any_matches, HostPattern};

/// What every placeholder starts with; the rest is 32 random hex digits.
pub const PLACEHOLDER_PREFIX: &str = "rf_secret_";
/// Length of every placeholder.
pub const PLACEHOLDER_LEN: usize = PLACEHOLDER_PREFIX.len() + 32;

/// Where a secret's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Given on the command line or in the configuration (visible in `ps` for the CLI).
    Literal(String),
    /// The contents of a file (one trailing newline removed).
    File(PathBuf),
    /// A variable of the host process's environment.
    HostEnv(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal(_) => f.write_str("Literal(<redacted>)"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::HostEnv(v) => write!(f, "HostEnv({v})"),
        }
    }
}

/// A secret as configured: the guest variable, the value's source and the allowed hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSpec {
    /// The guest environment variable that holds the placeholder.
    pub env: String,
    /// Where the value comes from.
    pub source: SecretSource,
    /// Hosts the value may be sent to (at least one).
    pub hosts: Vec<HostPattern>,
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
}

impl SecretSpec {
    /// Parses `ENV=X@HOST[,HOST...]` where X becomes the source by `source` (the value itself,
    /// a file path, or a host variable name). The value may contain `@`: the last one splits.
    pub fn parse_with(
        text: &str,
        flag: &str,
        source: impl FnOnce(&str) -> SecretSource,
    ) -> Result<Self, String> {
        let usage = || {
            format!("expected {flag} NAME=VALUE@HOST[,HOST...], for example {flag} API_KEY=...@api.example.com")
        };
        let (env, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("bad {flag} {:?}: no '='; {}", redact(text), usage()))?;
        if !valid_env_name(env) {
            return Err(format!(
                "bad {flag}: {env:?} is not an environment variable name (letters, digits, _; not starting with a digit)"
            ));
        }
        let (value, hosts) = rest.rsplit_once('@').ok_or_else(|| {
            format!(
                "bad {flag} for {env}: no '@HOST' naming where the secret may be sent; {}",
                usage()
            )
        })?;
        if value.is_empty() {
            return Err(format!("bad {flag} for {env}: the value is empty"));
        }
        let hosts = hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(HostPattern::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad {flag} for {env}: {e}"))?;
        if hosts.is_empty() {
            return Err(format!(
                "bad {flag} for {env}: the secret is allowed for no host; name at least one after '@'"
            ));
        }
        Ok(SecretSpec {
            env: env.to_string(),
            source: source(value),
            hosts,
        })
    }

    /// Reads the value and makes the secret with a fresh placeholder.
    pub fn resolve(&self) -> Result<Secret, ProxyError> {
        let value = match &self.source {
            SecretSource::Literal(v) => v.clone().into_bytes(),
            SecretSource::File(p) => {
                let mut v = std::fs::read(p).map_err(|source| ProxyError::File {
                    what: "the secret file of",
                    path: p.clone(),
                    source,
                })?;
                if v.last() == Some(&b'\n') {
                    v.pop();
                }
                v
            }
            SecretSource::HostEnv(var) => std::env::var_os(var)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| {
                    ProxyError::Config(format!(
                        "secret {}: the host environment has no variable {var}",
                        self.env
                    ))
                })?,
        };
        if value.is_empty() {
            return Err(ProxyError::Config(format!(
                "secret {}: the value is empty",
                self.env
            )));
        }
        Ok(Secret {
            env: self.env.clone(),
            value,
            placeholder: new_placeholder()?,
            hosts: self.hosts.clone(),
        })
    }
}

impl FromStr for SecretSpec {
    type Err = String;

    /// `ENV=VALUE@HOST[,HOST...]` (the `--secret` form).
    fn from_str(s: &str) -> Result<Self, String> {
        SecretSpec::parse_with(s, "--secret", |v| SecretSource::Literal(v.to_string()))
    }
}

/// Text safe to echo in an error: anything after '=' is hidden.
fn redact(text: &str) -> String {
    match text.split_once('=') {
        Some((env, _)) => format!("{env}=<redacted>"),
        None if text.len() > 8 => "<redacted>".to_string(),
        None => text.to_string(),
    }
}

fn new_placeholder() -> Result<String, ProxyError> {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`, which
        // getrandom(2) writes at most that many bytes into.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ProxyError::Config(format!(
                "no random bytes for a placeholder: {e}"
            )));
        }
        filled += n as usize;
    }
    let mut s = String::with_capacity(PLACEHOLDER_LEN);
    s.push_str(PLACEHOLDER_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// A secret with its value and this VM's placeholder for it.
pub struct Secret {
    env: String,
    value: Vec<u8>,
    placeholder: String,
    hosts: Vec<HostPattern>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("env", &self.env)
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// The guest environment variable.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The placeholder the guest sees instead of the value.
    pub fn placeholder(&self) -> &str {
        &self.placeholder
    }

    /// The hosts the value may be sent to.
    pub fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// Whether the value may be sent to `host`.
    pub fn allowed_for(&self, host: &str) -> bool {
        any_matches(&self.hosts, host)
    }
}

/// What to do when a placeholder is about to go where its secret may not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ViolationMode {
    /// Cut the request.
    Block,
    /// Cut the request and say so on stderr and in the statistics (the default).
    #[default]
    BlockAndLog,
    /// Cut the request, log it, and stop the VM.
    Terminate,
}

impl FromStr for ViolationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(ViolationMode::Block),
            "block-and-log" => Ok(ViolationMode::BlockAndLog),
            "terminate" => Ok(ViolationMode::Terminate),
            _ => Err(format!(
                "bad --secret-violation {s:?}: expected block, block-and-log or terminate"
            )),
        }
    }
}

/// A placeholder found where its secret may not go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The secret's guest variable.
    pub env: String,
    /// The host it was headed to.
    pub host: String,
}

/// The secrets of one VM.
#[derive(Debug, Default)]
pub struct SecretSet {
    secrets: Vec<Secret>,
}

/// The outcome of rewriting a piece of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// No placeholder: send the bytes as they are.
    Unchanged,
    /// Placeholders replaced by values (how many).
    Changed(Vec<u8>, usize),
    /// A placeholder for a host its secret is not for: send nothing.
    Violation(Violation),
}

impl SecretSet {
    /// The set of `secrets`.
    pub fn new(secrets: Vec<Secret>) -> Self {
        SecretSet { secrets }
    }

    /// Whether there are no secrets (requests then pass untouched).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The secrets, for the guest environment (`ENV=placeholder`).
    pub fn iter(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.iter()
    }

    fn find(&self, token: &[u8]) -> Option<&Secret> {
        self.secrets
            .iter()
            .find(|s| s.placeholder.as_bytes() == token)
    }

    /// The first placeholder in `data` at or after `from`: (offset, secret).
    fn next_placeholder(&self, data: &[u8], mut from: usize) -> Option<(usize, &Secret)> {
        let finder = memmem::Finder::new(PLACEHOLDER_PREFIX.as_bytes());
        while let Some(at) = finder.find(&data[from..]) {
            let start = from + at;
            if let Some(s) = data
                .get(start..start + PLACEHOLDER_LEN)
                .and_then(|token| self.find(token))
            {
                return Some((start, s));
            }
            from = start + 1;
        }
        None
    }

    /// Replaces every placeholder in `data`, for a request to `host` (`verified`: the
    /// upstream's certificate was verified for that name; without it nothing is replaced).
    pub fn rewrite(&self, data: &[u8], host: &str, verified: bool) -> Rewrite {
        if self.secrets.is_empty() {
            return Rewrite::Unchanged;
        }
        match self.rewrite_upto(data, host, verified, data.len()) {
            Ok((_, _, 0)) => Rewrite::Unchanged,
            Ok((out, _, n)) => Rewrite::Changed(out, n),
            Err(v) => Rewrite::Violation(v),
        }
    }

    /// The first placeholder in `data`, whatever its hosts (for plaintext flows, where any
    /// placeholder is a violation).
    pub fn first_placeholder(&self, data: &[u8]) -> Option<&Secret> {
        self.next_placeholder(data, 0).map(|(_, s)| s)
    }
}

/// Rewrites a stream that arrives in pieces (a request body, an upgraded connection): a
/// placeholder split between two pieces is still found, because an end of a piece that could
/// begin one (at most `PLACEHOLDER_LEN - 1` bytes) waits for the next.
#[derive(Debug, Default)]
pub struct StreamRewriter {
    carry: Vec<u8>,
    /// Placeholders replaced so far.
    pub replaced: usize,
}

impl StreamRewriter {
    /// Takes the next piece; returns the bytes that can go now, or the violation.
    pub fn feed(
        &mut self,
        set: &SecretSet,
        piece: &[u8],
        host: &str,
        verified: bool,
    ) -> Result<Vec<u8>, Violation> {
        self.carry.extend_from_slice(piece);
        // Only the end that could be the start of a placeholder waits for the next piece;
        // everything before it can be judged now (an interactive stream is not held up).
        let limit = self.carry.len() - set.partial_suffix(&self.carry);
        let (out, end, n) = set.rewrite_upto(&self.carry, host, verified, limit)?;
        self.replaced += n;
        self.carry.drain(..end);
        Ok(out)
    }

    /// The end of the stream: the bytes still held back.
    pub fn finish(
        &mut self,
        set: &SecretSet,
        host: &str,
        verified: bool,
    ) -> Result<Vec<u8>, Violation> {
        let rest = std::mem::take(&mut self.carry);
        match set.rewrite(&rest, host, verified) {
            Rewrite::Unchanged => Ok(rest),
            Rewrite::Changed(v, n) => {
                self.replaced += n;
                Ok(v)
            }
            Rewrite::Violation(v) => Err(v),
        }
    }
}

impl SecretSet {
    /// The length of the longest end of `data` that is the beginning (not the whole) of a
    /// placeholder.
    fn partial_suffix(&self, data: &[u8]) -> usize {
        let longest = (PLACEHOLDER_LEN - 1).min(data.len());
        (1..=longest)
            .rev()
            .find(|&k| {
                let end = &data[data.len() - k..];
                self.secrets
                    .iter()
                    .any(|s| s.placeholder.as_bytes().starts_with(end))
            })
            .unwrap_or(0)
    }

    /// Rewrites `data` up to `limit`: placeholders starting before `limit` are replaced (they
    /// must be complete in `data`), bytes before `limit` not part of one are copied. Returns
    /// the output, how far into `data` it reaches, and the count replaced.
    fn rewrite_upto(
        &self,
        data: &[u8],
        host: &str,
        verified: bool,
        limit: usize,
    ) -> Result<(Vec<u8>, usize, usize), Violation> {
        let mut out = Vec::with_capacity(limit);
        let mut copied = 0;
        let mut count = 0;
        let mut from = 0;
        while let Some((at, secret)) = self.next_placeholder(data, from) {
            if at >= limit {
                break;
            }
            if !(verified && secret.allowed_for(host)) {
                return Err(Violation {
                    env: secret.env.clone(),
                    host: host.to_string(),
                });
            }
            out.extend_from_slice(&data[copied..at]);
            out.extend_from_slice(&secret.value);
            copied = at + PLACEHOLDER_LEN;
            from = copied;
            count += 1;
        }
        let end = limit.max(copied);
        out.extend_from_slice(&data[copied..end]);
        Ok((out, end, count))
    }
}

#[cfg(test)]
mod tests;

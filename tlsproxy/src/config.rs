//! What the proxy of one VM is configured with ([`ProxyConfig`]) and its defaults.

use std::sync::Arc;
use std::time::Duration;

use crate::ca::CertAuthority;
use crate::pattern::HostPattern;
use crate::secrets::{SecretSet, Violation, ViolationMode};
use crate::upstream::UpstreamTrust;

/// How long the upstream connect and each handshake may take. Generous: a guest under
/// emulation (the nested test harness) needs seconds for a handshake.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Intercepted flows served at once; more are refused (the netstack resets them).
pub const DEFAULT_MAX_FLOWS: usize = 1024;

/// Everything the proxy of one VM needs.
#[derive(Debug)]
pub struct ProxyConfig {
    /// The CA whose leaves the guest is shown.
    pub ca: Arc<CertAuthority>,
    /// How upstream certificates are verified.
    pub upstream: UpstreamTrust,
    /// Server names spliced untouched (still judged by the policy).
    pub bypass: Vec<HostPattern>,
    /// Secrets swapped in on requests to their hosts.
    pub secrets: SecretSet,
    /// What a placeholder headed elsewhere costs.
    pub violation: ViolationMode,
    /// Refuse guest UDP to intercepted ports (QUIC) so clients use TLS.
    pub block_quic: bool,
    /// Intercepted flows served at once.
    pub max_flows: usize,
    /// Upstream connect and each handshake must finish within this.
    pub timeout: Duration,
}

impl ProxyConfig {
    /// A configuration with `ca`, `upstream` and defaults for the rest (no bypass, no
    /// secrets, block-and-log, QUIC allowed, [`DEFAULT_MAX_FLOWS`], [`DEFAULT_TIMEOUT`]).
    pub fn new(ca: Arc<CertAuthority>, upstream: UpstreamTrust) -> Self {
        ProxyConfig {
            ca,
            upstream,
            bypass: Vec::new(),
            secrets: SecretSet::default(),
            violation: ViolationMode::default(),
            block_quic: false,
            max_flows: DEFAULT_MAX_FLOWS,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Called once when a violation asks for the VM to stop ([`ViolationMode::Terminate`]).
pub type TerminateHook = Box<dyn Fn(&Violation) + Send + Sync>;

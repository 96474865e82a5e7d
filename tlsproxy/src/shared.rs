//! The state every part of the proxy shares (the handle, the worker, each flow's task): the
//! configuration, counters, the request-body budget, the log limit and the violation report.
//! The bottom layer: flows use it, it uses no flow code.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;

use crate::ca::{CertAuthority, LeafResolver};
use crate::config::{ProxyConfig, TerminateHook};
use crate::error::ProxyError;
use crate::secrets::{Violation, ViolationMode};
use crate::stats::{self, ProxyStats};

/// What every part of a flow's relay needs to know.
#[derive(Debug)]
pub(crate) struct FlowCtx {
    /// The server name the policy allowed (and our leaf names).
    pub sni: String,
    /// Whether the upstream's certificate was verified for `sni`.
    pub verified: bool,
}

/// State shared by the handle, the worker and every flow task.
pub(crate) struct Shared {
    pub cfg: ProxyConfig,
    pub stats: ProxyStats,
    /// Flows being served.
    pub active: AtomicUsize,
    /// What a `terminate` violation runs (taken the first time).
    pub terminate: Mutex<Option<TerminateHook>>,
    /// Server configurations without ALPN, with `h2`, with `http/1.1`.
    server: [Arc<ServerConfig>; 3],
    logged: AtomicUsize,
    /// Request-body bytes being held for whole rewriting, across every flow.
    buffered: AtomicU64,
}

/// Request-body bytes all flows of one VM may hold at once for whole rewriting; beyond it
/// bodies are rewritten as they stream (a guest cannot make the proxy hold gigabytes).
pub const BUFFER_BUDGET: u64 = 64 << 20;

/// A share of [`BUFFER_BUDGET`], given back when dropped.
pub(crate) struct BufferLease {
    shared: Arc<Shared>,
    bytes: u64,
}

impl Drop for BufferLease {
    fn drop(&mut self) {
        self.shared
            .buffered
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Reserves `bytes` of the budget, or `None` when it would be exceeded.
pub(crate) fn reserve_buffer(shared: &Arc<Shared>, bytes: u64) -> Option<BufferLease> {
    let before = shared.buffered.fetch_add(bytes, Ordering::Relaxed);
    if before + bytes > BUFFER_BUDGET {
        shared.buffered.fetch_sub(bytes, Ordering::Relaxed);
        return None;
    }
    Some(BufferLease {
        shared: shared.clone(),
        bytes,
    })
}

/// Lines written to stderr before the log goes quiet (the counters keep counting).
const LOG_MAX: usize = 100;

impl Shared {
    /// The shared state of a proxy configured by `cfg`.
    pub fn new(cfg: ProxyConfig) -> Result<Self, ProxyError> {
        let server = [
            server_config(&cfg.ca, Vec::new())?,
            server_config(&cfg.ca, vec![b"h2".to_vec()])?,
            server_config(&cfg.ca, vec![b"http/1.1".to_vec()])?,
        ];
        Ok(Shared {
            cfg,
            stats: ProxyStats::default(),
            active: AtomicUsize::new(0),
            terminate: Mutex::new(None),
            server,
            logged: AtomicUsize::new(0),
            buffered: AtomicU64::new(0),
        })
    }

    /// The server configuration that offers the guest exactly `alpn` (the upstream's pick).
    pub fn server_config(&self, alpn: Option<&[u8]>) -> Result<Arc<ServerConfig>, ProxyError> {
        Ok(match alpn {
            None => self.server[0].clone(),
            Some(b"h2") => self.server[1].clone(),
            Some(b"http/1.1") => self.server[2].clone(),
            Some(other) => server_config(&self.cfg.ca, vec![other.to_vec()])?,
        })
    }

    /// Writes `line` to stderr, unless [`LOG_MAX`] lines were written already (a guest must
    /// not be able to flood the host's log).
    pub fn log(&self, line: std::fmt::Arguments<'_>) {
        let n = self.logged.fetch_add(1, Ordering::Relaxed);
        if n < LOG_MAX {
            eprintln!("ringfence: {line}");
        } else if n == LOG_MAX {
            eprintln!("ringfence: TLS proxy: further messages suppressed (see --net-stats)");
        }
    }

    /// Reports a violation per the configured mode.
    pub fn violation(&self, v: &Violation) {
        stats::add(&self.stats.secret_violations, 1);
        let allowed = self
            .cfg
            .secrets
            .iter()
            .find(|s| s.env() == v.env)
            .map(|s| {
                s.hosts()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        match self.cfg.violation {
            ViolationMode::Block => {}
            ViolationMode::BlockAndLog | ViolationMode::Terminate => self.log(format_args!(
                "secret {} blocked: the guest sent its placeholder towards {}, but it may only go to {allowed} over a verified connection; the request was cut and the value never sent",
                v.env, v.host
            )),
        }
        if self.cfg.violation == ViolationMode::Terminate {
            let hook = self
                .terminate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(hook) = hook {
                hook(v);
            }
        }
    }
}

fn server_config(
    ca: &Arc<CertAuthority>,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, ProxyError> {
    let mut cfg = ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(LeafResolver(ca.clone())));
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamTrust;

    #[test]
    fn the_buffer_budget_is_shared_and_given_back() {
        let ca = Arc::new(CertAuthority::generate("t").expect("ca"));
        let trust = UpstreamTrust::new(&[], false).expect("trust");
        let shared = Arc::new(Shared::new(ProxyConfig::new(ca, trust)).expect("shared"));
        let a = reserve_buffer(&shared, BUFFER_BUDGET - 10).expect("fits");
        assert!(reserve_buffer(&shared, 11).is_none(), "over the budget");
        let b = reserve_buffer(&shared, 10).expect("exactly fits");
        drop(a);
        assert!(reserve_buffer(&shared, BUFFER_BUDGET - 10).is_some());
        drop(b);
        assert_eq!(shared.buffered.load(Ordering::Relaxed), 0);
    }
}

//! The proxy as the VMM runs it: a [`TlsProxy`] handle the netstack hands flows to (it
//! implements [`netstack::TlsHandoff`]), and a [`ProxyWorker`] the VMM runs on a thread of
//! its own (a single-threaded tokio runtime; one task per intercepted flow).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netstack::{HandedFlow, TlsHandoff};
use rustls::ServerConfig;
use tokio::sync::mpsc;

use crate::ca::{CertAuthority, LeafResolver};
use crate::error::ProxyError;
use crate::pattern::{any_matches, HostPattern};
use crate::secrets::{SecretSet, Violation, ViolationMode};
use crate::stats::{self, ProxyStats};
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

/// State shared by the handle, the worker and every flow task.
pub(crate) struct Shared {
    pub cfg: ProxyConfig,
    pub stats: ProxyStats,
    active: AtomicUsize,
    terminate: Mutex<Option<TerminateHook>>,
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

enum Msg {
    Flow(HandedFlow),
    Stop,
}

/// The handle of one VM's proxy: give it to the netstack (`TlsInspection::handoff`).
pub struct TlsProxy {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Msg>,
    stopped: AtomicBool,
}

impl std::fmt::Debug for TlsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProxy")
            .field("active", &self.shared.active.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The proxy's event loop; [`ProxyWorker::run`] it on a thread of its own.
pub struct ProxyWorker {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Msg>,
}

impl TlsProxy {
    /// A proxy for `cfg`: the handle and the worker that serves its flows.
    pub fn new(cfg: ProxyConfig) -> Result<(Arc<TlsProxy>, ProxyWorker), ProxyError> {
        let server = [
            server_config(&cfg.ca, Vec::new())?,
            server_config(&cfg.ca, vec![b"h2".to_vec()])?,
            server_config(&cfg.ca, vec![b"http/1.1".to_vec()])?,
        ];
        let shared = Arc::new(Shared {
            cfg,
            stats: ProxyStats::default(),
            active: AtomicUsize::new(0),
            terminate: Mutex::new(None),
            server,
            logged: AtomicUsize::new(0),
            buffered: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let proxy = Arc::new(TlsProxy {
            shared: shared.clone(),
            tx,
            stopped: AtomicBool::new(false),
        });
        Ok((proxy, ProxyWorker { shared, rx }))
    }

    /// Sets what runs when a violation stops the VM ([`ViolationMode::Terminate`]).
    pub fn on_terminate(&self, hook: TerminateHook) {
        *self
            .shared
            .terminate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// The counters.
    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }

    /// The CA the guest must trust, PEM.
    pub fn ca_pem(&self) -> &str {
        self.shared.cfg.ca.cert_pem()
    }

    /// The secrets (for the guest's environment: each variable gets its placeholder).
    pub fn secrets(&self) -> &SecretSet {
        &self.shared.cfg.secrets
    }

    /// Flows being served now.
    pub fn active_flows(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Ends the worker: flows in progress are dropped (their guest connections see EOF).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Msg::Stop);
    }
}

impl TlsHandoff for TlsProxy {
    fn intercepts(&self, server_name: &str) -> bool {
        !any_matches(&self.shared.cfg.bypass, server_name)
    }

    fn take(&self, flow: HandedFlow) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let active = self.shared.active.fetch_add(1, Ordering::Relaxed);
        if active >= self.shared.cfg.max_flows || self.tx.send(Msg::Flow(flow)).is_err() {
            self.shared.active.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        stats::add(&self.shared.stats.flows, 1);
        true
    }

    fn blocks_quic(&self) -> bool {
        self.shared.cfg.block_quic
    }
}

impl ProxyWorker {
    /// Serves flows until [`TlsProxy::stop`] or until every handle is gone.
    pub fn run(mut self) -> Result<(), ProxyError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ProxyError::Start)?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            while let Some(Msg::Flow(flow)) = self.rx.recv().await {
                let shared = self.shared.clone();
                tokio::task::spawn_local(async move {
                    crate::flow::serve(&shared, flow).await;
                    shared.active.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_budget_is_shared_and_given_back() {
        let ca = Arc::new(CertAuthority::generate("t").expect("ca"));
        let trust = UpstreamTrust::new(&[], false).expect("trust");
        let (proxy, _worker) = TlsProxy::new(ProxyConfig::new(ca, trust)).expect("proxy");
        let shared = &proxy.shared;
        let a = reserve_buffer(shared, BUFFER_BUDGET - 10).expect("fits");
        assert!(reserve_buffer(shared, 11).is_none(), "over the budget");
        let b = reserve_buffer(shared, 10).expect("exactly fits");
        drop(a);
        assert!(reserve_buffer(shared, BUFFER_BUDGET - 10).is_some());
        drop(b);
        assert_eq!(shared.buffered.load(Ordering::Relaxed), 0);
    }
}

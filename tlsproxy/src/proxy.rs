//! The proxy as the VMM runs it: a [`TlsProxy`] handle the netstack hands flows to (it
//! implements [`netstack::TlsHandoff`]), and a [`ProxyWorker`] the VMM runs on a thread of
//! its own (a single-threaded tokio runtime; one task per intercepted flow).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use netstack::{HandedFlow, TlsHandoff};
use tokio::sync::mpsc;

use crate::config::{ProxyConfig, TerminateHook};
use crate::error::ProxyError;
use crate::pattern::any_matches;
use crate::secrets::SecretSet;
use crate::shared::Shared;
use crate::stats::{self, ProxyStats};

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
        let shared = Arc::new(Shared::new(cfg)?);
        let (tx, rx) = mpsc::unbounded_channel();
        let proxy = Arc::new(TlsProxy {
            shared: shared.clone(),
            tx,
            stopped: AtomicBool::new(false),
        });
        Ok((proxy, ProxyWorker { shared, rx }))
    }

    /// Sets what runs when a violation stops the VM ([`crate::secrets::ViolationMode::Terminate`]).
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

//! The seam between the netstack and a TLS interception proxy (the `tlsproxy` crate): once a
//! guest flow's ClientHello is judged and allowed, the proxy may take the flow over. The
//! netstack then carries the guest's TCP stream over one end of a Unix socket pair, exactly
//! as it carries embedder flows (ordinary translation, no extra copy in the netstack), and
//! hands the other end to the proxy together with where the guest was going.
//!
//! The netstack knows nothing of certificates or HTTP: it only asks [`TlsHandoff::intercepts`]
//! and passes the stream on.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// A guest TLS flow handed to the proxy.
#[derive(Debug)]
pub struct HandedFlow {
    /// The proxy's end of the stream: the guest's bytes from its ClientHello on, and what the
    /// proxy writes goes to the guest. Non-blocking.
    pub stream: UnixStream,
    /// Where the guest was connecting (the gateway already mapped to host loopback).
    pub target: SocketAddr,
    /// The guest's address and port.
    pub guest: SocketAddr,
    /// The server name of the ClientHello (already judged and allowed by the policy).
    pub server_name: String,
}

/// A TLS interception proxy, as the netstack sees it.
pub trait TlsHandoff: Send + Sync + fmt::Debug {
    /// Whether flows naming `server_name` are intercepted (`false`: spliced, as without a
    /// proxy; for example a `bypass` pattern).
    fn intercepts(&self, server_name: &str) -> bool;

    /// Takes a flow over. Returns `false` when the proxy cannot take it (stopped, or over its
    /// limit); the netstack then resets the flow.
    fn take(&self, flow: HandedFlow) -> bool;

    /// Whether UDP to an intercepted port is refused, so QUIC clients fall back to TLS.
    fn blocks_quic(&self) -> bool;
}

/// A shared [`TlsHandoff`], compared by identity (so configurations stay comparable).
#[derive(Clone)]
pub struct HandoffRef(pub Arc<dyn TlsHandoff>);

impl fmt::Debug for HandoffRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for HandoffRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for HandoffRef {}

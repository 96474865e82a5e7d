//! One intercepted flow, from the guest's ClientHello to the end: read the hello, open the
//! upstream TLS connection with the guest's ALPN offer, finish the guest's handshake with a
//! leaf for its server name and the protocol the upstream picked, then relay HTTP
//! ([`crate::http`]) or opaque bytes ([`crate::opaque`]).

use std::sync::Arc;
use std::time::Duration;

use netstack::HandedFlow;
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::rewind::Rewind;
use crate::shared::{FlowCtx, Shared};
use crate::stats;

/// How long a guest that negotiated no ALPN has to send its first bytes before the flow is
/// taken to be a protocol where the server speaks first (relayed opaquely).
const SNIFF_WAIT: Duration = Duration::from_millis(500);

/// What the flow carries once both handshakes are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carried {
    /// HTTP/2 (ALPN `h2`).
    H2,
    /// HTTP/1.x (ALPN `http/1.1`, or a request line without ALPN).
    H1,
    /// Anything else.
    Opaque,
}

/// Serves one flow to its end; every failure is counted and logged at debug level.
pub(crate) async fn serve(shared: &Arc<Shared>, flow: HandedFlow) {
    let guest_addr = flow.guest;
    if let Err(why) = try_serve(shared, flow).await {
        tracing::debug!(guest = %guest_addr, %why, "intercepted flow ended");
    }
}

async fn try_serve(shared: &Arc<Shared>, flow: HandedFlow) -> Result<(), String> {
    let limit = shared.cfg.timeout;
    let guest = UnixStream::from_std(flow.stream).map_err(|e| e.to_string())?;
    let start = match timeout(limit, LazyConfigAcceptor::new(Acceptor::default(), guest)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // The netstack parsed this ClientHello; rustls refusing it is counted like any
            // other failed guest handshake.
            stats::add(&shared.stats.guest_handshake_failed, 1);
            return Err(format!("guest ClientHello: {e}"));
        }
        Err(_) => {
            stats::add(&shared.stats.guest_handshake_failed, 1);
            return Err("no ClientHello in time".into());
        }
    };
    let hello = start.client_hello();
    let sni = hello.server_name().unwrap_or_default().to_ascii_lowercase();
    if !sni.eq_ignore_ascii_case(&flow.server_name) {
        // The netstack judged the same bytes; a difference means a parser disagreement.
        return Err(format!(
            "SNI {sni:?} is not the judged {:?}",
            flow.server_name
        ));
    }
    let alpn: Vec<Vec<u8>> = hello
        .alpn()
        .map(|list| list.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();

    let tcp = match timeout(limit, TcpStream::connect(flow.target)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            stats::add(&shared.stats.upstream_unreachable, 1);
            shared.log(format_args!(
                "TLS proxy: cannot reach {sni} at {}: {e}",
                flow.target
            ));
            return Err(format!("upstream {}: {e}", flow.target));
        }
        Err(_) => {
            stats::add(&shared.stats.upstream_unreachable, 1);
            shared.log(format_args!(
                "TLS proxy: connecting to {sni} at {} timed out",
                flow.target
            ));
            return Err(format!("upstream {}: connect timed out", flow.target));
        }
    };
    let _ = tcp.set_nodelay(true);
    let client_cfg = shared
        .cfg
        .upstream
        .client_config(alpn)
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.clone()).map_err(|e| e.to_string())?;
    let upstream = match timeout(limit, TlsConnector::from(client_cfg).connect(name, tcp)).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            stats::add(&shared.stats.upstream_verify_failed, 1);
            shared.log(format_args!(
                "TLS proxy: the upstream {sni} at {} failed its TLS handshake ({e}); the guest's connection is cut (a private CA? --tls-upstream-ca FILE)",
                flow.target
            ));
            return Err(format!("upstream handshake: {e}"));
        }
        Err(_) => {
            stats::add(&shared.stats.upstream_unreachable, 1);
            shared.log(format_args!(
                "TLS proxy: the upstream {sni} at {} did not finish its handshake in time",
                flow.target
            ));
            return Err("upstream handshake timed out".into());
        }
    };
    let picked = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let server_cfg = shared
        .server_config(picked.as_deref())
        .map_err(|e| e.to_string())?;
    let mut guest = match timeout(limit, start.into_stream(server_cfg)).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            stats::add(&shared.stats.guest_handshake_failed, 1);
            return Err(format!("guest handshake: {e}"));
        }
        Err(_) => {
            stats::add(&shared.stats.guest_handshake_failed, 1);
            shared.log(format_args!(
                "TLS proxy: the guest did not finish its handshake for {sni} in time"
            ));
            return Err("guest handshake timed out".into());
        }
    };
    stats::add(&shared.stats.guest_handshakes, 1);
    let ctx = Arc::new(FlowCtx {
        sni,
        verified: shared.cfg.upstream.verifies(),
    });
    let (carried, first) = match picked.as_deref() {
        Some(b"h2") => (Carried::H2, Vec::new()),
        Some(b"http/1.1") => (Carried::H1, Vec::new()),
        Some(_) => (Carried::Opaque, Vec::new()),
        None => {
            let mut first = vec![0u8; 16];
            match timeout(SNIFF_WAIT, guest.read(&mut first)).await {
                Ok(Ok(n)) => {
                    first.truncate(n);
                    let kind = if looks_like_http1(&first) {
                        Carried::H1
                    } else {
                        Carried::Opaque
                    };
                    (kind, first)
                }
                Ok(Err(e)) => return Err(format!("guest read: {e}")),
                Err(_) => (Carried::Opaque, Vec::new()),
            }
        }
    };
    let guest = Rewind::new(first, guest);
    match carried {
        Carried::H1 | Carried::H2 => {
            crate::http::relay(shared, &ctx, guest, upstream, carried == Carried::H2).await
        }
        Carried::Opaque => {
            stats::add(&shared.stats.opaque_flows, 1);
            crate::opaque::relay(shared, &ctx, guest, upstream).await
        }
    }
}

/// Whether `first` starts like an HTTP/1 request line (a method token and a space).
fn looks_like_http1(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS.iter().any(|m| first.starts_with(m))
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_lines_are_told_from_other_protocols() {
        assert!(super::looks_like_http1(b"GET / HTTP/1.1\r\n"));
        assert!(super::looks_like_http1(b"PATCH /x"));
        assert!(!super::looks_like_http1(b"\x00\x01binary"));
        assert!(!super::looks_like_http1(b"GETX"));
    }
}

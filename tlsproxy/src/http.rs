//! Relays HTTP/1.1 and HTTP/2 between the guest and the upstream, one request at a time
//! through hyper on both sides, so every request can be checked and rewritten:
//!
//! - **Domain fronting**: the request's host (`Host`, or `:authority` in HTTP/2, and an
//!   absolute URI's authority) must be the server name the policy judged; otherwise 421.
//! - **Secrets**: placeholders in the request target, header values and body become values
//!   when the secret is allowed for this host and the upstream was verified; otherwise the
//!   request is cut (403) and the violation reported. Bodies with a `Content-Length` up to
//!   [`BUFFER_MAX`] are rewritten whole and their length fixed up, while all flows together hold
//!   at most [`crate::shared::BUFFER_BUDGET`]; longer, chunked or over-budget bodies are
//!   rewritten as they stream (sent chunked over HTTP/1.1).
//!
//! Responses are relayed unchanged. An HTTP/1.1 upgrade (WebSocket) the upstream accepts
//! becomes an opaque relay of both streams ([`crate::opaque`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, HOST, UPGRADE};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::secrets::{Rewrite, StreamRewriter, Violation};
use crate::shared::{reserve_buffer, BufferLease, FlowCtx, Shared};
use crate::stats;

/// Request bodies up to this size (by `Content-Length`) are rewritten whole.
pub const BUFFER_MAX: u64 = 8 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The upstream connection's request sender.
enum Upstream {
    H1(tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<ProxyBody>>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

impl Upstream {
    async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Upstream::H1(sender) => {
                let mut s = sender.lock().await;
                s.ready().await?;
                s.send_request(req).await
            }
            Upstream::H2(sender) => {
                let mut s = sender.clone();
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// Relays requests until the guest's connection ends.
pub(crate) async fn relay<G, U>(
    shared: &Arc<Shared>,
    ctx: &Arc<FlowCtx>,
    guest: G,
    upstream: U,
    h2: bool,
) -> Result<(), String>
where
    G: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let up = if h2 {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(upstream))
                .await
                .map_err(|e| format!("upstream HTTP/2: {e}"))?;
        tokio::spawn(conn);
        Upstream::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
            .await
            .map_err(|e| format!("upstream HTTP/1.1: {e}"))?;
        tokio::spawn(conn.with_upgrades());
        Upstream::H1(tokio::sync::Mutex::new(sender))
    };
    let up = Arc::new(up);
    let (shared, ctx) = (shared.clone(), ctx.clone());
    let svc = hyper::service::service_fn(move |req| {
        let (shared, ctx, up) = (shared.clone(), ctx.clone(), up.clone());
        async move { Ok::<_, Infallible>(handle(&shared, &ctx, &up, h2, req).await) }
    });
    let io = TokioIo::new(guest);
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    served.map_err(|e| format!("guest HTTP: {e}"))
}

async fn handle(
    shared: &Arc<Shared>,
    ctx: &Arc<FlowCtx>,
    up: &Upstream,
    h2: bool,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    stats::add(&shared.stats.http_requests, 1);
    if let Err(resp) = check_authority(shared, ctx, &req) {
        return resp;
    }
    // An HTTP/1.1 protocol upgrade (WebSocket): once both sides switched, the streams are
    // relayed as opaque bytes (placeholders still rewritten or refused).
    let guest_upgrade =
        (!h2 && req.headers().contains_key(UPGRADE)).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let secrets = &shared.cfg.secrets;
    // The lease on the buffer budget lives until the request has gone upstream.
    let (body, _lease): (ProxyBody, Option<BufferLease>) = if secrets.is_empty() {
        (body.map_err(BoxError::from).boxed(), None)
    } else {
        if let Err(v) = rewrite_head(shared, ctx, &mut parts) {
            return blocked(shared, &v);
        }
        match rewrite_body(shared, ctx, &mut parts, body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        }
    };
    set_target_form(&mut parts, &ctx.sni, h2);
    match up.send(Request::from_parts(parts, body)).await {
        Ok(mut resp) => {
            if let (StatusCode::SWITCHING_PROTOCOLS, Some(guest)) = (resp.status(), guest_upgrade) {
                let upstream = hyper::upgrade::on(&mut resp);
                let (shared, ctx) = (shared.clone(), ctx.clone());
                tokio::spawn(async move {
                    let (Ok(g), Ok(u)) = tokio::join!(guest, upstream) else {
                        return;
                    };
                    stats::add(&shared.stats.opaque_flows, 1);
                    let _ =
                        crate::opaque::relay(&shared, &ctx, TokioIo::new(g), TokioIo::new(u)).await;
                });
            }
            resp.map(|b| b.map_err(BoxError::from).boxed())
        }
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("ringfence: the upstream {} failed: {e}\n", ctx.sni),
        ),
    }
}

/// The host part of `Host`-header text (`name`, `name:port`, `[v6]:port`).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Refuses a request for another host than the connection's server name (421), or naming
/// none (400).
fn check_authority<B>(
    shared: &Shared,
    ctx: &FlowCtx,
    req: &Request<B>,
) -> Result<(), Response<ProxyBody>> {
    let from_uri = req.uri().authority().map(|a| a.host().to_string());
    let from_header = match req.headers().get(HOST).map(|h| h.to_str()) {
        Some(Ok(h)) => Some(host_of(h).to_string()),
        Some(Err(_)) => {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "ringfence: unreadable Host header\n".into(),
            ))
        }
        None => None,
    };
    if from_uri.is_none() && from_header.is_none() {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "ringfence: the request names no host (Host or :authority)\n".into(),
        ));
    }
    for named in [from_uri, from_header].into_iter().flatten() {
        let named = named.strip_suffix('.').unwrap_or(&named);
        if !named.eq_ignore_ascii_case(&ctx.sni) {
            stats::add(&shared.stats.fronting_refused, 1);
            tracing::warn!(server = %ctx.sni, host = %named, "domain fronting refused");
            return Err(text(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "ringfence: this connection was opened for {}; a request for {named} is refused (domain fronting)\n",
                    ctx.sni
                ),
            ));
        }
    }
    Ok(())
}

/// Rewrites placeholders in the request target and header values.
fn rewrite_head(shared: &Shared, ctx: &FlowCtx, parts: &mut Parts) -> Result<(), Violation> {
    let secrets = &shared.cfg.secrets;
    let target = parts.uri.to_string();
    match secrets.rewrite(target.as_bytes(), &ctx.sni, ctx.verified) {
        Rewrite::Unchanged => {}
        Rewrite::Changed(out, n) => {
            // A value that does not make a valid URI is sent as the placeholder was not:
            // refusing is the only safe choice, and it is the guest's request to fix.
            if let Ok(uri) = Uri::try_from(out) {
                parts.uri = uri;
                stats::add(&shared.stats.secrets_substituted, n as u64);
            }
        }
        Rewrite::Violation(v) => return Err(v),
    }
    for value in parts.headers.values_mut() {
        match secrets.rewrite(value.as_bytes(), &ctx.sni, ctx.verified) {
            Rewrite::Unchanged => {}
            Rewrite::Changed(out, n) => {
                if let Ok(v) = HeaderValue::from_bytes(&out) {
                    *value = v;
                    stats::add(&shared.stats.secrets_substituted, n as u64);
                }
            }
            Rewrite::Violation(v) => return Err(v),
        }
    }
    Ok(())
}

/// The request body, rewritten whole (known length up to [`BUFFER_MAX`]) or as it streams.
async fn rewrite_body(
    shared: &Arc<Shared>,
    ctx: &Arc<FlowCtx>,
    parts: &mut Parts,
    body: Incoming,
) -> Result<(ProxyBody, Option<BufferLease>), Response<ProxyBody>> {
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Whole only within this body's bound and the VM's budget; otherwise it streams.
    let lease = length
        .filter(|len| *len <= BUFFER_MAX)
        .and_then(|len| reserve_buffer(shared, len));
    match lease {
        Some(lease) => {
            let bytes = body
                .collect()
                .await
                .map_err(|e| {
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("ringfence: request body: {e}\n"),
                    )
                })?
                .to_bytes();
            let out = match shared.cfg.secrets.rewrite(&bytes, &ctx.sni, ctx.verified) {
                Rewrite::Unchanged => bytes,
                Rewrite::Changed(out, n) => {
                    stats::add(&shared.stats.secrets_substituted, n as u64);
                    Bytes::from(out)
                }
                Rewrite::Violation(v) => return Err(blocked(shared, &v)),
            };
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
            Ok((
                Full::new(out).map_err(|never| match never {}).boxed(),
                Some(lease),
            ))
        }
        None => {
            // The length can change: it goes chunked (HTTP/1.1) or as DATA frames (HTTP/2).
            parts.headers.remove(CONTENT_LENGTH);
            let streamed = RewriteBody {
                inner: body,
                rw: StreamRewriter::default(),
                shared: shared.clone(),
                ctx: ctx.clone(),
                trailers: None,
                done: false,
            };
            Ok((streamed.boxed(), None))
        }
    }
}

/// A request body rewritten as it streams.
struct RewriteBody {
    inner: Incoming,
    rw: StreamRewriter,
    shared: Arc<Shared>,
    ctx: Arc<FlowCtx>,
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl RewriteBody {
    fn violated(&mut self, v: &Violation) -> BoxError {
        self.shared.violation(v);
        self.done = true;
        format!("secret {} may not go to {}", v.env, v.host).into()
    }

    /// The end of the stream (or trailers): what the rewriter still holds.
    fn finish(&mut self) -> Result<Option<Frame<Bytes>>, BoxError> {
        let tail = match self
            .rw
            .finish(&self.shared.cfg.secrets, &self.ctx.sni, self.ctx.verified)
        {
            Ok(t) => t,
            Err(v) => return Err(self.violated(&v)),
        };
        stats::add(
            &self.shared.stats.secrets_substituted,
            self.rw.replaced as u64,
        );
        self.rw.replaced = 0;
        Ok((!tail.is_empty()).then(|| Frame::data(Bytes::from(tail))))
    }
}

impl Body for RewriteBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(t) = this.trailers.take() {
                this.done = true;
                return Poll::Ready(Some(Ok(t)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    this.done = true;
                    return Poll::Ready(this.finish().transpose());
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let (secrets, sni) = (&this.shared.cfg.secrets, &this.ctx.sni);
                    match this.rw.feed(secrets, &data, sni, this.ctx.verified) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(v) => return Poll::Ready(Some(Err(this.violated(&v)))),
                    }
                }
                Err(trailers) => {
                    this.trailers = Some(trailers);
                    match this.finish() {
                        Ok(Some(tail)) => return Poll::Ready(Some(Ok(tail))),
                        Ok(None) => continue,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
            }
        }
    }
}

/// The request target in the form the upstream's protocol wants: origin-form for
/// HTTP/1.1, absolute (scheme and authority) for HTTP/2.
fn set_target_form(parts: &mut Parts, sni: &str, h2: bool) {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    if h2 {
        if parts.uri.scheme().is_none() {
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str().to_string())
                .unwrap_or_else(|| sni.to_string());
            if let Ok(uri) = Uri::builder()
                .scheme("https")
                .authority(authority)
                .path_and_query(pq)
                .build()
            {
                parts.uri = uri;
            }
        }
    } else if parts.uri.authority().is_some() {
        if let Ok(uri) = Uri::try_from(pq) {
            parts.uri = uri;
        }
    }
}

fn blocked(shared: &Shared, v: &Violation) -> Response<ProxyBody> {
    shared.violation(v);
    text(
        StatusCode::FORBIDDEN,
        format!(
            "ringfence: request blocked: it carries the placeholder of secret {}, which may not be sent to {}\n",
            v.env, v.host
        ),
    )
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_header_forms() {
        assert_eq!(host_of("api.example.com"), "api.example.com");
        assert_eq!(host_of("api.example.com:8443"), "api.example.com");
        assert_eq!(host_of("[2001:db8::1]:443"), "2001:db8::1");
    }
}

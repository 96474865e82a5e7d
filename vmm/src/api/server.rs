//! HTTP/1.1 on a Unix socket (hyper, a single-threaded tokio runtime on its own thread): each
//! request's body (at most [`MAX_BODY`] bytes, as Firecracker bounds it) goes to the
//! [`ApiState`], whose reply is written back as JSON.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::state::{ApiState, Reply};

/// Largest request body accepted.
pub const MAX_BODY: usize = 50 * 1024;

/// Binds `path` (a stale socket file left by a dead process is replaced; a live one, or a
/// file that is not a socket, is refused). Returns the bound listener, still std so the
/// caller's thread can own it.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    crate::unix_socket::bind_listener(path, "--api-sock")
}

/// Serves `listener` until the process ends; the socket file is removed when this returns.
pub fn serve(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    state: Arc<Mutex<ApiState>>,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("the API server's runtime: {e}"))?;
    let result = rt.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
        loop {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), String>(())
    });
    let _ = std::fs::remove_file(&path);
    result
}

async fn answer(state: &Mutex<ApiState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let reply = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => {
            let bytes = b.to_bytes();
            match state.lock() {
                Ok(mut s) => s.handle(parts.method.as_str(), parts.uri.path(), &bytes),
                Err(_) => Reply::fault("internal: the API state was poisoned by a panic"),
            }
        }
        Err(e) => Reply::fault(format!(
            "the request body is unreadable or over {MAX_BODY} bytes: {e}"
        )),
    };
    let mut resp = Response::new(Full::new(Bytes::from(reply.body.unwrap_or_default())));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
    // On every answer, 204 included: the description declares `application/json` for all.
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

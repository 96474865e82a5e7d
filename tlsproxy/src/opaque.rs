//! Relays a decrypted flow that is not HTTP: bytes both ways as they come, with the guest's
//! bytes rewritten (placeholders to values where allowed; a violation cuts the flow).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::secrets::StreamRewriter;
use crate::shared::{FlowCtx, Shared};
use crate::stats;

const CHUNK: usize = 64 * 1024;

/// Relays until both directions end or a violation cuts the flow.
pub(crate) async fn relay<G, U>(
    shared: &Arc<Shared>,
    ctx: &FlowCtx,
    guest: G,
    upstream: U,
) -> Result<(), String>
where
    G: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut gr, mut gw) = tokio::io::split(guest);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        let mut rw = StreamRewriter::default();
        let secrets = &shared.cfg.secrets;
        loop {
            let n = gr.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                let tail = rw.finish(secrets, &ctx.sni, ctx.verified).map_err(|v| {
                    shared.violation(&v);
                    "secret violation".to_string()
                })?;
                uw.write_all(&tail).await.map_err(|e| e.to_string())?;
                stats::add(&shared.stats.secrets_substituted, rw.replaced as u64);
                let _ = uw.shutdown().await;
                return Ok::<(), String>(());
            }
            stats::add(&shared.stats.bytes_up, n as u64);
            if secrets.is_empty() {
                uw.write_all(&buf[..n]).await.map_err(|e| e.to_string())?;
                continue;
            }
            let out = rw
                .feed(secrets, &buf[..n], &ctx.sni, ctx.verified)
                .map_err(|v| {
                    shared.violation(&v);
                    "secret violation".to_string()
                })?;
            uw.write_all(&out).await.map_err(|e| e.to_string())?;
        }
    };
    let down = async {
        let n = tokio::io::copy(&mut ur, &mut gw)
            .await
            .map_err(|e| e.to_string())?;
        stats::add(&shared.stats.bytes_down, n);
        let _ = gw.shutdown().await;
        Ok::<(), String>(())
    };
    tokio::try_join!(up, down).map(|_| ())
}

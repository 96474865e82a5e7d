//! `tls-hello`: sends a ClientHello naming `probe.name` (no server name without it) and
//! expects the peer to echo every byte back, as the tests' `rf-peer echo` does. It shows
//! from inside a guest whether an SNI policy let the connection through: status 0 when the
//! echo came back whole, 1 when the connection was refused or reset. No TLS is spoken; the
//! hello is a well-formed TLS 1.3-shaped message and nothing more.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::socket::tcp;

use super::net_common::{endpoint_string, json, peer_endpoint, DEFAULT_TIMEOUT_MS, STATUS_FAILED};
use super::tcp::{open, with_run};
use super::{Context, Outcome};
use crate::net::NetError;

/// A ClientHello (record included) with a server_name extension for `name`, if any.
fn client_hello(name: Option<&str>) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(n) = name {
        let n = n.as_bytes();
        exts.extend_from_slice(&[0, 0]);
        exts.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        exts.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&(n.len() as u16).to_be_bytes());
        exts.extend_from_slice(n);
    }
    // supported_versions: TLS 1.3.
    exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    let mut body = vec![3, 3];
    body.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut out = vec![22, 3, 1];
    out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    out.push(1);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&body);
    out
}

/// `tls-hello probe.peer=HOST:PORT [probe.name=NAME]`.
pub fn hello(ctx: &Context<'_>) -> Outcome {
    with_run(ctx, "tls-hello", DEFAULT_TIMEOUT_MS, |run| {
        let peer = peer_endpoint(run, ctx)?;
        let name = ctx.cmdline.get("probe.name");
        let msg = client_hello(name);
        let (handle, _) = open(run, peer, 64 * 1024)?;
        run.stack
            .sockets
            .get_mut::<tcp::Socket>(handle)
            .send_slice(&msg)
            .map_err(|e| NetError::Other(format!("send failed: {e}")))?;
        let mut echo = Vec::new();
        let deadline = run.stack.clock.deadline_ms(run.timeout_ms);
        let ended = run.stack.poll_until(deadline, |s| {
            let socket = s.sockets.get_mut::<tcp::Socket>(handle);
            let mut buf = [0u8; 512];
            while let Ok(n @ 1..) = socket.recv_slice(&mut buf) {
                echo.extend_from_slice(&buf[..n]);
            }
            (echo.len() >= msg.len() || !socket.may_recv()).then_some(())
        });
        let (result, status) = match ended {
            Some(()) if echo == msg => ("echoed", 0),
            Some(()) if echo.is_empty() => ("reset", STATUS_FAILED),
            Some(()) => ("garbled", STATUS_FAILED),
            None => ("timeout", STATUS_FAILED),
        };
        run.stack.sockets.get_mut::<tcp::Socket>(handle).abort();
        run.stack.poll();
        let json = json(ctx, "tls-hello", status == 0, Some(run))
            .str("peer", &endpoint_string(&peer))
            .str("result", result)
            .u64("hello_bytes", msg.len() as u64);
        Ok(Outcome { json, status })
    })
}

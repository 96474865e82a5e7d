//! `tcp-send` and `tcp-recv` over several parallel connections (`probe.flows=N`, N ≤ 16):
//! each flow carries its own copy of the `i % 251` pattern (tcp-send: `probe.bytes` split
//! evenly), all flows are driven in one polling loop, and the result is the aggregate:
//! total bytes from the first connection open to the last flow's end.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};

use super::net_common::{
    endpoint_string, json, peer_endpoint, seconds, NetRun, DEFAULT_TIMEOUT_MS,
};
use super::tcp::{
    follows_pattern, open, pattern, socket_state, with_run, BUF_BYTES, RECV_BUF_BYTES,
};
use super::{Context, Outcome};
use crate::clock::rdtsc;
use crate::cmdline::{parse_size, parse_u64};
use crate::net::NetError;

/// Most parallel flows.
const MAX_FLOWS: u64 = 16;
/// Send buffers per flow when several share the guest's memory.
const FLOW_BUF_BYTES: usize = BUF_BYTES / 2;

/// The `probe.flows` value (1 when absent or malformed; capped at [`MAX_FLOWS`]).
pub fn flows(ctx: &Context<'_>) -> u64 {
    ctx.cmdline
        .get("probe.flows")
        .and_then(parse_u64)
        .unwrap_or(1)
        .clamp(1, MAX_FLOWS)
}

/// Opens `n` connections to the peer, with `buf` bytes of socket buffers each.
fn open_all(
    run: &mut NetRun,
    ctx: &Context<'_>,
    n: u64,
    buf: usize,
) -> Result<(Vec<SocketHandle>, u64, String), NetError> {
    let peer = peer_endpoint(run, ctx)?;
    let mut handles = Vec::new();
    let mut start = 0;
    for i in 0..n {
        let (h, t) = open(run, peer, buf)?;
        if i == 0 {
            start = t;
        }
        handles.push(h);
    }
    Ok((handles, start, endpoint_string(&peer)))
}

/// Polls until `step` has finished every flow; fails after `timeout_ms` without progress.
fn drive_all(
    run: &mut NetRun,
    what: &str,
    handles: &[SocketHandle],
    mut step: impl FnMut(usize, &mut tcp::Socket<'static>, &mut u64) -> Result<bool, NetError>,
) -> Result<(), NetError> {
    let idle = run
        .stack
        .clock
        .ns_to_ticks(run.timeout_ms.saturating_mul(1_000_000));
    let mut done: Vec<bool> = handles.iter().map(|_| false).collect();
    let mut last_progress = rdtsc();
    let mut progress = 0u64;
    loop {
        run.stack.poll();
        let before = progress;
        for (i, h) in handles.iter().enumerate() {
            if !done[i] {
                let socket = run.stack.sockets.get_mut::<tcp::Socket>(*h);
                done[i] = step(i, socket, &mut progress)?;
            }
        }
        if done.iter().all(|d| *d) {
            return Ok(());
        }
        let now = rdtsc();
        if progress != before {
            last_progress = now;
        } else if now - last_progress > idle {
            let flows: Vec<String> = handles
                .iter()
                .map(|h| socket_state(run.stack.sockets.get::<tcp::Socket>(*h)))
                .collect();
            return Err(NetError::Other(format!(
                "{what}: no progress for {} ms after {progress} bytes; flows: {}",
                run.timeout_ms,
                flows.join(", ")
            )));
        }
    }
}

/// `tcp-send probe.flows=N`.
pub fn send(ctx: &Context<'_>) -> Outcome {
    let n = flows(ctx);
    let total = ctx.cmdline.get("probe.bytes").and_then(parse_size);
    with_run(ctx, "tcp-send", DEFAULT_TIMEOUT_MS, |run| {
        let total = total.ok_or(NetError::BadArg {
            key: "probe.bytes",
            value: String::from(ctx.cmdline.get("probe.bytes").unwrap_or("")),
            expected: "a byte count with optional K/M/G suffix",
        })?;
        let (handles, start, peer) = open_all(run, ctx, n, FLOW_BUF_BYTES)?;
        let pattern = pattern();
        // Flow i carries total / n bytes, the first one also the remainder.
        let share: Vec<u64> = (0..n)
            .map(|i| total / n + if i == 0 { total % n } else { 0 })
            .collect();
        let mut sent: Vec<u64> = share.iter().map(|_| 0).collect();
        let mut closing: Vec<bool> = share.iter().map(|_| false).collect();
        drive_all(run, "tcp-send", &handles, |i, socket, progress| {
            while sent[i] < share[i] && socket.can_send() {
                let off = (sent[i] % 251) as usize;
                let want = (share[i] - sent[i]).min((pattern.len() - off) as u64) as usize;
                let k = socket
                    .send_slice(&pattern[off..off + want])
                    .map_err(|e| NetError::Other(format!("flow {i}: send failed: {e}")))?;
                if k == 0 {
                    break;
                }
                sent[i] += k as u64;
                *progress += k as u64;
            }
            if sent[i] == share[i] && !closing[i] {
                socket.close();
                closing[i] = true;
                *progress += 1;
            }
            Ok(closing[i]
                && matches!(
                    socket.state(),
                    State::FinWait2 | State::TimeWait | State::Closed
                ))
        })?;
        let secs = seconds(ctx, rdtsc() - start);
        let bytes: u64 = sent.iter().sum();
        let json = json(ctx, "tcp-send", true, Some(run))
            .str("peer", &peer)
            .u64("flows", n)
            .u64("bytes", bytes)
            .f64("seconds", secs, 6)
            .f64("gbps", bytes as f64 * 8.0 / secs / 1e9, 3);
        Ok(Outcome { json, status: 0 })
    })
}

/// `tcp-recv probe.flows=N`: read every flow to EOF, checking each against the pattern.
pub fn recv(ctx: &Context<'_>) -> Outcome {
    let n = flows(ctx);
    with_run(ctx, "tcp-recv", DEFAULT_TIMEOUT_MS, |run| {
        let (handles, start, peer) = open_all(run, ctx, n, RECV_BUF_BYTES / n as usize)?;
        let mut got: Vec<u64> = handles.iter().map(|_| 0).collect();
        let mut pattern_ok = true;
        let pattern = pattern();
        drive_all(run, "tcp-recv", &handles, |i, socket, progress| {
            while socket.can_recv() {
                let base = got[i];
                let k = socket
                    .recv(|buf| {
                        let ok = follows_pattern(&pattern, base, buf);
                        (buf.len(), (buf.len(), ok))
                    })
                    .map_err(|e| NetError::Other(format!("flow {i}: recv failed: {e}")))?;
                pattern_ok &= k.1;
                if k.0 == 0 {
                    break;
                }
                got[i] += k.0 as u64;
                *progress += k.0 as u64;
            }
            if !socket.may_recv() {
                socket.close();
                return Ok(true);
            }
            Ok(false)
        })?;
        let secs = seconds(ctx, rdtsc() - start);
        let bytes: u64 = got.iter().sum();
        // Let our FINs go out (on a tap the host waits for them); the result does not depend
        // on it.
        let deadline = run.stack.clock.deadline_ms(200);
        run.stack.poll_until(deadline, |s| {
            handles
                .iter()
                .all(|h| {
                    matches!(
                        s.sockets.get::<tcp::Socket>(*h).state(),
                        State::Closed | State::TimeWait
                    )
                })
                .then_some(())
        });
        let json = json(ctx, "tcp-recv", pattern_ok, Some(run))
            .str("peer", &peer)
            .u64("flows", n)
            .u64("bytes", bytes)
            .f64("seconds", secs, 6)
            .f64("gbps", bytes as f64 * 8.0 / secs / 1e9, 3)
            .bool("pattern_ok", pattern_ok);
        Ok(Outcome {
            json,
            status: if pattern_ok { 0 } else { 1 },
        })
    })
}

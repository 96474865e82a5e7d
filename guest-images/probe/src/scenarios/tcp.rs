//! TCP scenarios: `tcp-send`, `tcp-recv`, `tcp-rr`, `connect`, `serve`.
//!
//! Transfers use 1 MiB socket buffers (window scaling on), except that
//! `tcp-recv` receives into 8 MiB (a Linux guest's autotuning reaches 6 MiB):
//! a smaller window holds back a host side with more latency, and the guest
//! must not be what a benchmark measures. Waits are bounded: connects by
//! `probe.timeout_ms`, transfers by the same value measured as time without
//! progress.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sha2::{Digest, Sha256};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpEndpoint;

use super::net_common::{
    bring_up, count, endpoint_string, ephemeral_port, failure, json, peer_endpoint, percentiles_us,
    seconds, NetRun, DEFAULT_TIMEOUT_MS, STATUS_FAILED, STATUS_TIMEOUT,
};
use super::{Context, Outcome};
use crate::clock::rdtsc;
use crate::cmdline::{parse_size, parse_u64};
use crate::net::NetError;

/// Socket buffer size for transfers.
pub(super) const BUF_BYTES: usize = 1 << 20;
/// Socket buffer size of `tcp-recv` (split between the flows of a multi-flow one).
pub(super) const RECV_BUF_BYTES: usize = 8 << 20;
/// Default `probe.timeout_ms` of the `connect` scenario.
const CONNECT_DEFAULT_TIMEOUT_MS: u64 = 3000;
/// The send pattern repeats every 251 bytes; this many repetitions are kept
/// ready to copy from.
pub(super) const PATTERN_REPEATS: usize = 261;

pub(super) fn new_socket(buf: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buf]),
        tcp::SocketBuffer::new(vec![0; buf]),
    )
}

/// How a connection attempt ended.
enum ConnectResult {
    Open(SocketHandle, u64),
    Refused,
    TimedOut,
}

fn connect(run: &mut NetRun, peer: IpEndpoint, buf: usize) -> Result<ConnectResult, NetError> {
    let mut socket = new_socket(buf);
    socket.set_nagle_enabled(false);
    let handle = run.stack.sockets.add(socket);
    let local = ephemeral_port();
    let cx = run.stack.iface.context();
    run.stack
        .sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(cx, peer, local)
        .map_err(|e| NetError::Other(format!("connect to {peer} not started: {e}")))?;
    let deadline = run.stack.clock.deadline_ms(run.timeout_ms);
    let state = run.stack.poll_until(deadline, |s| {
        match s.sockets.get::<tcp::Socket>(handle).state() {
            State::SynSent | State::SynReceived => None,
            other => Some(other),
        }
    });
    Ok(match state {
        Some(State::Established) => ConnectResult::Open(handle, rdtsc()),
        Some(_) => ConnectResult::Refused,
        None => ConnectResult::TimedOut,
    })
}

pub(super) fn open(
    run: &mut NetRun,
    peer: IpEndpoint,
    buf: usize,
) -> Result<(SocketHandle, u64), NetError> {
    match connect(run, peer, buf)? {
        ConnectResult::Open(h, t) => Ok((h, t)),
        ConnectResult::Refused => Err(NetError::Other(format!(
            "connection to {peer} refused or reset"
        ))),
        ConnectResult::TimedOut => Err(NetError::Other(format!(
            "connection to {peer} timed out after {} ms",
            run.timeout_ms
        ))),
    }
}

/// Drives `step` until it reports completion; fails if it makes no progress
/// for `timeout_ms`. `step` returns `Ok(true)` when done, `Ok(false)` else,
/// and bumps `progress` when it moved data.
fn drive(
    run: &mut NetRun,
    what: &str,
    mut step: impl FnMut(&mut tcp::Socket<'static>, &mut u64) -> Result<bool, NetError>,
    handle: SocketHandle,
) -> Result<(), NetError> {
    let idle = run
        .stack
        .clock
        .ns_to_ticks(run.timeout_ms.saturating_mul(1_000_000));
    let mut last_progress = rdtsc();
    let mut progress = 0u64;
    loop {
        run.stack.poll();
        let before = progress;
        let socket = run.stack.sockets.get_mut::<tcp::Socket>(handle);
        if step(socket, &mut progress)? {
            return Ok(());
        }
        let now = rdtsc();
        if progress != before {
            last_progress = now;
        } else if now - last_progress > idle {
            return Err(NetError::Other(format!(
                "{what}: no progress for {} ms after {progress} bytes ({})",
                run.timeout_ms,
                socket_state(run.stack.sockets.get::<tcp::Socket>(handle)),
            )));
        }
    }
}

/// A socket's state for a stall report: TCP state, bytes unsent, bytes received unread.
pub(super) fn socket_state(socket: &tcp::Socket<'_>) -> String {
    format!(
        "{} unsent {} unread {}",
        socket.state(),
        socket.send_queue(),
        socket.recv_queue()
    )
}

pub(super) fn with_run(
    ctx: &Context<'_>,
    name: &str,
    default_timeout: u64,
    body: impl FnOnce(&mut NetRun) -> Result<Outcome, NetError>,
) -> Outcome {
    let mut run = match bring_up(ctx, default_timeout) {
        Ok(r) => r,
        Err(e) => return failure(ctx, name, None, &e),
    };
    match body(&mut run) {
        Ok(o) => o,
        Err(e) => failure(ctx, name, Some(&run), &e),
    }
}

/// `tcp-send probe.peer=HOST:PORT probe.bytes=N`.
pub fn send(ctx: &Context<'_>) -> Outcome {
    if super::tcp_multi::flows(ctx) > 1 {
        return super::tcp_multi::send(ctx);
    }
    let bytes_arg = ctx.cmdline.get("probe.bytes");
    let Some(total) = bytes_arg.and_then(parse_size) else {
        let err = NetError::BadArg {
            key: "probe.bytes",
            value: String::from(bytes_arg.unwrap_or("")),
            expected: "a byte count with optional K/M/G suffix",
        };
        return failure(ctx, "tcp-send", None, &err);
    };
    with_run(ctx, "tcp-send", DEFAULT_TIMEOUT_MS, |run| {
        let peer = peer_endpoint(run, ctx)?;
        let (handle, start) = open(run, peer, BUF_BYTES)?;
        let pattern: Vec<u8> = (0..251 * PATTERN_REPEATS)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut sent = 0u64;
        let mut closing = false;
        let mut last_queued = usize::MAX;
        drive(
            run,
            "tcp-send",
            |socket, progress| {
                while sent < total && socket.can_send() {
                    let off = (sent % 251) as usize;
                    let want = (total - sent).min((pattern.len() - off) as u64) as usize;
                    let n = socket.send_slice(&pattern[off..off + want]).map_err(|e| {
                        NetError::Other(format!("send failed after {sent} bytes: {e}"))
                    })?;
                    if n == 0 {
                        break;
                    }
                    sent += n as u64;
                    *progress += n as u64;
                }
                if sent == total && !closing {
                    socket.close();
                    closing = true;
                }
                // ACKs draining the queue count as progress too.
                let queued = socket.send_queue();
                if queued != last_queued {
                    last_queued = queued;
                    *progress += 1;
                }
                // Our FIN acknowledged means every byte was acknowledged.
                Ok(closing
                    && matches!(
                        socket.state(),
                        State::FinWait2 | State::TimeWait | State::Closed
                    ))
            },
            handle,
        )?;
        let secs = seconds(ctx, rdtsc() - start);
        let json = json(ctx, "tcp-send", true, Some(run))
            .str("peer", &endpoint_string(&peer))
            .u64("bytes", sent)
            .f64("seconds", secs, 6)
            .f64("gbps", sent as f64 * 8.0 / secs / 1e9, 3);
        Ok(Outcome { json, status: 0 })
    })
}

/// The send pattern from stream offset 0: `PATTERN_REPEATS` periods of it.
pub(super) fn pattern() -> Vec<u8> {
    (0..251 * PATTERN_REPEATS)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// Whether `buf` holds the bytes at stream offset `base` of the `i % 251` pattern, compared
/// against `pattern` (from [`pattern`]) a slice at a time: a per-byte modulo check costs the
/// guest more than receiving the bytes does.
pub(super) fn follows_pattern(pattern: &[u8], base: u64, buf: &[u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let off = ((base + done as u64) % 251) as usize;
        let n = (buf.len() - done).min(pattern.len() - off);
        if buf[done..done + n] != pattern[off..off + n] {
            return false;
        }
        done += n;
    }
    true
}

/// How `tcp-recv` checks what it received (`probe.verify`).
enum Verify {
    /// SHA-256 of the stream, reported as `sha256` (default; any sender).
    Sha256(Sha256),
    /// Compare with the `i % 251` pattern, reported as `pattern_ok` (benchmarks: a
    /// fraction of the guest time SHA-256 takes, so the guest is not what is measured).
    Pattern { pattern: Vec<u8>, ok: bool },
}

impl Verify {
    fn from_cmdline(ctx: &Context<'_>) -> Result<Verify, NetError> {
        match ctx.cmdline.get("probe.verify") {
            None | Some("sha256") => Ok(Verify::Sha256(Sha256::new())),
            Some("pattern") => Ok(Verify::Pattern {
                pattern: pattern(),
                ok: true,
            }),
            Some(other) => Err(NetError::BadArg {
                key: "probe.verify",
                value: other.into(),
                expected: "sha256 or pattern",
            }),
        }
    }

    /// Takes the stream bytes at offset `base`.
    fn update(&mut self, base: u64, buf: &[u8]) {
        match self {
            Verify::Sha256(h) => h.update(buf),
            Verify::Pattern { pattern, ok } => *ok &= follows_pattern(pattern, base, buf),
        }
    }
}

/// `tcp-recv probe.peer=HOST:PORT`: read to EOF and hash (or check, `probe.verify=pattern`).
pub fn recv(ctx: &Context<'_>) -> Outcome {
    if super::tcp_multi::flows(ctx) > 1 {
        return super::tcp_multi::recv(ctx);
    }
    with_run(ctx, "tcp-recv", DEFAULT_TIMEOUT_MS, |run| {
        let mut verify = Verify::from_cmdline(ctx)?;
        let peer = peer_endpoint(run, ctx)?;
        let (handle, start) = open(run, peer, RECV_BUF_BYTES)?;
        let mut received = 0u64;
        drive(
            run,
            "tcp-recv",
            |socket, progress| {
                while socket.can_recv() {
                    let base = received;
                    let n = socket
                        .recv(|buf| {
                            verify.update(base, buf);
                            (buf.len(), buf.len())
                        })
                        .map_err(|e| {
                            NetError::Other(format!("recv failed after {received} bytes: {e}"))
                        })?;
                    if n == 0 {
                        break;
                    }
                    received += n as u64;
                    *progress += n as u64;
                }
                if !socket.may_recv() {
                    socket.close();
                    return Ok(true);
                }
                Ok(false)
            },
            handle,
        )?;
        let secs = seconds(ctx, rdtsc() - start);
        // Let our FIN go out; the result does not depend on it.
        let deadline = run.stack.clock.deadline_ms(200);
        run.stack.poll_until(deadline, |s| {
            matches!(
                s.sockets.get::<tcp::Socket>(handle).state(),
                State::Closed | State::TimeWait
            )
            .then_some(())
        });
        let ok = !matches!(verify, Verify::Pattern { ok: false, .. });
        let json = json(ctx, "tcp-recv", ok, Some(run))
            .str("peer", &endpoint_string(&peer))
            .u64("bytes", received)
            .f64("seconds", secs, 6)
            .f64("gbps", received as f64 * 8.0 / secs / 1e9, 3);
        let json = match verify {
            Verify::Sha256(h) => {
                let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                json.str("sha256", &hex)
            }
            Verify::Pattern { ok, .. } => json.bool("pattern_ok", ok),
        };
        Ok(Outcome {
            json,
            status: if ok { 0 } else { STATUS_FAILED },
        })
    })
}

/// `tcp-rr probe.peer=HOST:PORT [probe.count=N]`: 1-byte ping-pong.
pub fn rr(ctx: &Context<'_>) -> Outcome {
    with_run(ctx, "tcp-rr", DEFAULT_TIMEOUT_MS, |run| {
        let n = count(ctx, 1000)?;
        let peer = peer_endpoint(run, ctx)?;
        let (handle, _) = open(run, peer, 64 * 1024)?;
        run.stack
            .sockets
            .get_mut::<tcp::Socket>(handle)
            .set_ack_delay(None);
        let mut samples = Vec::with_capacity(n as usize);
        for i in 0..n {
            let t0 = rdtsc();
            run.stack
                .sockets
                .get_mut::<tcp::Socket>(handle)
                .send_slice(&[i as u8])
                .map_err(|e| NetError::Other(format!("request {i}: send failed: {e}")))?;
            let deadline = run.stack.clock.deadline_ms(run.timeout_ms);
            let got = run.stack.poll_until(deadline, |s| {
                let socket = s.sockets.get_mut::<tcp::Socket>(handle);
                if !socket.may_recv() {
                    return Some(Err(()));
                }
                let mut byte = [0u8; 1];
                match socket.recv_slice(&mut byte) {
                    Ok(1) => Some(Ok(())),
                    _ => None,
                }
            });
            match got {
                Some(Ok(())) => samples.push(ctx.clock.ticks_to_ns(rdtsc() - t0)),
                Some(Err(())) => {
                    return Err(NetError::Other(format!(
                        "peer closed after {i} of {n} responses"
                    )))
                }
                None => {
                    return Err(NetError::Other(format!(
                        "response {i} timed out after {} ms",
                        run.timeout_ms
                    )))
                }
            }
        }
        run.stack.sockets.get_mut::<tcp::Socket>(handle).close();
        let deadline = run.stack.clock.deadline_ms(200);
        run.stack.poll_until(deadline, |s| {
            (!s.sockets.get::<tcp::Socket>(handle).is_active()).then_some(())
        });
        let (p50, p99) = percentiles_us(&mut samples);
        let json = json(ctx, "tcp-rr", true, Some(run))
            .str("peer", &endpoint_string(&peer))
            .u64("count", samples.len() as u64)
            .f64("p50_us", p50, 1)
            .f64("p99_us", p99, 1);
        Ok(Outcome { json, status: 0 })
    })
}

/// `connect probe.peer=HOST:PORT`: 0 open, 1 refused/reset, 2 timeout.
pub fn connect_only(ctx: &Context<'_>) -> Outcome {
    with_run(ctx, "connect", CONNECT_DEFAULT_TIMEOUT_MS, |run| {
        let peer = peer_endpoint(run, ctx)?;
        let t0 = rdtsc();
        let (result, status) = match connect(run, peer, 4096)? {
            ConnectResult::Open(handle, _) => {
                run.stack.sockets.get_mut::<tcp::Socket>(handle).abort();
                run.stack.poll();
                ("open", 0)
            }
            ConnectResult::Refused => ("refused", STATUS_FAILED),
            ConnectResult::TimedOut => ("timeout", STATUS_TIMEOUT),
        };
        let json = json(ctx, "connect", status == 0, Some(run))
            .str("peer", &endpoint_string(&peer))
            .str("result", result)
            .f64(
                "connect_us",
                ctx.clock.ticks_to_ns(rdtsc() - t0) as f64 / 1000.0,
                1,
            );
        Ok(Outcome { json, status })
    })
}

/// `serve probe.port=P [probe.conns=N]`: echo each connection until EOF.
pub fn serve(ctx: &Context<'_>) -> Outcome {
    let port_arg = ctx.cmdline.get("probe.port");
    let Some(port) = port_arg
        .and_then(parse_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
    else {
        let err = NetError::BadArg {
            key: "probe.port",
            value: port_arg.unwrap_or("").into(),
            expected: "a TCP port 1..65535",
        };
        return failure(ctx, "serve", None, &err);
    };
    let conns_arg = ctx.cmdline.get("probe.conns");
    let conns = match conns_arg.map(parse_u64) {
        None => 1,
        Some(Some(n)) if n > 0 => n,
        Some(_) => {
            let err = NetError::BadArg {
                key: "probe.conns",
                value: conns_arg.unwrap_or("").into(),
                expected: "a positive integer",
            };
            return failure(ctx, "serve", None, &err);
        }
    };
    with_run(ctx, "serve", DEFAULT_TIMEOUT_MS, |run| {
        let mut echoed = 0u64;
        crate::println!("probe: listening port={port} ip={}", run.addr.cidr);
        for c in 0..conns {
            let handle = run.stack.sockets.add(new_socket(256 * 1024));
            run.stack
                .sockets
                .get_mut::<tcp::Socket>(handle)
                .listen(port)
                .map_err(|e| NetError::Other(format!("listen on port {port}: {e}")))?;
            let deadline = run.stack.clock.deadline_ms(run.timeout_ms);
            let accepted = run.stack.poll_until(deadline, |s| {
                let st = s.sockets.get::<tcp::Socket>(handle).state();
                (st != State::Listen && st != State::SynReceived).then_some(())
            });
            if accepted.is_none() {
                return Err(NetError::Other(format!(
                    "no connection {} of {conns} on port {port} within {} ms",
                    c + 1,
                    run.timeout_ms
                )));
            }
            let mut pending: Vec<u8> = Vec::new();
            drive(
                run,
                "serve",
                |socket, progress| {
                    if socket.can_recv() && pending.len() < 256 * 1024 {
                        let n = socket
                            .recv(|buf| {
                                pending.extend_from_slice(buf);
                                (buf.len(), buf.len())
                            })
                            .map_err(|e| NetError::Other(format!("recv: {e}")))?;
                        *progress += n as u64;
                    }
                    if !pending.is_empty() && socket.can_send() {
                        let n = socket
                            .send_slice(&pending)
                            .map_err(|e| NetError::Other(format!("send: {e}")))?;
                        pending.drain(..n);
                        echoed += n as u64;
                        *progress += n as u64;
                    }
                    if !socket.may_recv() && pending.is_empty() {
                        socket.close();
                    }
                    Ok(!socket.is_active())
                },
                handle,
            )?;
            run.stack.sockets.remove(handle);
        }
        let json = json(ctx, "serve", true, Some(run))
            .u64("port", u64::from(port))
            .u64("conns", conns)
            .u64("bytes", echoed);
        Ok(Outcome { json, status: 0 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_check_follows_the_stream_offset_and_catches_one_bad_byte() {
        let pattern = pattern();
        let stream: Vec<u8> = (0..5000u64).map(|i| (i % 251) as u8).collect();
        for (base, len) in [(0u64, 5000usize), (250, 1), (251, 753), (1234, 3766)] {
            let b = base as usize;
            assert!(follows_pattern(&pattern, base, &stream[b..b + len]));
        }
        let mut bad = stream.clone();
        bad[4000] ^= 1;
        assert!(!follows_pattern(&pattern, 0, &bad));
        assert!(!follows_pattern(&pattern, 1, &stream[..100]), "off by one");
    }
}

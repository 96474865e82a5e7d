//! `flood:syn|udp probe.peer=IPV4:PORT [probe.count=N] [probe.hold_ms=MS]
//! [probe.drain_ms=MS] [probe.repeat=R]`: N (default 100 000) hand-built SYNs or UDP datagrams, each of a
//! new flow (distinct source port x destination port), as fast as the TX ring takes them;
//! floods and limits, docs/security.md. The guest never completes a handshake during the
//! flood, so the netstack's TCP flows stay half open.
//!
//! Phases, each announced on the console so a test can measure the VMM between them
//! (every pause is `hold_ms`, default 1000): `flood: baseline`, pause, the flood,
//! `flood: sent`, pause, drain (`drain_ms`, default 3000: a SYN-ACK the netstack
//! retransmits is answered with a RST, so its half-open flows end without waiting for the
//! ~60 s of retransmissions; UDP flows end by the netstack's idle timeout), `flood:
//! drained`, pause; all of it `repeat` times (default 1: a second flood shows whether the
//! first left anything behind), then the JSON line with what came back.

use alloc::format;

use super::net_common::{bring_up, count, failure, json, DEFAULT_TIMEOUT_MS};
use super::raw::setup;
use super::raw_frame::{
    classify, ip_frame, recv, send, tcp, udp, Seen, ACK, PROTO_TCP, PROTO_UDP, RST, SYN,
};
use super::{usage_error, Context, Outcome};
use crate::clock::rdtsc;
use crate::cmdline::parse_u64;
use crate::net::virtio_net::VirtioNet;

/// Source ports used: 1024 .. 1024 + SPORTS; more flows use the next destination ports.
const SPORTS: u32 = 60_000;

/// What came back from the gateway.
#[derive(Default)]
struct Answers {
    synack: u64,
    rst: u64,
    icmp: u64,
    udp: u64,
    /// RSTs we sent in the drain phase.
    reset: u64,
}

/// Takes every received frame; in the drain phase answers SYN-ACKs with a RST.
fn take(
    dev: &mut VirtioNet,
    link: &super::raw_frame::Link,
    peer: [u8; 4],
    a: &mut Answers,
    drain: bool,
) {
    while let Some(f) = recv(dev) {
        let (kind, seq, _, ours) = classify(&f, peer);
        match kind {
            Seen::SynAck => {
                a.synack += 1;
                if drain && f.len() >= 38 {
                    // Our SYN carried isn 1; the RST answers its SYN-ACK.
                    let ihl = usize::from(f[14] & 0x0f) * 4;
                    let theirs = u16::from_be_bytes([f[14 + ihl], f[15 + ihl]]);
                    let ack = seq.wrapping_add(1);
                    let seg = tcp(link.ip, peer, ours, theirs, 2, ack, RST | ACK, &[]);
                    send(dev, &ip_frame(link, peer, PROTO_TCP, 0, 0, &seg));
                    a.reset += 1;
                }
            }
            Seen::Rst => a.rst += 1,
            Seen::Icmp => a.icmp += 1,
            Seen::Udp => a.udp += 1,
            _ => {}
        }
    }
    dev.flush();
}

/// Waits `ticks` TSC ticks, taking frames meanwhile.
fn pause(
    dev: &mut VirtioNet,
    link: &super::raw_frame::Link,
    peer: [u8; 4],
    a: &mut Answers,
    ticks: u64,
    drain: bool,
) {
    let end = rdtsc() + ticks;
    while rdtsc() < end {
        take(dev, link, peer, a, drain);
    }
}

/// Runs `flood:KIND`.
pub fn flood(ctx: &Context<'_>, kind: Option<&str>) -> Outcome {
    let Some(kind) = kind.filter(|k| *k == "syn" || *k == "udp") else {
        return usage_error(ctx, "flood", "flood:syn or flood:udp".into());
    };
    let mut run = match bring_up(ctx, DEFAULT_TIMEOUT_MS) {
        Ok(r) => r,
        Err(e) => return failure(ctx, "flood", None, &e),
    };
    let n = match count(ctx, 100_000) {
        Ok(n) => n,
        Err(e) => return failure(ctx, "flood", Some(&run), &e),
    };
    let s = match setup(ctx, &mut run) {
        Ok(s) => s,
        Err(e) => return failure(ctx, "flood", Some(&run), &e),
    };
    let ms = |key: &str, default: u64| ctx.cmdline.get(key).and_then(parse_u64).unwrap_or(default);
    let hold = ms("probe.hold_ms", 1000) * s.tsc_ms;
    let drain = ms("probe.drain_ms", 3000) * s.tsc_ms;
    let (link, peer) = (s.link, s.peer);
    let dev = &mut run.stack.dev;
    let mut a = Answers::default();
    let repeat = ms("probe.repeat", 1).clamp(1, 10);
    crate::println!("flood: baseline");
    pause(dev, &link, peer, &mut a, hold, false);
    let mut ring_full = 0u64;
    let mut sent_total = 0u64;
    let mut flood_ns = 0u64;
    for _ in 0..repeat {
        let t0 = rdtsc();
        let deadline = rdtsc() + 120_000 * s.tsc_ms;
        let mut sent = 0u64;
        while sent < n && rdtsc() < deadline {
            let i = sent as u32;
            let sport = 1024 + (i % SPORTS) as u16;
            let dport = s.port.wrapping_add((i / SPORTS) as u16);
            let frame = if kind == "syn" {
                let seg = tcp(link.ip, peer, sport, dport, 1, 0, SYN, &[]);
                ip_frame(&link, peer, PROTO_TCP, i as u16, 0, &seg)
            } else {
                let d = udp(link.ip, peer, sport, dport, b"flood");
                ip_frame(&link, peer, PROTO_UDP, i as u16, 0, &d)
            };
            if send(dev, &frame) {
                sent += 1;
                if sent.is_multiple_of(32) {
                    dev.flush();
                    take(dev, &link, peer, &mut a, false);
                }
            } else {
                ring_full += 1;
                dev.flush();
                take(dev, &link, peer, &mut a, false);
            }
        }
        dev.flush();
        flood_ns += ctx.clock.ticks_to_ns(rdtsc() - t0);
        sent_total += sent;
        crate::println!("flood: sent");
        pause(dev, &link, peer, &mut a, hold, false);
        pause(dev, &link, peer, &mut a, drain, true);
        crate::println!("flood: drained");
        pause(dev, &link, peer, &mut a, hold, true);
    }
    let sent = sent_total;
    let n = n * repeat;
    let ok = sent == n;
    let json = json(ctx, "flood", ok, Some(&run))
        .str("kind", kind)
        .str(
            "peer",
            &format!("{}.{}.{}.{}:{}", peer[0], peer[1], peer[2], peer[3], s.port),
        )
        .u64("sent", sent)
        .f64("flood_ms", flood_ns as f64 / 1e6, 1)
        .u64("tx_ring_waits", ring_full)
        .u64("synack", a.synack)
        .u64("rst", a.rst)
        .u64("icmp", a.icmp)
        .u64("udp", a.udp)
        .u64("reset_by_guest", a.reset);
    Outcome {
        json,
        status: if ok { 0 } else { 1 },
    }
}

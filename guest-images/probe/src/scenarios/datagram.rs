//! Datagram scenarios: `ping` (ICMPv4 echo) and `udp-echo`. Both send one
//! probe at a time and wait for its answer (at most 1 s each, or
//! `probe.timeout_ms` if smaller), so RTTs are not skewed by queueing.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, udp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress};

use super::net_common::{
    bring_up, count, endpoint_string, ephemeral_port, failure, json, peer_endpoint, peer_host,
    percentiles_us, NetRun, DEFAULT_TIMEOUT_MS, STATUS_FAILED,
};
use super::{Context, Outcome};
use crate::clock::rdtsc;
use crate::net::NetError;

/// Longest wait for one answer.
const PER_PROBE_MS: u64 = 1000;
const PAYLOAD: usize = 56;

fn finish(
    ctx: &Context<'_>,
    name: &str,
    run: &NetRun,
    peer: &str,
    sent: u64,
    mut rtts: Vec<u64>,
) -> Outcome {
    let received = rtts.len() as u64;
    let (p50, p99) = percentiles_us(&mut rtts);
    let ok = received == sent;
    let json = json(ctx, name, ok, Some(run))
        .str("peer", peer)
        .u64("sent", sent)
        .u64("received", received)
        .f64("p50_us", p50, 1)
        .f64("p99_us", p99, 1);
    Outcome {
        json,
        status: if ok { 0 } else { STATUS_FAILED },
    }
}

/// `ping probe.peer=IP [probe.count=N]`.
pub fn ping(ctx: &Context<'_>) -> Outcome {
    let mut run = match bring_up(ctx, DEFAULT_TIMEOUT_MS) {
        Ok(r) => r,
        Err(e) => return failure(ctx, "ping", None, &e),
    };
    match ping_inner(ctx, &mut run) {
        Ok(o) => o,
        Err(e) => failure(ctx, "ping", Some(&run), &e),
    }
}

fn ping_inner(ctx: &Context<'_>, run: &mut NetRun) -> Result<Outcome, NetError> {
    let n = count(ctx, 10)?;
    let peer = peer_host(run, ctx)?;
    let IpAddress::Ipv4(_) = peer else {
        return Err(NetError::Other(format!(
            "ping supports IPv4 peers only; got {peer}"
        )));
    };
    let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
    let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 4096]);
    let handle = run.stack.sockets.add(icmp::Socket::new(rx, tx));
    let ident = (rdtsc() & 0xffff) as u16;
    run.stack
        .sockets
        .get_mut::<icmp::Socket>(handle)
        .bind(icmp::Endpoint::Ident(ident))
        .map_err(|e| NetError::Other(format!("ICMP bind: {e}")))?;
    let checksums = ChecksumCapabilities::default();
    let payload = [0xa5u8; PAYLOAD];
    let mut rtts = Vec::new();
    // Echo 0 is a warm-up, not counted: smoltcp drops a packet whose next hop is still
    // being resolved (ARP), and the measured echoes should not depend on that race.
    for seq in 0..=n {
        let seq_no = seq as u16;
        let repr = Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data: &payload,
        };
        let t0 = rdtsc();
        {
            let socket = run.stack.sockets.get_mut::<icmp::Socket>(handle);
            let buf = socket
                .send(repr.buffer_len(), peer)
                .map_err(|e| NetError::Other(format!("ICMP send: {e}")))?;
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &checksums);
        }
        let deadline = run
            .stack
            .clock
            .deadline_ms(PER_PROBE_MS.min(run.timeout_ms));
        let got = run.stack.poll_until(deadline, |s| {
            let socket = s.sockets.get_mut::<icmp::Socket>(handle);
            while let Ok((data, from)) = socket.recv() {
                if from != peer {
                    continue;
                }
                let Ok(packet) = Icmpv4Packet::new_checked(data) else {
                    continue;
                };
                if let Ok(Icmpv4Repr::EchoReply {
                    ident: i,
                    seq_no: sq,
                    ..
                }) = Icmpv4Repr::parse(&packet, &checksums)
                {
                    if i == ident && sq == seq_no {
                        return Some(rdtsc());
                    }
                }
            }
            None
        });
        if let (Some(t1), true) = (got, seq > 0) {
            rtts.push(ctx.clock.ticks_to_ns(t1 - t0));
        }
    }
    Ok(finish(ctx, "ping", run, &format!("{peer}"), n, rtts))
}

/// `udp-echo probe.peer=HOST:PORT [probe.count=N]`.
pub fn udp_echo(ctx: &Context<'_>) -> Outcome {
    let mut run = match bring_up(ctx, DEFAULT_TIMEOUT_MS) {
        Ok(r) => r,
        Err(e) => return failure(ctx, "udp-echo", None, &e),
    };
    match udp_inner(ctx, &mut run) {
        Ok(o) => o,
        Err(e) => failure(ctx, "udp-echo", Some(&run), &e),
    }
}

fn udp_inner(ctx: &Context<'_>, run: &mut NetRun) -> Result<Outcome, NetError> {
    let n = count(ctx, 100)?;
    let peer = peer_endpoint(run, ctx)?;
    let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
    let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]);
    let handle = run.stack.sockets.add(udp::Socket::new(rx, tx));
    let local = ephemeral_port();
    run.stack
        .sockets
        .get_mut::<udp::Socket>(handle)
        .bind(local)
        .map_err(|e| NetError::Other(format!("UDP bind to port {local}: {e}")))?;
    let mut rtts = Vec::new();
    // Datagram 0 is an uncounted warm-up, like ping's (next-hop resolution).
    for seq in 0..=n {
        let mut msg = [0u8; 64];
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = rdtsc();
        run.stack
            .sockets
            .get_mut::<udp::Socket>(handle)
            .send_slice(&msg, peer)
            .map_err(|e| NetError::Other(format!("UDP send to {peer}: {e}")))?;
        let deadline = run
            .stack
            .clock
            .deadline_ms(PER_PROBE_MS.min(run.timeout_ms));
        let got = run.stack.poll_until(deadline, |s| {
            let socket = s.sockets.get_mut::<udp::Socket>(handle);
            while let Ok((data, meta)) = socket.recv() {
                if meta.endpoint == peer && data.len() >= 8 && data[..8] == seq.to_le_bytes() {
                    return Some(rdtsc());
                }
            }
            None
        });
        if let (Some(t1), true) = (got, seq > 0) {
            rtts.push(ctx.clock.ticks_to_ns(t1 - t0));
        }
    }
    Ok(finish(
        ctx,
        "udp-echo",
        run,
        &endpoint_string(&peer),
        n,
        rtts,
    ))
}

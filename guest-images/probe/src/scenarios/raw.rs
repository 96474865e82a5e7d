//! `raw:CASE probe.peer=IPV4:PORT [probe.wait_ms=N]`: one hand-crafted attempt to reach
//! `peer` that a normal stack would never send (the bypass matrix, docs/security.md), then
//! `wait_ms` (default 500) of listening for what comes back. Exit 0 when the case ran; the
//! JSON `outcome` says what the guest saw: `synack` (a host connection was made), `udp` (an
//! answer), `rst`, `icmp` or `none`, with counts of each.
//!
//! Cases:
//! - `syn`: a plain SYN (the live check the others are compared with);
//! - `frag-tiny`: a SYN split over two IPv4 fragments, the first holding only the ports
//!   and sequence number (8 bytes), the flags in the second;
//! - `frag-overlap`: three fragments: the first 16 bytes of a SYN to port+1 at offset 0,
//!   the first 16 bytes of a SYN to port at offset 0 again (overlapping it whole), then
//!   the last 8 bytes (a reassembler keeping the later bytes would connect to port);
//! - `synack`: a SYN-ACK with no SYN before it (as if the guest answered a SYN: the second
//!   half of a simultaneous open);
//! - `simopen`: a SYN (not answered), then from the same port a SYN-ACK acknowledging a
//!   sequence number the other side never sent;
//! - `icmp-unreach`, `icmp-ttl`: an ICMP destination-unreachable (port unreachable) or
//!   time-exceeded to peer, quoting a TCP header of a flow peer:port -> us that does not
//!   exist;
//! - `dns-udp`: a DNS query for `api.test` straight to peer (a resolver of the guest's own
//!   choosing, not the gateway).

use alloc::format;
use alloc::vec::Vec;

use super::net_common::{bring_up, failure, json, DEFAULT_TIMEOUT_MS};
use super::raw_frame::{
    arp_gateway, classify, icmp, ip_frame, ipv4_header, recv, send, tcp, udp, Link, Seen, ACK, FIN,
    MF, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SYN,
};
use super::{usage_error, Context, Outcome};
use crate::clock::rdtsc;
use crate::cmdline::parse_u64;
use crate::net::virtio_net::VirtioNet;
use crate::net::NetError;

/// The cases, for the usage message.
const CASES: &str =
    "syn, frag-tiny, frag-overlap, synack, simopen, icmp-unreach, icmp-ttl, dns-udp";

/// The link, the peer's address and port, and the TSC ticks per ms, once the stack is up.
pub struct RawSetup {
    /// Our link.
    pub link: Link,
    /// The peer's address.
    pub peer: [u8; 4],
    /// The peer's port.
    pub port: u16,
    /// TSC ticks per millisecond.
    pub tsc_ms: u64,
}

/// Reads `probe.peer` as IPV4:PORT and learns the gateway's MAC.
pub fn setup(ctx: &Context<'_>, run: &mut super::net_common::NetRun) -> Result<RawSetup, NetError> {
    let spec = ctx.cmdline.get("probe.peer").unwrap_or("");
    let bad = || NetError::BadArg {
        key: "probe.peer",
        value: spec.into(),
        expected: "IPV4:PORT",
    };
    let (host, port) = spec.rsplit_once(':').ok_or_else(bad)?;
    let peer: smoltcp::wire::Ipv4Address = host.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
    let ip = match run.addr.cidr.address() {
        smoltcp::wire::IpAddress::Ipv4(a) => a.octets(),
        _ => return Err(NetError::Other("raw frames need an IPv4 address".into())),
    };
    let gw = match run.addr.gateway {
        Some(smoltcp::wire::IpAddress::Ipv4(a)) => a.octets(),
        _ => return Err(NetError::Other("raw frames need an IPv4 gateway".into())),
    };
    let tsc_ms = ctx.clock.tsc_khz.max(1);
    let dev = &mut run.stack.dev;
    let gw_mac = arp_gateway(dev, ip, gw, tsc_ms, rdtsc() + 2000 * tsc_ms)
        .ok_or_else(|| NetError::Other("the gateway did not answer ARP".into()))?;
    Ok(RawSetup {
        link: Link {
            mac: dev.mac(),
            gw_mac,
            ip,
        },
        peer: peer.octets(),
        port,
        tsc_ms,
    })
}

/// What came back, by kind.
#[derive(Default)]
struct Tally {
    synack: u64,
    rst: u64,
    udp: u64,
    icmp: u64,
    other: u64,
}

impl Tally {
    fn outcome(&self) -> &'static str {
        if self.synack > 0 {
            "synack"
        } else if self.udp > 0 {
            "udp"
        } else if self.rst > 0 {
            "rst"
        } else if self.icmp > 0 {
            "icmp"
        } else {
            "none"
        }
    }
}

/// Counts what arrives for `ticks` TSC ticks. A SYN-ACK to `sport` is answered with the
/// handshake's ACK and our FIN at once, and a FIN from the peer is acknowledged, so a
/// connection the netstack made ends cleanly (the host server sees a whole connection).
#[allow(clippy::too_many_arguments)]
fn listen(
    dev: &mut VirtioNet,
    link: &Link,
    peer: [u8; 4],
    port: u16,
    sport: u16,
    isn: u32,
    ticks: u64,
    t: &mut Tally,
    answer: bool,
) {
    let end = rdtsc() + ticks;
    while rdtsc() < end {
        while let Some(f) = recv(dev) {
            let (kind, seq, flags, dport) = classify(&f, peer);
            let ours = dport == sport;
            match kind {
                Seen::SynAck if ours => {
                    t.synack += 1;
                    if answer {
                        let ack = seq.wrapping_add(1);
                        let me = link.ip;
                        let seq = isn.wrapping_add(1);
                        let a = tcp(me, peer, sport, port, seq, ack, ACK, &[]);
                        send(dev, &ip_frame(link, peer, PROTO_TCP, 9, 0, &a));
                        let fin = tcp(me, peer, sport, port, seq, ack, FIN | ACK, &[]);
                        send(dev, &ip_frame(link, peer, PROTO_TCP, 10, 0, &fin));
                        dev.flush();
                    }
                }
                Seen::OtherTcp if ours && flags & FIN != 0 => {
                    let me = link.ip;
                    let (seq, ack) = (isn.wrapping_add(2), seq.wrapping_add(1));
                    let a = tcp(me, peer, sport, port, seq, ack, ACK, &[]);
                    send(dev, &ip_frame(link, peer, PROTO_TCP, 11, 0, &a));
                    dev.flush();
                    t.other += 1;
                }
                Seen::Rst => t.rst += 1,
                Seen::Udp => t.udp += 1,
                Seen::Icmp => t.icmp += 1,
                _ => t.other += 1,
            }
        }
    }
}

/// Runs `raw:CASE`.
pub fn raw(ctx: &Context<'_>, case: Option<&str>) -> Outcome {
    let Some(case) = case.filter(|c| CASES.split(", ").any(|k| k == *c)) else {
        return usage_error(ctx, "raw", format!("raw:CASE with CASE one of {CASES}"));
    };
    let mut run = match bring_up(ctx, DEFAULT_TIMEOUT_MS) {
        Ok(r) => r,
        Err(e) => return failure(ctx, "raw", None, &e),
    };
    let s = match setup(ctx, &mut run) {
        Ok(s) => s,
        Err(e) => return failure(ctx, "raw", Some(&run), &e),
    };
    let wait_ms = ctx
        .cmdline
        .get("probe.wait_ms")
        .and_then(parse_u64)
        .unwrap_or(500);
    let sport = 40000 + (rdtsc() % 20000) as u16;
    let isn = (rdtsc() as u32) | 1;
    let (me, peer, port) = (s.link.ip, s.peer, s.port);
    let dev = &mut run.stack.dev;
    let mut tally = Tally::default();
    let mut first: Vec<Vec<u8>> = Vec::new();
    match case {
        "syn" | "simopen" => first.push(ip_frame(
            &s.link,
            peer,
            PROTO_TCP,
            1,
            0,
            &tcp(me, peer, sport, port, isn, 0, SYN, &[]),
        )),
        "frag-tiny" => {
            let seg = tcp(me, peer, sport, port, isn, 0, SYN, &[]);
            first.push(ip_frame(&s.link, peer, PROTO_TCP, 2, MF, &seg[..8]));
            first.push(ip_frame(&s.link, peer, PROTO_TCP, 2, 1, &seg[8..]));
        }
        "frag-overlap" => {
            let decoy = tcp(me, peer, sport, port.wrapping_add(1), isn, 0, SYN, &[]);
            let real = tcp(me, peer, sport, port, isn, 0, SYN, &[]);
            first.push(ip_frame(&s.link, peer, PROTO_TCP, 3, MF, &decoy[..16]));
            first.push(ip_frame(&s.link, peer, PROTO_TCP, 3, MF, &real[..16]));
            first.push(ip_frame(&s.link, peer, PROTO_TCP, 3, 2, &real[16..]));
        }
        "synack" => first.push(ip_frame(
            &s.link,
            peer,
            PROTO_TCP,
            4,
            0,
            &tcp(me, peer, sport, port, isn, 0x1234_5678, SYN | ACK, &[]),
        )),
        "icmp-unreach" | "icmp-ttl" => {
            // The quoted packet: peer:port -> us:sport, as if peer had sent it to us.
            let quoted_tcp = tcp(peer, me, port, sport, isn, 0, SYN, &[]);
            let mut quoted = ipv4_header(peer, me, PROTO_TCP, 5, 0, quoted_tcp.len()).to_vec();
            quoted.extend_from_slice(&quoted_tcp[..8]);
            let (ty, code) = if case == "icmp-unreach" {
                (3, 3)
            } else {
                (11, 0)
            };
            first.push(ip_frame(
                &s.link,
                peer,
                PROTO_ICMP,
                6,
                0,
                &icmp(ty, code, &quoted),
            ));
        }
        _ => {
            // dns-udp: a query for api.test, A.
            let mut q = alloc::vec![0x52, 0x46, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            q.extend_from_slice(b"\x03api\x04test\x00\x00\x01\x00\x01");
            first.push(ip_frame(
                &s.link,
                peer,
                PROTO_UDP,
                7,
                0,
                &udp(me, peer, sport, port, &q),
            ));
        }
    }
    for f in &first {
        send(dev, f);
    }
    dev.flush();
    if case == "simopen" {
        // Listen without answering, then send the SYN-ACK of a simultaneous open: our SYN
        // again, acknowledging an arbitrary number (the other side sent no SYN).
        listen(
            dev,
            &s.link,
            peer,
            port,
            sport,
            isn,
            100 * s.tsc_ms,
            &mut tally,
            false,
        );
        let seg = tcp(me, peer, sport, port, isn, 0x0bad_cafe, SYN | ACK, &[]);
        send(dev, &ip_frame(&s.link, peer, PROTO_TCP, 8, 0, &seg));
        dev.flush();
    }
    let ticks = wait_ms * s.tsc_ms;
    listen(
        dev, &s.link, peer, port, sport, isn, ticks, &mut tally, true,
    );
    let json = json(ctx, "raw", true, Some(&run))
        .str("case", case)
        .str(
            "peer",
            &format!("{}.{}.{}.{}:{port}", peer[0], peer[1], peer[2], peer[3]),
        )
        .str("outcome", tally.outcome())
        .u64("synack", tally.synack)
        .u64("rst", tally.rst)
        .u64("udp", tally.udp)
        .u64("icmp", tally.icmp)
        .u64("other", tally.other);
    Outcome { json, status: 0 }
}

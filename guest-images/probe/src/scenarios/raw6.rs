//! `raw6:CASE probe.peer=[IPV6]:PORT [probe.src6=IPV6] [probe.wait_ms=N]`: the IPv6 rows of
//! the bypass matrix (docs/security.md), like `raw:CASE` but over hand-built IPv6 frames
//! from `src6` (default fd42:6d73:62::2; the netstack learns the guest's IPv6 address from
//! its traffic). Exit 0 when the case ran; the JSON `outcome` is `synack`, `rst`, `icmp` or
//! `none`, as for `raw`.
//!
//! Cases:
//! - `syn`: a plain SYN (the live check);
//! - `frag`: the same SYN inside two IPv6 Fragment headers: 8 bytes (ports and sequence
//!   number), then the rest;
//! - `frag-overlap`: the first 16 bytes of a SYN to port+1 at offset 0, the first 16 bytes
//!   of a SYN to port at offset 0 again, then the last 8 bytes.

use alloc::format;
use alloc::vec::Vec;

use smoltcp::wire::Ipv6Address;

use super::net_common::{bring_up, failure, json, DEFAULT_TIMEOUT_MS};
use super::raw_frame::{arp_gateway, csum, recv, send, tcp, Link, ACK, FIN, PROTO_TCP, RST, SYN};
use super::{usage_error, Context, Outcome};
use crate::clock::rdtsc;
use crate::cmdline::parse_u64;
use crate::net::virtio_net::VirtioNet;
use crate::net::NetError;

/// The cases, for the usage message.
const CASES: &str = "syn, frag, frag-overlap";
/// EtherType IPv6.
const ETH_IPV6: [u8; 2] = [0x86, 0xdd];
/// IPv6 next header: Fragment.
const NH_FRAGMENT: u8 = 44;

/// A TCP segment checksummed over the IPv6 pseudo-header.
#[allow(clippy::too_many_arguments)]
fn tcp6(
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    let mut s = tcp([0; 4], [0; 4], sport, dport, seq, ack, flags, &[]);
    s[16..18].fill(0);
    let mut sum = 0u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        sum += (u32::from(c[0]) << 8) | u32::from(c[1]);
    }
    sum += s.len() as u32 + u32::from(PROTO_TCP);
    let c = csum(&s, sum);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// An Ethernet frame to the gateway carrying an IPv6 packet with `next` and `payload`.
fn frame6(link: &Link, src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload.len());
    f.extend_from_slice(&link.gw_mac);
    f.extend_from_slice(&link.mac);
    f.extend_from_slice(&ETH_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.push(next);
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(payload);
    f
}

/// A Fragment header (next header TCP) at `offset` (8-byte units) followed by `data`.
fn fragment(offset: u16, more: bool, id: u32, data: &[u8]) -> Vec<u8> {
    let mut p = alloc::vec![PROTO_TCP, 0];
    p.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(data);
    p
}

/// (kind, seq, flags, our port) of a TCP segment from `peer`; kind as in `raw`.
fn classify6(f: &[u8], peer: [u8; 16]) -> Option<(&'static str, u32, u8, u16)> {
    // ICMPv6 destination unreachable (type 1) from anyone: a refusal. (Router and neighbour
    // advertisements are ICMPv6 too, and mean nothing here.)
    let unreachable = f.len() > 54 && f[12..14] == ETH_IPV6 && f[20] == 58 && f[54] == 1;
    if unreachable {
        return Some(("icmp", 0, 0, 0));
    }
    if f.len() < 74 || f[12..14] != ETH_IPV6 || f[22..38] != peer || f[20] != PROTO_TCP {
        return None;
    }
    let t = &f[54..];
    let flags = t[13];
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let ours = u16::from_be_bytes([t[2], t[3]]);
    let kind = if flags & RST != 0 {
        "rst"
    } else if flags & (SYN | ACK) == SYN | ACK {
        "synack"
    } else {
        "tcp"
    };
    Some((kind, seq, flags, ours))
}

fn parse_v6(key: &'static str, v: &str) -> Result<[u8; 16], NetError> {
    v.parse::<Ipv6Address>()
        .map(|a| a.octets())
        .map_err(|_| NetError::BadArg {
            key,
            value: v.into(),
            expected: "an IPv6 address",
        })
}

/// Runs `raw6:CASE`.
pub fn raw6(ctx: &Context<'_>, case: Option<&str>) -> Outcome {
    let Some(case) = case.filter(|c| CASES.split(", ").any(|k| k == *c)) else {
        return usage_error(ctx, "raw6", format!("raw6:CASE with CASE one of {CASES}"));
    };
    let mut run = match bring_up(ctx, DEFAULT_TIMEOUT_MS) {
        Ok(r) => r,
        Err(e) => return failure(ctx, "raw6", None, &e),
    };
    let spec = ctx.cmdline.get("probe.peer").unwrap_or("");
    let parsed = spec
        .strip_prefix('[')
        .and_then(|r| r.split_once("]:"))
        .and_then(|(h, p)| Some((parse_v6("probe.peer", h).ok()?, p.parse::<u16>().ok()?)));
    let Some((peer, port)) = parsed else {
        let e = NetError::BadArg {
            key: "probe.peer",
            value: spec.into(),
            expected: "[IPV6]:PORT",
        };
        return failure(ctx, "raw6", Some(&run), &e);
    };
    let me = match parse_v6(
        "probe.src6",
        ctx.cmdline.get("probe.src6").unwrap_or("fd42:6d73:62::2"),
    ) {
        Ok(a) => a,
        Err(e) => return failure(ctx, "raw6", Some(&run), &e),
    };
    let (ip4, gw4) = match (run.addr.cidr.address(), run.addr.gateway) {
        (smoltcp::wire::IpAddress::Ipv4(a), Some(smoltcp::wire::IpAddress::Ipv4(g))) => {
            (a.octets(), g.octets())
        }
        _ => {
            let e = NetError::Other("raw6 learns the gateway's MAC over IPv4 (DHCP)".into());
            return failure(ctx, "raw6", Some(&run), &e);
        }
    };
    let tsc_ms = ctx.clock.tsc_khz.max(1);
    let wait_ms = ctx
        .cmdline
        .get("probe.wait_ms")
        .and_then(parse_u64)
        .unwrap_or(500);
    let dev: &mut VirtioNet = &mut run.stack.dev;
    let Some(gw_mac) = arp_gateway(dev, ip4, gw4, tsc_ms, rdtsc() + 2000 * tsc_ms) else {
        let e = NetError::Other("the gateway did not answer ARP".into());
        return failure(ctx, "raw6", Some(&run), &e);
    };
    let link = Link {
        mac: dev.mac(),
        gw_mac,
        ip: ip4,
    };
    let sport = 40000 + (rdtsc() % 20000) as u16;
    let isn = (rdtsc() as u32) | 1;
    let syn = tcp6(me, peer, sport, port, isn, 0, SYN);
    let frames: Vec<Vec<u8>> = match case {
        "syn" => alloc::vec![frame6(&link, me, peer, PROTO_TCP, &syn)],
        "frag" => alloc::vec![
            frame6(
                &link,
                me,
                peer,
                NH_FRAGMENT,
                &fragment(0, true, 7, &syn[..8])
            ),
            frame6(
                &link,
                me,
                peer,
                NH_FRAGMENT,
                &fragment(1, false, 7, &syn[8..])
            ),
        ],
        _ => {
            let decoy = tcp6(me, peer, sport, port.wrapping_add(1), isn, 0, SYN);
            alloc::vec![
                frame6(
                    &link,
                    me,
                    peer,
                    NH_FRAGMENT,
                    &fragment(0, true, 8, &decoy[..16])
                ),
                frame6(
                    &link,
                    me,
                    peer,
                    NH_FRAGMENT,
                    &fragment(0, true, 8, &syn[..16])
                ),
                frame6(
                    &link,
                    me,
                    peer,
                    NH_FRAGMENT,
                    &fragment(2, false, 8, &syn[16..])
                ),
            ]
        }
    };
    for f in &frames {
        send(dev, f);
    }
    dev.flush();
    let (mut synack, mut rst, mut icmp, mut other) = (0u64, 0u64, 0u64, 0u64);
    let end = rdtsc() + wait_ms * tsc_ms;
    while rdtsc() < end {
        while let Some(f) = recv(dev) {
            match classify6(&f, peer) {
                Some(("synack", seq, _, ours)) if ours == sport => {
                    synack += 1;
                    // Complete and close at once, so the server sees a whole connection.
                    let (s1, ack) = (isn.wrapping_add(1), seq.wrapping_add(1));
                    let a = tcp6(me, peer, sport, port, s1, ack, ACK);
                    send(dev, &frame6(&link, me, peer, PROTO_TCP, &a));
                    let fin = tcp6(me, peer, sport, port, s1, ack, FIN | ACK);
                    send(dev, &frame6(&link, me, peer, PROTO_TCP, &fin));
                    dev.flush();
                }
                Some(("tcp", seq, flags, ours)) if ours == sport && flags & FIN != 0 => {
                    let a = tcp6(
                        me,
                        peer,
                        sport,
                        port,
                        isn.wrapping_add(2),
                        seq.wrapping_add(1),
                        ACK,
                    );
                    send(dev, &frame6(&link, me, peer, PROTO_TCP, &a));
                    dev.flush();
                    other += 1;
                }
                Some(("rst", ..)) => rst += 1,
                Some(("icmp", ..)) => icmp += 1,
                _ => other += 1,
            }
        }
    }
    let outcome = if synack > 0 {
        "synack"
    } else if rst > 0 {
        "rst"
    } else if icmp > 0 {
        "icmp"
    } else {
        "none"
    };
    let json = json(ctx, "raw6", true, Some(&run))
        .str("case", case)
        .str("peer", spec)
        .str("outcome", outcome)
        .u64("synack", synack)
        .u64("rst", rst)
        .u64("icmp", icmp)
        .u64("other", other);
    Outcome { json, status: 0 }
}

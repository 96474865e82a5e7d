//! Hand-built IPv4 frames for the scenarios that bypass smoltcp (`raw:CASE`, `flood:KIND`):
//! Ethernet + IPv4 (any flags and fragment offset) + TCP, UDP or ICMP, with correct
//! checksums, sent and received straight through the virtio-net device.

use alloc::vec::Vec;

use smoltcp::phy::{Device, RxToken, TxToken};
use smoltcp::time::Instant;

use crate::clock::rdtsc;
use crate::net::virtio_net::VirtioNet;

/// EtherType IPv4.
const ETH_IPV4: [u8; 2] = [0x08, 0x00];
/// EtherType ARP.
const ETH_ARP: [u8; 2] = [0x08, 0x06];
/// IP protocol numbers.
pub const PROTO_ICMP: u8 = 1;
/// TCP.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;
/// TCP flags.
pub const FIN: u8 = 0x01;
/// SYN.
pub const SYN: u8 = 0x02;
/// RST.
pub const RST: u8 = 0x04;
/// ACK.
pub const ACK: u8 = 0x10;
/// IPv4 "more fragments" flag in the flags/offset field.
pub const MF: u16 = 0x2000;

/// The guest's link: its MAC and address, and the gateway's.
#[derive(Clone, Copy)]
pub struct Link {
    /// Our MAC.
    pub mac: [u8; 6],
    /// The gateway's MAC (learned by ARP).
    pub gw_mac: [u8; 6],
    /// Our IPv4 address.
    pub ip: [u8; 4],
}

/// Internet checksum of `data`, starting from the partial sum `init`.
pub fn csum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += (u32::from(c[0]) << 8) | c.get(1).map_or(0, |&b| u32::from(b));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Partial sum of the IPv4 pseudo-header.
fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut s = 0u32;
    for c in src.chunks(2).chain(dst.chunks(2)) {
        s += (u32::from(c[0]) << 8) | u32::from(c[1]);
    }
    s + u32::from(proto) + len as u32
}

/// A TCP segment (header with an MSS option on SYNs, then `payload`), checksummed.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let opts: &[u8] = if flags & SYN != 0 {
        &[2, 4, 0x05, 0xb4]
    } else {
        &[]
    };
    let hl = 20 + opts.len();
    let mut s = Vec::with_capacity(hl + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.push(((hl / 4) as u8) << 4);
    s.push(flags);
    s.extend_from_slice(&0xffffu16.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(opts);
    s.extend_from_slice(payload);
    let c = csum(&s, pseudo(src, dst, PROTO_TCP, s.len()));
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A UDP datagram, checksummed.
pub fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&(len as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let c = csum(&d, pseudo(src, dst, PROTO_UDP, len));
    d[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    d
}

/// An ICMP message of `ty`/`code` with `body` after the 4 unused bytes (errors quote an IP
/// header and 8 bytes of its payload there).
pub fn icmp(ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = alloc::vec![ty, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(body);
    let c = csum(&m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An IPv4 header (no options) for `payload_len` bytes, checksummed. `frag` is the
/// flags/fragment-offset field (offset in 8-byte units).
pub fn ipv4_header(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
    frag: u16,
    payload_len: usize,
) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = csum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An Ethernet frame from us to the gateway carrying an IPv4 packet.
pub fn ip_frame(
    link: &Link,
    dst: [u8; 4],
    proto: u8,
    id: u16,
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + payload.len());
    f.extend_from_slice(&link.gw_mac);
    f.extend_from_slice(&link.mac);
    f.extend_from_slice(&ETH_IPV4);
    f.extend_from_slice(&ipv4_header(link.ip, dst, proto, id, frag, payload.len()));
    f.extend_from_slice(payload);
    f
}

/// Queues one frame on the TX ring; false when the ring is full (reclaims first).
pub fn send(dev: &mut VirtioNet, frame: &[u8]) -> bool {
    let Some(tok) = dev.transmit(Instant::from_micros(0)) else {
        return false;
    };
    tok.consume(frame.len(), |b| b.copy_from_slice(frame));
    true
}

/// Takes the next received frame, if any.
pub fn recv(dev: &mut VirtioNet) -> Option<Vec<u8>> {
    let (rx, _tx) = dev.receive(Instant::from_micros(0))?;
    Some(rx.consume(|b| b.to_vec()))
}

/// Asks for the gateway's MAC by ARP (resending every 100 ms) until `deadline` (TSC).
pub fn arp_gateway(
    dev: &mut VirtioNet,
    ip: [u8; 4],
    gw: [u8; 4],
    tsc_per_ms: u64,
    deadline: u64,
) -> Option<[u8; 6]> {
    let mac = dev.mac();
    let mut req = Vec::with_capacity(42);
    req.extend_from_slice(&[0xff; 6]);
    req.extend_from_slice(&mac);
    req.extend_from_slice(&ETH_ARP);
    req.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    req.extend_from_slice(&mac);
    req.extend_from_slice(&ip);
    req.extend_from_slice(&[0; 6]);
    req.extend_from_slice(&gw);
    let mut next = 0;
    while rdtsc() < deadline {
        if rdtsc() >= next {
            send(dev, &req);
            dev.flush();
            next = rdtsc() + 100 * tsc_per_ms;
        }
        while let Some(f) = recv(dev) {
            // An ARP reply (op 2) from the gateway's address.
            if f.len() >= 42 && f[12..14] == ETH_ARP && f[20..22] == [0, 2] && f[28..32] == gw {
                let mut m = [0u8; 6];
                m.copy_from_slice(&f[22..28]);
                return Some(m);
            }
        }
    }
    None
}

/// What a frame from the gateway tells us about `peer` (an IPv4 address).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Seen {
    /// A TCP SYN-ACK from the peer: a host connection exists.
    SynAck,
    /// A TCP RST from the peer.
    Rst,
    /// Another TCP segment from the peer.
    OtherTcp,
    /// A UDP datagram from the peer.
    Udp,
    /// An ICMP message about the peer (e.g. administratively prohibited).
    Icmp,
    /// Anything else.
    Other,
}

/// Classifies a received frame; for TCP also returns the segment's sequence number, flags
/// and destination port.
pub fn classify(f: &[u8], peer: [u8; 4]) -> (Seen, u32, u8, u16) {
    if f.len() < 34 || f[12..14] != ETH_IPV4 {
        return (Seen::Other, 0, 0, 0);
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let src_is_peer = f[26..30] == peer;
    match f[23] {
        PROTO_TCP if src_is_peer && f.len() >= l4 + 20 => {
            let be32 = |o: usize| u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
            let flags = f[l4 + 13];
            let dport = u16::from_be_bytes([f[l4 + 2], f[l4 + 3]]);
            let kind = if flags & RST != 0 {
                Seen::Rst
            } else if flags & (SYN | ACK) == SYN | ACK {
                Seen::SynAck
            } else {
                Seen::OtherTcp
            };
            (kind, be32(l4 + 4), flags, dport)
        }
        PROTO_UDP if src_is_peer => (Seen::Udp, 0, 0, 0),
        PROTO_ICMP => (Seen::Icmp, 0, 0, 0),
        _ => (Seen::Other, 0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let h = ipv4_header([10, 0, 0, 2], [203, 0, 113, 10], PROTO_TCP, 7, MF, 8);
        assert_eq!(csum(&h, 0), 0);
        let s = tcp([10, 0, 0, 2], [203, 0, 113, 10], 1000, 80, 1, 0, SYN, &[]);
        let p = pseudo([10, 0, 0, 2], [203, 0, 113, 10], PROTO_TCP, s.len());
        assert_eq!(csum(&s, p), 0);
        let m = icmp(3, 3, &h);
        assert_eq!(csum(&m, 0), 0);
    }
}

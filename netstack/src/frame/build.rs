//! Building frames for the guest: Ethernet + IP headers we own, L4 via smoltcp `wire`.
//!
//! Owns header emission into caller buffers and the scatter helpers that place a built
//! header at the start of the guest's RX buffers. Never allocates on the data path:
//! data frames are written straight into guest buffers; only control frames (ARP, DHCP,
//! ICMP, pure ACKs, DNS answers) are built into reusable owned buffers.

use std::io::IoSliceMut;
use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr,
};

/// Link and network endpoints of a frame to the guest.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Endpoints {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src: IpAddr,
    pub dst: IpAddr,
}

/// Largest Ethernet frame whose IP length fields can describe it (IPv4 total length and
/// IPv6 payload length are 16 bits).
pub(crate) fn max_frame(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 14 + 65535,
        IpAddr::V6(_) => 14 + 40 + 65535,
    }
}

/// Ethernet + IP header length for the family of `ip`.
pub(crate) fn eth_ip_len(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 14 + 20,
        IpAddr::V6(_) => 14 + 40,
    }
}

/// Writes Ethernet and IP headers for an L4 payload of `l4_len` bytes; returns their length.
/// `buf` must hold at least [`eth_ip_len`] bytes.
pub(crate) fn emit_eth_ip(
    buf: &mut [u8],
    ep: &Endpoints,
    proto: IpProtocol,
    l4_len: usize,
) -> usize {
    let hlen = eth_ip_len(&ep.src);
    let ethertype = match ep.src {
        IpAddr::V4(_) => EthernetProtocol::Ipv4,
        IpAddr::V6(_) => EthernetProtocol::Ipv6,
    };
    let eth = EthernetRepr {
        src_addr: ep.src_mac,
        dst_addr: ep.dst_mac,
        ethertype,
    };
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..14]));
    match (ep.src, ep.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = Ipv4Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4_len,
                hop_limit: 64,
            };
            ip.emit(
                &mut Ipv4Packet::new_unchecked(&mut buf[14..34]),
                &ChecksumCapabilities::default(),
            );
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Repr {
                src_addr: s,
                dst_addr: d,
                next_header: proto,
                payload_len: l4_len,
                hop_limit: 255,
            };
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[14..54]));
        }
        // Mixed families never happen: both come from one flow key of one family.
        _ => {}
    }
    hlen
}

/// Builds a whole control frame into `out` (cleared first): headers, then `fill` writes
/// the L4 message of exactly `l4_len` bytes.
pub(crate) fn control_frame(
    out: &mut Vec<u8>,
    ep: &Endpoints,
    proto: IpProtocol,
    l4_len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let hlen = eth_ip_len(&ep.src);
    out.clear();
    out.resize(hlen + l4_len, 0);
    emit_eth_ip(out, ep, proto, l4_len);
    fill(&mut out[hlen..]);
}

/// Total capacity of the guest RX buffers.
pub(crate) fn capacity(bufs: &[IoSliceMut<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Copies `data` into `bufs` starting at byte `off`; returns false if it does not fit.
pub(crate) fn scatter(bufs: &mut [IoSliceMut<'_>], off: usize, data: &[u8]) -> bool {
    let mut pos = 0usize;
    let mut src = data;
    let mut at = off;
    for b in bufs.iter_mut() {
        let (a, e) = (pos, pos + b.len());
        pos = e;
        if src.is_empty() {
            break;
        }
        if e <= at {
            continue;
        }
        let from = at - a;
        let n = (e - at).min(src.len());
        b[from..from + n].copy_from_slice(&src[..n]);
        src = &src[n..];
        at += n;
    }
    src.is_empty()
}

/// Splits `bufs` after `off` bytes and returns up to `max` bytes of the remainder as
/// iovecs in `out` (still pointing into guest RX memory). Returns the number used.
pub(crate) fn tail_iovecs<'b>(
    bufs: &'b mut [IoSliceMut<'_>],
    off: usize,
    max: usize,
    out: &mut [IoSliceMut<'b>],
) -> usize {
    let mut n = 0;
    let mut pos = 0usize;
    let mut left = max;
    for b in bufs.iter_mut() {
        let len = b.len();
        let (a, e) = (pos, pos + len);
        pos = e;
        if left == 0 || n == out.len() {
            break;
        }
        if e <= off {
            continue;
        }
        let from = off.max(a) - a;
        let take = (len - from).min(left);
        let bytes: &'b mut [u8] = &mut b[from..from + take];
        out[n] = IoSliceMut::new(bytes);
        n += 1;
        left -= take;
    }
    n
}

/// Adds `len` bytes of `bufs` at `off` to a checksum (payload already in guest buffers).
pub(crate) fn checksum_range(
    ck: &mut crate::checksum::Checksum,
    bufs: &[IoSliceMut<'_>],
    off: usize,
    len: usize,
) {
    let end = off + len;
    let mut pos = 0usize;
    for b in bufs {
        let (a, e) = (pos, pos + b.len());
        pos = e;
        if e <= off || a >= end {
            continue;
        }
        ck.add(&b[off.max(a) - a..end.min(e) - a]);
    }
}

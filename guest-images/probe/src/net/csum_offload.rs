//! Checksum offload for the virtio-net driver (VIRTIO_NET_F_CSUM and
//! VIRTIO_NET_F_GUEST_CSUM).
//!
//! TX: when the device computes TCP/UDP checksums, smoltcp leaves them zero
//! and [`prepare_partial`] stores the pseudo-header sum in the checksum field
//! and says where the device must finish it (`csum_start`, `csum_offset`),
//! exactly what a Linux guest hands a virtio device.
//!
//! RX: with GUEST_CSUM smoltcp stops verifying TCP/UDP checksums, so a frame
//! the device did not vouch for (neither DATA_VALID nor NEEDS_CSUM) is checked
//! here by [`l4_checksum_ok`] before smoltcp sees it.

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket,
};

/// Ethernet header length.
const ETH: usize = 14;
/// Offset of the checksum in a TCP header.
const TCP_CSUM: u16 = 16;
/// Offset of the checksum in a UDP header.
const UDP_CSUM: u16 = 6;

/// Where the device must finish a partial checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    /// Offset of the L4 header in the frame.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

/// The L3 facts a checksum needs: addresses, protocol, L4 offset and length.
struct L4 {
    src: IpAddress,
    dst: IpAddress,
    proto: IpProtocol,
    start: usize,
    len: usize,
}

fn l4_of(frame: &[u8]) -> Option<L4> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let hl = usize::from(ip.header_len());
            Some(L4 {
                src: IpAddress::Ipv4(ip.src_addr()),
                dst: IpAddress::Ipv4(ip.dst_addr()),
                proto: ip.next_header(),
                start: ETH + hl,
                len: usize::from(ip.total_len()).checked_sub(hl)?,
            })
        }
        EthernetProtocol::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            Some(L4 {
                src: IpAddress::Ipv6(ip.src_addr()),
                dst: IpAddress::Ipv6(ip.dst_addr()),
                proto: ip.next_header(),
                start: ETH + 40,
                len: usize::from(ip.payload_len()),
            })
        }
        _ => None,
    }
}

/// One's-complement sum of the pseudo-header, folded, not complemented.
fn pseudo_sum(l4: &L4) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let hi = u32::from(c[0]) << 8;
            sum += hi | c.get(1).map_or(0, |&lo| u32::from(lo));
        }
    };
    match (l4.src, l4.dst) {
        (IpAddress::Ipv4(s), IpAddress::Ipv4(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        (IpAddress::Ipv6(s), IpAddress::Ipv6(d)) => {
            add(&s.octets());
            add(&d.octets());
        }
        _ => {}
    }
    let len = l4.len as u32;
    sum += (len >> 16) + (len & 0xffff) + u32::from(u8::from(l4.proto));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Prepares a TCP or UDP frame smoltcp built without its checksum for the
/// device to finish; `None` for anything else (its checksums are complete).
pub fn prepare_partial(frame: &mut [u8]) -> Option<Partial> {
    let l4 = l4_of(frame)?;
    let off = match l4.proto {
        IpProtocol::Tcp => TCP_CSUM,
        IpProtocol::Udp => UDP_CSUM,
        _ => return None,
    };
    let at = l4.start + usize::from(off);
    if l4.start + l4.len > frame.len() || at + 2 > frame.len() {
        return None;
    }
    frame[at..at + 2].copy_from_slice(&pseudo_sum(&l4).to_be_bytes());
    Some(Partial {
        csum_start: l4.start as u16,
        csum_offset: off,
    })
}

/// Whether a received frame's TCP/UDP checksum is right (frames that are not
/// TCP/UDP, or too short to tell, are left to smoltcp's own checks).
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let Some(l4) = l4_of(frame) else {
        return true;
    };
    let Some(payload) = frame.get(l4.start..l4.start + l4.len) else {
        return false;
    };
    match l4.proto {
        IpProtocol::Tcp => TcpPacket::new_checked(payload)
            .map(|p| p.verify_checksum(&l4.src, &l4.dst))
            .unwrap_or(false),
        IpProtocol::Udp => UdpPacket::new_checked(payload)
            // A zero UDP checksum means "none" over IPv4 only.
            .map(|p| {
                (p.checksum() == 0 && matches!(l4.src, IpAddress::Ipv4(_)))
                    || p.verify_checksum(&l4.src, &l4.dst)
            })
            .unwrap_or(false),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber,
    };

    const SRC: Ipv4Address = Ipv4Address::new(172, 16, 0, 2);
    const DST: Ipv4Address = Ipv4Address::new(172, 16, 0, 1);

    /// An Ethernet/IPv4/TCP frame with every checksum filled in by smoltcp.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 5201,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(7),
            ack_number: Some(TcpSeqNumber(9)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: SRC,
            dst_addr: DST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut f = vec![0u8; ETH + ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut e = EthernetFrame::new_unchecked(&mut f[..]);
        eth.emit(&mut e);
        let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &SRC.into(), &DST.into(), &caps);
        f
    }

    /// What a device does with NEEDS_CSUM: sum from `csum_start` to the end
    /// and store the complement at `csum_start + csum_offset`.
    fn finish(frame: &mut [u8], p: Partial) {
        let start = usize::from(p.csum_start);
        let mut sum: u32 = 0;
        for c in frame[start..].chunks(2) {
            sum += (u32::from(c[0]) << 8) | c.get(1).map_or(0, |&b| u32::from(b));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let at = start + usize::from(p.csum_offset);
        frame[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }

    #[test]
    fn a_partial_checksum_finished_by_the_device_equals_the_full_one() {
        for len in [0usize, 1, 2, 1459, 40_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let full = tcp_frame(&payload);
            let mut partial = full.clone();
            partial[ETH + 20 + 16..ETH + 20 + 18].fill(0);
            let p = prepare_partial(&mut partial).expect("TCP gets a partial checksum");
            assert_eq!(
                p,
                Partial {
                    csum_start: 34,
                    csum_offset: 16
                }
            );
            finish(&mut partial, p);
            assert_eq!(partial, full, "payload of {len} bytes");
        }
    }

    #[test]
    fn the_driver_check_catches_a_flipped_payload_bit() {
        let mut f = tcp_frame(b"ringfence checksum");
        assert!(l4_checksum_ok(&f));
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(!l4_checksum_ok(&f));
        // Not IP at all: left to smoltcp.
        assert!(l4_checksum_ok(&[0u8; 10]));
    }
}

//! Hand-built guest frames for flood tests: SYNs, UDP datagrams and ICMP echo requests from
//! the guest's IPv4 address, built without a guest stack so a test can send 100 000 of them
//! (smoltcp would keep state for each).

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr,
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    UdpPacket, UdpRepr,
};

use crate::NetConfig;

/// Builds frames as the guest of a netstack configured with `cfg` would send them.
pub struct FrameForge {
    eth: EthernetRepr,
    guest: Ipv4Addr,
    buf: Vec<u8>,
}

impl FrameForge {
    /// A forge for the guest of `cfg`, whose IPv4 address is `guest`.
    pub fn new(cfg: &NetConfig, guest: Ipv4Addr) -> Self {
        FrameForge {
            eth: EthernetRepr {
                src_addr: EthernetAddress(cfg.guest_mac),
                dst_addr: EthernetAddress(cfg.gateway_mac),
                ethertype: EthernetProtocol::Ipv4,
            },
            guest,
            buf: Vec::with_capacity(2048),
        }
    }

    fn ip(&mut self, dst: Ipv4Addr, proto: IpProtocol, l4_len: usize) -> usize {
        let ip = Ipv4Repr {
            src_addr: self.guest,
            dst_addr: dst,
            next_header: proto,
            payload_len: l4_len,
            hop_limit: 64,
        };
        self.buf.clear();
        self.buf.resize(14 + 20 + l4_len, 0);
        self.eth
            .emit(&mut EthernetFrame::new_unchecked(&mut self.buf[..14]));
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut self.buf[14..34]),
            &ChecksumCapabilities::default(),
        );
        34
    }

    /// A SYN from guest port `src_port` to `dst:dst_port` (MSS 1460, no other options).
    pub fn syn(&mut self, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> &[u8] {
        let tcp = TcpRepr {
            src_port,
            dst_port,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(i32::from(src_port) << 8),
            ack_number: None,
            window_len: 65535,
            window_scale: None,
            max_seg_size: Some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let off = self.ip(dst, IpProtocol::Tcp, tcp.buffer_len());
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut self.buf[off..]),
            &IpAddress::Ipv4(self.guest),
            &IpAddress::Ipv4(dst),
            &ChecksumCapabilities::default(),
        );
        &self.buf
    }

    /// A UDP datagram from guest port `src_port` to `dst:dst_port`.
    pub fn udp(&mut self, src_port: u16, dst: Ipv4Addr, dst_port: u16, payload: &[u8]) -> &[u8] {
        let udp = UdpRepr { src_port, dst_port };
        let off = self.ip(dst, IpProtocol::Udp, 8 + payload.len());
        udp.emit(
            &mut UdpPacket::new_unchecked(&mut self.buf[off..]),
            &IpAddress::Ipv4(self.guest),
            &IpAddress::Ipv4(dst),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        &self.buf
    }

    /// An ICMP echo request to `dst` with identifier `ident` and sequence number `seq_no`.
    pub fn echo(&mut self, dst: Ipv4Addr, ident: u16, seq_no: u16, data: &[u8]) -> &[u8] {
        let icmp = Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        };
        let off = self.ip(dst, IpProtocol::Icmp, icmp.buffer_len());
        icmp.emit(
            &mut Icmpv4Packet::new_unchecked(&mut self.buf[off..]),
            &ChecksumCapabilities::default(),
        );
        &self.buf
    }
}

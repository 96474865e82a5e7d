//! A minimal synthetic guest for benchmarks: hand-built TCP segments for one connection,
//! no guest stack. Measures the netstack's own per-segment cost (header parse/build and
//! the host socket calls) without smoltcp's.

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::{InterestSet, NetConfig, Netstack, TxMeta};

/// One TCP connection from a synthetic guest to the gateway (host loopback).
pub struct SyntheticTcp {
    /// The netstack under test.
    pub ns: Netstack,
    guest: (Ipv4Addr, u16),
    remote: (Ipv4Addr, u16),
    /// Next sequence number the guest sends.
    seq: u32,
    /// Next sequence number the guest expects (what it ACKs).
    ack: u32,
    frame: Vec<u8>,
    rx: Vec<u8>,
    fds: InterestSet,
}

impl SyntheticTcp {
    /// Opens a connection to 127.0.0.1:`port` through the gateway and completes the
    /// handshake. Panics if it does not complete within a few seconds (test helper).
    pub fn connect(port: u16) -> Self {
        let cfg = NetConfig {
            dns_upstreams: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
            ..NetConfig::default()
        };
        let ns = match Netstack::new(cfg) {
            Ok(ns) => ns,
            Err(e) => panic!("synthetic: netstack creation failed: {e}"),
        };
        let (guest, gw) = ns.ipv4_addresses();
        let mut s = SyntheticTcp {
            ns,
            guest: (guest, 45000),
            remote: (gw, port),
            seq: 1000,
            ack: 0,
            frame: Vec::with_capacity(65550),
            rx: vec![0u8; 65550],
            fds: InterestSet::new(),
        };
        s.handshake();
        s
    }

    /// SYN from the current guest port, then the ACK of the netstack's SYN-ACK. Panics if the
    /// handshake does not complete within a few seconds (test helper).
    fn handshake(&mut self) {
        self.emit(TcpControl::Syn, None, &[]);
        self.seq += 1;
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            self.poll(10);
            if let Some((ctl, seq, _)) = self.read_frame() {
                if ctl == TcpControl::Syn {
                    self.ack = seq.wrapping_add(1);
                    self.emit(TcpControl::None, Some(self.ack), &[]);
                    return;
                }
            }
        }
        panic!("synthetic: handshake did not complete");
    }

    /// Opens `n` more connections to the same host port from other guest ports and leaves
    /// them established and idle (the host must accept them), so per-loop costs can be
    /// measured with many flows in the table. The first connection stays the one
    /// [`send_segment`](Self::send_segment) and [`recv_segment`](Self::recv_segment) use.
    pub fn open_idle(&mut self, n: u16) {
        let main = (self.guest.1, self.seq, self.ack);
        for i in 0..n {
            self.guest.1 = main.0.wrapping_add(1 + i);
            self.seq = 1000;
            self.handshake();
        }
        (self.guest.1, self.seq, self.ack) = main;
    }

    /// The netstack with every connection opened so far, for driving it through another
    /// front end (a device backend): the host fds this front end was polling are announced
    /// again, so the new one learns of them from `take_interest_changes`.
    pub fn into_netstack(mut self) -> Netstack {
        let fds = self.fds.to_changes();
        self.ns.requeue_interest_changes(fds);
        self.ns
    }

    fn emit(&mut self, control: TcpControl, ack: Option<u32>, payload: &[u8]) {
        let tcp = TcpRepr {
            src_port: self.guest.1,
            dst_port: self.remote.1,
            control,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 65535,
            window_scale: (control == TcpControl::Syn).then_some(7),
            max_seg_size: (control == TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: self.guest.0,
            dst_addr: self.remote.0,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let cfg = NetConfig::default();
        let eth = EthernetRepr {
            src_addr: EthernetAddress(cfg.guest_mac),
            dst_addr: EthernetAddress(cfg.gateway_mac),
            ethertype: EthernetProtocol::Ipv4,
        };
        let len = 14 + 20 + tcp.buffer_len();
        self.frame.clear();
        self.frame.resize(len, 0);
        eth.emit(&mut EthernetFrame::new_unchecked(&mut self.frame[..14]));
        ip.emit(
            &mut Ipv4Packet::new_unchecked(&mut self.frame[14..34]),
            &ChecksumCapabilities::default(),
        );
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut self.frame[34..]),
            &IpAddress::Ipv4(self.guest.0),
            &IpAddress::Ipv4(self.remote.0),
            &ChecksumCapabilities::ignored(),
        );
        self.ns.handle_guest_frame(
            &[IoSlice::new(&self.frame)],
            TxMeta::default(),
            Instant::now(),
        );
    }

    /// Next frame from the netstack: (control, seq, payload length).
    fn read_frame(&mut self) -> Option<(TcpControl, u32, usize)> {
        let mut bufs = [IoSliceMut::new(&mut self.rx)];
        let (n, _) = self.ns.next_guest_frame(&mut bufs, Instant::now())?;
        let eth = EthernetFrame::new_checked(&self.rx[..n]).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let ctl = if tcp.syn() {
            TcpControl::Syn
        } else if tcp.fin() {
            TcpControl::Fin
        } else if tcp.rst() {
            TcpControl::Rst
        } else {
            TcpControl::None
        };
        Some((ctl, tcp.seq_number().0 as u32, tcp.payload().len()))
    }

    /// Polls the netstack's host fds for up to `ms` and reports readiness.
    fn poll(&mut self, ms: i32) {
        self.fds.apply(self.ns.take_interest_changes());
        let (toks, mut pfds) = self.fds.pollfds();
        if pfds.is_empty() || crate::poll(&mut pfds, ms).unwrap_or(0) == 0 {
            return;
        }
        for (t, p) in toks.iter().zip(&pfds) {
            if p.revents != 0 {
                let err = p.revents & (libc::POLLERR | libc::POLLHUP) != 0;
                self.ns.on_fd_ready(
                    *t,
                    p.revents & libc::POLLIN != 0 || err,
                    p.revents & libc::POLLOUT != 0,
                    Instant::now(),
                );
            }
        }
    }

    /// Sends one data segment from the guest and collects the netstack's ACK; returns
    /// how many bytes the host socket accepted (the guest "retransmits" the rest by
    /// sending it again next time).
    pub fn send_segment(&mut self, payload: &[u8]) -> usize {
        let before = self.ns.metrics().bytes_guest_to_host;
        self.emit(TcpControl::Psh, Some(self.ack), payload);
        let accepted = (self.ns.metrics().bytes_guest_to_host - before) as usize;
        self.seq = self.seq.wrapping_add(accepted as u32);
        // Drain the coalesced ACK (and a window update if the host drained).
        while self.read_frame().is_some() {}
        if accepted < payload.len() {
            self.poll(10);
        }
        accepted
    }

    /// Receives one data segment from the host into the guest and ACKs it; returns its
    /// payload length (0 if nothing arrived within a few polls).
    pub fn recv_segment(&mut self) -> usize {
        for _ in 0..100 {
            if let Some((_, seq, len)) = self.read_frame() {
                if len > 0 {
                    self.ack = seq.wrapping_add(len as u32);
                    self.emit(TcpControl::None, Some(self.ack), &[]);
                    return len;
                }
                continue;
            }
            self.poll(10);
        }
        0
    }
}

//! Hostile guest frames through a whole netstack, the way the device's `user` backend drives
//! one: Ethernet, ARP, IPv4 (options), IPv6 (extension headers), TCP (options, the state
//! machine), UDP, ICMP/ICMPv6 echo, NDP, DHCPv4 and DNS interception, plus the frames the
//! netstack sends back and its timers.
//!
//! Input: one flags byte, then frames as records (`u16` little-endian length + bytes); a
//! flags bit splits each frame into two scatter segments. No real network: the flow gate
//! denies every flow, so nothing leaves the process except to loopback sockets this target
//! owns: the embedder services on the gateway (TCP 80, UDP 7) are Unix socket pairs, and the
//! "upstream resolver" (for names under `fuzz.test`, the only ones the gate lets through) is a
//! UDP socket and TCP listener of ours on 127.0.0.1 that answer from the target itself.
#![no_main]

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use netstack::{FlowGate, FlowInfo, InterestOp, NetConfig, Netstack, TxMeta, Verdict};
use ringfence_fuzz::Input;

/// Denies every flow; DNS only for names under `fuzz.test` (forwarded to our own upstream).
struct DenyAll;

impl FlowGate for DenyAll {
    fn decide(&self, _flow: &FlowInfo<'_>) -> Verdict {
        Verdict::DENY
    }
    fn decide_dns(&self, name: &str) -> Verdict {
        if name == "fuzz.test" || name.ends_with(".fuzz.test") {
            Verdict::ALLOW
        } else {
            Verdict::DENY
        }
    }
    fn check_dns_answer(&self, _name: &str, addr: std::net::IpAddr) -> Verdict {
        if addr.is_loopback() {
            Verdict::DENY
        } else {
            Verdict::ALLOW
        }
    }
}

/// The fake upstream resolver: a UDP socket and a TCP listener on the same loopback port,
/// both ours, so DNS forwarding never reaches anyone else's service.
struct Upstream {
    udp: UdpSocket,
    tcp: TcpListener,
    addr: SocketAddr,
}

fn upstream() -> &'static Upstream {
    static UP: OnceLock<Upstream> = OnceLock::new();
    UP.get_or_init(|| {
        for _ in 0..100 {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind loopback UDP");
            let addr = udp.local_addr().expect("local addr");
            if let Ok(tcp) = TcpListener::bind(addr) {
                udp.set_nonblocking(true).expect("nonblocking");
                tcp.set_nonblocking(true).expect("nonblocking");
                return Upstream { udp, tcp, addr };
            }
        }
        panic!("no loopback port free for both UDP and TCP");
    })
}

/// Answers every query waiting on the upstream socket with two records (A and AAAA, the
/// second name compressed), as a resolver would; DNS-over-TCP connections are closed.
fn answer_queries(up: &Upstream) {
    while let Ok((conn, _)) = up.tcp.accept() {
        drop(conn);
    }
    let mut buf = [0u8; 4096];
    while let Ok((n, from)) = up.udp.recv_from(&mut buf) {
        if n < 12 {
            continue;
        }
        let mut msg = buf[..n].to_vec();
        msg[2] |= 0x80;
        msg[6..8].copy_from_slice(&2u16.to_be_bytes());
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        msg.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        msg.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        let _ = up.udp.send_to(&msg, from);
    }
}

/// One netstack with its embedder services, fresh for every input.
struct Sandbox {
    ns: Netstack,
    tcp_accepted: Receiver<UnixStream>,
    udp_accepted: Receiver<OwnedFd>,
    held: Vec<UnixStream>,
    held_udp: Vec<OwnedFd>,
    tokens: HashMap<u64, (bool, bool)>,
}

impl Sandbox {
    fn new(mtu_jumbo: bool) -> Option<Self> {
        let cfg = NetConfig {
            dns_upstreams: vec![upstream().addr],
            mtu: if mtu_jumbo { 65520 } else { 1500 },
            ..NetConfig::default()
        };
        let mut ns = Netstack::with_gate(cfg, Box::new(DenyAll)).ok()?;
        let (tx, tcp_accepted) = sync_channel(8);
        ns.add_guest_service(80, tx);
        let (tx, udp_accepted) = sync_channel(8);
        ns.add_guest_udp_service(7, tx);
        Some(Sandbox {
            ns,
            tcp_accepted,
            udp_accepted,
            held: Vec::new(),
            held_udp: Vec::new(),
            tokens: HashMap::new(),
        })
    }

    /// Plays the host side: the embedder services write to the guest, the upstream answers,
    /// every watched fd is reported ready, and the guest's RX queue is drained.
    fn host_turn(&mut self, now: Instant, small_rx: bool) {
        while let Ok(mut s) = self.tcp_accepted.try_recv() {
            let _ = s.set_nonblocking(true);
            let _ = s.write(b"HTTP/1.0 200 OK\r\n\r\nhello guest");
            self.held.push(s);
        }
        while let Ok(fd) = self.udp_accepted.try_recv() {
            let s = std::os::unix::net::UnixDatagram::from(fd);
            let _ = s.send(b"echo");
            self.held_udp.push(s.into());
        }
        answer_queries(upstream());
        for ch in self.ns.take_interest_changes() {
            match ch.op {
                InterestOp::Remove => {
                    self.tokens.remove(&ch.token);
                }
                _ => {
                    self.tokens.insert(ch.token, (ch.readable, ch.writable));
                }
            }
        }
        let mut tokens: Vec<(u64, (bool, bool))> =
            self.tokens.iter().map(|(&t, &rw)| (t, rw)).collect();
        tokens.sort_unstable();
        for (t, (r, w)) in tokens {
            self.ns.on_fd_ready(t, r, w, now);
        }
        let mut buf = vec![0u8; 65_600];
        for _ in 0..64 {
            let cap = if small_rx { 96 } else { buf.len() };
            let (a, b) = buf[..cap].split_at_mut(cap / 3);
            let mut bufs = [IoSliceMut::new(a), IoSliceMut::new(b)];
            let _ = self.ns.next_guest_frame_len();
            if self.ns.next_guest_frame(&mut bufs, now).is_none() {
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let Some(mut sb) = Sandbox::new(flags & 0x01 != 0) else {
        return;
    };
    if flags & 0x02 != 0 {
        sb.ns.set_guest_rx_offloads(65_550, false);
    }
    let start = Instant::now();
    let mut now = start;
    let mut frames: u64 = 0;
    while let Some(frame) = input.record() {
        frames += 1;
        if frames > 64 {
            break;
        }
        let meta = TxMeta {
            csum_partial: flags & 0x04 != 0,
            gso_size: (flags & 0x08 != 0).then_some(1448),
        };
        if flags & 0x10 != 0 && frame.len() > 1 {
            let cut = usize::from(frame[0]) % frame.len();
            let (a, b) = frame.split_at(cut);
            sb.ns
                .handle_guest_frame(&[IoSlice::new(a), IoSlice::new(b)], meta, now);
        } else {
            sb.ns.handle_guest_frame(&[IoSlice::new(frame)], meta, now);
        }
        sb.host_turn(now, flags & 0x20 != 0);
        if flags & 0x40 != 0 {
            // Let timers run: retransmissions, connect and idle timeouts.
            now += Duration::from_secs(1 + frames * 37);
            if let Some(d) = sb.ns.next_deadline() {
                now = now.max(d);
            }
            sb.ns.on_timer(now);
        }
    }
    sb.host_turn(now, false);
    sb.ns.on_timer(now + Duration::from_secs(8000));
    let _ = sb.ns.flow_count();
    let _ = sb.ns.metrics();
});

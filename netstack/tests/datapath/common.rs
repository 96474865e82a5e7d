//! Helpers shared by the datapath tests.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use netstack::testkit::{Fault, Harness};
use netstack::NetConfig;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetFrame, IpAddress, IpEndpoint, Ipv4Packet, TcpPacket};

/// Default test config with a fake upstream resolver (tests that need DNS set their own).
pub fn cfg() -> NetConfig {
    NetConfig {
        dns_upstreams: vec!["127.0.0.1:9".parse().unwrap()],
        ..NetConfig::default()
    }
}

/// ringfence's default link MTU for `--net user`.
pub const JUMBO_MTU: u16 = 65520;

/// [`cfg`] with the 65520-byte link MTU and RX frames to match (a guest that takes them).
pub fn jumbo_cfg() -> NetConfig {
    NetConfig {
        mtu: JUMBO_MTU,
        max_rx_frame: usize::from(JUMBO_MTU) + 14,
        ..cfg()
    }
}

/// A guest-frame fault that applies `fault` to every `nth` frame carrying TCP payload.
pub fn every_nth_payload(nth: u32, fault: Fault) -> impl FnMut(&[u8]) -> Fault + 'static {
    let mut n = 0u32;
    move |f| {
        if tcp_payload_len(f) > 0 {
            n += 1;
            if n.is_multiple_of(nth) {
                return fault;
            }
        }
        Fault::Pass
    }
}

/// A host server on 127.0.0.1 that accepts one connection and runs `serve` on it in its own
/// thread. Returns its port and the thread.
pub fn serve_one<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (u16, JoinHandle<T>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || serve(l.accept().unwrap().0));
    (port, server)
}

/// A host server on 127.0.0.1 that writes `total` bytes of [`pattern`]`(total, seed)` to the
/// first connection and closes it. Returns its port, the bytes it sends, and its thread.
pub fn serve_download(total: usize, seed: u32) -> (u16, Vec<u8>, JoinHandle<()>) {
    let data = pattern(total, seed);
    let sent = data.clone();
    let (port, server) = serve_one(move |mut c| {
        c.write_all(&data).unwrap();
        // Dropping `c` sends the FIN.
    });
    (port, sent, server)
}

/// Adds a smoltcp TCP socket with generous buffers.
pub fn tcp_socket(h: &mut Harness, buf: usize) -> SocketHandle {
    let rx = tcp::SocketBuffer::new(vec![0; buf]);
    let tx = tcp::SocketBuffer::new(vec![0; buf]);
    h.sockets.add(tcp::Socket::new(rx, tx))
}

/// Connects a guest TCP socket to the gateway's `port` (reaches host 127.0.0.1:port).
pub fn connect_gateway(h: &mut Harness, s: SocketHandle, port: u16, local_port: u16) {
    let gw = h.gateway();
    let cx = h.iface.context();
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .connect(cx, IpEndpoint::new(IpAddress::Ipv4(gw), port), local_port)
        .unwrap();
}

/// One step of an upload from the guest socket `s`: queues more of `data` (from `*sent`),
/// closes once all of it is queued. True once the upload is over (our FIN sent, or the
/// socket closed).
pub fn upload_step(h: &mut Harness, s: SocketHandle, data: &[u8], sent: &mut usize) -> bool {
    let sock = h.sockets.get_mut::<tcp::Socket>(s);
    if *sent < data.len() && sock.can_send() {
        *sent += sock.send_slice(&data[*sent..]).unwrap();
    }
    if *sent == data.len() && sock.state() == tcp::State::Established {
        sock.close();
    }
    matches!(
        sock.state(),
        tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed
    )
}

/// Appends everything the guest socket `s` has received so far to `out`.
pub fn drain_guest_socket(h: &mut Harness, s: SocketHandle, out: &mut Vec<u8>) {
    let sock = h.sockets.get_mut::<tcp::Socket>(s);
    while sock.can_recv() {
        if sock.recv(|b| (b.len(), out.extend_from_slice(b))).is_err() {
            break;
        }
    }
}

/// Steps until the guest socket is established (true) or closed/time out (false).
pub fn wait_established(h: &mut Harness, s: SocketHandle) -> bool {
    h.run_until(100_000, Duration::from_secs(10), |h| {
        let st = h.sockets.get::<tcp::Socket>(s).state();
        st == tcp::State::Established || st == tcp::State::Closed
    });
    h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Established
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Payload length of a TCP/IPv4 frame (0 for anything else).
pub fn tcp_payload_len(f: &[u8]) -> usize {
    tcp_fields(f).map_or(0, |t| t.1)
}

/// Window field and payload length of a TCP/IPv4 frame.
pub fn tcp_fields(f: &[u8]) -> Option<(u16, usize)> {
    let eth = EthernetFrame::new_checked(f).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != smoltcp::wire::IpProtocol::Tcp {
        return None;
    }
    let t = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((t.window_len(), t.payload().len()))
}

//! What a flood costs a transfer that runs beside it (issue 19 item 4; docs/security.md
//! "Floods and limits"): the smoltcp-guest harness downloads `CHUNK` bytes from a host
//! peer per round, alone, beside a guest SYN flood and beside a guest UDP flood (each
//! flood injects `FLOOD_PER_STEP` frames of new flows before every netstack step, on the
//! same thread, the way the device thread serves both). The three run interleaved for
//! `ROUNDS` rounds in one process, each on its own netstack; the report is the median
//! throughput of each and the ratio flood / alone.
//!
//! `cargo bench -p benches --bench floods` (a plain binary, not criterion: the figure is a
//! ratio of two runs made side by side).

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use netstack::testkit::{FrameForge, Harness};
use netstack::NetConfig;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

/// Bytes per round.
const CHUNK: usize = 32 << 20;
/// Rounds of each mode.
const ROUNDS: usize = 5;
/// Flood frames injected before every netstack step.
const FLOOD_PER_STEP: usize = 64;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Alone,
    SynFlood,
    UdpFlood,
}

/// One netstack with its transfer and, for a flood mode, its flood targets.
struct Lane {
    mode: Mode,
    h: Harness,
    sock: SocketHandle,
    forge: FrameForge,
    gw: Ipv4Addr,
    sinks: Vec<u16>,
    next: u32,
    flood_frames: u64,
    mbps: Vec<f64>,
}

impl Lane {
    fn new(mode: Mode, source_port: u16, local_port: u16, sinks: Vec<u16>) -> Self {
        let mut h = Harness::new(NetConfig {
            dns_upstreams: vec!["127.0.0.1:9".parse().expect("addr")],
            ..NetConfig::default()
        });
        let sock = h.connect_gateway_tcp(source_port, local_port, 256 * 1024);
        let forge = h.forge();
        let gw = h.ns.ipv4_addresses().1;
        Lane {
            mode,
            h,
            sock,
            forge,
            gw,
            sinks,
            next: 0,
            flood_frames: 0,
            mbps: Vec::new(),
        }
    }

    /// Injects one step's worth of flood frames (new flows each).
    fn flood(&mut self) {
        if self.mode == Mode::Alone {
            return;
        }
        for _ in 0..FLOOD_PER_STEP {
            let i = self.next;
            self.next = self.next.wrapping_add(1);
            let src = 1024 + (i % 60_000) as u16;
            let dst = self.sinks[(i / 60_000) as usize % self.sinks.len()];
            match self.mode {
                Mode::Alone => {}
                Mode::SynFlood => self.h.inject(self.forge.syn(src, self.gw, dst)),
                Mode::UdpFlood => self.h.inject(self.forge.udp(src, self.gw, dst, b"flood")),
            }
            self.flood_frames += 1;
        }
    }

    /// Receives `CHUNK` bytes (flooding meanwhile) and records the throughput.
    fn round(&mut self, buf: &mut [u8]) {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(120);
        let mut got = 0usize;
        while got < CHUNK && Instant::now() < deadline {
            self.flood();
            self.h.step(0);
            let sock = self.h.sockets.get_mut::<tcp::Socket>(self.sock);
            while got < CHUNK && sock.can_recv() {
                let want = (CHUNK - got).min(buf.len());
                got += sock.recv_slice(&mut buf[..want]).unwrap_or(0);
            }
        }
        assert_eq!(got, CHUNK, "{:?}: the transfer stalled", self.mode);
        let secs = start.elapsed().as_secs_f64();
        self.mbps.push(got as f64 / secs / 1e6);
    }

    fn median(&self) -> f64 {
        let mut v = self.mbps.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }
}

/// A host peer that streams to every connection it accepts until the reader goes away.
fn source() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().take(3) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let buf = vec![0xa5u8; 1 << 16];
                while s.write_all(&buf).is_ok() {}
            });
        }
    });
    port
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` and test discovery: nothing to list.
        return;
    }
    let port = source();
    // SYN sinks: listeners that never accept (the kernel completes handshakes until their
    // backlog is full); UDP sink: one bound socket that is never read.
    let syn_sinks: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let udp_sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let syn_ports = syn_sinks
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let udp_port = udp_sink.local_addr().expect("addr").port();
    let mut lanes = [
        Lane::new(Mode::Alone, port, 49100, Vec::new()),
        Lane::new(Mode::SynFlood, port, 49101, syn_ports),
        Lane::new(Mode::UdpFlood, port, 49102, vec![udp_port, udp_port ^ 1]),
    ];
    let mut buf = vec![0u8; 65536];
    // One warm-up round each, not recorded.
    for lane in lanes.iter_mut() {
        lane.round(&mut buf);
        lane.mbps.clear();
        lane.flood_frames = 0;
    }
    for _ in 0..ROUNDS {
        for lane in lanes.iter_mut() {
            lane.round(&mut buf);
        }
    }
    let alone = lanes[0].median();
    println!(
        "floods: {} MiB per round, {ROUNDS} rounds interleaved, {FLOOD_PER_STEP} flood frames per netstack step",
        CHUNK >> 20
    );
    for lane in &lanes {
        let m = lane.h.ns.metrics();
        let secs: f64 = lane.mbps.iter().map(|r| CHUNK as f64 / r / 1e6).sum();
        println!(
            "  {:<9} median {:>7.1} MB/s (rounds {:?}), ratio to alone {:.2}; flood frames {} \
             ({:.0}/s); since start (with the warm-up): flows over limit {}, half-open \
             refused {}",
            format!("{:?}", lane.mode),
            lane.median(),
            lane.mbps
                .iter()
                .map(|r| (r * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            lane.median() / alone,
            lane.flood_frames,
            lane.flood_frames as f64 / secs,
            m.flows_over_limit,
            m.tcp_half_open_refused,
        );
    }
    drop(syn_sinks);
    drop(udp_sink);
}

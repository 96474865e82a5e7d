//! Floods from the guest: 100 000 SYNs, 100 000 UDP flows, an ICMP echo storm.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netstack::testkit::Harness;
use netstack::{PortProto, PublishedPort};
use smoltcp::socket::tcp;

use crate::common::{connect_gateway, tcp_socket, wait_established};
use crate::{
    deaf_except, drain, flood_cfg, gated_lines, open_fds, rss_kib, serial, CountWarnings, Download,
};

const FLOOD: u32 = 100_000;
/// Guest port of the real connection opened during a flood.
const REAL_PORT: u16 = 40001;
/// Frames injected between two harness steps.
const BURST: u32 = 500;

/// The highest counts a flood reached.
#[derive(Default)]
struct Peaks {
    flows: usize,
    tcp: usize,
    half_open: usize,
    other: usize,
}

/// Runs `inject(h, i)` for i in 0..FLOOD in bursts between harness steps while `dl` runs,
/// then lets the download finish. Returns the highest flow and TCP flow counts seen.
fn flood_beside(
    h: &mut Harness,
    dl: &mut Download,
    inject: impl FnMut(&mut Harness, u32),
) -> (usize, usize) {
    let p = flood_peaks(h, dl, inject);
    (p.flows, p.tcp)
}

/// [`flood_beside`], returning every peak.
fn flood_peaks(
    h: &mut Harness,
    dl: &mut Download,
    mut inject: impl FnMut(&mut Harness, u32),
) -> Peaks {
    let mut peaks = Peaks::default();
    let mut i = 0;
    let mut done = false;
    let until = std::time::Instant::now() + Duration::from_secs(120);
    for _ in 0..4_000_000 {
        if std::time::Instant::now() > until {
            break;
        }
        for _ in 0..BURST.min(FLOOD - i) {
            inject(h, i);
            i += 1;
        }
        peaks.flows = peaks.flows.max(h.ns.flow_count());
        peaks.tcp = peaks.tcp.max(h.ns.tcp_flow_count());
        peaks.half_open = peaks.half_open.max(h.ns.tcp_half_open_count());
        peaks.other = peaks.other.max(h.ns.other_flow_count());
        h.step(if i < FLOOD { 0 } else { 1 });
        done = done || dl.poll(h);
        if done && i == FLOOD {
            break;
        }
    }
    assert_eq!(i, FLOOD, "flood not sent");
    assert!(
        done,
        "transfer did not complete: {} bytes, {}; {:?}",
        dl.received(),
        dl.state(h),
        h.ns.metrics()
    );
    peaks
}

/// In the middle of a flood: the guest opens a connection to a listener on the gateway
/// from `local_port`; true if it got established (the flood left it room).
fn connect_during_flood(h: &mut Harness, port: u16, local_port: u16) -> bool {
    let s = tcp_socket(h, 4096);
    connect_gateway(h, s, port, local_port);
    let ok = wait_established(h, s);
    h.sockets.get_mut::<tcp::Socket>(s).abort();
    ok
}

/// In the middle of a flood: a host peer connects to the guest's published port (the
/// guest listens on `REAL_PORT`); true if the guest's side got established.
fn published_during_flood(h: &mut Harness, published: SocketAddr) -> bool {
    let s = tcp_socket(h, 4096);
    h.sockets
        .get_mut::<tcp::Socket>(s)
        .listen(REAL_PORT)
        .unwrap();
    let Ok(peer) = TcpStream::connect_timeout(&published, Duration::from_secs(2)) else {
        return false;
    };
    let ok = h.run_until(200_000, Duration::from_secs(10), |h| {
        h.sockets.get::<tcp::Socket>(s).state() == tcp::State::Established
    });
    h.sockets.get_mut::<tcp::Socket>(s).abort();
    drop(peer);
    ok
}

/// A guest SYN flood can hold at most `max_half_open_tcp` connections half open, so it
/// never takes every TCP slot: while it runs (its SYN-ACKs unanswered, its half-open flows
/// at the cap) a host peer still reaches the guest's published port and the transfer
/// beside it completes; the refusals at the half-open cap are counted. (The flooding
/// guest's own new connections are refused while its flood keeps the cap full: it only
/// hurts itself.)
#[test]
fn a_syn_flood_is_capped_at_the_half_open_limit_and_leaves_room_for_real_connections() {
    let _serial = serial();
    let fds0 = open_fds();
    let sinks: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = sinks
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let mut cfg = flood_cfg();
    cfg.published = vec![PublishedPort {
        bind: "127.0.0.1:0".parse().unwrap(),
        guest_port: REAL_PORT,
        proto: PortProto::Tcp,
    }];
    let limits = cfg.limits.clone();
    let mut h = Harness::new(cfg);
    let published = h.ns.published_addrs()[0].1;
    let mut dl = Download::start(&mut h, 8 << 20);
    h.fault_to_guest = Some(deaf_except(&[REAL_PORT]));
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    let mut during = None;
    let peaks = flood_peaks(&mut h, &mut dl, |h, i| {
        let src = 1024 + (i % 30_000) as u16;
        let dst = ports[(i / 30_000) as usize];
        h.inject(forge.syn(src, gw, dst));
        if i == FLOOD / 2 {
            let half_open = h.ns.tcp_half_open_count();
            during = Some((half_open, published_during_flood(h, published)));
        }
    });
    let m = h.ns.metrics().clone();
    eprintln!(
        "syn flood, half-open cap: max tcp {}, max half-open {}, refused at the half-open cap \
         {}, over limit {}, during {during:?}",
        peaks.tcp, peaks.half_open, m.tcp_half_open_refused, m.flows_over_limit
    );
    assert!(
        peaks.half_open <= limits.max_half_open_tcp,
        "{}",
        peaks.half_open
    );
    assert!(
        peaks.tcp < limits.max_tcp_connections,
        "{} TCP flows",
        peaks.tcp
    );
    let (half_open, connected) = during.expect("checked during the flood");
    assert_eq!(
        half_open, limits.max_half_open_tcp,
        "the flood was at the cap"
    );
    assert!(
        connected,
        "a published-port connection got through during the SYN flood"
    );
    assert!(m.tcp_half_open_refused > u64::from(FLOOD) / 2);
    dl.finish(&mut h);
    assert!(drain(&mut h), "{} flows left", h.ns.flow_count());
    assert_eq!(
        h.ns.tcp_half_open_count(),
        0,
        "half-open count back to zero"
    );
    drop(h);
    drop(sinks);
    assert_eq!(open_fds(), fds0, "host sockets left open");
}

/// A UDP flood fills at most the table's share outside the TCP reserve: while it is at
/// that cap, the guest still completes a new TCP connection.
#[test]
fn a_udp_flood_cannot_take_the_slots_reserved_for_tcp() {
    let _serial = serial();
    let fds0 = open_fds();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let mut cfg = flood_cfg();
    // Long enough that the flood's flows are all alive when the connection is tried.
    cfg.limits.udp_idle_timeout = Duration::from_secs(5);
    let limits = cfg.limits.clone();
    let udp_cap = limits.max_flows - limits.tcp_reserved_flows.min(limits.max_flows / 2);
    let mut h = Harness::new(cfg);
    let mut dl = Download::start(&mut h, 8 << 20);
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    let mut during = None;
    let peaks = flood_peaks(&mut h, &mut dl, |h, i| {
        let src = 1024 + (i % 50_000) as u16;
        let dst = if i < 50_000 { sink_port } else { sink_port ^ 1 };
        h.inject(forge.udp(src, gw, dst, b"flood"));
        if i == 20_000 {
            let other = h.ns.other_flow_count();
            during = Some((other, connect_during_flood(h, open_port, REAL_PORT)));
        }
    });
    let m = h.ns.metrics().clone();
    eprintln!(
        "udp flood, tcp reserve: max flows {}, max non-tcp {} (cap {udp_cap}), over limit {}, \
         during {during:?}",
        peaks.flows, peaks.other, m.flows_over_limit
    );
    assert!(peaks.other <= udp_cap, "{} non-TCP flows", peaks.other);
    let (other, connected) = during.expect("checked during the flood");
    assert_eq!(other, udp_cap, "the flood was at its cap");
    assert!(
        connected,
        "a TCP connection got through during the UDP flood"
    );
    dl.finish(&mut h);
    assert!(drain(&mut h), "{} flows left", h.ns.flow_count());
    drop(h);
    drop((sink, open));
    assert_eq!(open_fds(), fds0, "host sockets left open");
}

#[test]
fn a_guest_syn_flood_is_bounded_refused_counted_and_drains() {
    let _serial = serial();
    let fds0 = open_fds();
    let rss0 = rss_kib();
    let warnings = Arc::new(AtomicU64::new(0));
    let _log = tracing::subscriber::set_default(CountWarnings(warnings.clone()));
    // Listeners that never accept: 100 000 distinct 4-tuples over 30 000 source ports
    // need four destinations.
    let sinks: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = sinks
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let cfg = flood_cfg();
    let limits = cfg.limits.clone();
    let mut h = Harness::new(cfg);
    let mut dl = Download::start(&mut h, 8 << 20);
    h.fault_to_guest = Some(deaf_except(&[]));
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    let (max_flows, max_tcp) = flood_beside(&mut h, &mut dl, |h, i| {
        // Source ports 1024..31024 (never the transfer's), one sink per 30 000.
        let src = 1024 + (i % 30_000) as u16;
        let dst = ports[(i / 30_000) as usize];
        h.inject(forge.syn(src, gw, dst));
    });
    let m = h.ns.metrics().clone();
    eprintln!(
        "syn flood: max flows {max_flows}, max tcp {max_tcp}, opened {}, over limit {}, \
         connect failures {}, rst {}, ctrl overflow {}, warnings {}",
        m.flows_opened,
        m.flows_over_limit,
        m.connect_failures,
        m.rst_to_guest,
        m.drop_ctrl_overflow,
        warnings.load(Ordering::Relaxed)
    );
    assert!(max_tcp <= limits.max_tcp_connections, "{max_tcp} TCP flows");
    assert!(max_flows <= limits.max_flows);
    // Every SYN opened a flow or was refused at the limit (the transfer is one more flow).
    assert_eq!(m.flows_opened - 1 + m.flows_over_limit, u64::from(FLOOD));
    assert!(
        m.flows_over_limit > u64::from(FLOOD) / 2,
        "most SYNs refused"
    );
    let lines = warnings.load(Ordering::Relaxed);
    assert!(lines >= 1, "refusals are logged");
    assert!(
        lines <= 2 * gated_lines(u64::from(FLOOD)),
        "{lines} warnings"
    );
    dl.finish(&mut h);
    assert!(drain(&mut h), "{} flows left", h.ns.flow_count());
    let m = h.ns.metrics();
    assert_eq!(m.flows_opened, m.flows_closed, "every opened flow closed");
    drop(h);
    drop(sinks);
    assert_eq!(open_fds(), fds0, "host sockets left open");
    eprintln!("syn flood: rss {rss0} KiB before, {} KiB after", rss_kib());
}

#[test]
fn a_guest_udp_flood_is_bounded_refused_counted_and_drains() {
    let _serial = serial();
    let fds0 = open_fds();
    let warnings = Arc::new(AtomicU64::new(0));
    let _log = tracing::subscriber::set_default(CountWarnings(warnings.clone()));
    // One bound port receives the whole flood; the guest writes to 100 000 flows by source
    // port x destination port (only the first destination has a receiver).
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let cfg = flood_cfg();
    let limits = cfg.limits.clone();
    let mut h = Harness::new(cfg);
    let mut dl = Download::start(&mut h, 8 << 20);
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    let (max_flows, _) = flood_beside(&mut h, &mut dl, |h, i| {
        let src = 1024 + (i % 50_000) as u16;
        let dst = if i < 50_000 { sink_port } else { sink_port ^ 1 };
        h.inject(forge.udp(src, gw, dst, b"flood"));
    });
    let m = h.ns.metrics().clone();
    eprintln!(
        "udp flood: max flows {max_flows}, opened {}, over limit {}, ctrl overflow {}, \
         queued ctrl {}, warnings {}",
        m.flows_opened,
        m.flows_over_limit,
        m.drop_ctrl_overflow,
        h.ns.queued_control_frames(),
        warnings.load(Ordering::Relaxed)
    );
    assert!(max_flows <= limits.max_flows, "{max_flows} flows");
    assert_eq!(m.flows_opened - 1 + m.flows_over_limit, u64::from(FLOOD));
    assert!(m.flows_over_limit > 0);
    let lines = warnings.load(Ordering::Relaxed);
    assert!(
        lines >= 1 && lines <= 2 * gated_lines(u64::from(FLOOD)),
        "{lines}"
    );
    dl.finish(&mut h);
    assert!(drain(&mut h), "{} flows left", h.ns.flow_count());
    drop(h);
    drop(sink);
    assert_eq!(open_fds(), fds0, "host sockets left open");
}

#[test]
fn an_icmp_storm_is_answered_within_bounds_and_drains() {
    let _serial = serial();
    let fds0 = open_fds();
    let cfg = flood_cfg();
    let mut h = Harness::new(cfg);
    let mut dl = Download::start(&mut h, 8 << 20);
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    // Echo to the gateway (answered locally) and to host loopback with 100 000 distinct
    // identifiers (relayed; at most 256 echo flows).
    let mut max_echo = 0;
    let (_, _) = flood_beside(&mut h, &mut dl, |h, i| {
        let (dst, ident) = if i % 2 == 0 {
            (gw, 1)
        } else {
            (Ipv4Addr::LOCALHOST, (i / 2) as u16)
        };
        h.inject(forge.echo(dst, ident, i as u16, b"storm"));
        max_echo = max_echo.max(h.ns.echo_flow_count());
    });
    let m = h.ns.metrics().clone();
    eprintln!(
        "icmp storm: max echo flows {max_echo}, opened {}, over limit {}, no socket {}, \
         ctrl overflow {}",
        m.flows_opened, m.flows_over_limit, m.drop_icmp_no_socket, m.drop_ctrl_overflow
    );
    assert!(max_echo <= 256, "{max_echo} echo flows");
    assert_eq!(m.icmp_frames, u64::from(FLOOD));
    dl.finish(&mut h);
    assert!(drain(&mut h), "{} echo flows left", h.ns.echo_flow_count());
    drop(h);
    assert_eq!(open_fds(), fds0, "host sockets left open");
}

#[test]
fn a_guest_that_never_reads_its_answers_costs_at_most_the_control_queue() {
    let _serial = serial();
    let mut h = Harness::new(flood_cfg());
    let gw = h.ns.ipv4_addresses().1;
    let mut forge = h.forge();
    // No harness steps: nothing is taken from the netstack while the guest asks.
    for i in 0..FLOOD {
        h.inject(forge.echo(gw, 7, i as u16, b"never read"));
    }
    let m = h.ns.metrics();
    assert_eq!(h.ns.queued_control_frames(), 4096);
    assert_eq!(m.drop_ctrl_overflow, u64::from(FLOOD) - 4096);
    // Reading again drains the queue; new echoes are answered.
    assert!(h.run_until(100_000, Duration::from_secs(10), |h| {
        h.ns.queued_control_frames() == 0
    }));
}

//! Floods from the guest: 100 000 SYNs, 100 000 UDP flows, an ICMP echo storm.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netstack::testkit::Harness;

use crate::{
    deaf_except, drain, flood_cfg, gated_lines, open_fds, rss_kib, serial, CountWarnings, Download,
};

const FLOOD: u32 = 100_000;
/// Frames injected between two harness steps.
const BURST: u32 = 500;

/// Runs `inject(h, i)` for i in 0..FLOOD in bursts between harness steps while `dl` runs,
/// then lets the download finish. Returns the highest flow and TCP flow counts seen.
fn flood_beside(
    h: &mut Harness,
    dl: &mut Download,
    mut inject: impl FnMut(&mut Harness, u32),
) -> (usize, usize) {
    let (mut max_flows, mut max_tcp) = (0, 0);
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
        max_flows = max_flows.max(h.ns.flow_count());
        max_tcp = max_tcp.max(h.ns.tcp_flow_count());
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
    (max_flows, max_tcp)
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

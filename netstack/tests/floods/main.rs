//! Floods and limits (issue 19 item 4), in process: hand-built frames or host peers flood
//! the netstack while an established transfer runs beside them. Every test asserts the
//! bounds (flows, queued frames), the refusal counters, a rate-limited log, that the
//! transfer completes byte-exact, and that the table drains and every host fd is closed
//! afterwards. Loops are bounded; no assertion depends on timing.
//!
//! A test binary of its own (not part of `datapath`) because it counts the process's open
//! fds: the tests here take [`serial`] so no other test opens fds meanwhile.

#[allow(dead_code)]
#[path = "../datapath/common.rs"]
mod common;
mod guest;
mod host;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use netstack::testkit::{Fault, FaultHook, Harness};
use netstack::NetConfig;
use sha2::{Digest, Sha256};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetFrame, Ipv4Packet, TcpPacket};

use crate::common::{connect_gateway, serve_download, tcp_socket, wait_established};

/// Guest port of the transfer that runs beside each flood.
pub const TRANSFER_PORT: u16 = 40000;

/// Serialises the tests of this binary (they count the process's fds).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Resident set of this process in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Counts WARN (and worse) events on the test's thread.
pub struct CountWarnings(pub Arc<AtomicU64>);

impl tracing::Subscriber for CountWarnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Warning lines a gated flood of `n` refusals may cost per gate (8 + log2 n).
pub fn gated_lines(n: u64) -> u64 {
    8 + u64::from(64 - n.leading_zeros())
}

/// Test config with short timeouts, so half-open and idle flows are reaped within a
/// couple of seconds after the flood.
pub fn flood_cfg() -> NetConfig {
    let mut cfg = common::cfg();
    cfg.limits.connect_timeout = Duration::from_secs(1);
    cfg.limits.max_retransmits = 2;
    cfg.limits.udp_idle_timeout = Duration::from_millis(500);
    cfg
}

/// Destination port of a guest-bound TCP frame (None for anything else).
pub fn tcp_dst_port(f: &[u8]) -> Option<u16> {
    let eth = EthernetFrame::new_checked(f).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != smoltcp::wire::IpProtocol::Tcp {
        return None;
    }
    Some(TcpPacket::new_checked(ip.payload()).ok()?.dst_port())
}

/// A guest that never answers its flood: drops every TCP frame to the guest except those
/// for the transfer (and `keep`), so half-open flows stay half-open until reaped.
pub fn deaf_except(keep: &'static [u16]) -> FaultHook {
    Box::new(move |f| match tcp_dst_port(f) {
        Some(p) if p != TRANSFER_PORT && !keep.contains(&p) => Fault::Drop,
        _ => Fault::Pass,
    })
}

/// A host->guest download through the gateway, established before the flood.
pub struct Download {
    sock: SocketHandle,
    expect: Vec<u8>,
    total: usize,
    hasher: Sha256,
    got: usize,
    server: Option<JoinHandle<()>>,
    buf: Vec<u8>,
}

impl Download {
    /// Starts a download of `total` bytes and waits for its handshake.
    pub fn start(h: &mut Harness, total: usize) -> Self {
        let (port, data, server) = serve_download(total, 19);
        let sock = tcp_socket(h, 256 * 1024);
        connect_gateway(h, sock, port, TRANSFER_PORT);
        assert!(wait_established(h, sock), "transfer handshake");
        Download {
            sock,
            expect: Sha256::digest(&data).to_vec(),
            total,
            hasher: Sha256::new(),
            got: 0,
            server: Some(server),
            buf: vec![0; 65536],
        }
    }

    /// Reads what arrived; true once every byte and the host's FIN are in.
    pub fn poll(&mut self, h: &mut Harness) -> bool {
        let sock = h.sockets.get_mut::<tcp::Socket>(self.sock);
        while sock.can_recv() {
            match sock.recv_slice(&mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.hasher.update(&self.buf[..n]);
                    self.got += n;
                }
            }
        }
        self.got == self.total && sock.state() == tcp::State::CloseWait
    }

    /// State of the guest socket.
    pub fn state(&self, h: &Harness) -> tcp::State {
        h.sockets.get::<tcp::Socket>(self.sock).state()
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.got
    }

    /// Asserts the bytes were exact, closes the guest side and joins the server.
    pub fn finish(mut self, h: &mut Harness) {
        let digest = std::mem::take(&mut self.hasher).finalize().to_vec();
        assert_eq!(self.got, self.total, "transfer length");
        assert_eq!(digest, self.expect, "transfer bytes");
        h.sockets.get_mut::<tcp::Socket>(self.sock).close();
        if let Some(s) = self.server.take() {
            s.join().unwrap();
        }
    }
}

/// Steps until the netstack has no flows left (bounded); true if it drained.
pub fn drain(h: &mut Harness) -> bool {
    h.run_until(2_000_000, Duration::from_secs(30), |h| {
        h.ns.flow_count() == 0 && h.ns.echo_flow_count() == 0
    })
}

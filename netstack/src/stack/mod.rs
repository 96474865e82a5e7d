//! [`Netstack`]: the per-VM translator the device loop drives.
//!
//! Owns the flow table, the listeners and the dispatch of guest frames to protocol
//! handlers; owns the contract with `devices` (the public methods below). Frames from the
//! guest are parsed from a header copy ([`crate::frame`]); payload goes to host sockets
//! from guest memory. Frames to the guest come first from the control queue (ARP, DHCP,
//! ICMP, DNS answers, RSTs), then round-robin from flows that have data or ACKs pending.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use smoltcp::wire::IpProtocol;

use crate::config::{Addressing, NetConfig, PublishedPort};
use crate::core::{Core, FdInterest, InterestOp, RxMeta, TxMeta};
use crate::error::NetError;
use crate::flow_key::{FlowKey, KeyProto, ICMP_TAG, LISTENER_TAG};
use crate::flow_table::{Flow, FlowTable};
use crate::frame::build::{capacity, scatter};
use crate::frame::parse::{parse_l3, Drop, IpInfo, L3};
use crate::frame::GuestFrame;
use crate::gate::{AllowAll, Direction, FlowGate, FlowInfo, FlowProto};
use crate::metrics::NetMetrics;
use crate::ping::PingRelay;
use crate::publish::{self, Listener};
use crate::tcp::{self, After, AnswerStep, Produced, Segment, TcpConn, TcpState};
use crate::udp::UdpFlow;
use crate::{arp, dhcp, dns, icmp, ipaddr, sys};

mod embedder;
mod flows;
mod guest_in;

pub use embedder::{EmbedderError, ServiceQueue, ServiceRefusal};

use flows::{push_udp_ctrl, remember_names, sync_udp};

/// Largest TCP segment without payload: Ethernet, IPv6 and a TCP header with full options.
const TCP_CONTROL_FRAME_MAX: usize = 14 + 40 + 60;
/// Largest UDP payload copied out of the guest for DHCP/DNS parsing.
const MAX_CONTROL_MSG: usize = 4096;
/// Most IP -> domain attributions remembered from DNS answers.
const MAX_DNS_NAMES: usize = 4096;

/// The userspace netstack of one VM. See the crate documentation for the data path.
pub struct Netstack {
    core: Core,
    flows: FlowTable,
    gate: Box<dyn FlowGate>,
    listeners: Vec<Listener>,
    /// Address -> name it was resolved from, learned from DNS answers we relayed.
    dns_names: HashMap<IpAddr, String>,
    upstreams: Vec<SocketAddr>,
    isn_key: std::collections::hash_map::RandomState,
    epoch: Instant,
    scratch: Vec<u8>,
    ping: PingRelay,
    /// Embedder services on the gateway addresses, by port ([`Netstack::add_guest_service`]).
    services: HashMap<u16, Box<dyn embedder::ServiceQueue>>,
    /// Embedder UDP services on the gateway addresses, by port.
    udp_services: HashMap<u16, std::sync::mpsc::SyncSender<OwnedFd>>,
    /// Rotates the source ports of embedder connections into the guest.
    embedder_port: u16,
}

impl Netstack {
    /// Creates the netstack with an allow-all flow gate.
    pub fn new(cfg: NetConfig) -> Result<Self, NetError> {
        Self::with_gate(cfg, Box::new(AllowAll))
    }

    /// Creates the netstack asking `gate` about every new flow.
    pub fn with_gate(cfg: NetConfig, gate: Box<dyn FlowGate>) -> Result<Self, NetError> {
        let addrs = Addressing::derive(&cfg)?;
        let listeners = publish::bind_all(&cfg.published)?;
        let upstreams = if cfg.dns_upstreams.is_empty() {
            std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| crate::config::parse_resolv_conf(&t))
                .unwrap_or_default()
        } else {
            cfg.dns_upstreams.clone()
        };
        if upstreams.is_empty() {
            tracing::warn!("no DNS upstream configured or found in /etc/resolv.conf: guest DNS queries will get SERVFAIL");
        }
        let mut core = Core::new(cfg.clone(), addrs);
        for (i, l) in listeners.iter().enumerate() {
            core.interest(
                InterestOp::Add,
                l.fd.as_raw_fd(),
                LISTENER_TAG | i as u64,
                true,
                false,
            );
        }
        Ok(Netstack {
            core,
            flows: FlowTable::new(
                cfg.limits.max_flows,
                cfg.limits.tcp_reserved_flows.min(cfg.limits.max_flows / 2),
            ),
            gate,
            listeners,
            dns_names: HashMap::new(),
            upstreams,
            isn_key: Default::default(),
            epoch: Instant::now(),
            scratch: Vec::new(),
            ping: PingRelay::new(),
            services: HashMap::new(),
            udp_services: HashMap::new(),
            embedder_port: 0,
        })
    }

    /// Published ports with the host address each one actually listens on.
    pub fn published_addrs(&self) -> Vec<(PublishedPort, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.port.clone(), l.local))
            .collect()
    }

    /// The guest's IPv4 address and the gateway's, as handed out by DHCP.
    pub fn ipv4_addresses(&self) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
        (self.core.addrs.guest4, self.core.addrs.gateway4)
    }

    /// The /64 announced to the guest, and the gateway's global IPv6 address.
    pub fn ipv6_addresses(&self) -> (std::net::Ipv6Addr, std::net::Ipv6Addr) {
        (self.core.addrs.prefix6, self.core.addrs.gateway6)
    }

    /// The link MTU announced to the guest (DHCP option 26, RA) and used for our MSS.
    pub fn mtu(&self) -> u16 {
        self.core.cfg.mtu
    }

    /// Matches frames to the guest to what its driver negotiated: the largest Ethernet frame
    /// its RX buffers take (`mtu + 14`, or up to 65549 for TSO super-frames), and whether
    /// L4 checksums must be filled in (`false` once it accepts DATA_VALID). Values below one
    /// standard frame are raised to 1514.
    pub fn set_guest_rx_offloads(&mut self, max_rx_frame: usize, rx_checksum: bool) {
        self.core.cfg.max_rx_frame = max_rx_frame.max(1514);
        self.core.cfg.rx_checksum = rx_checksum;
    }

    /// Number of live flows (TCP + UDP).
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Number of live TCP flows (both directions; at most `max_tcp_connections`).
    pub fn tcp_flow_count(&self) -> usize {
        self.flows.tcp_len()
    }

    /// Number of guest-initiated TCP connections not yet established (at most
    /// `max_half_open_tcp`).
    pub fn tcp_half_open_count(&self) -> usize {
        self.core.tcp_half_open
    }

    /// Number of live flows other than TCP (at most `max_flows` minus the TCP reserve).
    pub fn other_flow_count(&self) -> usize {
        self.flows.other_len()
    }

    /// Number of live ICMP echo flows (kept outside the flow table, at most 256).
    pub fn echo_flow_count(&self) -> usize {
        self.ping.flow_count()
    }

    /// Control frames (ARP/ICMP/DHCP/DNS answers, RSTs) waiting for guest RX buffers (at
    /// most 4096; beyond that they are dropped and counted in `drop_ctrl_overflow`).
    pub fn queued_control_frames(&self) -> usize {
        self.core.ctrl.len()
    }

    /// The configuration this netstack runs with (after start-up adjustments).
    pub fn config(&self) -> &NetConfig {
        &self.core.cfg
    }

    /// Test hook: behave as on kernels whose TCP sockets lack `SO_PEEK_OFF` (before
    /// Linux 6.10), so the fallback path can be exercised here.
    #[cfg(feature = "testkit")]
    pub fn emulate_no_peek_off(&mut self) {
        self.core.no_peek_off = true;
    }

    /// Counters.
    pub fn metrics(&self) -> &NetMetrics {
        &self.core.metrics
    }

    /// One Ethernet frame the guest transmitted (virtio header removed). Segments may
    /// point into guest memory: headers are copied out before parsing, payload is sent to
    /// host sockets straight from these slices.
    pub fn handle_guest_frame(&mut self, frame: &[IoSlice<'_>], meta: TxMeta, now: Instant) {
        let _ = meta;
        let f = GuestFrame::new(frame);
        self.core.metrics.guest_frames += 1;
        let (mac, l3) = match parse_l3(&f) {
            Ok(v) => v,
            Err(d) => return self.count_drop(d),
        };
        if mac.is_unicast() {
            self.core.guest_mac = mac;
        }
        match l3 {
            L3::Arp(repr) => arp::handle(&mut self.core, repr),
            L3::Ip(ip) => self.handle_ip(&f, &ip, now),
        }
    }

    /// Writes the next frame for the guest into `bufs` (Ethernet frame, no virtio
    /// header). Returns its length, or `None` if nothing is pending.
    pub fn next_guest_frame(
        &mut self,
        bufs: &mut [IoSliceMut<'_>],
        now: Instant,
    ) -> Option<(usize, RxMeta)> {
        let cap = capacity(bufs).min(self.core.cfg.max_rx_frame);
        while let Some(buf) = self.core.ctrl.pop() {
            if buf.len() > cap {
                if capacity(bufs) < 128 {
                    // Tiny buffers: keep the frame for a later call.
                    self.core.ctrl.push_front(buf);
                    return None;
                }
                self.core.metrics.drop_too_big += 1;
                self.core.ctrl.recycle(buf);
                continue;
            }
            scatter(bufs, 0, &buf);
            let n = buf.len();
            self.core.ctrl.recycle(buf);
            self.core.metrics.frames_to_guest += 1;
            return Some((
                n,
                RxMeta {
                    csum_valid: true,
                    gso: None,
                },
            ));
        }
        // Each queued flow gets at most one turn per call, so this loop is bounded.
        let turns = self.core.ready.len();
        for _ in 0..turns {
            let token = self.core.ready.pop_front()?;
            if token & LISTENER_TAG != 0 {
                let idx = (token & !LISTENER_TAG) as usize;
                if let Some(v) = self.published_udp_frame(idx, bufs, now) {
                    self.core.metrics.frames_to_guest += 1;
                    return Some(v);
                }
                continue;
            }
            let out = match self.flows.get_mut(token) {
                None => continue,
                Some(Flow::Tcp(conn)) => {
                    conn.queued = false;
                    if conn.dns.is_some() {
                        let mut scratch = std::mem::take(&mut self.scratch);
                        let step = tcp::judge_next_answer(conn, &*self.gate, &mut scratch);
                        self.scratch = scratch;
                        let refused = match step {
                            AnswerStep::Go => false,
                            AnswerStep::Allowed(name, addrs) => {
                                remember_names(&mut self.dns_names, &name, addrs);
                                false
                            }
                            AnswerStep::Refused => {
                                self.core.metrics.drop_dns_rebind += 1;
                                true
                            }
                            AnswerStep::Unreadable => {
                                self.core.metrics.drop_dns_malformed += 1;
                                true
                            }
                        };
                        if refused {
                            // The guest sees no byte of the answer: the stream ends here.
                            self.finish_tcp(token, After::Reset);
                            continue;
                        }
                    }
                    match tcp::next_frame(&mut self.core, conn, bufs, now) {
                        Produced::Frame(n, meta) => {
                            tcp::sync(&mut self.core, token, conn);
                            Some((n, meta))
                        }
                        Produced::Idle => {
                            tcp::sync(&mut self.core, token, conn);
                            None
                        }
                        Produced::Reset => {
                            self.finish_tcp(token, After::Reset);
                            None
                        }
                    }
                }
                Some(Flow::Udp(flow)) => {
                    flow.queued = false;
                    let r = flow.next_frame(&mut self.core, bufs, now);
                    let dns = flow.dns;
                    sync_udp(&mut self.core, token, flow);
                    match r {
                        Some((n, meta, payload_off)) => {
                            if dns && !self.learn_dns(bufs, payload_off, n - payload_off) {
                                // Rebind protection: the guest never sees this answer.
                                continue;
                            }
                            Some((n, meta))
                        }
                        None => None,
                    }
                }
            };
            if let Some(v) = out {
                self.core.metrics.frames_to_guest += 1;
                return Some(v);
            }
        }
        None
    }

    /// The length of the frame [`next_guest_frame`](Self::next_guest_frame) would write
    /// next, when it is known and small: a queued control frame (ARP, NDP, DHCP, ICMP, DNS
    /// refusals), or a TCP control segment. `None` when nothing is pending or the frame is
    /// sized to the room it gets (TCP payload, UDP). Lets the device deliver small frames
    /// into room too short for a largest one instead of waiting for more.
    pub fn next_guest_frame_len(&mut self) -> Option<usize> {
        if let Some(n) = self.core.ctrl.front_len() {
            return Some(n);
        }
        let token = *self.core.ready.front()?;
        match self.flows.get_mut(token) {
            Some(Flow::Tcp(conn)) if !conn.has_data_to_send() => Some(TCP_CONTROL_FRAME_MAX),
            _ => None,
        }
    }

    /// Whether [`next_guest_frame`](Self::next_guest_frame) may have something (it can
    /// still return `None`, e.g. when a flow's host socket turned out empty).
    pub fn has_pending_guest_frames(&self) -> bool {
        !self.core.ctrl.is_empty() || !self.core.ready.is_empty()
    }

    /// Drains the list of host-fd interest changes, in order.
    pub fn take_interest_changes(&mut self) -> Vec<FdInterest> {
        std::mem::take(&mut self.core.interest)
    }

    /// Puts interest changes back in front of the pending ones, for a front end that drained
    /// them and hands the stack to another (test kit).
    #[cfg(feature = "testkit")]
    pub(crate) fn requeue_interest_changes(&mut self, mut changes: Vec<FdInterest>) {
        changes.append(&mut self.core.interest);
        self.core.interest = changes;
    }

    /// A host fd registered under `token` is ready.
    pub fn on_fd_ready(&mut self, token: u64, readable: bool, writable: bool, now: Instant) {
        if token & LISTENER_TAG != 0 {
            let idx = (token & !LISTENER_TAG) as usize;
            return self.accept_published(idx, now);
        }
        if token & ICMP_TAG != 0 {
            return self.ping.on_ready(&mut self.core, token & !ICMP_TAG);
        }
        match self.flows.get_mut(token) {
            Some(Flow::Tcp(conn)) => {
                let after = tcp::on_ready(&mut self.core, conn, readable, writable, now);
                self.finish_tcp(token, after);
            }
            Some(Flow::Udp(flow)) => {
                if readable {
                    flow.host_readable = true;
                }
                sync_udp(&mut self.core, token, flow);
            }
            None => {}
        }
    }

    /// Earliest instant at which [`on_timer`](Self::on_timer) has work. Costs O(flows
    /// changed since the last call), not O(flows): the device worker asks every loop pass.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let idle = self.core.cfg.limits.udp_idle_timeout;
        let core = &self.core;
        let flows = self.flows.next_deadline(|f| match f {
            Flow::Tcp(c) => tcp::deadline(core, c),
            Flow::Udp(u) => u.last_activity + idle,
        });
        flows.into_iter().chain(self.ping.deadline(idle)).min()
    }

    /// Runs timers due at `now`: connect/idle timeouts, retransmissions.
    pub fn on_timer(&mut self, now: Instant) {
        let idle = self.core.cfg.limits.udp_idle_timeout;
        self.ping.expire(&mut self.core, now, idle);
        let tokens: Vec<u64> = self.flows.tokens().collect();
        for token in tokens {
            match self.flows.get_mut(token) {
                Some(Flow::Tcp(conn)) => {
                    let after = tcp::on_timer(&mut self.core, conn, now);
                    self.finish_tcp(token, after);
                }
                Some(Flow::Udp(u)) if now.saturating_duration_since(u.last_activity) >= idle => {
                    self.close_udp(token);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device thread owns the netstack; it must be movable there.
    #[test]
    fn netstack_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Netstack>();
    }

    #[test]
    fn nothing_pending_on_a_fresh_stack() {
        let mut ns = Netstack::new(NetConfig {
            dns_upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            ..NetConfig::default()
        })
        .unwrap();
        assert!(!ns.has_pending_guest_frames());
        assert!(ns.take_interest_changes().is_empty());
        let mut buf = [0u8; 2048];
        let mut b = [IoSliceMut::new(&mut buf)];
        assert!(ns.next_guest_frame(&mut b, Instant::now()).is_none());
        assert_eq!(ns.next_deadline(), None);
    }
}

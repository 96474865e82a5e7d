//! [`Netstack`]: the per-VM translator the device loop drives.
//!
//! Owns the flow table, the listeners and the dispatch of guest frames to protocol
//! handlers; owns the contract with `devices` (the public methods below). Frames from the
//! guest are parsed from a header copy ([`crate::frame`]); payload goes to host sockets
//! from guest memory. Frames to the guest come first from the control queue (ARP, DHCP,
//! ICMP, DNS answers, RSTs), then round-robin from flows that have data or ACKs pending.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use smoltcp::wire::IpProtocol;

use crate::config::{Addressing, NetConfig, PublishedPort};
use crate::core::{Core, FdInterest, InterestOp, RxMeta, TxMeta};
use crate::error::NetError;
use crate::flow_table::{Flow, FlowKey, FlowTable, KeyProto, ICMP_TAG, LISTENER_TAG};
use crate::frame::build::{capacity, scatter};
use crate::frame::parse::{parse_l3, Drop, IpInfo, L3};
use crate::frame::GuestFrame;
use crate::gate::{AllowAll, Direction, FlowGate, FlowInfo, FlowProto};
use crate::metrics::NetMetrics;
use crate::ping::PingRelay;
use crate::publish::{self, Listener};
use crate::tcp::{self, After, Produced, Segment, TcpConn, TcpState};
use crate::udp::UdpFlow;
use crate::{arp, dhcp, dns, icmp, ipaddr, sys};

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
            flows: FlowTable::new(cfg.limits.max_flows),
            gate,
            listeners,
            dns_names: HashMap::new(),
            upstreams,
            isn_key: Default::default(),
            epoch: Instant::now(),
            scratch: Vec::new(),
            ping: PingRelay::new(),
        })
    }

    /// Replaces the flow gate (policy swap, design §7) and re-judges every live flow:
    /// TCP flows the new gate denies are reset both ways, UDP flows are closed.
    /// Returns how many flows were cut.
    pub fn set_gate(&mut self, gate: Box<dyn FlowGate>) -> usize {
        self.gate = gate;
        let tokens: Vec<u64> = self.flows.tokens().collect();
        let mut cut = 0;
        for token in tokens {
            let (info_dir, proto, dst, port, is_tcp) = match self.flows.get_mut(token) {
                Some(Flow::Tcp(c)) => match c.ingress_peer {
                    Some(peer) => (Direction::Ingress, FlowProto::Tcp, peer.ip(), c.key.guest.port(), true),
                    None => (Direction::Egress, FlowProto::Tcp, c.key.remote.ip(), c.key.remote.port(), true),
                },
                Some(Flow::Udp(u)) => {
                    if u.dns {
                        continue;
                    }
                    (Direction::Egress, FlowProto::Udp, u.key.remote.ip(), u.key.remote.port(), false)
                }
                None => continue,
            };
            if self.gate.decide(&self.flow_info(info_dir, proto, dst, port)).allow {
                continue;
            }
            cut += 1;
            self.core.metrics.flows_denied += 1;
            if is_tcp {
                self.finish_tcp(token, After::Reset);
            } else {
                self.close_udp(token);
            }
        }
        cut
    }

    fn close_udp(&mut self, token: u64) {
        if let Some(Flow::Udp(u)) = self.flows.remove(token) {
            self.core.metrics.flows_closed += 1;
            self.core
                .interest(InterestOp::Remove, u.fd.as_raw_fd(), token, false, false);
        }
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

    /// Number of live flows (TCP + UDP).
    pub fn flow_count(&self) -> usize {
        self.flows.len()
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

    fn count_drop(&mut self, d: Drop) {
        match d {
            Drop::Malformed => self.core.metrics.drop_malformed += 1,
            Drop::Unsupported => self.core.metrics.drop_unsupported += 1,
        }
    }

    fn source_ok(&mut self, ip: &IpInfo) -> bool {
        let ok = match ip.src {
            IpAddr::V4(a) => a == self.core.addrs.guest4,
            IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
        };
        if !ok {
            self.core.metrics.drop_foreign += 1;
        } else if let IpAddr::V6(a) = ip.src {
            if a.segments()[0] & 0xffc0 != 0xfe80 {
                self.core.guest6 = Some(a);
            }
        }
        ok
    }

    fn handle_ip(&mut self, f: &GuestFrame<'_, '_>, ip: &IpInfo, now: Instant) {
        match ip.proto {
            IpProtocol::Udp => self.handle_udp(f, ip, now),
            IpProtocol::Tcp => {
                self.core.metrics.tcp_frames += 1;
                if self.source_ok(ip) {
                    match Segment::parse(f, ip) {
                        Ok(seg) => self.handle_tcp(f, ip, &seg, now),
                        Err(d) => self.count_drop(d),
                    }
                }
            }
            IpProtocol::Icmp | IpProtocol::Icmpv6 => {
                let mut msg = std::mem::take(&mut self.scratch);
                if ip.l4_len > MAX_CONTROL_MSG.max(usize::from(self.core.cfg.mtu))
                    || !f.copy_range(ip.l4_off, ip.l4_len, &mut msg)
                {
                    self.core.metrics.drop_malformed += 1;
                } else if ip.proto == IpProtocol::Icmp {
                    if self.source_ok(ip) {
                        if let Some(echo) = icmp::handle_v4(&mut self.core, ip, &msg) {
                            self.relay_echo(ip, FlowProto::Icmpv4, &echo, now);
                        }
                    }
                } else if let Some(echo) = icmp::handle_v6(&mut self.core, ip, &msg) {
                    self.relay_echo(ip, FlowProto::Icmpv6, &echo, now);
                }
                self.scratch = msg;
            }
            _ => self.core.metrics.drop_unsupported += 1,
        }
    }

    fn relay_echo(&mut self, ip: &IpInfo, proto: FlowProto, echo: &icmp::ForeignEcho<'_>, now: Instant) {
        if !ipaddr::is_unicast_destination(&ip.dst) {
            self.core.metrics.drop_unsupported += 1;
            return;
        }
        if !self.gate.decide(&self.flow_info(Direction::Egress, proto, ip.dst, 0)).allow {
            self.core.metrics.flows_denied += 1;
            return;
        }
        self.ping
            .send(&mut self.core, ip.src, ip.dst, echo.ident, echo.seq_no, echo.data, now);
    }

    fn flow_info<'a>(&'a self, dir: Direction, proto: FlowProto, dst: IpAddr, port: u16) -> FlowInfo<'a> {
        FlowInfo {
            direction: dir,
            proto,
            dst,
            port,
            domain: self.dns_names.get(&dst).map(String::as_str),
            to_host: self.core.addrs.is_gateway(&dst),
        }
    }

    fn isn(&self, key: &FlowKey) -> u32 {
        let mut h = self.isn_key.build_hasher();
        key.hash(&mut h);
        // RFC 6528: a keyed hash of the 4-tuple plus a clock.
        let clock = (self.epoch.elapsed().as_micros() / 4) as u64;
        (h.finish().wrapping_add(clock)) as u32
    }

    fn handle_tcp(&mut self, f: &GuestFrame<'_, '_>, ip: &IpInfo, seg: &Segment, now: Instant) {
        let key = FlowKey {
            proto: KeyProto::Tcp,
            guest: SocketAddr::new(ip.src, seg.src_port),
            remote: SocketAddr::new(ip.dst, seg.dst_port),
        };
        if let Some(token) = self.flows.lookup(&key) {
            let after = match self.flows.get_mut(token) {
                Some(Flow::Tcp(conn)) => tcp::on_guest_segment(&mut self.core, conn, f, seg, now),
                _ => After::Keep,
            };
            self.finish_tcp(token, after);
        } else if seg.syn && seg.ack.is_none() {
            self.open_tcp(ip, seg, key, now);
        } else if !seg.rst {
            tcp::push_rst_for(&mut self.core, ip, seg);
        }
    }

    fn open_tcp(&mut self, ip: &IpInfo, seg: &Segment, key: FlowKey, now: Instant) {
        if !ipaddr::is_unicast_destination(&ip.dst) {
            self.core.metrics.drop_unsupported += 1;
            return;
        }
        if self.flows.tcp_len() >= self.core.cfg.limits.max_tcp_connections || !self.flows.has_room() {
            self.core.metrics.flows_over_limit += 1;
            return tcp::push_rst_for(&mut self.core, ip, seg);
        }
        let verdict = self
            .gate
            .decide(&self.flow_info(Direction::Egress, FlowProto::Tcp, ip.dst, seg.dst_port));
        if !verdict.allow {
            self.core.metrics.flows_denied += 1;
            return tcp::push_rst_for(&mut self.core, ip, seg);
        }
        let isn = self.isn(&key);
        let conn = match tcp::open_from_guest(&self.core, key, seg, isn, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(dst = %key.remote, error = %e, "host connect failed at once");
                self.core.metrics.connect_failures += 1;
                return tcp::push_rst_for(&mut self.core, ip, seg);
            }
        };
        self.insert_tcp(conn);
    }

    fn insert_tcp(&mut self, conn: TcpConn) {
        let fd = conn.fd.as_raw_fd();
        match self.flows.insert(Flow::Tcp(Box::new(conn))) {
            Ok(token) => {
                self.core.metrics.flows_opened += 1;
                self.core.interest(InterestOp::Add, fd, token, false, false);
                self.finish_tcp(token, After::Keep);
            }
            Err(_) => self.core.metrics.flows_over_limit += 1,
        }
    }

    /// Applies the outcome of a TCP event: resync interest, or close/reset the flow.
    fn finish_tcp(&mut self, token: u64, after: After) {
        if after == After::Keep {
            if let Some(Flow::Tcp(conn)) = self.flows.get_mut(token) {
                tcp::sync(&mut self.core, token, conn);
            }
            return;
        }
        let Some(Flow::Tcp(conn)) = self.flows.remove(token) else {
            return;
        };
        self.core.metrics.flows_closed += 1;
        self.core
            .interest(InterestOp::Remove, conn.fd.as_raw_fd(), token, false, false);
        match after {
            After::Close => {
                if conn.ack_pending {
                    tcp::push_final_ack(&mut self.core, &conn);
                }
            }
            After::Reset => {
                let _ = sys::set_linger_zero(conn.fd.as_fd());
                tcp::push_rst_to_guest(&mut self.core, &conn);
            }
            After::GuestReset => {
                let _ = sys::set_linger_zero(conn.fd.as_fd());
            }
            After::Keep => {}
        }
        // `conn` (and its socket) is dropped here.
    }

    fn handle_udp(&mut self, f: &GuestFrame<'_, '_>, ip: &IpInfo, now: Instant) {
        self.core.metrics.udp_frames += 1;
        let hdr = f.header();
        if ip.l4_len < 8 || ip.l4_off + 8 > hdr.len() {
            return self.count_drop(Drop::Malformed);
        }
        let u = &hdr[ip.l4_off..ip.l4_off + 8];
        let sport = u16::from_be_bytes([u[0], u[1]]);
        let dport = u16::from_be_bytes([u[2], u[3]]);
        let ulen = usize::from(u16::from_be_bytes([u[4], u[5]]));
        if ulen < 8 || ulen > ip.l4_len {
            return self.count_drop(Drop::Malformed);
        }
        let (off, len) = (ip.l4_off + 8, ulen - 8);
        if dport == dhcp::SERVER_PORT && ip.src.is_ipv4() {
            let mut msg = std::mem::take(&mut self.scratch);
            if len <= MAX_CONTROL_MSG && f.copy_range(off, len, &mut msg) {
                dhcp::handle(&mut self.core, &msg);
            } else {
                self.core.metrics.drop_malformed += 1;
            }
            self.scratch = msg;
            return;
        }
        if !self.source_ok(ip) {
            return;
        }
        let key = FlowKey {
            proto: KeyProto::Udp,
            guest: SocketAddr::new(ip.src, sport),
            remote: SocketAddr::new(ip.dst, dport),
        };
        let mut host_dst = SocketAddr::new(self.core.addrs.host_target(ip.dst), dport);
        let mut is_dns = false;
        if dport == 53 && self.core.addrs.is_gateway(&ip.dst) {
            match self.intercept_dns(f, ip, &key, off, len) {
                Some(up) => {
                    host_dst = up;
                    is_dns = true;
                }
                None => return,
            }
        }
        if !ipaddr::is_unicast_destination(&ip.dst) {
            self.core.metrics.drop_unsupported += 1;
            return;
        }
        let token = match self.flows.lookup(&key) {
            Some(t) => t,
            None => match self.open_udp(key, host_dst, is_dns, now) {
                Some(t) => t,
                None => return,
            },
        };
        if let Some(Flow::Udp(flow)) = self.flows.get_mut(token) {
            flow.send_from_guest(&mut self.core, f, off, len, now);
        }
    }

    fn open_udp(&mut self, key: FlowKey, host_dst: SocketAddr, dns: bool, now: Instant) -> Option<u64> {
        if !self.flows.has_room() {
            self.core.metrics.flows_over_limit += 1;
            return None;
        }
        if !dns {
            let info = self.flow_info(Direction::Egress, FlowProto::Udp, key.remote.ip(), key.remote.port());
            if !self.gate.decide(&info).allow {
                self.core.metrics.flows_denied += 1;
                return None;
            }
        }
        let mut flow = match UdpFlow::open(key, host_dst, now) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(dst = %host_dst, error = %e, "cannot open host UDP socket");
                self.core.metrics.drop_host_error += 1;
                return None;
            }
        };
        flow.dns = dns;
        flow.registered = true;
        let fd = flow.fd.as_raw_fd();
        match self.flows.insert(Flow::Udp(flow)) {
            Ok(t) => {
                self.core.metrics.flows_opened += 1;
                self.core.interest(InterestOp::Add, fd, t, true, false);
                Some(t)
            }
            Err(_) => {
                self.core.metrics.flows_over_limit += 1;
                None
            }
        }
    }

    /// Answers a DNS query locally or returns the upstream to forward it to.
    fn intercept_dns(
        &mut self,
        f: &GuestFrame<'_, '_>,
        ip: &IpInfo,
        key: &FlowKey,
        off: usize,
        len: usize,
    ) -> Option<SocketAddr> {
        self.core.metrics.dns_queries += 1;
        let mut msg = std::mem::take(&mut self.scratch);
        let result = (|| {
            if len > MAX_CONTROL_MSG || !f.copy_range(off, len, &mut msg) {
                self.core.metrics.drop_malformed += 1;
                return None;
            }
            let Some(q) = dns::parse_query(&msg) else {
                self.core.metrics.drop_malformed += 1;
                return None;
            };
            let local = if q.name == self.core.cfg.host_alias.to_ascii_lowercase() {
                let a = &self.core.addrs;
                let answers: Vec<IpAddr> = match q.qtype {
                    dns::TYPE_A => vec![IpAddr::V4(a.gateway4)],
                    dns::TYPE_AAAA => vec![IpAddr::V6(a.gateway6)],
                    _ => vec![],
                };
                Some(dns::local_answer(&msg, &q, 0, &answers))
            } else if !self.gate.decide_dns(&q.name).allow {
                self.core.metrics.flows_denied += 1;
                Some(dns::local_answer(&msg, &q, dns::RCODE_REFUSED, &[]))
            } else if self.upstreams.is_empty() {
                Some(dns::local_answer(&msg, &q, dns::RCODE_SERVFAIL, &[]))
            } else {
                None
            };
            match local {
                Some(answer) => {
                    push_udp_ctrl(&mut self.core, key.remote, key.guest, &answer);
                    None
                }
                None => self.upstreams.first().copied(),
            }
        })();
        let _ = ip;
        self.scratch = msg;
        result
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
            let out = match self.flows.get_mut(token) {
                None => continue,
                Some(Flow::Tcp(conn)) => {
                    conn.queued = false;
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
                                self.core.metrics.drop_dns_rebind += 1;
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

    /// Checks an upstream DNS answer against the gate (rebind protection) and records its
    /// A/AAAA addresses so later flows carry the domain. Returns false to drop it.
    fn learn_dns(&mut self, bufs: &[IoSliceMut<'_>], off: usize, len: usize) -> bool {
        let mut msg = std::mem::take(&mut self.scratch);
        msg.clear();
        let mut pos = 0usize;
        for b in bufs {
            let (a, e) = (pos, pos + b.len());
            pos = e;
            if e <= off || a >= off + len {
                continue;
            }
            msg.extend_from_slice(&b[off.max(a) - a..(off + len).min(e) - a]);
        }
        let mut ok = true;
        if let Some((name, addrs)) = dns::answer_addresses(&msg) {
            ok = addrs
                .iter()
                .all(|a| self.gate.check_dns_answer(&name, *a).allow);
            if ok {
                if self.dns_names.len() + addrs.len() > MAX_DNS_NAMES {
                    self.dns_names.clear();
                }
                for a in addrs {
                    self.dns_names.insert(a, name.clone());
                }
            }
        }
        self.scratch = msg;
        ok
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

    fn accept_published(&mut self, idx: usize, now: Instant) {
        // Bounded: at most this many accepts per readiness event.
        for _ in 0..64 {
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let guest_port = l.port.guest_port;
            let (fd, peer) = match sys::accept(l.fd.as_fd()) {
                Ok(v) => v,
                Err(_) => return,
            };
            self.core.metrics.published_accepts += 1;
            let guest = SocketAddr::new(IpAddr::V4(self.core.addrs.guest4), guest_port);
            let info = self.flow_info(Direction::Ingress, FlowProto::Tcp, peer.ip(), guest_port);
            if !self.gate.decide(&info).allow {
                self.core.metrics.flows_denied += 1;
                let _ = sys::set_linger_zero(fd.as_fd());
                continue;
            }
            if self.flows.tcp_len() >= self.core.cfg.limits.max_tcp_connections || !self.flows.has_room() {
                self.core.metrics.flows_over_limit += 1;
                let _ = sys::set_linger_zero(fd.as_fd());
                continue;
            }
            let gw = IpAddr::V4(self.core.addrs.gateway4);
            let mut key = FlowKey {
                proto: KeyProto::Tcp,
                guest,
                remote: SocketAddr::new(gw, peer.port()),
            };
            let mut port = peer.port();
            let mut tries = 0;
            while self.flows.lookup(&key).is_some() && tries < 64 {
                port = port.wrapping_add(1).max(1024);
                key.remote.set_port(port);
                tries += 1;
            }
            let isn = self.isn(&key);
            let mut conn = TcpConn::new(key, fd, TcpState::SynSent, isn, now);
            conn.ingress_peer = Some(peer);
            let _ = sys::set_nodelay(conn.fd.as_fd());
            conn.our_wscale = 7;
            conn.syn_pending = true;
            self.insert_tcp(conn);
        }
    }

    /// Earliest instant at which [`on_timer`](Self::on_timer) has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let idle = self.core.cfg.limits.udp_idle_timeout;
        self.flows
            .iter()
            .map(|f| match f {
                Flow::Tcp(c) => tcp::deadline(&self.core, c),
                Flow::Udp(u) => u.last_activity + idle,
            })
            .chain(self.ping.deadline(idle))
            .min()
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
                Some(Flow::Udp(u)) => {
                    if now.saturating_duration_since(u.last_activity)
                        >= self.core.cfg.limits.udp_idle_timeout
                    {
                        self.close_udp(token);
                    }
                }
                None => {}
            }
        }
    }
}

fn sync_udp(core: &mut Core, token: u64, flow: &mut UdpFlow) {
    let want = !flow.host_readable;
    if want != flow.registered {
        core.interest(InterestOp::Modify, flow.fd.as_raw_fd(), token, want, false);
        flow.registered = want;
    }
    if flow.wants_output() && !flow.queued {
        flow.queued = true;
        core.ready.push_back(token);
    }
}

/// Queues a UDP datagram built by us (DNS answers) for the guest.
fn push_udp_ctrl(core: &mut Core, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let ep = core.to_guest(from.ip(), to.ip());
    let udp = smoltcp::wire::UdpRepr {
        src_port: from.port(),
        dst_port: to.port(),
    };
    core.push_ctrl(&ep, IpProtocol::Udp, 8 + payload.len(), |buf| {
        udp.emit(
            &mut smoltcp::wire::UdpPacket::new_unchecked(buf),
            &ipaddr::sip(from.ip()),
            &ipaddr::sip(to.ip()),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
    });
}

//! Flow lifecycle on the netstack level: inserting and closing flows, policy swaps that
//! re-judge live flows, accepting published-port connections, DNS answer bookkeeping.

use super::*;

impl Netstack {
    /// Replaces the flow gate (policy swap, design §7) and re-judges every live flow
    /// ([`rejudge_flows`](Self::rejudge_flows)). Returns how many flows were cut.
    pub fn set_gate(&mut self, gate: Box<dyn FlowGate>) -> usize {
        self.gate = gate;
        self.rejudge_flows()
    }

    /// Asks the gate again about every live flow: TCP flows it now denies are reset both
    /// ways, UDP flows are closed. Call after the policy behind a shared gate (e.g.
    /// [`SwappableGate`](crate::SwappableGate)) was swapped. Returns how many were cut.
    pub fn rejudge_flows(&mut self) -> usize {
        let tokens: Vec<u64> = self.flows.tokens().collect();
        let mut cut = 0;
        for token in tokens {
            let (info_dir, proto, dst, port, is_tcp) = match self.flows.get_mut(token) {
                // The embedder's own connections are not the guest's policy's business.
                Some(Flow::Tcp(c)) if c.embedder => continue,
                Some(Flow::Tcp(c)) => match c.ingress_peer {
                    Some(peer) => (
                        Direction::Ingress,
                        FlowProto::Tcp,
                        peer.ip(),
                        c.key.guest.port(),
                        true,
                    ),
                    None => (
                        Direction::Egress,
                        FlowProto::Tcp,
                        c.key.remote.ip(),
                        c.key.remote.port(),
                        true,
                    ),
                },
                Some(Flow::Udp(u)) => {
                    if u.dns || u.embedder {
                        continue;
                    }
                    (
                        Direction::Egress,
                        FlowProto::Udp,
                        u.key.remote.ip(),
                        u.key.remote.port(),
                        false,
                    )
                }
                None => continue,
            };
            let info = self.flow_info(info_dir, proto, dst, port);
            let server_name = match self.flows.get(token) {
                Some(Flow::Tcp(c)) => c.server_name.as_deref(),
                _ => None,
            };
            let allowed = self.gate.decide(&info).allow
                && server_name.is_none_or(|n| self.gate.decide_server_name(&info, Some(n)).allow);
            if allowed {
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

    pub(super) fn close_udp(&mut self, token: u64) {
        if let Some(Flow::Udp(u)) = self.flows.remove(token) {
            self.core.metrics.flows_closed += 1;
            if u.peer.is_none() {
                self.core
                    .interest(InterestOp::Remove, u.fd.as_raw_fd(), token, false, false);
            }
        }
    }

    /// Raises the high-water marks after an insert.
    fn note_peaks(&mut self) {
        let m = &mut self.core.metrics;
        m.flows_peak = m.flows_peak.max(self.flows.len() as u64);
        m.tcp_half_open_peak = m.tcp_half_open_peak.max(self.core.tcp_half_open as u64);
    }

    pub(super) fn insert_tcp(&mut self, mut conn: TcpConn) {
        let fd = conn.fd.as_raw_fd();
        let half_open = conn.ingress_peer.is_none()
            && matches!(conn.state, TcpState::Connecting | TcpState::SynAckSent);
        conn.half_open = half_open;
        match self.flows.insert(Flow::Tcp(Box::new(conn))) {
            Some(token) => {
                self.core.tcp_half_open += usize::from(half_open);
                self.note_peaks();
                self.core.metrics.flows_opened += 1;
                self.core.interest(InterestOp::Add, fd, token, false, false);
                self.finish_tcp(token, After::Keep);
            }
            None => self.core.refuse_over_limit("flow table"),
        }
    }

    /// Applies the outcome of a TCP event: resync interest, or close/reset the flow.
    pub(super) fn finish_tcp(&mut self, token: u64, after: After) {
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
        if conn.half_open {
            self.core.tcp_half_open -= 1;
        }
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

    pub(super) fn open_udp(
        &mut self,
        key: FlowKey,
        host_dst: SocketAddr,
        dns: bool,
        now: Instant,
    ) -> Option<u64> {
        if !self.flows.has_room_for_other() {
            self.core
                .refuse_over_limit("flow table (outside the TCP reserve)");
            return None;
        }
        if !dns {
            let info = self.flow_info(
                Direction::Egress,
                FlowProto::Udp,
                key.remote.ip(),
                key.remote.port(),
            );
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
        self.insert_udp_flow(flow)
    }

    /// Puts a UDP flow in the table and asks for its host socket's readiness; `None` (and
    /// a flows_over_limit count) when the table is full.
    pub(super) fn insert_udp_flow(&mut self, mut flow: UdpFlow) -> Option<u64> {
        flow.registered = true;
        let fd = flow.fd.as_raw_fd();
        match self.flows.insert(Flow::Udp(flow)) {
            Some(t) => {
                self.core.metrics.flows_opened += 1;
                self.note_peaks();
                self.core.interest(InterestOp::Add, fd, t, true, false);
                Some(t)
            }
            None => {
                self.core.refuse_over_limit("flow table");
                None
            }
        }
    }

    /// Checks an upstream DNS answer against the gate (rebind protection) and records its
    /// A/AAAA addresses so later flows carry the domain. Returns false to drop it (counted):
    /// refused by the gate, or unreadable, so unjudged.
    pub(super) fn learn_dns(&mut self, bufs: &[IoSliceMut<'_>], off: usize, len: usize) -> bool {
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
        let mut ok = false;
        match dns::judge_answer(&msg, &*self.gate) {
            None => self.core.metrics.drop_dns_malformed += 1,
            Some((_, _, false)) => self.core.metrics.drop_dns_rebind += 1,
            Some((name, addrs, true)) => {
                ok = true;
                remember_names(&mut self.dns_names, &name, addrs);
            }
        }
        self.scratch = msg;
        ok
    }

    /// A published UDP listener became readable: queue it for the next RX call.
    pub(super) fn published_udp_ready(&mut self, idx: usize) {
        let Some(l) = self.listeners.get_mut(idx) else {
            return;
        };
        l.readable = true;
        self.core.interest(
            InterestOp::Modify,
            l.fd.as_raw_fd(),
            LISTENER_TAG | idx as u64,
            false,
            false,
        );
        if !l.queued {
            l.queued = true;
            self.core.ready.push_back(LISTENER_TAG | idx as u64);
        }
    }

    /// Receives the next datagram of published UDP port `idx` straight into the guest
    /// buffers, opening a flow for a new peer (ingress gate and limits first).
    pub(super) fn published_udp_frame(
        &mut self,
        idx: usize,
        bufs: &mut [IoSliceMut<'_>],
        now: Instant,
    ) -> Option<(usize, RxMeta)> {
        let gw = SocketAddr::new(IpAddr::V4(self.core.addrs.gateway4), 0);
        let hdr_len = crate::frame::build::eth_ip_len(&gw.ip()) + 8;
        let room = self
            .core
            .cfg
            .max_rx_frame
            .min(capacity(bufs))
            .min(14 + 20 + 65535);
        let token = LISTENER_TAG | idx as u64;
        if let Some(l) = self.listeners.get_mut(idx) {
            l.queued = false;
        }
        if room < hdr_len {
            return None;
        }
        // Bounded: refused or oversized datagrams are skipped a few at a time.
        for _ in 0..8 {
            let l = self.listeners.get_mut(idx)?;
            let guest = SocketAddr::new(IpAddr::V4(self.core.addrs.guest4), l.port.guest_port);
            let res = {
                let mut iov: [IoSliceMut<'_>; crate::frame::MAX_SEGS] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                let n = crate::frame::build::tail_iovecs(bufs, hdr_len, room - hdr_len, &mut iov);
                sys::recv_vectored(l.fd.as_fd(), &mut iov[..n], false)
            };
            let r = match res {
                Ok(r) => r,
                Err(_) => {
                    l.readable = false;
                    let fd = l.fd.as_raw_fd();
                    self.core
                        .interest(InterestOp::Modify, fd, token, true, false);
                    return None;
                }
            };
            let Some(peer) = r.from else { continue };
            if r.truncated {
                self.core.metrics.drop_too_big += 1;
                continue;
            }
            let remote = SocketAddr::new(gw.ip(), peer.port());
            let key = FlowKey {
                proto: KeyProto::Udp,
                guest,
                remote,
            };
            match self.flows.lookup(&key).and_then(|t| self.flows.get_mut(t)) {
                Some(Flow::Udp(f)) if f.peer == Some(peer) => f.last_activity = now,
                Some(_) => {
                    // Another peer already uses this source port towards the guest.
                    self.core.metrics.drop_foreign += 1;
                    continue;
                }
                None => {
                    let info =
                        self.flow_info(Direction::Ingress, FlowProto::Udp, peer.ip(), guest.port());
                    if !self.gate.decide(&info).allow {
                        self.core.metrics.flows_denied += 1;
                        continue;
                    }
                    let l = self.listeners.get(idx)?;
                    let Ok(dup) = l.fd.try_clone() else {
                        self.core.metrics.drop_host_error += 1;
                        continue;
                    };
                    let flow = UdpFlow::published(key, dup, peer, now);
                    if self.flows.insert(Flow::Udp(flow)).is_none() {
                        self.core.refuse_over_limit("flow table");
                        continue;
                    }
                    self.core.metrics.flows_opened += 1;
                    self.core.metrics.published_accepts += 1;
                }
            }
            crate::udp::write_udp_header(&self.core, remote, guest, bufs, r.len);
            self.core.metrics.bytes_host_to_guest += r.len as u64;
            if let Some(l) = self.listeners.get_mut(idx) {
                if !l.queued {
                    l.queued = true;
                    self.core.ready.push_back(token);
                }
            }
            return Some((
                hdr_len + r.len,
                RxMeta {
                    csum_valid: true,
                    gso: None,
                },
            ));
        }
        // Skipped a burst: look again on the next call.
        if let Some(l) = self.listeners.get_mut(idx) {
            if !l.queued {
                l.queued = true;
                self.core.ready.push_back(token);
            }
        }
        None
    }

    pub(super) fn accept_published(&mut self, idx: usize, now: Instant) {
        if self
            .listeners
            .get(idx)
            .is_some_and(|l| l.port.proto == crate::config::PortProto::Udp)
        {
            return self.published_udp_ready(idx);
        }
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
            let limits = &self.core.cfg.limits;
            let refused = if self.flows.tcp_ingress_len() >= limits.max_published_connections {
                Some("published connections")
            } else if self.flows.tcp_len() >= limits.max_tcp_connections {
                Some("tcp connections")
            } else if !self.flows.has_room() {
                Some("flow table")
            } else {
                None
            };
            if let Some(what) = refused {
                self.core.refuse_over_limit(what);
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
}

/// Records the addresses of an allowed DNS answer (UDP or TCP) so later flows to them carry
/// `name`; the map is bounded by [`MAX_DNS_NAMES`] (cleared when full).
pub(super) fn remember_names(names: &mut HashMap<IpAddr, String>, name: &str, addrs: Vec<IpAddr>) {
    if names.len() + addrs.len() > MAX_DNS_NAMES {
        names.clear();
    }
    for a in addrs {
        names.insert(a, name.to_string());
    }
}

pub(super) fn sync_udp(core: &mut Core, token: u64, flow: &mut UdpFlow) {
    if flow.peer.is_some() {
        return;
    }
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
pub(super) fn push_udp_ctrl(core: &mut Core, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
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

//! Frames from the guest: validation of addresses, dispatch by protocol, opening TCP and
//! UDP flows (limits and flow gate first), DNS interception and ICMP echo.

use super::*;

impl Netstack {
    pub(super) fn count_drop(&mut self, d: Drop) {
        match d {
            Drop::Malformed => self.core.metrics.drop_malformed += 1,
            Drop::Unsupported => self.core.metrics.drop_unsupported += 1,
        }
    }

    pub(super) fn source_ok(&mut self, ip: &IpInfo) -> bool {
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

    pub(super) fn handle_ip(&mut self, f: &GuestFrame<'_, '_>, ip: &IpInfo, now: Instant) {
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

    pub(super) fn relay_echo(
        &mut self,
        ip: &IpInfo,
        proto: FlowProto,
        echo: &icmp::ForeignEcho<'_>,
        now: Instant,
    ) {
        if !ipaddr::is_unicast_destination(&ip.dst) {
            self.core.metrics.drop_unsupported += 1;
            return;
        }
        if !self
            .gate
            .decide(&self.flow_info(Direction::Egress, proto, ip.dst, 0))
            .allow
        {
            self.core.metrics.flows_denied += 1;
            return;
        }
        self.ping.send(&mut self.core, ip.src, ip.dst, echo, now);
    }

    pub(super) fn flow_info<'a>(
        &'a self,
        dir: Direction,
        proto: FlowProto,
        dst: IpAddr,
        port: u16,
    ) -> FlowInfo<'a> {
        FlowInfo {
            direction: dir,
            proto,
            dst,
            port,
            domain: self.dns_names.get(&dst).map(String::as_str),
            to_host: self.core.addrs.is_gateway(&dst),
        }
    }

    pub(super) fn isn(&self, key: &FlowKey) -> u32 {
        // A fuzz build's guest is a fuzzer that must be able to acknowledge our SYN-ACK, so
        // there the ISN is fixed (feature `fuzzing`, never enabled in a shipped build).
        if cfg!(feature = "fuzzing") {
            return 0x1000_0000;
        }
        // RFC 6528: a keyed hash of the 4-tuple plus a clock.
        let clock = (self.epoch.elapsed().as_micros() / 4) as u64;
        (self.isn_key.hash_one(key).wrapping_add(clock)) as u32
    }

    pub(super) fn handle_tcp(
        &mut self,
        f: &GuestFrame<'_, '_>,
        ip: &IpInfo,
        seg: &Segment,
        now: Instant,
    ) {
        let key = FlowKey {
            proto: KeyProto::Tcp,
            guest: SocketAddr::new(ip.src, seg.src_port),
            remote: SocketAddr::new(ip.dst, seg.dst_port),
        };
        if let Some(token) = self.flows.lookup(&key) {
            let after = match self.flows.get_mut(token) {
                Some(Flow::Tcp(conn)) => {
                    tcp::on_guest_segment(&mut self.core, &*self.gate, conn, f, seg, now)
                }
                _ => After::Keep,
            };
            self.finish_tcp(token, after);
        } else if seg.syn && seg.ack.is_none() {
            self.open_tcp(ip, seg, key, now);
        } else if !seg.rst {
            tcp::push_rst_for(&mut self.core, ip, seg);
        }
    }

    pub(super) fn open_tcp(&mut self, ip: &IpInfo, seg: &Segment, key: FlowKey, now: Instant) {
        if !ipaddr::is_unicast_destination(&ip.dst) {
            self.core.metrics.drop_unsupported += 1;
            return;
        }
        if self.is_service_target(&ip.dst) && self.open_service_flow(ip, seg, key, now) {
            return;
        }
        let dns = seg.dst_port == 53 && self.core.addrs.is_gateway(&ip.dst);
        let target = if dns {
            // DNS over TCP goes to the upstream resolver, each query checked on the way.
            match self.upstreams.first() {
                Some(up) => *up,
                None => return tcp::push_rst_for(&mut self.core, ip, seg),
            }
        } else {
            SocketAddr::new(self.core.addrs.host_target(ip.dst), seg.dst_port)
        };
        if self.flows.tcp_len() >= self.core.cfg.limits.max_tcp_connections
            || !self.flows.has_room()
        {
            self.core.refuse_over_limit("tcp connections");
            return tcp::push_rst_for(&mut self.core, ip, seg);
        }
        if self.core.tcp_half_open >= self.core.cfg.limits.max_half_open_tcp {
            self.core.metrics.tcp_half_open_refused += 1;
            self.core.refuse_over_limit("half-open tcp connections");
            return tcp::push_rst_for(&mut self.core, ip, seg);
        }
        // DNS is judged per query name (as over UDP), not as a flow.
        let verdict = self.gate.decide(&self.flow_info(
            Direction::Egress,
            FlowProto::Tcp,
            ip.dst,
            seg.dst_port,
        ));
        if !dns && !verdict.allow {
            self.core.metrics.flows_denied += 1;
            return tcp::push_rst_for(&mut self.core, ip, seg);
        }
        let isn = self.isn(&key);
        let opened = if !dns && self.core.cfg.tls.covers(seg.dst_port) {
            let domain = self.dns_names.get(&ip.dst).cloned();
            tcp::open_held(&self.core, key, target, domain, seg, isn, now)
        } else {
            tcp::open_from_guest(&self.core, key, target, seg, isn, now)
        };
        let conn = match opened {
            Ok(mut c) => {
                if dns {
                    c.dns = Some(Box::default());
                }
                c
            }
            Err(e) => {
                tracing::debug!(dst = %key.remote, error = %e, "host connect failed at once");
                self.core.metrics.connect_failures += 1;
                return tcp::push_rst_for(&mut self.core, ip, seg);
            }
        };
        self.insert_tcp(conn);
    }

    pub(super) fn handle_udp(&mut self, f: &GuestFrame<'_, '_>, ip: &IpInfo, now: Instant) {
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
        if self.core.cfg.tls.blocks_udp(dport) {
            // QUIC to an intercepted port: refused (ICMP), so the client falls back to TLS.
            self.core.metrics.quic_blocked += 1;
            let head = &f.header()[ip.l4_off..ip.l4_off + 8];
            return icmp::push_prohibited(&mut self.core, ip, head);
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
            None if !is_dns && self.is_udp_service_target(&ip.dst, dport) => {
                match self.open_udp_service_flow(key, now) {
                    Some(t) => t,
                    None => {
                        let head = &f.header()[ip.l4_off..ip.l4_off + 8];
                        return icmp::push_prohibited(&mut self.core, ip, head);
                    }
                }
            }
            None => match self.open_udp(key, host_dst, is_dns, now) {
                Some(t) => t,
                None => {
                    let head = &f.header()[ip.l4_off..ip.l4_off + 8];
                    return icmp::push_prohibited(&mut self.core, ip, head);
                }
            },
        };
        if let Some(Flow::Udp(flow)) = self.flows.get_mut(token) {
            flow.send_from_guest(&mut self.core, f, off, len, now);
        }
    }

    /// Answers a DNS query locally or returns the upstream to forward it to.
    pub(super) fn intercept_dns(
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
}

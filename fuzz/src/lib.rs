//! Helpers shared by the fuzz targets in `fuzz_targets/` (see `cargo xtask fuzz --list`).
//!
//! Every target takes hostile bytes and must never panic, hang, write a file or open a socket
//! to anything but loopback; the helpers here only slice the input.

/// Splits fuzz input into a few control bytes and then length-prefixed records.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// The next byte (0 once the input is exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next little-endian u16 (missing bytes read as 0).
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next record: a little-endian u16 length, then up to that many bytes (fewer at the
    /// end of the input). `None` once nothing is left.
    pub fn record(&mut self) -> Option<&'a [u8]> {
        if self.data.is_empty() {
            return None;
        }
        let len = usize::from(self.u16());
        let take = len.min(self.data.len());
        let (rec, rest) = self.data.split_at(take);
        self.data = rest;
        Some(rec)
    }

    /// Everything not consumed yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// Whether the input is exhausted.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Encodes records in the format [`Input::record`] reads (for building seed inputs).
pub fn records(recs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        out.extend_from_slice(&(r.len() as u16).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// The differential check shared by the policy targets.
pub mod policy_check {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use policy::{
        Action, CompiledPolicy, Destination, Direction, FlowQuery, LinearPolicy, Policy,
        PolicyContext, Rule, ALL_PROTOCOLS,
    };

    /// Most rules compiled per input (compiling is linear in rules; keeps each run short).
    const MAX_RULES: usize = 256;

    /// [`check_policy`] for bare rules (egress deny, ingress allow by default).
    pub fn check_policy_rules(rules: &[Rule], data: &[u8]) {
        let policy = Policy::new(Action::Deny, Action::Allow, rules.to_vec());
        check_policy(&policy, data);
    }

    /// Compiles `policy` and checks that the compiled evaluator decides exactly as the linear
    /// reference for flows, DNS queries and DNS answers aimed at the rules' own destinations
    /// (their edges) and at addresses taken from `data`.
    pub fn check_policy(policy: &Policy, data: &[u8]) {
        if policy.rules.len() > MAX_RULES {
            return;
        }
        let ctx = PolicyContext {
            host_addrs: vec![
                IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0xfd42, 0x6d73, 0x62, 0, 0, 0, 0, 1)),
            ],
        };
        let Ok(compiled) = CompiledPolicy::new(policy, &ctx) else {
            return;
        };
        let linear = LinearPolicy::new(policy, &ctx);

        let mut addrs: Vec<IpAddr> = vec![
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
            IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv4Addr::new(192, 168, 1, 1).to_ipv6_mapped()),
        ];
        let mut names: Vec<String> = vec!["example.com".into(), "a.example.com".into()];
        let mut ports: Vec<u16> = vec![0, 1, 53, 443, 65535];
        for rule in &policy.rules {
            match rule.destination() {
                Destination::Cidr(c) => {
                    let a = c.addr();
                    addrs.push(a);
                    addrs.push(offset(a, -1));
                    addrs.push(last_of(a, c.len()));
                    addrs.push(offset(last_of(a, c.len()), 1));
                }
                Destination::Domain(d) | Destination::Suffix(d) => {
                    names.push(d.to_string());
                    names.push(format!("x.{d}"));
                    names.push(format!("{d}.x"));
                }
                Destination::Any | Destination::Group(_) => {}
            }
            for p in rule.ports() {
                ports.extend([
                    p.start,
                    p.end,
                    p.start.wrapping_sub(1),
                    p.end.wrapping_add(1),
                ]);
            }
        }
        for chunk in data.chunks_exact(4).take(8) {
            addrs.push(IpAddr::V4(Ipv4Addr::new(
                chunk[0], chunk[1], chunk[2], chunk[3],
            )));
        }
        addrs.truncate(24);
        names.truncate(32);
        ports.sort_unstable();
        ports.dedup();
        ports.truncate(8);

        for &dst in &addrs {
            for domain in
                std::iter::once(None).chain(names.iter().take(2).map(|n| Some(n.as_str())))
            {
                for direction in [Direction::Egress, Direction::Ingress] {
                    for &protocol in &ALL_PROTOCOLS {
                        for &port in &ports {
                            let q = FlowQuery {
                                direction,
                                dst,
                                domain,
                                protocol,
                                port,
                            };
                            assert_eq!(
                                compiled.decide(&q),
                                linear.decide(&q),
                                "compiled and linear evaluators differ on {q:?}"
                            );
                        }
                    }
                }
            }
        }
        for name in &names {
            assert_eq!(
                compiled.decide_dns_query(name),
                linear.decide_dns_query(name),
                "DNS query {name:?}"
            );
            for &a in addrs.iter().take(16) {
                assert_eq!(
                    compiled.check_dns_answer(name, a),
                    linear.check_dns_answer(name, a),
                    "DNS answer {name:?} -> {a}"
                );
            }
        }
    }

    /// `a` moved by `by` (wrapping).
    fn offset(a: IpAddr, by: i64) -> IpAddr {
        match a {
            IpAddr::V4(v) => IpAddr::V4(Ipv4Addr::from(u32::from(v).wrapping_add(by as u32))),
            IpAddr::V6(v) => IpAddr::V6(Ipv6Addr::from(u128::from(v).wrapping_add(by as u128))),
        }
    }

    /// The last address of the prefix `a/len`.
    fn last_of(a: IpAddr, len: u8) -> IpAddr {
        match a {
            IpAddr::V4(v) => {
                let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v) | host))
            }
            IpAddr::V6(v) => {
                let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v) | host))
            }
        }
    }
}

pub mod boot;

//! The compiled evaluator the netstack calls on every new flow, DNS query and DNS answer.
//!
//! A policy of `n` rules compiles to:
//! - destination by address: an IPv4 and an IPv6 multibit trie (`trie`) whose leaves carry the
//!   candidate set of rules whose CIDR, group or `*` covers the leaf;
//! - destination by name: a reversed-label trie (`domain`) with a candidate set per node;
//! - protocol × direction: 8 bitsets; port: up to 256 port-class bitsets (`ports`);
//! - per rule, a small record (direction/protocol mask, ports) to confirm a candidate.
//!
//! Candidate sets (`candidates`) are short sorted lists when few rules cover a destination and
//! bitsets (`bitset`) otherwise. A decision is the lowest rule index in
//! `(address ∪ name) ∩ protocol/direction ∩ port`, i.e. the first matching rule: the lowest
//! admitted candidate of the address set and of the name set, whichever is lower. Lists are
//! scanned in order with an early exit; bitsets are ANDed word by word after their summary
//! words. A decision never allocates, never locks and never fails. A `CompiledPolicy` is immutable and `Send + Sync`;
//! swapping policies at runtime is the owner's job (e.g. `ArcSwap<CompiledPolicy>`).

mod bitset;
mod candidates;
mod domain;
mod ports;
mod trie;

use std::net::IpAddr;

use crate::cidr::key_of;
use crate::domain_name::query_name_bytes;
use crate::error::PolicyError;
use crate::groups::{group_prefixes, judged_ip, Group, GroupSet, GroupTable};
use crate::model::{
    Action, Decision, DecisionCause, Destination, Direction, FlowQuery, Policy, PolicyContext,
    PortRange, Protocol, Rule, ALL_PROTOCOLS,
};

use bitset::{SetArena, SetArenaBuilder, SetId, EMPTY, FULL};
use candidates::{CandidateRef, CandidateStore, CandidateStoreBuilder, NO_CANDIDATES};
use domain::{DomainTrie, DomainTrieBuilder};
use ports::PortClasses;
use trie::{Prefix, PrefixTrie, Tag, TagSet};

/// Most rules a policy may have (memory grows with rules × distinct destinations).
pub const MAX_RULES: usize = 65_536;

/// Sizes of the compiled structures, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompiledStats {
    /// Number of rules.
    pub rules: usize,
    /// Distinct rule bitsets stored (large candidate sets and filters).
    pub sets: usize,
    /// Distinct short candidate lists, and their total length.
    pub lists: (usize, usize),
    /// Candidate sets (trie leaves, name nodes) too large for a list, stored as bitsets.
    pub dense_candidates: usize,
    /// Nodes in the IPv4 trie.
    pub v4_nodes: usize,
    /// Nodes in the IPv6 trie.
    pub v6_nodes: usize,
    /// Nodes in the name trie.
    pub domain_nodes: usize,
    /// Port classes.
    pub port_classes: usize,
    /// Approximate heap bytes of the sets and tries.
    pub bytes: usize,
}

/// A policy compiled for fast first-match decisions. Build it with [`Policy::compile`].
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    policy: Policy,
    groups: GroupTable,
    arena: SetArena,
    candidates: CandidateStore,
    v4: PrefixTrie,
    v6: PrefixTrie,
    domains: DomainTrie,
    ports: PortClasses,
    /// `[direction][protocol]` → rules with that direction and protocol.
    proto_dir: [[SetId; 4]; 2],
    /// Rules that can decide a DNS question (egress; allow, or deny without conditions).
    dns_relevant: SetId,
    /// The first `*` rule that can decide a DNS question.
    first_any_dns: Option<usize>,
    /// The `*` rules, as a candidate set (server names are judged by name and `*` only).
    any_dest: CandidateRef,
    /// Per rule: what confirms a candidate.
    meta: Vec<RuleMeta>,
    port_ranges: Vec<PortRange>,
    dns_fallback: Decision,
}

/// What the evaluator checks on a candidate rule.
#[derive(Debug, Clone, Copy)]
struct RuleMeta {
    /// Bit `4 * direction + protocol` is set when the rule admits that combination.
    proto_dir: u8,
    /// The rule can decide a DNS question.
    dns_relevant: bool,
    action: Action,
    /// The rule's first port range, kept inline so the common one-range rule needs no second
    /// memory access.
    first_ports: PortRange,
    /// The rule's port ranges in `port_ranges` (`len == 0`: all ports).
    ports_start: u32,
    ports_len: u32,
}

fn proto_dir_bit(direction: Direction, protocol: Protocol) -> u8 {
    let d = match direction {
        Direction::Egress => 0,
        Direction::Ingress => 4,
    };
    1 << (d + protocol as u8)
}

fn leaf_rules(tags: &TagSet, group_rules: &[Vec<u32>; 7]) -> Vec<u32> {
    let groups = GroupSet::resolve(GroupSet::from_bits(tags.groups));
    let mut rules = tags.rules.clone();
    for g in groups.iter() {
        rules.extend_from_slice(&group_rules[g as usize]);
    }
    rules
}

impl Policy {
    /// Compiles the policy for a sandbox (its `host` addresses come from `ctx`).
    pub fn compile(&self, ctx: &PolicyContext) -> Result<CompiledPolicy, PolicyError> {
        CompiledPolicy::new(self, ctx)
    }
}

impl CompiledPolicy {
    /// Compiles `policy` for the sandbox described by `ctx`.
    pub fn new(policy: &Policy, ctx: &PolicyContext) -> Result<Self, PolicyError> {
        let rules = &policy.rules;
        if rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules {
                count: rules.len(),
                max: MAX_RULES,
            });
        }
        let groups = GroupTable::new(&ctx.host_addrs);
        let mut arena = SetArenaBuilder::new(rules.len());

        let mut any_dest = Vec::new();
        let mut group_rules: [Vec<u32>; 7] = Default::default();
        let mut v4: Vec<Prefix> = Vec::new();
        let mut v6: Vec<Prefix> = Vec::new();
        let mut names = DomainTrieBuilder::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            match rule.destination() {
                Destination::Any => any_dest.push(i),
                Destination::Group(g) => group_rules[*g as usize].push(i),
                Destination::Cidr(c) => {
                    let p = (c.key(), c.len(), Tag::Rule(i));
                    if c.addr().is_ipv4() {
                        v4.push(p);
                    } else {
                        v6.push(p);
                    }
                }
                Destination::Domain(d) => names.add_exact(d.as_str(), i),
                Destination::Suffix(d) => names.add_suffix(d.as_str(), i),
            }
        }
        for (cidr, g) in group_prefixes() {
            let p = (cidr.key(), cidr.len(), Tag::Group(g.bit()));
            if cidr.addr().is_ipv4() {
                v4.push(p);
            } else {
                v6.push(p);
            }
        }
        for h in groups.host_addrs() {
            let full = if h.is_ipv4() { 32 } else { 128 };
            let p = (key_of(*h), full, Tag::Group(Group::Host.bit()));
            if h.is_ipv4() {
                v4.push(p);
            } else {
                v6.push(p);
            }
        }

        let mut store = CandidateStoreBuilder::new();
        let mut leaf_of = |tags: &TagSet| {
            let mut r = leaf_rules(tags, &group_rules);
            r.extend_from_slice(&any_dest);
            store.intern(r, &mut arena)
        };
        let v4 = PrefixTrie::build(v4, &mut leaf_of);
        let v6 = PrefixTrie::build(v6, &mut leaf_of);
        let domains = names.finish(&mut |r| store.intern(r, &mut arena));
        let any_ref = store.intern(any_dest.clone(), &mut arena);
        let ports = PortClasses::build(rules, &mut arena);

        let mut proto_dir = [[EMPTY; 4]; 2];
        for (d, dir) in [Direction::Egress, Direction::Ingress]
            .into_iter()
            .enumerate()
        {
            for proto in ALL_PROTOCOLS {
                let set = rules.iter().enumerate().filter_map(|(i, r)| {
                    (r.direction().covers(dir) && r.protocols().matches(proto)).then_some(i as u32)
                });
                proto_dir[d][proto as usize] = arena.intern_rules(set);
            }
        }
        let is_dns_relevant = |r: &Rule| {
            r.direction().covers(Direction::Egress)
                && (r.action() == Action::Allow || r.is_unconditional())
        };
        let dns_relevant = arena.intern_rules(
            rules
                .iter()
                .enumerate()
                .filter_map(|(i, r)| is_dns_relevant(r).then_some(i as u32)),
        );
        let first_any_dns = any_dest
            .iter()
            .map(|i| *i as usize)
            .find(|i| is_dns_relevant(&rules[*i]));

        let mut meta = Vec::with_capacity(rules.len());
        let mut port_ranges = Vec::new();
        for r in rules {
            let mut proto_dir = 0u8;
            for dir in [Direction::Egress, Direction::Ingress] {
                for proto in ALL_PROTOCOLS {
                    if r.direction().covers(dir) && r.protocols().matches(proto) {
                        proto_dir |= proto_dir_bit(dir, proto);
                    }
                }
            }
            meta.push(RuleMeta {
                proto_dir,
                dns_relevant: is_dns_relevant(r),
                action: r.action(),
                first_ports: r
                    .ports()
                    .first()
                    .copied()
                    .unwrap_or(PortRange { start: 1, end: 0 }),
                ports_start: port_ranges.len() as u32,
                ports_len: r.ports().len() as u32,
            });
            port_ranges.extend_from_slice(r.ports());
        }
        let dns_fallback = if policy.default_egress == Action::Deny && policy.allows_names() {
            Decision {
                action: Action::Deny,
                rule: None,
                cause: DecisionCause::DnsNameNotAllowed,
            }
        } else {
            Decision {
                action: Action::Allow,
                rule: None,
                cause: DecisionCause::Default,
            }
        };
        Ok(Self {
            policy: policy.clone(),
            groups,
            arena: arena.finish(),
            candidates: store.finish(),
            v4,
            v6,
            domains,
            ports,
            proto_dir,
            dns_relevant,
            first_any_dns,
            any_dest: any_ref,
            meta,
            port_ranges,
            dns_fallback,
        })
    }

    /// The policy this was compiled from.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Rule number `index` (as reported in [`Decision::rule`]), for logging.
    pub fn rule(&self, index: usize) -> Option<&Rule> {
        self.policy.rules.get(index)
    }

    /// The groups `ip` belongs to in this sandbox (for rebind protection and logs).
    pub fn groups_of(&self, ip: IpAddr) -> GroupSet {
        self.groups.groups_of(ip)
    }

    /// Sizes of the compiled structures.
    pub fn stats(&self) -> CompiledStats {
        let trie_bytes = self.v4.bytes() + self.v6.bytes();
        let lists = self.candidates.size();
        CompiledStats {
            rules: self.meta.len(),
            sets: self.arena.len(),
            lists,
            dense_candidates: self.candidates.dense(),
            v4_nodes: self.v4.node_count(),
            v6_nodes: self.v6.node_count(),
            domain_nodes: self.domains.node_count(),
            port_classes: self.ports.len(),
            bytes: self.arena.bytes()
                + trie_bytes
                + self.domains.bytes()
                + lists.0 * 8
                + lists.1 * 4
                + self.meta.len() * std::mem::size_of::<RuleMeta>(),
        }
    }

    #[inline]
    fn address_candidates(&self, ip: IpAddr) -> CandidateRef {
        match ip {
            IpAddr::V4(_) => self.v4.lookup(key_of(ip)),
            IpAddr::V6(_) => self.v6.lookup(key_of(ip)),
        }
    }

    #[inline]
    fn name_candidates(&self, name: &str) -> CandidateRef {
        match query_name_bytes(name) {
            Some(n) => self.domains.lookup(n),
            None => NO_CANDIDATES,
        }
    }

    #[inline]
    fn ports_admit(&self, m: &RuleMeta, protocol: Protocol, port: u16) -> bool {
        match m.ports_len {
            0 => true,
            _ if !protocol.has_ports() => false,
            1 => m.first_ports.contains(port),
            n => self.port_ranges[m.ports_start as usize..(m.ports_start + n) as usize]
                .iter()
                .any(|r| r.contains(port)),
        }
    }

    /// The lower of the first admitted candidate by address and by name.
    #[inline]
    fn first_of(
        &self,
        by_addr: CandidateRef,
        by_name: CandidateRef,
        f1: SetId,
        f2: SetId,
        accept: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let a = self.candidates.first(&self.arena, by_addr, f1, f2, &accept);
        if by_name == NO_CANDIDATES {
            return a;
        }
        let n = self.candidates.first(&self.arena, by_name, f1, f2, &accept);
        match (a, n) {
            (Some(a), Some(n)) => Some(a.min(n)),
            (a, n) => a.or(n),
        }
    }

    fn by_rule(&self, rule: usize) -> Decision {
        Decision {
            action: self.meta[rule].action,
            rule: Some(rule),
            cause: DecisionCause::Rule,
        }
    }

    /// Decides a new flow: the first rule (in policy order) whose direction, destination (by
    /// address, or by the name attributed to it), protocol and port match; else the
    /// direction's default.
    #[inline]
    pub fn decide(&self, q: &FlowQuery<'_>) -> Decision {
        let ip = judged_ip(q.dst);
        let by_addr = self.address_candidates(ip);
        let by_name = match q.domain {
            Some(name) => self.name_candidates(name),
            None => NO_CANDIDATES,
        };
        let dir = match q.direction {
            Direction::Egress => 0,
            Direction::Ingress => 1,
        };
        let proto_dir = self.proto_dir[dir][q.protocol as usize];
        let by_port = if q.protocol.has_ports() {
            self.ports.set_for(q.port)
        } else {
            self.ports.portless()
        };
        let bit = proto_dir_bit(q.direction, q.protocol);
        let hit = self.first_of(by_addr, by_name, proto_dir, by_port, |r| {
            let m = &self.meta[r];
            m.proto_dir & bit != 0 && self.ports_admit(m, q.protocol, q.port)
        });
        match hit {
            Some(r) => self.by_rule(r),
            None => Decision {
                action: self.policy.default_for(q.direction),
                rule: None,
                cause: DecisionCause::Default,
            },
        }
    }

    /// Decides whether a DNS query for `name` may go upstream (design §7). The first egress
    /// rule that is `*` or names `name`, and is an allow or an unconditional deny, decides.
    /// Otherwise: refused ([`DecisionCause::DnsNameNotAllowed`]) when egress defaults to deny
    /// and some allow rule names a domain, allowed in every other case.
    pub fn decide_dns_query(&self, name: &str) -> Decision {
        let by_name = self.name_candidates(name);
        let named = self
            .candidates
            .first(&self.arena, by_name, self.dns_relevant, FULL, |r| {
                self.meta[r].dns_relevant
            });
        let first = match (named, self.first_any_dns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match first {
            Some(r) => self.by_rule(r),
            None => self.dns_fallback,
        }
    }

    /// Decides the server name a client named in its TLS ClientHello (SNI) on an egress flow
    /// of `protocol` to `port`. The first egress rule that is `*` or names `name`, and whose
    /// protocols and ports admit the flow, decides; address rules (CIDRs, groups) never match
    /// a name. With no such rule, the DNS query fallback applies: refused
    /// ([`DecisionCause::DnsNameNotAllowed`]) when egress defaults to deny and some allow rule
    /// names a domain, allowed otherwise. A server name is claimed by the client, so callers
    /// ask this on top of [`decide`](Self::decide) for the flow's address, never instead.
    pub fn decide_server_name(&self, name: &str, protocol: Protocol, port: u16) -> Decision {
        let by_name = self.name_candidates(name);
        let proto_dir = self.proto_dir[0][protocol as usize];
        let by_port = if protocol.has_ports() {
            self.ports.set_for(port)
        } else {
            self.ports.portless()
        };
        let bit = proto_dir_bit(Direction::Egress, protocol);
        let hit = self.first_of(self.any_dest, by_name, proto_dir, by_port, |r| {
            let m = &self.meta[r];
            m.proto_dir & bit != 0 && self.ports_admit(m, protocol, port)
        });
        match hit {
            Some(r) => self.by_rule(r),
            None => self.dns_fallback,
        }
    }

    /// Decides whether a DNS answer mapping `name` to `addr` may reach the guest (rebind
    /// protection). Addresses outside private, loopback, link-local, metadata and host pass.
    /// Otherwise the first egress rule matching `addr` or `name` that is an allow or an
    /// unconditional deny decides; with none, the egress default does (deny is reported as
    /// [`DecisionCause::RebindProtection`]).
    pub fn check_dns_answer(&self, name: &str, addr: IpAddr) -> Decision {
        let ip = judged_ip(addr);
        if !self
            .groups
            .groups_of(ip)
            .intersects(GroupSet::REBIND_PROTECTED)
        {
            return Decision {
                action: Action::Allow,
                rule: None,
                cause: DecisionCause::Default,
            };
        }
        let by_name = self.name_candidates(name);
        let by_addr = self.address_candidates(ip);
        match self.first_of(by_addr, by_name, self.dns_relevant, FULL, |r| {
            self.meta[r].dns_relevant
        }) {
            Some(r) => self.by_rule(r),
            None => match self.policy.default_egress {
                Action::Allow => Decision {
                    action: Action::Allow,
                    rule: None,
                    cause: DecisionCause::Default,
                },
                Action::Deny => Decision {
                    action: Action::Deny,
                    rule: None,
                    cause: DecisionCause::RebindProtection,
                },
            },
        }
    }
}

//! The reference evaluator: checks rules one by one, in order, straight from the model. It is
//! the executable statement of the semantics that the compiled evaluator must reproduce (a
//! property test compares the two); it is kept simple rather than fast.

use std::net::IpAddr;

use crate::domain_name::{normalize_into, MAX_NAME_LEN};
use crate::groups::{judged_ip, GroupSet, GroupTable};
use crate::model::{
    Action, Decision, DecisionCause, Destination, Direction, FlowQuery, Policy, PolicyContext,
    Protocol, Rule,
};

/// A policy evaluated by scanning its rules in order.
#[derive(Debug, Clone)]
pub struct LinearPolicy {
    policy: Policy,
    groups: GroupTable,
}

fn dest_matches_ip(dest: &Destination, ip: IpAddr, groups: GroupSet) -> bool {
    match dest {
        Destination::Any => true,
        Destination::Cidr(c) => c.contains(ip),
        Destination::Group(g) => groups.contains(*g),
        Destination::Domain(_) | Destination::Suffix(_) => false,
    }
}

fn dest_matches_name(dest: &Destination, name: Option<&[u8]>) -> bool {
    match (dest, name) {
        (Destination::Domain(d), Some(n)) => d.as_str().as_bytes() == n,
        (Destination::Suffix(d), Some(n)) => d.is_suffix_of(n),
        _ => false,
    }
}

/// True when the rule may decide a DNS question: it applies to egress and is an allow, or a
/// deny with no protocol or port restriction.
fn dns_relevant(rule: &Rule) -> bool {
    rule.direction().covers(Direction::Egress)
        && (rule.action() == Action::Allow || rule.is_unconditional())
}

fn by_rule(rules: &[Rule], index: usize) -> Decision {
    Decision {
        action: rules[index].action(),
        rule: Some(index),
        cause: DecisionCause::Rule,
    }
}

impl LinearPolicy {
    /// Wraps a policy for the given sandbox context.
    pub fn new(policy: &Policy, ctx: &PolicyContext) -> Self {
        Self {
            policy: policy.clone(),
            groups: GroupTable::new(&ctx.host_addrs),
        }
    }

    /// Decides a new flow: the first rule whose direction, destination (by address, or by the
    /// attributed name), protocol and port all match; else the direction's default.
    pub fn decide(&self, q: &FlowQuery<'_>) -> Decision {
        let ip = judged_ip(q.dst);
        let groups = self.groups.groups_of(ip);
        let mut buf = [0u8; MAX_NAME_LEN + 1];
        let name = q.domain.and_then(|d| normalize_into(d, &mut buf));
        let rules = &self.policy.rules;
        for (i, rule) in rules.iter().enumerate() {
            if rule.direction().covers(q.direction)
                && (dest_matches_ip(rule.destination(), ip, groups)
                    || dest_matches_name(rule.destination(), name))
                && rule.admits(q.protocol, q.port)
            {
                return by_rule(rules, i);
            }
        }
        Decision {
            action: self.policy.default_for(q.direction),
            rule: None,
            cause: DecisionCause::Default,
        }
    }

    /// Decides whether a DNS query for `name` may be forwarded upstream. The first egress rule
    /// that is `*` or names `name`, and is an allow or an unconditional deny, decides. With no
    /// such rule: allowed when egress defaults to allow, or when no allow rule names a domain;
    /// refused otherwise (design §7: DNS must not be a side door).
    pub fn decide_dns_query(&self, name: &str) -> Decision {
        self.first_rule_naming(name, dns_relevant)
    }

    /// Decides the server name a client named in its TLS ClientHello (SNI) on an egress flow
    /// of `protocol` to `port`. The first egress rule that is `*` or names `name`, and whose
    /// protocols and ports admit the flow, decides; address rules (CIDRs, groups) never match
    /// a name. With no such rule, the DNS query fallback applies: refused when egress defaults
    /// to deny and some allow rule names a domain, allowed otherwise. So a name rule gives a
    /// server name the verdict it gives the same name's DNS query, and the netstack asks this
    /// on top of [`decide`](Self::decide) for the flow's address, never instead of it.
    pub fn decide_server_name(&self, name: &str, protocol: Protocol, port: u16) -> Decision {
        self.first_rule_naming(name, |rule| {
            rule.direction().covers(Direction::Egress) && rule.admits(protocol, port)
        })
    }

    /// The first rule that is `*` or names `name` and that `relevant` accepts decides; with
    /// none, the DNS fallback.
    fn first_rule_naming(&self, name: &str, relevant: impl Fn(&Rule) -> bool) -> Decision {
        let mut buf = [0u8; MAX_NAME_LEN + 1];
        let name = normalize_into(name, &mut buf);
        let rules = &self.policy.rules;
        for (i, rule) in rules.iter().enumerate() {
            let names_it = matches!(rule.destination(), Destination::Any)
                || dest_matches_name(rule.destination(), name);
            if names_it && relevant(rule) {
                return by_rule(rules, i);
            }
        }
        self.dns_fallback()
    }

    fn dns_fallback(&self) -> Decision {
        if self.policy.default_egress == Action::Deny && self.policy.allows_names() {
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
        }
    }

    /// Decides whether a DNS answer mapping `name` to `addr` may reach the guest (rebind
    /// protection). Addresses outside the protected groups pass. Otherwise the first egress
    /// rule that matches `addr` or `name` and is an allow or an unconditional deny decides;
    /// with none, the egress default decides (so `allow-all` passes everything).
    pub fn check_dns_answer(&self, name: &str, addr: IpAddr) -> Decision {
        let ip = judged_ip(addr);
        let groups = self.groups.groups_of(ip);
        if !groups.intersects(GroupSet::REBIND_PROTECTED) {
            return Decision {
                action: Action::Allow,
                rule: None,
                cause: DecisionCause::Default,
            };
        }
        let mut buf = [0u8; MAX_NAME_LEN + 1];
        let name = normalize_into(name, &mut buf);
        let rules = &self.policy.rules;
        for (i, rule) in rules.iter().enumerate() {
            let hit = dest_matches_ip(rule.destination(), ip, groups)
                || dest_matches_name(rule.destination(), name);
            if hit && dns_relevant(rule) {
                return by_rule(rules, i);
            }
        }
        match self.policy.default_egress {
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
        }
    }
}

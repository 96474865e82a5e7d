//! The policy model (design §7): actions, directions, protocols, ports, destinations, rules,
//! the policy itself, and the query/decision types the netstack exchanges with an evaluator.
//! Owns validation of a single rule (ICMP is egress-only; ports need a port protocol). It
//! never evaluates: see `linear` and `compiled`.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::IpCidr;
use crate::domain_name::DomainName;
use crate::error::PolicyError;
use crate::groups::Group;

/// What a rule or a default does with matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the flow through.
    Allow,
    /// Drop or refuse the flow.
    Deny,
}

impl Action {
    /// The action's name as written in rules.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = PolicyError;

    /// Parses `allow` or `deny` (e.g. the value of `--net-default-egress`).
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.trim() {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            other => Err(PolicyError::BadDefaultAction {
                token: other.into(),
            }),
        }
    }
}

/// The direction of a flow: egress leaves the sandbox, ingress enters it (published ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic the sandbox starts towards the outside.
    Egress,
    /// Traffic the outside starts towards the sandbox.
    Ingress,
}

/// The directions a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleDirection {
    /// Only egress flows (the default when a rule does not say).
    #[default]
    Egress,
    /// Only ingress flows.
    Ingress,
    /// Both directions.
    Any,
}

impl RuleDirection {
    /// The direction's name as written in rules.
    pub fn name(self) -> &'static str {
        match self {
            RuleDirection::Egress => "egress",
            RuleDirection::Ingress => "ingress",
            RuleDirection::Any => "any",
        }
    }

    /// True when a rule with this direction applies to a flow going `dir`.
    pub fn covers(self, dir: Direction) -> bool {
        matches!(
            (self, dir),
            (RuleDirection::Any, _)
                | (RuleDirection::Egress, Direction::Egress)
                | (RuleDirection::Ingress, Direction::Ingress)
        )
    }
}

/// A transport protocol a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (has ports).
    Tcp,
    /// UDP (has ports).
    Udp,
    /// ICMP over IPv4 (no ports; egress only).
    Icmpv4,
    /// ICMPv6 (no ports; egress only).
    Icmpv6,
}

/// All protocols, in bit order.
pub const ALL_PROTOCOLS: [Protocol; 4] = [
    Protocol::Tcp,
    Protocol::Udp,
    Protocol::Icmpv4,
    Protocol::Icmpv6,
];

impl Protocol {
    /// The protocol's name as written in rules.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmpv4 => "icmpv4",
            Protocol::Icmpv6 => "icmpv6",
        }
    }

    /// Looks a protocol up by its rule name.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL_PROTOCOLS.into_iter().find(|p| p.name() == name)
    }

    /// True for protocols that carry ports (TCP, UDP).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }

    /// True for the ICMP protocols.
    pub fn is_icmp(self) -> bool {
        !self.has_ports()
    }
}

/// A set of protocols; the empty set means "all protocols".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProtocolSet(u8);

impl ProtocolSet {
    /// The empty set, which a rule reads as "all protocols".
    pub const ALL: ProtocolSet = ProtocolSet(0);

    /// Builds a set from a list of protocols.
    pub fn of(protocols: &[Protocol]) -> Self {
        ProtocolSet(protocols.iter().fold(0, |acc, p| acc | (1 << *p as u8)))
    }

    /// True when the set names no protocol (matches all).
    pub fn is_all(self) -> bool {
        self.0 == 0
    }

    /// True when a rule with this set matches `protocol`.
    pub fn matches(self, protocol: Protocol) -> bool {
        self.0 == 0 || self.0 & (1 << protocol as u8) != 0
    }

    /// The protocols named explicitly (empty for "all").
    pub fn iter(self) -> impl Iterator<Item = Protocol> {
        ALL_PROTOCOLS
            .into_iter()
            .filter(move |p| self.0 & (1 << *p as u8) != 0)
    }
}

/// An inclusive port range; a single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// First port, >= 1.
    pub start: u16,
    /// Last port, >= start.
    pub end: u16,
}

impl PortRange {
    /// Builds a range; `None` when `start` is 0 or greater than `end`.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start >= 1 && start <= end).then_some(Self { start, end })
    }

    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// What a rule's destination names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// `*`: every destination.
    Any,
    /// An IP address or CIDR block (a single IP is a /32 or /128 prefix).
    Cidr(IpCidr),
    /// Exactly this domain name.
    Domain(DomainName),
    /// This domain and all its subdomains (`.example.com`).
    Suffix(DomainName),
    /// A named group of addresses.
    Group(Group),
}

impl Destination {
    /// True when the destination is matched by name rather than by address.
    pub fn is_name(&self) -> bool {
        matches!(self, Destination::Domain(_) | Destination::Suffix(_))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Any => f.write_str("*"),
            Destination::Cidr(c) => {
                let full = if c.addr().is_ipv4() { 32 } else { 128 };
                if c.len() == full {
                    write!(f, "{}", c.addr())
                } else {
                    write!(f, "{c}")
                }
            }
            // A single label prints fully qualified (`intranet.`): bare, the rule syntax would
            // read it as a group name or reject it.
            Destination::Domain(d) if d.is_single_label() => write!(f, "{d}."),
            Destination::Domain(d) => write!(f, "{d}"),
            Destination::Suffix(d) => write!(f, ".{d}"),
            Destination::Group(g) => write!(f, "{g}"),
        }
    }
}

/// One policy rule. Built only through [`Rule::new`] (or the parsers), which validates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    action: Action,
    direction: RuleDirection,
    destination: Destination,
    protocols: ProtocolSet,
    ports: Vec<PortRange>,
}

impl Rule {
    /// Builds a rule. Fails when an ICMP protocol is named for a direction that includes ingress,
    /// or when ports are given but every named protocol is ICMP. An empty `ports` means all.
    pub fn new(
        action: Action,
        direction: RuleDirection,
        destination: Destination,
        protocols: ProtocolSet,
        ports: Vec<PortRange>,
    ) -> Result<Self, PolicyError> {
        let mut ports = ports;
        ports.sort_unstable();
        ports.dedup();
        let rule = Self {
            action,
            direction,
            destination,
            protocols,
            ports,
        };
        if direction != RuleDirection::Egress {
            if let Some(icmp) = rule.protocols.iter().find(|p| p.is_icmp()) {
                return Err(PolicyError::IcmpNotEgress {
                    rule: rule.to_string(),
                    protocol: icmp.name(),
                    direction: direction.name(),
                });
            }
        }
        if !rule.ports.is_empty()
            && !rule.protocols.is_all()
            && rule.protocols.iter().all(|p| p.is_icmp())
        {
            return Err(PolicyError::PortsWithoutPortProtocol {
                rule: rule.to_string(),
            });
        }
        Ok(rule)
    }

    /// Builds a rule the caller knows to be valid (egress-only when it names ICMP; ports only
    /// with a port protocol). Ports must be sorted and free of duplicates.
    pub(crate) fn new_unchecked(
        action: Action,
        direction: RuleDirection,
        destination: Destination,
        protocols: ProtocolSet,
        ports: Vec<PortRange>,
    ) -> Self {
        Self {
            action,
            direction,
            destination,
            protocols,
            ports,
        }
    }

    /// Shorthand for an unrestricted (all protocols, all ports) rule.
    pub fn simple(action: Action, direction: RuleDirection, destination: Destination) -> Self {
        Self {
            action,
            direction,
            destination,
            protocols: ProtocolSet::ALL,
            ports: Vec::new(),
        }
    }

    /// The rule's action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The directions the rule applies to.
    pub fn direction(&self) -> RuleDirection {
        self.direction
    }

    /// The rule's destination.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The protocols the rule applies to (empty = all).
    pub fn protocols(&self) -> ProtocolSet {
        self.protocols
    }

    /// The port ranges the rule applies to (empty = all), sorted.
    pub fn ports(&self) -> &[PortRange] {
        &self.ports
    }

    /// True when the rule restricts neither protocols nor ports.
    pub fn is_unconditional(&self) -> bool {
        self.protocols.is_all() && self.ports.is_empty()
    }

    /// True when the rule's protocol and port constraints admit a flow of `protocol` to `port`.
    /// A rule with ports never matches a portless (ICMP) flow.
    pub fn admits(&self, protocol: Protocol, port: u16) -> bool {
        self.protocols.matches(protocol)
            && (self.ports.is_empty()
                || (protocol.has_ports() && self.ports.iter().any(|r| r.contains(port))))
    }
}

impl fmt::Display for Rule {
    /// Renders the rule in CLI syntax (`allow@egress:public:tcp:443`), which parses back to the
    /// same rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{}",
            self.action.name(),
            self.direction.name(),
            self.destination
        )?;
        if self.protocols.is_all() && self.ports.is_empty() {
            return Ok(());
        }
        if self.protocols.is_all() {
            f.write_str(":*")?;
        } else {
            for (i, p) in self.protocols.iter().enumerate() {
                f.write_str(if i == 0 { ":" } else { "," })?;
                f.write_str(p.name())?;
            }
        }
        for (i, r) in self.ports.iter().enumerate() {
            write!(f, "{}{r}", if i == 0 { ":" } else { "," })?;
        }
        Ok(())
    }
}

/// Facts about the sandbox the policy is compiled for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyContext {
    /// The gateway alias addresses that make up the `host` group (IPv4 and/or IPv6).
    pub host_addrs: Vec<IpAddr>,
}

/// A new flow the netstack asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowQuery<'a> {
    /// Egress (sandbox starts it) or ingress (published port).
    pub direction: Direction,
    /// The address outside the sandbox: the destination of an egress flow, the peer (source)
    /// of an ingress flow. IPv4-mapped IPv6 is judged as IPv4.
    pub dst: IpAddr,
    /// The name the netstack attributed to `dst` from DNS answers it saw itself, if any.
    pub domain: Option<&'a str>,
    /// The flow's protocol.
    pub protocol: Protocol,
    /// The port outside the sandbox (ignored for ICMP).
    pub port: u16,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionCause {
    /// Rule number `Decision::rule` matched first.
    Rule,
    /// No rule matched; the direction's default applied.
    Default,
    /// DNS query refused: egress defaults to deny, the policy names domains, and no allow rule
    /// covers the queried name (design §7).
    DnsNameNotAllowed,
    /// DNS answer dropped: it points into a rebind-protected group and no rule allows that.
    RebindProtection,
}

/// The verdict on a flow, a DNS query or a DNS answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// Index (into [`Policy::rules`]) of the rule that decided, `None` for a default.
    pub rule: Option<usize>,
    /// Why.
    pub cause: DecisionCause,
}

impl Decision {
    /// True when the action is allow.
    pub fn is_allowed(&self) -> bool {
        self.action == Action::Allow
    }
}

/// A complete policy: ordered rules (first match wins) and a default per direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Action when no rule matches an egress flow.
    pub default_egress: Action,
    /// Action when no rule matches an ingress flow.
    pub default_ingress: Action,
    /// The rules, in evaluation order.
    pub rules: Vec<Rule>,
}

impl Default for Policy {
    /// The default policy is the `public-only` preset.
    fn default() -> Self {
        crate::presets::Preset::PublicOnly.policy()
    }
}

impl Policy {
    /// A policy from defaults and rules.
    pub fn new(default_egress: Action, default_ingress: Action, rules: Vec<Rule>) -> Self {
        Self {
            default_egress,
            default_ingress,
            rules,
        }
    }

    /// The default action for `direction`.
    pub fn default_for(&self, direction: Direction) -> Action {
        match direction {
            Direction::Egress => self.default_egress,
            Direction::Ingress => self.default_ingress,
        }
    }

    /// True when some allow rule that applies to egress names a domain or suffix: then, with a
    /// deny egress default, DNS queries for uncovered names are refused (design §7).
    pub fn allows_names(&self) -> bool {
        self.rules.iter().any(|r| {
            r.action == Action::Allow
                && r.direction.covers(Direction::Egress)
                && r.destination.is_name()
        })
    }

    /// Puts a deny-list of domains and suffixes in front of every rule (they apply before all
    /// allow rules, to egress, on every protocol).
    pub fn prepend_deny_names(&mut self, domains: &[DomainName], suffixes: &[DomainName]) {
        let front = domains
            .iter()
            .map(|d| Destination::Domain(d.clone()))
            .chain(suffixes.iter().map(|d| Destination::Suffix(d.clone())))
            .map(|d| Rule::simple(Action::Deny, RuleDirection::Egress, d));
        let rest = std::mem::take(&mut self.rules);
        self.rules = front.chain(rest).collect();
    }
}

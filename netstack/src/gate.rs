//! The flow gate: the question the netstack asks before opening any new flow.
//!
//! Owns the trait the policy engine is bound to ([`FlowGate`]) and an allow-all
//! implementation. The netstack asks once per new flow (TCP SYN, first UDP datagram of
//! a 4-tuple, ICMP echo flow, accepted published connection), per DNS query name and per
//! TLS server name on inspected ports; it never caches a verdict across flows.

use std::net::IpAddr;

/// Direction of a flow relative to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Opened by the guest.
    Egress,
    /// Opened towards the guest (published ports).
    Ingress,
}

/// Transport of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMPv4 echo.
    Icmpv4,
    /// ICMPv6 echo.
    Icmpv6,
}

/// What the gate is asked about.
#[derive(Clone, Copy, Debug)]
pub struct FlowInfo<'a> {
    /// Who opened it.
    pub direction: Direction,
    /// Transport.
    pub proto: FlowProto,
    /// The address outside the sandbox: the destination as the guest addressed it
    /// (egress; the gateway address for the host alias), or the connecting peer (ingress).
    pub dst: IpAddr,
    /// Destination port for egress, the published guest port for ingress (0 for ICMP).
    pub port: u16,
    /// Domain the destination address was learned from through our DNS, if any.
    pub domain: Option<&'a str>,
    /// Whether the destination is the gateway / host alias (reaches host loopback).
    pub to_host: bool,
}

/// The gate's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Open the flow?
    pub allow: bool,
    /// Index of the rule that decided, if a rule (not a default) did.
    pub rule: Option<usize>,
}

impl Verdict {
    /// Allowed by default (no rule).
    pub const ALLOW: Verdict = Verdict {
        allow: true,
        rule: None,
    };
    /// Denied by default (no rule).
    pub const DENY: Verdict = Verdict {
        allow: false,
        rule: None,
    };
}

/// Decides whether new flows and DNS queries may proceed. Implemented by the VMM on top of
/// the compiled policy; must be cheap (called on the packet path).
pub trait FlowGate: Send {
    /// Verdict for a new flow.
    fn decide(&self, flow: &FlowInfo<'_>) -> Verdict;
    /// Verdict for a DNS query for `name` (lower-case, no trailing dot); a deny is answered
    /// locally with REFUSED and never forwarded.
    fn decide_dns(&self, name: &str) -> Verdict {
        let _ = name;
        Verdict::ALLOW
    }
    /// Verdict for an address in a DNS answer for `name` (rebind protection). A deny drops
    /// the whole answer before the guest sees it.
    fn check_dns_answer(&self, name: &str, addr: IpAddr) -> Verdict {
        let _ = (name, addr);
        Verdict::ALLOW
    }
    /// Verdict for the server name (SNI, lower-case, no trailing dot) of a guest's TLS
    /// ClientHello on `flow`, a TCP flow to a TLS port that [`decide`](Self::decide) already
    /// allowed by address: the flow goes ahead only if both allow it (the name is the
    /// guest's claim, so it can narrow the address verdict but never widen it). `None`: the
    /// ClientHello named no server and the netstack requires one; the netstack refuses it
    /// whatever the answer and asks only so the refusal is reported like the gate's own.
    fn decide_server_name(&self, flow: &FlowInfo<'_>, name: Option<&str>) -> Verdict {
        let _ = flow;
        if name.is_some() {
            Verdict::ALLOW
        } else {
            Verdict::DENY
        }
    }
}

/// Gate that allows everything (the default until a policy is bound).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl FlowGate for AllowAll {
    fn decide(&self, _flow: &FlowInfo<'_>) -> Verdict {
        Verdict::ALLOW
    }
}

fn verdict(d: policy::Decision) -> Verdict {
    Verdict {
        allow: d.is_allowed(),
        rule: d.rule,
    }
}

/// The compiled policy is the production gate (design §7).
impl FlowGate for policy::CompiledPolicy {
    fn decide(&self, flow: &FlowInfo<'_>) -> Verdict {
        let q = policy::FlowQuery {
            direction: match flow.direction {
                Direction::Egress => policy::Direction::Egress,
                Direction::Ingress => policy::Direction::Ingress,
            },
            dst: flow.dst,
            domain: flow.domain,
            protocol: match flow.proto {
                FlowProto::Tcp => policy::Protocol::Tcp,
                FlowProto::Udp => policy::Protocol::Udp,
                FlowProto::Icmpv4 => policy::Protocol::Icmpv4,
                FlowProto::Icmpv6 => policy::Protocol::Icmpv6,
            },
            port: flow.port,
        };
        verdict(policy::CompiledPolicy::decide(self, &q))
    }

    fn decide_dns(&self, name: &str) -> Verdict {
        verdict(self.decide_dns_query(name))
    }

    fn check_dns_answer(&self, name: &str, addr: IpAddr) -> Verdict {
        verdict(policy::CompiledPolicy::check_dns_answer(self, name, addr))
    }

    fn decide_server_name(&self, flow: &FlowInfo<'_>, name: Option<&str>) -> Verdict {
        let Some(name) = name else {
            return Verdict::DENY;
        };
        let protocol = match flow.proto {
            FlowProto::Tcp => policy::Protocol::Tcp,
            FlowProto::Udp => policy::Protocol::Udp,
            FlowProto::Icmpv4 => policy::Protocol::Icmpv4,
            FlowProto::Icmpv6 => policy::Protocol::Icmpv6,
        };
        verdict(policy::CompiledPolicy::decide_server_name(
            self, name, protocol, flow.port,
        ))
    }
}

/// A policy that another thread (the control plane) can swap at runtime, read lock-free
/// on every decision. After a swap, call [`crate::Netstack::rejudge_flows`] on the device
/// thread so flows the new policy denies are cut.
pub type SwappableGate = std::sync::Arc<arc_swap::ArcSwap<policy::CompiledPolicy>>;

impl FlowGate for arc_swap::ArcSwap<policy::CompiledPolicy> {
    fn decide(&self, flow: &FlowInfo<'_>) -> Verdict {
        FlowGate::decide(&**self.load(), flow)
    }
    fn decide_dns(&self, name: &str) -> Verdict {
        FlowGate::decide_dns(&**self.load(), name)
    }
    fn check_dns_answer(&self, name: &str, addr: IpAddr) -> Verdict {
        FlowGate::check_dns_answer(&**self.load(), name, addr)
    }
    fn decide_server_name(&self, flow: &FlowInfo<'_>, name: Option<&str>) -> Verdict {
        FlowGate::decide_server_name(&**self.load(), flow, name)
    }
}

/// A shared gate (e.g. one policy for several VMs).
impl<G: FlowGate + Sync + ?Sized> FlowGate for std::sync::Arc<G> {
    fn decide(&self, flow: &FlowInfo<'_>) -> Verdict {
        (**self).decide(flow)
    }
    fn decide_dns(&self, name: &str) -> Verdict {
        (**self).decide_dns(name)
    }
    fn check_dns_answer(&self, name: &str, addr: IpAddr) -> Verdict {
        (**self).check_dns_answer(name, addr)
    }
    fn decide_server_name(&self, flow: &FlowInfo<'_>, name: Option<&str>) -> Verdict {
        (**self).decide_server_name(flow, name)
    }
}

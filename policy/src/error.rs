//! Errors raised while building a policy: parsing rule text, JSON or TOML, and validating
//! rules. Every message names the offending token, the rule it came from (rendered in CLI
//! syntax) and what was expected. Deciding on a flow never fails, so nothing here is raised on
//! the hot path.

use thiserror::Error;

/// Why a rule, destination or policy document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// The rule text has no `@` between the action and the destination.
    #[error(
        "rule \"{rule}\" has no \"@\": expected ACTION@[DIRECTION:]DEST[:PROTOS[:PORTS]], \
         e.g. allow@public:tcp:443"
    )]
    MissingAt {
        /// The whole rule text.
        rule: String,
    },
    /// The action is neither `allow` nor `deny`.
    #[error("bad action \"{token}\" in rule \"{rule}\": expected allow or deny")]
    BadAction {
        /// The offending token.
        token: String,
        /// The rule it came from.
        rule: String,
    },
    /// A default action (e.g. `--net-default-egress`) is neither `allow` nor `deny`.
    #[error("bad default action \"{token}\": expected allow or deny")]
    BadDefaultAction {
        /// The offending token.
        token: String,
    },
    /// The direction is not `egress`, `ingress` or `any`.
    #[error("bad direction \"{token}\" in rule \"{rule}\": expected egress, ingress or any")]
    BadDirection {
        /// The offending token.
        token: String,
        /// The rule it came from.
        rule: String,
    },
    /// The destination is not `*`, an IP, a CIDR, a domain, a `.suffix` or a group.
    #[error("bad destination \"{token}\" in rule \"{rule}\": {reason}")]
    BadDestination {
        /// The offending token.
        token: String,
        /// The rule it came from.
        rule: String,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// A protocol name is not one of tcp, udp, icmpv4, icmpv6 (or `*` for all).
    #[error(
        "bad protocol \"{token}\" in rule \"{rule}\": expected a comma list of tcp, udp, \
         icmpv4, icmpv6, or * for all"
    )]
    BadProtocol {
        /// The offending token.
        token: String,
        /// The rule it came from.
        rule: String,
    },
    /// A port is not a number in 1..=65535.
    #[error("bad port \"{token}\" in rule \"{rule}\": expected a number from 1 to 65535")]
    BadPort {
        /// The offending token.
        token: String,
        /// The rule it came from.
        rule: String,
    },
    /// A port range is malformed or reversed.
    #[error("bad port range \"{token}\" in rule \"{rule}\": {reason}")]
    BadPortRange {
        /// The offending token.
        token: String,
        /// The rule it came from.
        rule: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// An ICMP protocol was named in a rule that can apply to ingress traffic.
    #[error(
        "rule \"{rule}\" names {protocol} with direction {direction}: ICMP rules are egress-only \
         (the sandbox has no inbound ICMP path); use direction egress or drop {protocol}"
    )]
    IcmpNotEgress {
        /// The rule, in CLI syntax.
        rule: String,
        /// The ICMP protocol named.
        protocol: &'static str,
        /// The direction the rule was given.
        direction: &'static str,
    },
    /// Ports were given for a rule whose protocols are all portless (ICMP).
    #[error(
        "rule \"{rule}\" gives ports but only ICMP protocols, which have no ports: add tcp or udp \
         or drop the ports"
    )]
    PortsWithoutPortProtocol {
        /// The rule, in CLI syntax.
        rule: String,
    },
    /// A preset name is unknown.
    #[error("unknown preset \"{token}\": expected public-only, none, allow-all or non-local")]
    BadPreset {
        /// The offending token.
        token: String,
    },
    /// A host-list entry (allow/block host form) is not understood.
    #[error(
        "bad host pattern \"{token}\": {reason}; expected a domain, *.domain, localhost, a group, \
         an IP or a CIDR"
    )]
    BadHostPattern {
        /// The offending entry.
        token: String,
        /// What was wrong.
        reason: String,
    },
    /// The policy has more rules than the compiled form can index.
    #[error("policy has {count} rules, more than the supported maximum of {max}: merge rules")]
    TooManyRules {
        /// Number of rules given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// A JSON or TOML document could not be read.
    #[error("cannot read {format} policy: {message}")]
    Document {
        /// `JSON` or `TOML`.
        format: &'static str,
        /// The parser's message, which includes our rule error and the location.
        message: String,
    },
}

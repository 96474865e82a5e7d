//! Network policy for ringfence sandboxes (design §7): the rule model, its parsers (CLI rule
//! text, JSON, TOML, allow/block host lists), presets, destination groups, and two evaluators —
//! [`CompiledPolicy`], the one the netstack calls on every new flow, and [`LinearPolicy`], the
//! reference it is tested against.
//!
//! ```
//! use policy::{parse_rules, Action, Direction, FlowQuery, Policy, PolicyContext, Protocol};
//!
//! let rules = parse_rules("allow@public:tcp:443,deny@metadata").unwrap();
//! let policy = Policy::new(Action::Deny, Action::Allow, rules);
//! let ctx = PolicyContext { host_addrs: vec!["172.16.0.1".parse().unwrap()] };
//! let compiled = policy.compile(&ctx).unwrap();
//! let d = compiled.decide(&FlowQuery {
//!     direction: Direction::Egress,
//!     dst: "203.0.113.10".parse().unwrap(),
//!     domain: None,
//!     protocol: Protocol::Tcp,
//!     port: 443,
//! });
//! assert_eq!((d.action, d.rule), (Action::Allow, Some(0)));
//! ```
//!
//! The crate depends on nothing in the workspace; it does no I/O and keeps no global state.

mod cidr;
mod compiled;
mod domain_name;
mod error;
mod groups;
mod host_list;
mod linear;
mod model;
mod parse;
mod presets;

pub use cidr::{canonical_ip, IpCidr};
pub use compiled::{CompiledPolicy, CompiledStats, MAX_RULES};
pub use domain_name::DomainName;
pub use error::PolicyError;
pub use groups::{embedded_ipv4, groups_of, judged_ip, Group, GroupSet, GroupTable, ALL_GROUPS};
pub use host_list::{parse_host_pattern, HostLists};
pub use linear::LinearPolicy;
pub use model::{
    Action, Decision, DecisionCause, Destination, Direction, FlowQuery, Policy, PolicyContext,
    PortRange, Protocol, ProtocolSet, Rule, RuleDirection, ALL_PROTOCOLS,
};
pub use parse::cli::{parse_destination, parse_rule, parse_rules};
pub use parse::document::{PolicyDocument, PortsSpec, RuleSpec};
pub use parse::tls_section::{tls_section, SecretSection, TlsSection};
pub use presets::{Preset, ALL_PRESETS};

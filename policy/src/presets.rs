//! Named presets (design §7): `public-only`, `none`, `allow-all`, `non-local`. Owns only the
//! rules and defaults each preset stands for.
//!
//! DNS to the sandbox's resolver is modelled as an ordinary rule, `allow@egress:host:tcp,udp:53`:
//! the resolver is the gateway alias, which is the `host` group. `non-local` puts
//! `deny@egress:host` right after it, so that allowing `private` never opens the host's own
//! services (host addresses are in the `host` group only, see `groups`, but the explicit rule
//! keeps the intent readable).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::groups::Group;
use crate::model::{
    Action, Destination, Policy, PortRange, Protocol, ProtocolSet, Rule, RuleDirection,
};

/// A named policy preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Egress to `public` and DNS to the sandbox resolver; everything else denied. The default.
    PublicOnly,
    /// No network: every flow denied in both directions.
    None,
    /// Everything allowed in both directions.
    AllowAll,
    /// Egress to `public` and `private` (and DNS to the resolver); not loopback, link-local,
    /// metadata, multicast or the host.
    NonLocal,
}

/// All presets.
pub const ALL_PRESETS: [Preset; 4] = [
    Preset::PublicOnly,
    Preset::None,
    Preset::AllowAll,
    Preset::NonLocal,
];

fn dns_to_resolver() -> Rule {
    let dns = PortRange { start: 53, end: 53 };
    // Egress-only and TCP/UDP with ports: valid by construction.
    Rule::new_unchecked(
        Action::Allow,
        RuleDirection::Egress,
        Destination::Group(Group::Host),
        ProtocolSet::of(&[Protocol::Tcp, Protocol::Udp]),
        vec![dns],
    )
}

fn egress(action: Action, group: Group) -> Rule {
    Rule::simple(action, RuleDirection::Egress, Destination::Group(group))
}

impl Preset {
    /// The preset's name as written on the command line and in documents.
    pub fn name(self) -> &'static str {
        match self {
            Preset::PublicOnly => "public-only",
            Preset::None => "none",
            Preset::AllowAll => "allow-all",
            Preset::NonLocal => "non-local",
        }
    }

    /// The rules the preset adds (after any user rules).
    pub fn rules(self) -> Vec<Rule> {
        match self {
            Preset::PublicOnly => vec![dns_to_resolver(), egress(Action::Allow, Group::Public)],
            Preset::None | Preset::AllowAll => Vec::new(),
            Preset::NonLocal => vec![
                dns_to_resolver(),
                egress(Action::Deny, Group::Host),
                egress(Action::Allow, Group::Public),
                egress(Action::Allow, Group::Private),
            ],
        }
    }

    /// The preset's default egress action.
    pub fn default_egress(self) -> Action {
        match self {
            Preset::AllowAll => Action::Allow,
            _ => Action::Deny,
        }
    }

    /// The preset's default ingress action (ingress only exists through published ports).
    pub fn default_ingress(self) -> Action {
        match self {
            Preset::None => Action::Deny,
            _ => Action::Allow,
        }
    }

    /// The preset as a whole policy.
    pub fn policy(self) -> Policy {
        Policy::new(self.default_egress(), self.default_ingress(), self.rules())
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, PolicyError> {
        ALL_PRESETS
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| PolicyError::BadPreset { token: s.into() })
    }
}

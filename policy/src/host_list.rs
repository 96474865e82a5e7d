//! The allow/block host-list convenience form (`allowed_hosts = ["api.example.com",
//! "*.corp.example"]`, `blocked_hosts = ["localhost", "10.0.0.0/8"]`). It owns only the
//! translation of such lists into ordinary rules; nothing evaluates host lists directly.

use serde::{Deserialize, Serialize};

use crate::cidr::IpCidr;
use crate::domain_name::DomainName;
use crate::error::PolicyError;
use crate::groups::Group;
use crate::model::{Action, Destination, Policy, Rule, RuleDirection};

/// Translates one host pattern into the destinations it stands for:
/// `*` (everything), `*.example.com` / `.example.com` (apex and subdomains), `localhost` (the
/// `loopback` and `host` groups: the sandbox's own loopback and the host machine), a group
/// name, an IP, a CIDR, or a host name (single-label names allowed here).
pub fn parse_host_pattern(text: &str) -> Result<Vec<Destination>, PolicyError> {
    let text = text.trim();
    let bad = |reason: &str| PolicyError::BadHostPattern {
        token: text.into(),
        reason: reason.into(),
    };
    if text == "*" {
        return Ok(vec![Destination::Any]);
    }
    if text == "localhost" {
        return Ok(vec![
            Destination::Group(Group::Loopback),
            Destination::Group(Group::Host),
        ]);
    }
    if let Some(group) = Group::from_name(text) {
        return Ok(vec![Destination::Group(group)]);
    }
    if text.contains(':')
        || text.contains('/')
        || text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        let cidr = IpCidr::parse(text.trim_start_matches('[').replacen(']', "", 1).as_str())
            .ok_or_else(|| bad("not a valid IP address or CIDR"))?;
        return Ok(vec![Destination::Cidr(cidr)]);
    }
    if let Some(name) = text.strip_prefix("*.").or_else(|| text.strip_prefix('.')) {
        let d = DomainName::parse(name).map_err(bad)?;
        return Ok(vec![Destination::Suffix(d)]);
    }
    let d = DomainName::parse(text).map_err(bad)?;
    Ok(vec![Destination::Domain(d)])
}

/// Rules (egress, all protocols and ports) with `action` for every destination in `patterns`.
pub fn host_rules(patterns: &[String], action: Action) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    for p in patterns {
        for d in parse_host_pattern(p)? {
            rules.push(Rule::simple(action, RuleDirection::Egress, d));
        }
    }
    Ok(rules)
}

/// Allow/block host lists as a whole policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLists {
    /// Hosts the sandbox may reach; empty means "everything not blocked".
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Hosts the sandbox may never reach; checked before `allowed_hosts`.
    #[serde(default)]
    pub blocked_hosts: Vec<String>,
}

impl HostLists {
    /// Compiles the lists into a policy: one deny rule per blocked destination, then one allow
    /// rule per allowed destination; egress defaults to deny when `allowed_hosts` is non-empty
    /// and to allow otherwise; ingress defaults to allow (only published ports reach it).
    pub fn to_policy(&self) -> Result<Policy, PolicyError> {
        let mut rules = host_rules(&self.blocked_hosts, Action::Deny)?;
        rules.extend(host_rules(&self.allowed_hosts, Action::Allow)?);
        let default_egress = if self.allowed_hosts.is_empty() {
            Action::Allow
        } else {
            Action::Deny
        };
        Ok(Policy::new(default_egress, Action::Allow, rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_translate() {
        assert_eq!(
            parse_host_pattern("*.Example.com").unwrap(),
            vec![Destination::Suffix(
                DomainName::parse("example.com").unwrap()
            )]
        );
        assert_eq!(parse_host_pattern("localhost").unwrap().len(), 2);
        assert!(matches!(
            parse_host_pattern("10.0.0.0/8").unwrap()[0],
            Destination::Cidr(_)
        ));
        assert!(matches!(
            parse_host_pattern("[2001:db8::1]").unwrap()[0],
            Destination::Cidr(_)
        ));
        assert!(matches!(
            parse_host_pattern("intranet").unwrap()[0],
            Destination::Domain(_)
        ));
        let err = parse_host_pattern("127.*").unwrap_err().to_string();
        assert!(err.contains("\"127.*\""), "{err}");
        let err = parse_host_pattern("10.0.0.0/40").unwrap_err().to_string();
        assert!(err.contains("not a valid IP address or CIDR"), "{err}");
    }

    #[test]
    fn lists_set_defaults() {
        let open = HostLists {
            allowed_hosts: vec![],
            blocked_hosts: vec!["localhost".into()],
        }
        .to_policy()
        .unwrap();
        assert_eq!(open.default_egress, Action::Allow);
        assert_eq!(open.rules.len(), 2);
        let closed = HostLists {
            allowed_hosts: vec!["api.example.com".into()],
            blocked_hosts: vec![],
        }
        .to_policy()
        .unwrap();
        assert_eq!(closed.default_egress, Action::Deny);
        assert_eq!(closed.rules[0].action(), Action::Allow);
    }
}

//! The JSON/TOML form of a policy (serde). Owns the document shape and how its parts are put in
//! order; every value is validated by the same token parsers as the CLI syntax, so errors read
//! the same.
//!
//! ```json
//! {"preset": "public-only", "default_egress": "deny", "default_ingress": "allow",
//!  "rules": [{"action": "allow", "direction": "egress", "destination": "public",
//!             "protocols": ["tcp"], "ports": "443"}],
//!  "deny_domains": ["tracker.example"], "deny_domain_suffixes": [".ads.example"],
//!  "allow_hosts": ["*.example.com"], "block_hosts": ["localhost"]}
//! ```
//!
//! Resulting rule order (first match wins): `deny_domains` and `deny_domain_suffixes`, then
//! `block_hosts`, then `rules`, then `allow_hosts`, then the preset's rules. Defaults: the
//! document's own, else the preset's, else egress deny and ingress allow. `ports` accepts a
//! number, a string (`"443"`, `"8000-9000"`, `"80,443"`) or a list of those; `port` and
//! `protocol` are accepted as single-value spellings.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain_name::DomainName;
use crate::error::PolicyError;
use crate::host_list::host_rules;
use crate::model::{Action, Policy, PortRange, Protocol, ProtocolSet, Rule, RuleDirection};
use crate::parse::cli::{parse_destination, parse_port_item};
use crate::presets::Preset;

/// A policy as written in JSON or TOML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// A preset whose rules follow the document's rules and whose defaults apply unless the
    /// document sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Action for egress flows no rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_egress: Option<Action>,
    /// Action for ingress flows no rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ingress: Option<Action>,
    /// Ordered rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Exact domains denied before any other rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_domains: Vec<String>,
    /// Domain suffixes (apex and subdomains) denied before any other rule; a leading `.` or
    /// `*.` is optional.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_domain_suffixes: Vec<String>,
    /// Host patterns allowed after `rules` (see `host_list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// Host patterns denied before `rules` (see `host_list`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_hosts: Vec<String>,
    /// TLS settings (SNI policy, interception, secrets); not part of the policy itself
    /// (see `parse::tls_section`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::parse::tls_section::TlsSection>,
}

/// One rule as written in JSON or TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `allow` or `deny`.
    pub action: Action,
    /// `egress` (default), `ingress` or `any`.
    #[serde(default)]
    pub direction: RuleDirection,
    /// Destination token, same syntax as in the CLI form.
    pub destination: String,
    /// Protocols; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<Protocol>,
    /// A single protocol (merged into `protocols`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Ports; empty means all.
    #[serde(default, skip_serializing_if = "PortsSpec::is_empty")]
    pub ports: PortsSpec,
    /// A single port or range (merged into `ports`).
    #[serde(default, skip_serializing_if = "PortsSpec::is_empty")]
    pub port: PortsSpec,
}

/// Port items as written (`443`, `"8000-9000"`, `["80", 443]`), kept as text until validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortsSpec(pub Vec<String>);

impl PortsSpec {
    /// True when no port is given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for PortsSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.len() == 1 {
            s.serialize_str(&self.0[0])
        } else {
            self.0.serialize(s)
        }
    }
}

struct PortsVisitor;

impl<'de> Visitor<'de> for PortsVisitor {
    type Value = PortsSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number, a string like \"443\" or \"8000-9000\", or a list of those")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortsSpec, E> {
        Ok(PortsSpec(vec![v.to_string()]))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortsSpec, E> {
        Ok(PortsSpec(vec![v.to_string()]))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<PortsSpec, E> {
        Ok(PortsSpec(
            v.split(',').map(|p| p.trim().to_string()).collect(),
        ))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PortsSpec, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<PortsSpec>()? {
            out.extend(item.0);
        }
        Ok(PortsSpec(out))
    }
}

impl<'de> Deserialize<'de> for PortsSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PortsVisitor)
    }
}

impl RuleSpec {
    /// The rule rendered in CLI syntax from its raw fields, for error messages.
    fn context(&self) -> String {
        let mut protos: Vec<&str> = self.protocols.iter().map(|p| p.name()).collect();
        if let Some(p) = self.protocol {
            protos.push(p.name());
        }
        let ports: Vec<&str> = self
            .ports
            .0
            .iter()
            .chain(&self.port.0)
            .map(String::as_str)
            .collect();
        let mut text = format!(
            "{}@{}:{}",
            self.action.name(),
            self.direction.name(),
            self.destination
        );
        if !protos.is_empty() || !ports.is_empty() {
            text.push(':');
            text.push_str(if protos.is_empty() { "*" } else { "" });
            text.push_str(&protos.join(","));
        }
        if !ports.is_empty() {
            text.push(':');
            text.push_str(&ports.join(","));
        }
        text
    }

    /// Validates the spec into a rule.
    pub fn to_rule(&self) -> Result<Rule, PolicyError> {
        let ctx = self.context();
        let destination = parse_destination(self.destination.trim(), &ctx)?;
        let mut protos = self.protocols.clone();
        protos.extend(self.protocol);
        let ports = self
            .ports
            .0
            .iter()
            .chain(&self.port.0)
            .map(|p| parse_port_item(p, &ctx))
            .collect::<Result<Vec<PortRange>, _>>()?;
        Rule::new(
            self.action,
            self.direction,
            destination,
            ProtocolSet::of(&protos),
            ports,
        )
    }

    /// The spec of an existing rule.
    pub fn from_rule(rule: &Rule) -> Self {
        Self {
            action: rule.action(),
            direction: rule.direction(),
            destination: rule.destination().to_string(),
            protocols: rule.protocols().iter().collect(),
            protocol: None,
            ports: PortsSpec(rule.ports().iter().map(|r| r.to_string()).collect()),
            port: PortsSpec::default(),
        }
    }
}

fn names(list: &[String], what: &str) -> Result<Vec<DomainName>, PolicyError> {
    list.iter()
        .map(|raw| {
            let text = raw.trim();
            let bare = text
                .strip_prefix("*.")
                .or_else(|| text.strip_prefix('.'))
                .unwrap_or(text);
            DomainName::parse(bare).map_err(|why| PolicyError::BadDestination {
                token: raw.clone(),
                rule: what.into(),
                reason: why.into(),
            })
        })
        .collect()
}

impl PolicyDocument {
    /// Validates the document and puts its parts in order (see the module doc).
    pub fn to_policy(&self) -> Result<Policy, PolicyError> {
        let mut rules = host_rules(&self.block_hosts, Action::Deny)?;
        for spec in &self.rules {
            rules.push(spec.to_rule()?);
        }
        rules.extend(host_rules(&self.allow_hosts, Action::Allow)?);
        if let Some(p) = self.preset {
            rules.extend(p.rules());
        }
        let mut policy = Policy::new(
            self.default_egress
                .or(self.preset.map(Preset::default_egress))
                .unwrap_or(Action::Deny),
            self.default_ingress
                .or(self.preset.map(Preset::default_ingress))
                .unwrap_or(Action::Allow),
            rules,
        );
        policy.prepend_deny_names(
            &names(&self.deny_domains, "deny_domains")?,
            &names(&self.deny_domain_suffixes, "deny_domain_suffixes")?,
        );
        Ok(policy)
    }

    /// A document that spells out `policy` fully (no preset, every rule inline).
    pub fn from_policy(policy: &Policy) -> Self {
        Self {
            default_egress: Some(policy.default_egress),
            default_ingress: Some(policy.default_ingress),
            rules: policy.rules.iter().map(RuleSpec::from_rule).collect(),
            ..Self::default()
        }
    }
}

impl Policy {
    /// Reads a policy from JSON (see `parse::document` for the shape).
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        let doc: PolicyDocument =
            serde_json::from_str(text).map_err(|e| PolicyError::Document {
                format: "JSON",
                message: e.to_string(),
            })?;
        doc.to_policy()
    }

    /// Reads a policy from TOML (same shape as JSON).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let doc: PolicyDocument = toml::from_str(text).map_err(|e| PolicyError::Document {
            format: "TOML",
            message: e.to_string(),
        })?;
        doc.to_policy()
    }

    /// Writes the policy as JSON that [`Policy::from_json`] reads back to an equal policy.
    pub fn to_json(&self) -> String {
        // A document of strings, enums and vectors always serialises.
        serde_json::to_string_pretty(&PolicyDocument::from_policy(self)).unwrap_or_default()
    }

    /// Writes the policy as TOML that [`Policy::from_toml`] reads back to an equal policy.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        toml::to_string(&PolicyDocument::from_policy(self)).map_err(|e| PolicyError::Document {
            format: "TOML",
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rule_shapes() {
        let p = Policy::from_json(
            r#"{"default_egress":"deny","rules":[
                {"action":"allow","destination":"public","protocols":["tcp"],"ports":"443"},
                {"action":"allow","destination":"10.0.0.0/8","protocol":"udp","port":53},
                {"action":"deny","direction":"any","destination":"*","ports":["80","8000-9000"]}]}"#,
        )
        .unwrap();
        assert_eq!(p.rules.len(), 3);
        assert_eq!(p.rules[0].to_string(), "allow@egress:public:tcp:443");
        assert_eq!(p.rules[1].to_string(), "allow@egress:10.0.0.0/8:udp:53");
        assert_eq!(p.rules[2].to_string(), "deny@any:*:*:80,8000-9000");
        assert_eq!(p.default_ingress, Action::Allow);
    }

    #[test]
    fn document_order_and_defaults() {
        let p = Policy::from_toml(
            r#"
            preset = "public-only"
            deny_domains = ["tracker.example.com"]
            deny_domain_suffixes = [".ads.example"]
            block_hosts = ["10.0.0.0/8"]
            allow_hosts = ["*.github.com"]
            [[rules]]
            action = "deny"
            destination = "203.0.113.9"
            "#,
        )
        .unwrap();
        let text: Vec<String> = p.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "deny@egress:tracker.example.com",
                "deny@egress:.ads.example",
                "deny@egress:10.0.0.0/8",
                "deny@egress:203.0.113.9",
                "allow@egress:.github.com",
                "allow@egress:host:tcp,udp:53",
                "allow@egress:public",
            ]
        );
        assert_eq!(p.default_egress, Action::Deny);
    }

    #[test]
    fn round_trips_through_json_and_toml() {
        let p = Policy::from_json(
            r#"{"default_egress":"allow","default_ingress":"deny","rules":[
              {"action":"allow","direction":"egress","destination":"2001:db8::/32","protocols":["tcp","udp"],"ports":"1-1024"},
              {"action":"deny","direction":"ingress","destination":".example.com"}]}"#,
        )
        .unwrap();
        assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);
        assert_eq!(Policy::from_toml(&p.to_toml().unwrap()).unwrap(), p);
    }

    #[test]
    fn errors_name_the_token() {
        let e = Policy::from_json(
            r#"{"rules":[{"action":"allow","destination":"*","protocols":["tcp"],"ports":"9000-80"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "bad port range \"9000-80\" in rule \"allow@egress:*:tcp:9000-80\": start must be <= end"
        );
        let e = Policy::from_json(r#"{"rules":[{"action":"alow","destination":"*"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("alow") && e.contains("allow"), "{e}");
        let e = Policy::from_toml("default_egress = \"block\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("block") && e.contains("TOML"), "{e}");
        let e = Policy::from_json(r#"{"rulez":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rulez"), "{e}");
        let e = Policy::from_json(
            r#"{"rules":[{"action":"allow","direction":"ingress","destination":"*","protocols":["icmpv4"]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("egress-only"), "{e}");
    }
}

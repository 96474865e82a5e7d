//! The CLI rule syntax `ACTION@[DIRECTION:]DEST[:PROTOS[:PORTS]]` and the token parsers the
//! JSON/TOML form shares with it.
//!
//! Grammar (`docs/benchmarks-policy.md` repeats it for users):
//! - `ACTION` is `allow` or `deny`.
//! - `DIRECTION` is `egress` (the default), `ingress` or `any`.
//! - `DEST` is `*`, a group (`public`, `private`, `loopback`, `link-local`, `metadata`,
//!   `multicast`, `host`), an IP or CIDR, a domain with at least one dot (`example.com`), or a
//!   suffix (`.example.com` or `*.example.com`: the apex and all subdomains). A single-label
//!   name is a domain only when written fully qualified, with a trailing dot (`intranet.`):
//!   that is how one is printed (host lists and `deny_domains` accept single labels).
//! - `PROTOS` is a comma list of `tcp`, `udp`, `icmpv4`, `icmpv6`, or `*` for all.
//! - `PORTS` is a comma list of ports (`443`) and inclusive ranges (`8000-9000`); it needs
//!   `PROTOS` before it.
//!
//! IPv6 destinations contain colons. They may be bracketed (`[2001:db8::1]`,
//! `[2001:db8::]/32`); bare ones are resolved from the right: the last `:`-field is `PROTOS`
//! when it is a protocol list, otherwise the second-to-last is `PROTOS` and the last `PORTS`
//! when that one is a protocol list, otherwise everything is `DEST`. This is unambiguous because
//! no protocol name (nor `*`) is a valid IPv6 field, and no direction name is either.

use crate::cidr::IpCidr;
use crate::domain_name::DomainName;
use crate::error::PolicyError;
use crate::groups::Group;
use crate::model::{
    Action, Destination, PortRange, Protocol, ProtocolSet, Rule, RuleDirection, ALL_PROTOCOLS,
};

const DEST_EXPECTED: &str = "expected *, a group (public, private, loopback, link-local, \
                             metadata, multicast, host), an IP, a CIDR, a domain with a dot \
                             (example.com) or a suffix (.example.com)";

/// Parses one rule in CLI syntax, e.g. `allow@public:tcp:443` or
/// `allow@egress:2001:db8::/32:tcp:443`.
pub fn parse_rule(text: &str) -> Result<Rule, PolicyError> {
    let text = text.trim();
    let Some((action, rest)) = text.split_once('@') else {
        return Err(PolicyError::MissingAt { rule: text.into() });
    };
    let action = parse_action(action, text)?;
    let (direction, rest) = match rest.split_once(':') {
        Some((first, tail)) if direction_name(first).is_some() => {
            (direction_name(first).unwrap_or_default(), tail)
        }
        _ => (RuleDirection::Egress, rest),
    };
    let (dest, protos, ports) = split_fields(rest, text)?;
    let destination = match parse_destination(dest, text) {
        Ok(d) => d,
        Err(e) => return Err(diagnose(rest, text).unwrap_or(e)),
    };
    let protocols = match protos {
        Some(p) => parse_protocols(p, text)?,
        None => ProtocolSet::ALL,
    };
    let ports = match ports {
        Some(p) => parse_ports(p, text)?,
        None => Vec::new(),
    };
    Rule::new(action, direction, destination, protocols, ports)
}

/// Parses a comma-joined list of rules (`allow@public:tcp:443,allow@host:udp:53`). A comma
/// starts a new rule only when the text after it starts with `allow@` or `deny@`, so protocol
/// and port lists keep their commas.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(',') {
        let next = text[i + 1..].trim_start();
        if next.starts_with("allow@") || next.starts_with("deny@") {
            rules.push(parse_rule(&text[start..i])?);
            start = i + 1;
        }
    }
    if !text[start..].trim().is_empty() || rules.is_empty() {
        rules.push(parse_rule(&text[start..])?);
    }
    Ok(rules)
}

/// Parses `allow` or `deny`; `rule` names the rule for the error message.
pub fn parse_action(token: &str, rule: &str) -> Result<Action, PolicyError> {
    match token {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        _ => Err(PolicyError::BadAction {
            token: token.into(),
            rule: rule.into(),
        }),
    }
}

fn direction_name(token: &str) -> Option<RuleDirection> {
    match token {
        "egress" => Some(RuleDirection::Egress),
        "ingress" => Some(RuleDirection::Ingress),
        "any" => Some(RuleDirection::Any),
        _ => None,
    }
}

fn is_protocol_list(token: &str) -> bool {
    token == "*"
        || (!token.is_empty() && token.split(',').all(|p| Protocol::from_name(p).is_some()))
}

/// Splits `DEST[:PROTOS[:PORTS]]` as described in the module doc.
fn split_fields<'a>(
    rest: &'a str,
    rule: &str,
) -> Result<(&'a str, Option<&'a str>, Option<&'a str>), PolicyError> {
    if rest.starts_with('[') {
        let Some(close) = rest.find(']') else {
            return Err(PolicyError::BadDestination {
                token: rest.into(),
                rule: rule.into(),
                reason: "the \"[\" of a bracketed IPv6 address has no \"]\"".into(),
            });
        };
        let after = &rest[close + 1..];
        let dest_len = if after.starts_with('/') {
            close + 1 + after.find(':').unwrap_or(after.len())
        } else {
            close + 1
        };
        let (dest, tail) = rest.split_at(dest_len);
        if tail.is_empty() {
            return Ok((dest, None, None));
        }
        let Some(tail) = tail.strip_prefix(':') else {
            return Err(PolicyError::BadDestination {
                token: rest.into(),
                rule: rule.into(),
                reason: "expected \":\" after the bracketed address".into(),
            });
        };
        return Ok(match tail.split_once(':') {
            Some((protos, ports)) => (dest, Some(protos), Some(ports)),
            None => (dest, Some(tail), None),
        });
    }
    if let Some(last) = rest.rfind(':') {
        if is_protocol_list(&rest[last + 1..]) {
            return Ok((&rest[..last], Some(&rest[last + 1..]), None));
        }
        if let Some(second) = rest[..last].rfind(':') {
            if is_protocol_list(&rest[second + 1..last]) {
                return Ok((
                    &rest[..second],
                    Some(&rest[second + 1..last]),
                    Some(&rest[last + 1..]),
                ));
            }
        }
    }
    Ok((rest, None, None))
}

/// When the whole field list failed as a destination, find the token that is really wrong:
/// a misspelt direction, protocol, or a port without protocols.
fn diagnose(rest: &str, rule: &str) -> Option<PolicyError> {
    let fields: Vec<&str> = rest.split(':').collect();
    if fields.len() < 2 || rest.parse::<std::net::Ipv6Addr>().is_ok() {
        return None;
    }
    let first_is_dest = parse_destination(fields[0], rule).is_ok()
        && !fields[0].contains('/')
        && fields[0].parse::<std::net::Ipv6Addr>().is_err();
    if !first_is_dest {
        if parse_destination(fields[1], rule).is_ok() && IpCidr::parse(fields[1]).is_none() {
            return Some(PolicyError::BadDirection {
                token: fields[0].into(),
                rule: rule.into(),
            });
        }
        return None;
    }
    if fields[1]
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b',')
    {
        return Some(PolicyError::BadDestination {
            token: rest.into(),
            rule: rule.into(),
            reason: format!(
                "ports need a protocol list before them, e.g. {}:tcp:{}",
                fields[0], fields[1]
            ),
        });
    }
    if !is_protocol_list(fields[1]) {
        return Some(PolicyError::BadProtocol {
            token: fields[1]
                .split(',')
                .find(|p| Protocol::from_name(p).is_none())?
                .into(),
            rule: rule.into(),
        });
    }
    None
}

/// Parses a destination token (see the module doc).
pub fn parse_destination(token: &str, rule: &str) -> Result<Destination, PolicyError> {
    let bad = |reason: String| PolicyError::BadDestination {
        token: token.into(),
        rule: rule.into(),
        reason,
    };
    if token == "*" {
        return Ok(Destination::Any);
    }
    if token.is_empty() {
        return Err(bad(format!("the destination is empty; {DEST_EXPECTED}")));
    }
    if let Some(group) = Group::from_name(token) {
        return Ok(Destination::Group(group));
    }
    if let Some(inner) = token.strip_prefix('[') {
        // `[addr]`, `[addr]/len` or `[addr/len]`.
        let unbracketed = inner.replacen(']', "", 1);
        return IpCidr::parse(&unbracketed)
            .filter(|_| inner.contains(']') && unbracketed.contains(':'))
            .map(Destination::Cidr)
            .ok_or_else(|| bad("expected a bracketed IPv6 address or CIDR such as [2001:db8::1] or [2001:db8::]/32".into()));
    }
    let looks_numeric = token.contains(':')
        || token.contains('/')
        || token.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if looks_numeric {
        return IpCidr::parse(token).map(Destination::Cidr).ok_or_else(|| {
            bad(
                "expected an IP address or CIDR such as 10.0.0.0/8 or 2001:db8::/32 (prefix \
                 length at most 32 for IPv4, 128 for IPv6)"
                    .into(),
            )
        });
    }
    if token == "localhost" {
        return Err(bad(
            "\"localhost\" is not a destination: use the group loopback (the sandbox's own \
             127.0.0.1) or host (the host machine)"
                .into(),
        ));
    }
    let (suffix, name) = match token.strip_prefix("*.").or_else(|| token.strip_prefix('.')) {
        Some(name) => (true, name),
        None => (false, token),
    };
    let domain = DomainName::parse(name).map_err(|why| bad(format!("{why}; {DEST_EXPECTED}")))?;
    // `intranet.` (fully qualified, RFC 1034 §3.1) is a single-label domain; bare `intranet`
    // could be a mistyped group.
    if domain.is_single_label() && !suffix && !token.ends_with('.') {
        return Err(bad(format!(
            "not a known group, and a domain needs at least one dot; {DEST_EXPECTED}"
        )));
    }
    Ok(if suffix {
        Destination::Suffix(domain)
    } else {
        Destination::Domain(domain)
    })
}

/// Parses a protocol list (`tcp,udp`, or `*` for all).
pub fn parse_protocols(token: &str, rule: &str) -> Result<ProtocolSet, PolicyError> {
    if token == "*" {
        return Ok(ProtocolSet::ALL);
    }
    let mut list = Vec::with_capacity(ALL_PROTOCOLS.len());
    for name in token.split(',') {
        match Protocol::from_name(name.trim()) {
            Some(p) => list.push(p),
            None => {
                return Err(PolicyError::BadProtocol {
                    token: name.into(),
                    rule: rule.into(),
                })
            }
        }
    }
    Ok(ProtocolSet::of(&list))
}

/// Parses a port list (`443`, `8000-9000`, `80,443,8000-8080`).
pub fn parse_ports(token: &str, rule: &str) -> Result<Vec<PortRange>, PolicyError> {
    token
        .split(',')
        .map(|item| parse_port_item(item.trim(), rule))
        .collect()
}

fn parse_port_number(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|p| *p >= 1)
}

/// Parses one port or inclusive range.
pub fn parse_port_item(item: &str, rule: &str) -> Result<PortRange, PolicyError> {
    match item.split_once('-') {
        None => parse_port_number(item)
            .map(|p| PortRange { start: p, end: p })
            .ok_or_else(|| PolicyError::BadPort {
                token: item.into(),
                rule: rule.into(),
            }),
        Some((a, b)) => {
            let bad = |reason| PolicyError::BadPortRange {
                token: item.into(),
                rule: rule.into(),
                reason,
            };
            let (Some(start), Some(end)) = (parse_port_number(a), parse_port_number(b)) else {
                return Err(bad(
                    "expected START-END with both ends numbers from 1 to 65535",
                ));
            };
            PortRange::new(start, end).ok_or_else(|| bad("start must be <= end"))
        }
    }
}

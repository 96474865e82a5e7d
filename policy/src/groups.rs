//! Destination groups (`public`, `private`, `loopback`, `link-local`, `metadata`, `multicast`,
//! `host`): their address ranges and the membership rules between them. Both evaluators take
//! their ranges from here; nothing else in the crate hard-codes a group range.
//!
//! Membership rules (design §7, plus two hardening choices recorded in
//! `docs/benchmarks-policy.md`):
//! - an address listed in the context's `host_addrs` belongs to `host` only, even when it also
//!   lies in a private range (so `allow@private` never opens the host's loopback services);
//! - `169.254.169.254` belongs to `metadata` only, not `link-local`;
//! - `0.0.0.0/8` and `::` are treated as `loopback`: Linux delivers a connect to them to the
//!   local host, so they must not count as `public`;
//! - an IPv6 address that embeds a non-public IPv4 address (NAT64, 6to4, Teredo,
//!   IPv4-compatible; see [`judged_ip`]) is judged as that IPv4 address: a network with a
//!   NAT64 gateway delivers `64:ff9b::a9fe:a9fe` to the metadata service;
//! - `public` is every address in no other group.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cidr::{canonical_ip, IpCidr};

/// A named destination group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// Every address in no other group.
    Public,
    /// RFC 1918, CGNAT (RFC 6598) and IPv6 ULA (RFC 4193) ranges.
    Private,
    /// `127.0.0.0/8`, `::1` (and `0.0.0.0/8`, `::`).
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`, except the metadata address.
    LinkLocal,
    /// The cloud metadata endpoint `169.254.169.254`.
    Metadata,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// The sandbox's gateway alias addresses (from [`crate::PolicyContext`]).
    Host,
}

/// All groups, in the order used for display and for bit positions.
pub const ALL_GROUPS: [Group; 7] = [
    Group::Public,
    Group::Private,
    Group::Loopback,
    Group::LinkLocal,
    Group::Metadata,
    Group::Multicast,
    Group::Host,
];

impl Group {
    /// The group's name as written in rules.
    pub fn name(self) -> &'static str {
        match self {
            Group::Public => "public",
            Group::Private => "private",
            Group::Loopback => "loopback",
            Group::LinkLocal => "link-local",
            Group::Metadata => "metadata",
            Group::Multicast => "multicast",
            Group::Host => "host",
        }
    }

    /// Looks a group up by its rule name.
    pub fn from_name(name: &str) -> Option<Self> {
        ALL_GROUPS.into_iter().find(|g| g.name() == name)
    }

    /// The group's bit in a [`GroupSet`].
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The fixed address ranges of the group (empty for `public`, whose members are defined by
    /// exclusion, and for `host`, whose members come from the context).
    pub fn ranges(self) -> &'static [(&'static str, u8)] {
        match self {
            Group::Public | Group::Host => &[],
            Group::Private => &[
                ("10.0.0.0", 8),
                ("172.16.0.0", 12),
                ("192.168.0.0", 16),
                ("100.64.0.0", 10),
                ("fc00::", 7),
            ],
            Group::Loopback => &[("127.0.0.0", 8), ("::1", 128), ("0.0.0.0", 8), ("::", 128)],
            Group::LinkLocal => &[("169.254.0.0", 16), ("fe80::", 10)],
            Group::Metadata => &[("169.254.169.254", 32)],
            Group::Multicast => &[("224.0.0.0", 4), ("ff00::", 8)],
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of groups, one bit per [`Group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GroupSet(u8);

impl GroupSet {
    /// The empty set.
    pub const EMPTY: GroupSet = GroupSet(0);

    /// Groups whose members DNS answers may not point to unless a rule allows it (rebind
    /// protection, design §6).
    pub const REBIND_PROTECTED: GroupSet = GroupSet(
        (1 << Group::Private as u8)
            | (1 << Group::Loopback as u8)
            | (1 << Group::LinkLocal as u8)
            | (1 << Group::Metadata as u8)
            | (1 << Group::Host as u8),
    );

    /// Builds a set from raw bits (bit `n` = `ALL_GROUPS[n]`).
    pub fn from_bits(bits: u8) -> Self {
        GroupSet(bits & 0x7f)
    }

    /// The raw bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// True when `group` is in the set.
    pub fn contains(self, group: Group) -> bool {
        self.0 & group.bit() != 0
    }

    /// True when the two sets share a group.
    pub fn intersects(self, other: GroupSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Applies the membership rules to the raw set of ranges an address falls in: `host`
    /// excludes everything else, `metadata` excludes `link-local`, and no range at all means
    /// `public`.
    pub fn resolve(raw: GroupSet) -> GroupSet {
        let mut bits = raw.0 & !Group::Public.bit();
        if bits & Group::Host.bit() != 0 {
            bits = Group::Host.bit();
        }
        if bits & Group::Metadata.bit() != 0 {
            bits &= !Group::LinkLocal.bit();
        }
        if bits == 0 {
            bits = Group::Public.bit();
        }
        GroupSet(bits)
    }

    /// Iterates the groups in the set.
    pub fn iter(self) -> impl Iterator<Item = Group> {
        ALL_GROUPS.into_iter().filter(move |g| self.contains(*g))
    }
}

/// The prefixes of every fixed-range group, parsed once (a handful of entries).
pub(crate) fn group_prefixes() -> Vec<(IpCidr, Group)> {
    let mut out = Vec::new();
    for group in ALL_GROUPS {
        for (addr, len) in group.ranges() {
            if let Some(c) = addr
                .parse::<IpAddr>()
                .ok()
                .and_then(|a| IpCidr::new(a, *len))
            {
                out.push((c, group));
            }
        }
    }
    out
}

/// Group membership for one sandbox: the fixed ranges plus its host alias addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTable {
    prefixes: Vec<(IpCidr, Group)>,
    host_addrs: Vec<IpAddr>,
}

impl GroupTable {
    /// The table for a sandbox whose `host` group is `host_addrs`.
    pub fn new(host_addrs: &[IpAddr]) -> Self {
        Self {
            prefixes: group_prefixes(),
            host_addrs: host_addrs.iter().map(|h| canonical_ip(*h)).collect(),
        }
    }

    /// The host alias addresses (canonical form).
    pub fn host_addrs(&self) -> &[IpAddr] {
        &self.host_addrs
    }

    /// The groups `ip` belongs to, judged as [`judged_ip`] (IPv4-mapped IPv6 as IPv4, IPv6
    /// that embeds a non-public IPv4 as that IPv4). Linear in the (small, fixed) number of
    /// group ranges and host addresses; never allocates.
    pub fn groups_of(&self, ip: IpAddr) -> GroupSet {
        let ip = judged_ip(ip);
        let mut raw = 0u8;
        for (cidr, group) in &self.prefixes {
            if cidr.contains(ip) {
                raw |= group.bit();
            }
        }
        if self.host_addrs.contains(&ip) {
            raw |= Group::Host.bit();
        }
        GroupSet::resolve(GroupSet(raw))
    }
}

/// The address a flow to `ip` is judged as, by both evaluators: [`canonical_ip`] (IPv4-mapped
/// IPv6 as IPv4), and an IPv6 address that embeds an IPv4 address ([`embedded_ipv4`]) lying
/// in a fixed non-public range (private, loopback, link-local, metadata, multicast) as that
/// IPv4 address — so `64:ff9b::a9fe:a9fe` is `metadata`, and only rules that would let the
/// IPv4 address through let it through. An embedded public address changes nothing.
pub fn judged_ip(ip: IpAddr) -> IpAddr {
    let ip = canonical_ip(ip);
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    static FIXED: std::sync::OnceLock<Vec<(IpCidr, Group)>> = std::sync::OnceLock::new();
    let fixed = FIXED.get_or_init(group_prefixes);
    embedded_ipv4(v6)
        .into_iter()
        .flatten()
        .map(IpAddr::V4)
        .find(|v4| fixed.iter().any(|(cidr, _)| cidr.contains(*v4)))
        .unwrap_or(ip)
}

/// The IPv4 addresses an IPv6 address carries, where some network on the way may deliver
/// traffic to them (design §7: no side door into a group): the NAT64 well-known prefix
/// `64:ff9b::/96` (RFC 6052: the last 32 bits), 6to4 `2002::/16` (RFC 3056: bits 16–47),
/// Teredo `2001::/32` (RFC 4380: the server in bits 32–63, the client inverted in the last
/// 32) and the deprecated IPv4-compatible `::a.b.c.d` (`::` and `::1` excluded: they are
/// loopback already).
pub fn embedded_ipv4(v6: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let bits = u128::from(v6);
    let v4 = |shift: u32| Some(Ipv4Addr::from((bits >> shift) as u32));
    let seg = v6.segments();
    match seg {
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => [v4(0), None],
        [0x2002, ..] => [v4(80), None],
        [0x2001, 0, ..] => [v4(64), Some(Ipv4Addr::from(!(bits as u32)))],
        [0, 0, 0, 0, 0, 0, _, _] if bits > 1 => [v4(0), None],
        _ => [None, None],
    }
}

/// The groups `ip` belongs to, given the sandbox's host alias addresses (builds a
/// [`GroupTable`]; keep one around when asking often).
pub fn groups_of(ip: IpAddr, host_addrs: &[IpAddr]) -> GroupSet {
    GroupTable::new(host_addrs).groups_of(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(ip: &str) -> Vec<Group> {
        groups_of(ip.parse().unwrap(), &["172.16.0.1".parse().unwrap()])
            .iter()
            .collect()
    }

    #[test]
    fn ipv6_that_embeds_ipv4_is_in_the_embedded_groups() {
        for embedded in [
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:0:a9fe:a9fe::5601:5601",
            "2001:0:808:808::5601:5601",
            "::169.254.169.254",
        ] {
            assert_eq!(g(embedded), vec![Group::Metadata], "{embedded}");
        }
        assert_eq!(g("64:ff9b::a01:203"), vec![Group::Private]);
        assert_eq!(g("2002:7f00:1::"), vec![Group::Loopback]);
        assert_eq!(g("64:ff9b::ac10:1"), vec![Group::Host]);
        // Public IPv4 inside stays public; other IPv6 is untouched.
        assert_eq!(g("64:ff9b::808:808"), vec![Group::Public]);
        assert_eq!(g("2002:808:808::1"), vec![Group::Public]);
        assert_eq!(g("2001:db8::1"), vec![Group::Public]);
        assert_eq!(g("::"), vec![Group::Loopback]);
        assert_eq!(g("::1"), vec![Group::Loopback]);
    }

    #[test]
    fn membership_follows_the_spec() {
        assert_eq!(g("8.8.8.8"), vec![Group::Public]);
        assert_eq!(g("203.0.113.7"), vec![Group::Public]);
        assert_eq!(g("10.1.2.3"), vec![Group::Private]);
        assert_eq!(g("172.31.255.255"), vec![Group::Private]);
        assert_eq!(g("172.32.0.0"), vec![Group::Public]);
        assert_eq!(g("100.64.0.1"), vec![Group::Private]);
        assert_eq!(g("fd00::1"), vec![Group::Private]);
        assert_eq!(g("127.0.0.53"), vec![Group::Loopback]);
        assert_eq!(g("::1"), vec![Group::Loopback]);
        assert_eq!(g("0.0.0.0"), vec![Group::Loopback]);
        assert_eq!(g("169.254.1.1"), vec![Group::LinkLocal]);
        assert_eq!(g("fe80::1"), vec![Group::LinkLocal]);
        assert_eq!(g("169.254.169.254"), vec![Group::Metadata]);
        assert_eq!(g("239.1.1.1"), vec![Group::Multicast]);
        assert_eq!(g("ff02::1"), vec![Group::Multicast]);
        assert_eq!(g("172.16.0.1"), vec![Group::Host]);
        assert_eq!(g("2001:db8::1"), vec![Group::Public]);
    }

    #[test]
    fn mapped_addresses_are_judged_as_ipv4() {
        assert_eq!(g("::ffff:10.0.0.1"), vec![Group::Private]);
        assert_eq!(g("::ffff:169.254.169.254"), vec![Group::Metadata]);
        assert_eq!(g("::ffff:172.16.0.1"), vec![Group::Host]);
        assert_eq!(g("::ffff:8.8.8.8"), vec![Group::Public]);
    }

    #[test]
    fn names_round_trip() {
        for group in ALL_GROUPS {
            assert_eq!(Group::from_name(group.name()), Some(group));
        }
        assert_eq!(Group::from_name("pubic"), None);
    }
}

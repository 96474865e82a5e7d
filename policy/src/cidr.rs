//! IP prefixes (CIDR blocks) and the one place where IPv4-mapped IPv6 addresses are folded into
//! IPv4. Owns parsing and containment; it never allocates after parsing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 prefix with host bits cleared, e.g. `10.0.0.0/8` or `2001:db8::/32`.
///
/// Prefixes that lie inside `::ffff:0:0/96` are stored as IPv4 (see [`IpCidr::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    addr: IpAddr,
    len: u8,
}

/// Returns the address a flow is judged by: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes
/// `a.b.c.d`, anything else is returned unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// Left-aligns an address into 128 bits (IPv4 in the top 32 bits), the key the tries use.
pub(crate) fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl IpCidr {
    /// Builds a prefix from an address and a length, clearing host bits. Returns `None` when the
    /// length exceeds the family's width. IPv6 prefixes of length >= 96 inside `::ffff:0:0/96`
    /// become the matching IPv4 prefix, because mapped addresses are judged as IPv4.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(v4) => {
                if len > 32 {
                    return None;
                }
                let bits = (u128::from(u32::from(v4)) << 96) & mask(len);
                let v4 = Ipv4Addr::from((bits >> 96) as u32);
                Some(Self {
                    addr: IpAddr::V4(v4),
                    len,
                })
            }
            IpAddr::V6(v6) => {
                if len > 128 {
                    return None;
                }
                let bits = u128::from(v6) & mask(len);
                let v6 = Ipv6Addr::from(bits);
                if len >= 96 {
                    if let Some(v4) = v6.to_ipv4_mapped() {
                        return Self::new(IpAddr::V4(v4), len - 96);
                    }
                }
                Some(Self {
                    addr: IpAddr::V6(v6),
                    len,
                })
            }
        }
    }

    /// A single-address prefix (/32 or /128), mapped IPv6 folded to IPv4.
    pub fn host(ip: IpAddr) -> Self {
        let ip = canonical_ip(ip);
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Self { addr: ip, len }
    }

    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a host prefix). `None` when it is not
    /// one of these.
    pub fn parse(text: &str) -> Option<Self> {
        match text.split_once('/') {
            None => text.parse::<IpAddr>().ok().map(Self::host),
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().ok()?;
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let len: u8 = len.parse().ok()?;
                Self::new(addr, len)
            }
        }
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the zero-length prefix (`0.0.0.0/0` or `::/0`), which covers a whole family.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `ip` (already canonical, see [`canonical_ip`]) lies inside this prefix.
    /// Families never match each other.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        // Both keys are left-aligned in 128 bits, so one mask serves both families.
        (key_of(ip) & mask(self.len)) == key_of(self.addr)
    }

    /// The left-aligned 128-bit key of the network address (for trie building).
    pub(crate) fn key(&self) -> u128 {
        key_of(self.addr)
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_clears_host_bits_and_folds_mapped() {
        let c = IpCidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let m = IpCidr::parse("::ffff:192.168.0.0/112").unwrap();
        assert_eq!(m.to_string(), "192.168.0.0/16");
        let all_mapped = IpCidr::parse("::ffff:0:0/96").unwrap();
        assert_eq!(all_mapped.to_string(), "0.0.0.0/0");
        assert_eq!(
            IpCidr::parse("::ffff:1.2.3.4").unwrap().to_string(),
            "1.2.3.4/32"
        );
        assert!(IpCidr::parse("10.0.0.0/33").is_none());
        assert!(IpCidr::parse("10.0.0.0/").is_none());
        assert!(IpCidr::parse("10.0.0.0/+8").is_none());
        assert!(IpCidr::parse("2001:db8::/129").is_none());
    }

    #[test]
    fn contains_respects_family_and_prefix() {
        let c = IpCidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!c.contains("2001:db9::1".parse().unwrap()));
        assert!(!c.contains("32.1.13.184".parse().unwrap()));
        let all4 = IpCidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains("255.255.255.255".parse().unwrap()));
        assert!(!all4.contains("::1".parse().unwrap()));
    }
}

//! Settings of the `user` network backend (the userspace netstack) as the user gives them,
//! parsed and checked before boot: address pools, DNS upstreams, published ports, limits and
//! the policy, and the netstack built from them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use netstack::{NetConfig, Netstack, PortProto, PublishedPort, TlsInspection};

use crate::net_policy::{build_policy, PolicyHandle, PolicySettings, PolicySetupError};

/// Default per-VM connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// One `-p [BIND:]HOSTPORT:GUESTPORT[/udp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishSpec {
    /// Host address and port to listen on.
    pub bind: SocketAddr,
    /// Guest port to reach.
    pub guest_port: u16,
    /// TCP or UDP.
    pub udp: bool,
}

impl FromStr for PublishSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("bad -p {text:?}: {why}; expected [BIND:]HOSTPORT:GUESTPORT[/udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp")
        };
        let (spec, udp) = match text.rsplit_once('/') {
            Some((s, "udp")) => (s, true),
            Some((s, "tcp")) => (s, false),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (text, false),
        };
        let (rest, guest) = spec
            .rsplit_once(':')
            .ok_or_else(|| bad("missing GUESTPORT"))?;
        let guest_port = parse_port(guest).ok_or_else(|| bad("GUESTPORT must be 1-65535"))?;
        let (bind_ip, host) = match rest.rsplit_once(':') {
            None => (IpAddr::V4(Ipv4Addr::LOCALHOST), rest),
            Some((ip, port)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = ip.parse().map_err(|_| bad("BIND must be an IP address"))?;
                (ip, port)
            }
        };
        let host_port = parse_port(host).ok_or_else(|| bad("HOSTPORT must be 1-65535"))?;
        Ok(PublishSpec {
            bind: SocketAddr::new(bind_ip, host_port),
            guest_port,
            udp,
        })
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// Parses an IPv4 pool `A.B.C.D/N` (N at most 30: each VM takes a /30).
pub fn parse_ipv4_pool(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = |why: &str| format!("bad --ipv4-pool {text:?}: {why}");
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| bad("expected A.B.C.D/N, e.g. 172.16.0.0/12"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad("not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| bad("the prefix length must be a number"))?;
    if len > 30 {
        return Err(bad(
            "the prefix must be /30 or shorter (each VM takes a /30)",
        ));
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(ip) & !mask != 0 {
        return Err(bad("host bits are set; give the network address"));
    }
    Ok((ip, len))
}

/// Parses an IPv6 pool `PREFIX/N` (N at most 64: each VM takes a /64).
pub fn parse_ipv6_pool(text: &str) -> Result<(Ipv6Addr, u8), String> {
    let bad = |why: &str| format!("bad --ipv6-pool {text:?}: {why}");
    let (ip, len) = text
        .split_once('/')
        .ok_or_else(|| bad("expected PREFIX/N, e.g. fd42:6d73:62::/48"))?;
    let ip: Ipv6Addr = ip.parse().map_err(|_| bad("not an IPv6 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| bad("the prefix length must be a number"))?;
    if len > 64 {
        return Err(bad(
            "the prefix must be /64 or shorter (each VM takes a /64)",
        ));
    }
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    if u128::from(ip) & !mask != 0 {
        return Err(bad("host bits are set; give the network prefix"));
    }
    Ok((ip, len))
}

/// Default link MTU of `--net user` (what passt uses too): the largest IPv4 packet that
/// still fits a 64 KiB buffer with its headers.
pub const DEFAULT_MTU: u16 = 65520;

/// Parses a `--mtu` value: 1280 (the IPv6 minimum) to 65520.
pub fn parse_mtu(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(m) if (1280..=DEFAULT_MTU).contains(&m) => Ok(m),
        _ => Err(format!(
            "bad --mtu {text:?}: expected a number of bytes from 1280 (the IPv6 minimum) to {DEFAULT_MTU}"
        )),
    }
}

/// Parses a `--dns` value: an IP (port 53) or IP:PORT / `[IPv6]:PORT`.
pub fn parse_dns(text: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("bad --dns {text:?}: expected an IP address, optionally with :PORT"))
}

/// A `--tls-ports` list: TCP ports whose ClientHello's server name is judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPorts(pub Vec<u16>);

impl FromStr for TlsPorts {
    type Err = String;

    /// Parses `443`, `443,8443` (sorted, duplicates dropped), or `none` / an empty string
    /// for no port.
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() || t == "none" {
            return Ok(TlsPorts(Vec::new()));
        }
        let mut ports = Vec::new();
        for item in t.split(',') {
            let item = item.trim();
            let port = parse_port(item).ok_or_else(|| {
                format!(
                    "bad --tls-ports {text:?}: {item:?} is not a port 1-65535; expected a list like 443,8443 or none"
                )
            })?;
            ports.push(port);
        }
        ports.sort_unstable();
        ports.dedup();
        Ok(TlsPorts(ports))
    }
}

/// Everything the `user` backend needs.
#[derive(Clone, Debug, Default)]
pub struct UserNetSettings {
    /// IPv4 pool (default 172.16.0.0/12).
    pub ipv4_pool: Option<(Ipv4Addr, u8)>,
    /// IPv6 pool (default fd42:6d73:62::/48).
    pub ipv6_pool: Option<(Ipv6Addr, u8)>,
    /// Upstream resolvers (default: /etc/resolv.conf).
    pub dns: Vec<SocketAddr>,
    /// Published ports.
    pub publish: Vec<PublishSpec>,
    /// Most simultaneous connections (default 256).
    pub max_connections: Option<usize>,
    /// Seconds a UDP or ICMP flow may stay idle before it is closed (default 180).
    pub udp_idle_timeout: Option<u64>,
    /// Link MTU (default [`DEFAULT_MTU`]).
    pub mtu: Option<u16>,
    /// The network policy.
    pub policy: PolicySettings,
    /// TCP ports whose TLS ClientHello is read before the host connection opens, its server
    /// name (SNI) judged by the policy (`--tls-ports`; `None`: 443; empty: none). No
    /// interception: the bytes are forwarded unchanged once allowed.
    pub tls_ports: Option<Vec<u16>>,
    /// Refuse a ClientHello that names no server (`--tls-require-sni`; default: such flows
    /// are judged by their address alone). Needs at least one TLS port.
    pub tls_require_sni: bool,
    /// TLS interception and secrets (`--tls-intercept`; `None`: off). Needs a TLS port.
    pub tls_intercept: Option<crate::tls_intercept::InterceptSettings>,
    /// Which /30 of the IPv4 pool this VM takes (0, the first, unless a
    /// [`Host`](crate::host::Host) hands out distinct ones).
    pub ipv4_index: u32,
    /// Which /64 of the IPv6 pool this VM takes (0 unless a [`Host`](crate::host::Host) hands
    /// out distinct ones).
    pub ipv6_index: u32,
}

/// Errors building the user backend.
#[derive(Debug, thiserror::Error)]
pub enum UserNetError {
    /// The policy settings are wrong.
    #[error(transparent)]
    Policy(#[from] PolicySetupError),
    /// The netstack refused the configuration (e.g. a published port already in use).
    #[error("--net user: {0}")]
    Netstack(String),
    /// The TLS settings contradict each other or name port 0.
    #[error("{0}")]
    Tls(String),
}

/// The netstack's TLS inspection from the settings, or why they cannot be used.
fn tls_inspection(settings: &UserNetSettings) -> Result<TlsInspection, UserNetError> {
    let mut tls = TlsInspection::default();
    if let Some(ports) = &settings.tls_ports {
        if ports.contains(&0) {
            return Err(UserNetError::Tls(format!(
                "--tls-ports {ports:?}: port 0 is not a port; give 1-65535"
            )));
        }
        tls.ports = ports.clone();
    }
    if settings.tls_require_sni && tls.ports.is_empty() {
        return Err(UserNetError::Tls(
            "--tls-require-sni needs a TLS port, but --tls-ports is none".into(),
        ));
    }
    tls.require_sni = settings.tls_require_sni;
    if settings.tls_intercept.is_some() && tls.ports.is_empty() {
        return Err(UserNetError::Tls(
            "--tls-intercept needs a TLS port, but --tls-ports is none".into(),
        ));
    }
    Ok(tls)
}

/// The settings with the `tls` section of `--net-config` applied, if it has one (`None`: use
/// the settings as they are). The section and the `--tls-*`/`--secret*` flags exclude each
/// other.
fn with_config_tls(settings: &UserNetSettings) -> Result<Option<UserNetSettings>, UserNetError> {
    let Some(path) = &settings.policy.config_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| UserNetError::Tls(format!("--net-config {}: {e}", path.display())))?;
    let toml = path.extension().is_some_and(|e| e == "toml");
    let section = policy::tls_section(&text, toml)
        .map_err(|e| UserNetError::Tls(format!("--net-config {}: {e}", path.display())))?;
    let Some(section) = section else {
        return Ok(None);
    };
    if settings.tls_ports.is_some() || settings.tls_require_sni || settings.tls_intercept.is_some()
    {
        return Err(UserNetError::Tls(format!(
            "--net-config {} has a tls section and TLS flags were given too: use one or the other",
            path.display()
        )));
    }
    let (ports, require_sni, intercept) =
        crate::tls_intercept::from_section(&section).map_err(UserNetError::Tls)?;
    Ok(Some(UserNetSettings {
        tls_ports: ports,
        tls_require_sni: require_sni,
        tls_intercept: intercept,
        ..settings.clone()
    }))
}

/// What [`build`] makes: the netstack, its live policy and, with interception, the VM's TLS
/// proxy.
pub type BuiltUserNet = (
    Netstack,
    PolicyHandle,
    Option<crate::tls_intercept::PreparedIntercept>,
);

/// Builds the netstack (binding published ports now, so conflicts fail before boot), the
/// live policy handle bound to it and the TLS proxy if interception is on.
pub fn build(settings: &UserNetSettings, guest_mac: [u8; 6]) -> Result<BuiltUserNet, UserNetError> {
    let policy = build_policy(&settings.policy)?;
    let with_file = with_config_tls(settings)?;
    let settings = with_file.as_ref().unwrap_or(settings);
    let mut tls = tls_inspection(settings)?;
    let intercept = match &settings.tls_intercept {
        Some(i) => {
            let prepared = crate::tls_intercept::prepare(i).map_err(UserNetError::Tls)?;
            tls.handoff = Some(netstack::HandoffRef(prepared.proxy.clone()));
            tls.placeholders = prepared.guard.clone();
            Some(prepared)
        }
        None => None,
    };
    let handle = PolicyHandle::new(&policy, Vec::new())?;
    let mut cfg = NetConfig {
        tls,
        guest_mac,
        dns_upstreams: settings.dns.clone(),
        mtu: settings.mtu.unwrap_or(DEFAULT_MTU),
        // Standard frames until the guest's driver says what it takes (UserBackend::activate).
        max_rx_frame: 1514,
        ..NetConfig::default()
    };
    cfg.ipv4_index = settings.ipv4_index;
    cfg.ipv6_index = settings.ipv6_index;
    if let Some(pool) = settings.ipv4_pool {
        cfg.ipv4_pool = pool;
    }
    if let Some(pool) = settings.ipv6_pool {
        cfg.ipv6_pool = pool;
    }
    if let Some(n) = settings.max_connections {
        cfg.limits.max_tcp_connections = n;
    }
    if let Some(secs) = settings.udp_idle_timeout {
        cfg.limits.udp_idle_timeout = std::time::Duration::from_secs(secs);
    }
    cfg.published = settings
        .publish
        .iter()
        .map(|p| PublishedPort {
            bind: p.bind,
            guest_port: p.guest_port,
            proto: if p.udp {
                PortProto::Udp
            } else {
                PortProto::Tcp
            },
        })
        .collect();
    let stack = Netstack::with_gate(cfg, Box::new(handle.gate()))
        .map_err(|e| UserNetError::Netstack(e.to_string()))?;
    let (_, gw4) = stack.ipv4_addresses();
    let (_, gw6) = stack.ipv6_addresses();
    handle.set_host_addrs(vec![IpAddr::V4(gw4), IpAddr::V6(gw6)])?;
    Ok((stack, handle, intercept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_values_parse_or_explain() {
        assert_eq!(parse_mtu("1280"), Ok(1280));
        assert_eq!(parse_mtu("65520"), Ok(DEFAULT_MTU));
        for bad in ["1279", "65521", "jumbo", ""] {
            let e = parse_mtu(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("1280"), "{e}");
        }
    }

    #[test]
    fn publish_specs_parse_or_explain() {
        let p: PublishSpec = "8080:80".parse().unwrap();
        assert_eq!(p.bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!((p.guest_port, p.udp), (80, false));
        let p: PublishSpec = "0.0.0.0:5353:53/udp".parse().unwrap();
        assert_eq!(p.bind, "0.0.0.0:5353".parse().unwrap());
        assert!(p.udp);
        let p: PublishSpec = "[::1]:8443:443".parse().unwrap();
        assert_eq!(p.bind, "[::1]:8443".parse().unwrap());
        for bad in [
            "80",
            "x:80",
            "8080:0",
            "8080:80/sctp",
            "nohost:1:2",
            "70000:80",
        ] {
            let e = bad.parse::<PublishSpec>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn tls_settings_parse_or_explain() {
        assert_eq!("443".parse::<TlsPorts>(), Ok(TlsPorts(vec![443])));
        assert_eq!(
            " 8443, 443,443".parse::<TlsPorts>(),
            Ok(TlsPorts(vec![443, 8443]))
        );
        assert_eq!("none".parse::<TlsPorts>(), Ok(TlsPorts(vec![])));
        assert_eq!("".parse::<TlsPorts>(), Ok(TlsPorts(vec![])));
        for bad in ["0", "443,https", "70000", "443,,8443", "-1"] {
            let e = bad.parse::<TlsPorts>().unwrap_err();
            assert!(e.contains("--tls-ports") && e.contains(bad), "{e}");
        }
        let s = |ports: Option<Vec<u16>>, require: bool| UserNetSettings {
            tls_ports: ports,
            tls_require_sni: require,
            ..Default::default()
        };
        let t = tls_inspection(&s(None, false)).unwrap();
        assert_eq!((t.ports, t.require_sni), (vec![443], false));
        let t = tls_inspection(&s(Some(vec![8443]), true)).unwrap();
        assert_eq!((t.ports, t.require_sni), (vec![8443], true));
        let e = tls_inspection(&s(Some(vec![]), true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-require-sni"), "{e}");
        let e = tls_inspection(&s(Some(vec![0]), false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("port 0"), "{e}");
    }

    #[test]
    fn pools_are_checked() {
        assert_eq!(parse_ipv4_pool("172.16.0.0/12").unwrap().1, 12);
        assert!(parse_ipv4_pool("172.16.0.1/12")
            .unwrap_err()
            .contains("host bits"));
        assert!(parse_ipv4_pool("10.0.0.0/31").unwrap_err().contains("/30"));
        assert!(parse_ipv4_pool("banana").is_err());
        assert_eq!(parse_ipv6_pool("fd42:6d73:62::/48").unwrap().1, 48);
        assert!(parse_ipv6_pool("fd42::/80").unwrap_err().contains("/64"));
        assert_eq!(
            parse_dns("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert_eq!(parse_dns("127.0.0.1:5353").unwrap().port(), 5353);
        assert!(parse_dns("resolver").is_err());
    }
}

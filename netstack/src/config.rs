//! Configuration of one VM's user-mode network, and the addresses derived from it.
//!
//! Owns defaults and validation; parsing from CLI/TOML happens in `vmm`, which fills
//! [`NetConfig`]. Never opens sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use smoltcp::wire::EthernetAddress;

use crate::error::NetError;

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// `-p [bind:]host:guest[/udp]`: a host listener whose connections are opened into the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    /// Host address to listen on (default 127.0.0.1). Port 0 picks a free port
    /// (see [`crate::Netstack::published_addrs`]).
    pub bind: SocketAddr,
    /// Port inside the guest that accepted connections are forwarded to.
    pub guest_port: u16,
    /// Protocol.
    pub proto: PortProto,
}

/// Resource limits; overflow refuses new flows without touching existing ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum simultaneous TCP connections (both directions).
    pub max_tcp_connections: usize,
    /// Maximum entries in the flow table (TCP + UDP + ICMP).
    pub max_flows: usize,
    /// Maximum simultaneous TCP connections accepted on published ports (host -> guest).
    /// Below `max_tcp_connections`, so a connection flood from the host side cannot take
    /// every slot the guest's own connections need; further connections are accepted and
    /// reset at once.
    pub max_published_connections: usize,
    /// Maximum guest-initiated TCP connections not yet established (host connect in
    /// progress, or SYN-ACK sent and not acknowledged). Below `max_tcp_connections`, so a
    /// guest's SYN flood (or connects to hosts that never answer) cannot take the slots of
    /// connections that complete; a SYN beyond it gets a RST.
    pub max_half_open_tcp: usize,
    /// Slots of the flow table only TCP may use (capped at half the table): UDP and other
    /// flows fill at most `max_flows - tcp_reserved_flows`, so a UDP flood cannot lock new
    /// TCP connections out.
    pub tcp_reserved_flows: usize,
    /// How long a host connect may take before the guest gets a RST.
    pub connect_timeout: Duration,
    /// A TCP flow with no traffic in either direction for this long is reset.
    pub tcp_idle_timeout: Duration,
    /// A UDP or ICMP flow with no traffic for this long is closed.
    pub udp_idle_timeout: Duration,
    /// Retransmissions of one segment towards the guest before the flow is reset.
    pub max_retransmits: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tcp_connections: 256,
            max_flows: 1024,
            max_published_connections: 128,
            max_half_open_tcp: 128,
            tcp_reserved_flows: 256,
            connect_timeout: Duration::from_secs(30),
            tcp_idle_timeout: Duration::from_secs(7200),
            udp_idle_timeout: Duration::from_secs(180),
            max_retransmits: 10,
        }
    }
}

/// SNI policy on guest TLS flows, without interception (docs/architecture.md, "SNI
/// policy"): on these ports the guest's ClientHello is read before the host connection is
/// opened, and its server name is judged by the flow gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInspection {
    /// Destination ports of guest TCP flows whose ClientHello is read (default 443; empty:
    /// none). Bytes on these ports that are not a TLS handshake are refused.
    pub ports: Vec<u16>,
    /// Refuse a ClientHello that names no server (default: such flows are judged by their
    /// address alone).
    pub require_sni: bool,
    /// How long after its SYN a guest has to complete its ClientHello (default 2 s).
    pub hello_timeout: Duration,
    /// The interception proxy allowed flows are handed to (`None`: every allowed flow is
    /// spliced to its destination).
    pub handoff: Option<crate::tls::HandoffRef>,
    /// Placeholders of secrets: found on a flow the proxy does not see (plain TCP, UDP), the
    /// flow is reset or the datagram dropped (`None`: not looked for).
    pub placeholders: Option<std::sync::Arc<crate::secret_guard::PlaceholderGuard>>,
}

/// Default TLS port whose ClientHello is judged.
pub const DEFAULT_TLS_PORT: u16 = 443;

impl Default for TlsInspection {
    fn default() -> Self {
        TlsInspection {
            ports: vec![DEFAULT_TLS_PORT],
            require_sni: false,
            hello_timeout: Duration::from_secs(2),
            handoff: None,
            placeholders: None,
        }
    }
}

impl TlsInspection {
    /// No port inspected.
    pub fn off() -> Self {
        TlsInspection {
            ports: Vec::new(),
            ..TlsInspection::default()
        }
    }

    /// Whether guest flows to `port` are inspected.
    pub fn covers(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// Whether guest UDP to `port` is refused: an intercepted port whose proxy blocks QUIC.
    pub fn blocks_udp(&self, port: u16) -> bool {
        self.covers(port) && self.handoff.as_ref().is_some_and(|h| h.0.blocks_quic())
    }
}

/// Everything the netstack needs to serve one VM. All fields have defaults.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The guest's MAC address (also learned from the guest's frames).
    pub guest_mac: [u8; 6],
    /// MAC address the gateway answers ARP/NDP with.
    pub gateway_mac: [u8; 6],
    /// IPv4 pool the per-VM /30 is carved from (default 172.16.0.0/12).
    pub ipv4_pool: (Ipv4Addr, u8),
    /// Which /30 of the pool this VM gets (0 = first: network .0, gateway .1, guest .2).
    pub ipv4_index: u32,
    /// IPv6 pool the per-VM /64 is carved from (default fd42:6d73:62::/48).
    pub ipv6_pool: (Ipv6Addr, u8),
    /// Which /64 of the pool this VM gets.
    pub ipv6_index: u32,
    /// Upstream DNS resolvers; empty = read `nameserver` lines of /etc/resolv.conf.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Name answered locally with the gateway address; connections to it reach host loopback.
    pub host_alias: String,
    /// Host listeners forwarded into the guest.
    pub published: Vec<PublishedPort>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// MTU announced by DHCP/RA and used for the MSS we advertise.
    pub mtu: u16,
    /// Largest Ethernet frame (no virtio header) the device can place in guest RX buffers:
    /// 1514 for any guest, `mtu + 14` when the guest takes large frames, up to 65550 with
    /// GUEST_TSO (see `Netstack::set_guest_rx_offloads`).
    pub max_rx_frame: usize,
    /// Compute L4 checksums for frames to the guest. `false` when the guest negotiated
    /// GUEST_CSUM and the device sets DATA_VALID ([`crate::RxMeta::csum_valid`]).
    pub rx_checksum: bool,
    /// DHCP lease time.
    pub dhcp_lease: Duration,
    /// SNI policy on TLS ports.
    pub tls: TlsInspection,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            guest_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            gateway_mac: [0x52, 0x54, 0x00, 0x00, 0x00, 0x01],
            ipv4_pool: (Ipv4Addr::new(172, 16, 0, 0), 12),
            ipv4_index: 0,
            ipv6_pool: (Ipv6Addr::new(0xfd42, 0x6d73, 0x62, 0, 0, 0, 0, 0), 48),
            ipv6_index: 0,
            dns_upstreams: Vec::new(),
            host_alias: "host.ringfence.internal".to_string(),
            published: Vec::new(),
            limits: Limits::default(),
            mtu: 1500,
            max_rx_frame: 1514,
            rx_checksum: true,
            dhcp_lease: Duration::from_secs(86400),
            tls: TlsInspection::default(),
        }
    }
}

/// Addresses derived from a [`NetConfig`]; fixed for the VM's lifetime.
#[derive(Clone, Debug)]
pub(crate) struct Addressing {
    pub gateway_mac: EthernetAddress,
    pub guest_mac: EthernetAddress,
    pub gateway4: Ipv4Addr,
    pub guest4: Ipv4Addr,
    pub netmask4: Ipv4Addr,
    /// The /64 announced by RA.
    pub prefix6: Ipv6Addr,
    /// Global gateway address (prefix::1).
    pub gateway6: Ipv6Addr,
    /// Link-local gateway address (fe80::1), source of RA/NA.
    pub gateway6_ll: Ipv6Addr,
}

impl Addressing {
    /// Derives addresses, checking the pools can hold the requested indices.
    pub(crate) fn derive(cfg: &NetConfig) -> Result<Self, NetError> {
        let (pool4, plen4) = cfg.ipv4_pool;
        if plen4 > 30 || u64::from(cfg.ipv4_index) >= 1u64 << (30 - plen4) {
            return Err(NetError::Ipv4PoolTooSmall {
                pool: pool4,
                prefix: plen4,
                index: cfg.ipv4_index,
            });
        }
        let mask = if plen4 == 0 {
            0
        } else {
            u32::MAX << (32 - plen4)
        };
        let net = (u32::from(pool4) & mask) + cfg.ipv4_index * 4;
        let (pool6, plen6) = cfg.ipv6_pool;
        if plen6 > 64
            || (plen6 < 64 && u64::from(cfg.ipv6_index) >= 1u64 << (64 - plen6).min(63))
            || (plen6 == 64 && cfg.ipv6_index != 0)
        {
            return Err(NetError::Ipv6PoolTooSmall {
                pool: pool6,
                prefix: plen6,
                index: cfg.ipv6_index,
            });
        }
        let hi = (u128::from(pool6) >> 64) as u64;
        let prefix = ((hi + u64::from(cfg.ipv6_index)) as u128) << 64;
        // A guest may announce a larger MSS than its RX buffers take until its driver is
        // activated; frames are always cut to `max_rx_frame`, so only the floor matters.
        if cfg.mtu < 1280 || cfg.max_rx_frame < 1514 {
            return Err(NetError::InvalidConfig {
                what: "mtu/max_rx_frame",
                value: format!("{}/{}", cfg.mtu, cfg.max_rx_frame),
                hint: "mtu must be >= 1280 and max_rx_frame >= 1514",
            });
        }
        if cfg.max_rx_frame > 65550 {
            return Err(NetError::InvalidConfig {
                what: "max_rx_frame",
                value: cfg.max_rx_frame.to_string(),
                hint: "at most 65550 (64 KiB IP packet plus Ethernet header)",
            });
        }
        Ok(Addressing {
            gateway_mac: EthernetAddress(cfg.gateway_mac),
            guest_mac: EthernetAddress(cfg.guest_mac),
            gateway4: Ipv4Addr::from(net + 1),
            guest4: Ipv4Addr::from(net + 2),
            netmask4: Ipv4Addr::new(255, 255, 255, 252),
            prefix6: Ipv6Addr::from(prefix),
            gateway6: Ipv6Addr::from(prefix | 1),
            gateway6_ll: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
        })
    }

    /// Whether `ip` is one of the gateway's own addresses.
    pub(crate) fn is_gateway(&self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => *a == self.gateway4,
            IpAddr::V6(a) => *a == self.gateway6 || *a == self.gateway6_ll,
        }
    }

    /// Where a guest connection to `ip` really goes: the gateway maps to host loopback.
    pub(crate) fn host_target(&self, ip: IpAddr) -> IpAddr {
        if self.is_gateway(&ip) {
            match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            }
        } else {
            ip
        }
    }
}

/// Reads `nameserver` lines from resolv.conf text (port 53).
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            if it.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = it.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addressing_is_first_slash30_and_slash64() {
        let a = Addressing::derive(&NetConfig::default()).unwrap();
        assert_eq!(a.gateway4, Ipv4Addr::new(172, 16, 0, 1));
        assert_eq!(a.guest4, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(a.prefix6, "fd42:6d73:62::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a.gateway6, "fd42:6d73:62::1".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn index_selects_later_blocks_and_overflow_is_an_error() {
        let cfg = NetConfig {
            ipv4_index: 3,
            ipv6_index: 2,
            ..NetConfig::default()
        };
        let a = Addressing::derive(&cfg).unwrap();
        assert_eq!(a.guest4, Ipv4Addr::new(172, 16, 0, 14));
        assert_eq!(a.prefix6, "fd42:6d73:62:2::".parse::<Ipv6Addr>().unwrap());
        let bad = NetConfig {
            ipv4_pool: (Ipv4Addr::new(10, 0, 0, 0), 29),
            ipv4_index: 2,
            ..NetConfig::default()
        };
        let err = Addressing::derive(&bad).unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/29"), "{err}");
    }

    #[test]
    fn resolv_conf_nameservers() {
        let v = parse_resolv_conf("# c\nnameserver 10.0.0.1\nsearch x\nnameserver fe80::1%eth0\n");
        assert_eq!(
            v,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}

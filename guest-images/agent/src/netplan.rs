//! The network setup plan: the ordered steps that turn a [`NetConfig`] into a configured
//! guest. Pure, so the order and values are unit-tested; [`crate::runtime`] executes them.

use std::net::{IpAddr, Ipv4Addr};

use crate::cmdline::NetConfig;

/// The interface virtio-net appears as.
pub const ETH0: &str = "eth0";
/// The DHCP client (busybox) and the script it calls with the lease.
pub const UDHCPC: &str = "/sbin/udhcpc";
/// The lease script shipped in the initramfs.
pub const UDHCPC_SCRIPT: &str = "/etc/udhcpc.script";

/// One network setup action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetStep {
    /// Set IFF_UP on an interface.
    LinkUp(&'static str),
    /// Assign an IPv4 address and netmask.
    SetAddr {
        /// Interface.
        iface: &'static str,
        /// Address.
        addr: Ipv4Addr,
        /// Netmask derived from the prefix.
        netmask: Ipv4Addr,
    },
    /// Add the default route through a gateway.
    DefaultRoute(Ipv4Addr),
    /// Run the DHCP client in the foreground until it has a lease (or gives up).
    Dhcp {
        /// Interface.
        iface: &'static str,
        /// The client's argv.
        argv: Vec<String>,
    },
    /// Write `/etc/resolv.conf`.
    ResolvConf(String),
}

/// The netmask for a prefix length (clamped to 32).
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    let bits = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Ipv4Addr::from(bits)
}

/// `/etc/resolv.conf` text for `servers`.
pub fn resolv_conf(servers: &[IpAddr]) -> String {
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// The steps for `net` with name servers `dns`. Loopback always comes up first.
pub fn plan(net: &NetConfig, dns: &[IpAddr]) -> Vec<NetStep> {
    let mut steps = vec![NetStep::LinkUp("lo")];
    match net {
        NetConfig::None => {}
        NetConfig::Dhcp => {
            steps.push(NetStep::LinkUp(ETH0));
            steps.push(NetStep::Dhcp {
                iface: ETH0,
                argv: [
                    UDHCPC,
                    "-i",
                    ETH0,
                    "-f",
                    "-q",
                    "-n",
                    "-t",
                    "5",
                    "-T",
                    "1",
                    "-s",
                    UDHCPC_SCRIPT,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            });
        }
        NetConfig::Static {
            addr,
            prefix,
            gateway,
        } => {
            steps.push(NetStep::SetAddr {
                iface: ETH0,
                addr: *addr,
                netmask: netmask(*prefix),
            });
            steps.push(NetStep::LinkUp(ETH0));
            if let Some(gw) = gateway {
                steps.push(NetStep::DefaultRoute(*gw));
            }
        }
    }
    if !dns.is_empty() {
        steps.push(NetStep::ResolvConf(resolv_conf(dns)));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(40), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(9), Ipv4Addr::new(255, 128, 0, 0));
    }

    #[test]
    fn static_plan_sets_the_address_before_the_route() {
        let steps = plan(
            &NetConfig::Static {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            },
            &["10.0.2.3".parse().unwrap()],
        );
        assert_eq!(
            steps,
            vec![
                NetStep::LinkUp("lo"),
                NetStep::SetAddr {
                    iface: ETH0,
                    addr: Ipv4Addr::new(10, 0, 2, 15),
                    netmask: Ipv4Addr::new(255, 255, 255, 0),
                },
                NetStep::LinkUp(ETH0),
                NetStep::DefaultRoute(Ipv4Addr::new(10, 0, 2, 2)),
                NetStep::ResolvConf("nameserver 10.0.2.3\n".into()),
            ]
        );
    }

    #[test]
    fn dhcp_plan_runs_the_client_on_eth0() {
        let steps = plan(&NetConfig::Dhcp, &[]);
        assert_eq!(steps.len(), 3);
        let NetStep::Dhcp { argv, .. } = &steps[2] else {
            panic!("{steps:?}")
        };
        assert_eq!(argv[0], UDHCPC);
        assert!(argv.windows(2).any(|w| w == ["-s", UDHCPC_SCRIPT]));
        assert_eq!(plan(&NetConfig::None, &[]), vec![NetStep::LinkUp("lo")]);
    }
}

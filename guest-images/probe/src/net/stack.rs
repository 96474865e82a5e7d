//! The probe's network stack: one virtio-net device, one smoltcp
//! `Interface`, a `SocketSet`, and the polling helpers every network scenario
//! uses.
//!
//! Owns time (smoltcp instants from the TSC), address configuration
//! (`probe.ip=CIDR probe.gw=IP [probe.dns=IP]`, or DHCP when `probe.ip` is
//! absent), name resolution, and bounded waiting: every wait takes a TSC
//! deadline and returns a timeout error instead of hanging.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, dns};
use smoltcp::time::Instant;
use smoltcp::wire::{DnsQueryType, EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::virtio_net::{VirtioNet, DEVICE_ID_NET};
use super::wait::Waiter;
use crate::clock::{rdtsc, Clock};
use crate::cmdline::Cmdline;
use crate::virtio::candidate_windows;
use crate::virtio::mmio::MmioTransport;

/// DHCP options asked for: subnet mask, router, DNS servers, interface MTU.
const DHCP_REQUEST: &[u8] = &[1, 3, 6, DHCP_OPT_MTU];
/// DHCP option 26: interface MTU.
const DHCP_OPT_MTU: u8 = 26;
/// Room for a DHCP answer kept for its options.
const DHCP_PACKET_MAX: usize = 1500;

/// A smoltcp interface over `dev`, with its MTU as of now.
fn new_interface(dev: &mut VirtioNet, epoch: u64, now: Instant) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(dev.mac())));
    config.random_seed = epoch ^ 0x9e37_79b9_7f4a_7c15;
    Interface::new(config, dev, now)
}

/// Most egress passes per poll (bounds the frames sent per kick).
const EGRESS_BATCH: usize = 64;

/// A network failure, phrased for the JSON `error` field.
#[derive(Debug)]
pub enum NetError {
    /// No virtio-net device was found.
    NoDevice,
    /// The device could not be initialised.
    Device(String),
    /// A command-line value is malformed.
    BadArg {
        /// The key.
        key: &'static str,
        /// What was given.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// DHCP did not complete in time.
    DhcpTimeout {
        /// How long the probe waited.
        ms: u64,
    },
    /// A name did not resolve (NXDOMAIN, refused, or server failure).
    ResolveFailed {
        /// The name.
        name: String,
    },
    /// No DNS answer in time.
    ResolveTimeout {
        /// The name.
        name: String,
        /// How long the probe waited.
        ms: u64,
    },
    /// No DNS server is configured.
    NoDnsServer,
    /// Anything else a scenario reports.
    Other(String),
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::NoDevice => write!(
                f,
                "no virtio-net device: none in virtio_mmio.device= tokens nor in the QEMU microvm window; \
                 attach one (ringfence --net ..., QEMU -device virtio-net-device)"
            ),
            NetError::Device(e) => write!(f, "virtio-net: {e}"),
            NetError::BadArg { key, value, expected } => write!(f, "{key}={value:?} is invalid: expected {expected}"),
            NetError::DhcpTimeout { ms } => write!(f, "DHCP got no lease in {ms} ms; give probe.ip= and probe.gw= or raise probe.timeout_ms"),
            NetError::ResolveFailed { name } => write!(f, "DNS lookup of {name:?} failed (NXDOMAIN, refused or server failure)"),
            NetError::ResolveTimeout { name, ms } => write!(f, "DNS lookup of {name:?} got no answer in {ms} ms"),
            NetError::NoDnsServer => write!(f, "a host name needs a DNS server: give probe.dns= or use DHCP"),
            NetError::Other(s) => f.write_str(s),
        }
    }
}

/// How the interface got its address.
pub struct AddressInfo {
    /// The interface address.
    pub cidr: IpCidr,
    /// The default gateway, if any.
    pub gateway: Option<IpAddress>,
    /// DNS servers.
    pub dns: Vec<IpAddress>,
    /// "static" or "dhcp".
    pub method: &'static str,
}

/// The device, interface and sockets.
pub struct Stack {
    /// The virtio-net device.
    pub dev: VirtioNet,
    /// The smoltcp interface.
    pub iface: Interface,
    /// All sockets.
    pub sockets: SocketSet<'static>,
    /// The TSC clock.
    pub clock: Clock,
    /// Calls to [`Stack::poll`] so far.
    pub polls: u64,
    /// TSC ticks spent in polls that moved no frame either way: how long the guest waited
    /// for the device (or the peer) rather than worked.
    pub idle_ticks: u64,
    /// Whether an idle poll spins on or halts (`probe.wait=`), and how often it halted.
    pub waiter: Waiter,
    epoch: u64,
    dns: Vec<IpAddress>,
    /// The MTU smoltcp's interface was created with.
    iface_mtu: usize,
    /// `probe.mtu=` was given: DHCP's MTU option is ignored.
    mtu_fixed: bool,
}

fn parse_ip(key: &'static str, value: &str) -> Result<IpAddress, NetError> {
    value.parse().map_err(|_| NetError::BadArg {
        key,
        value: value.into(),
        expected: "an IPv4 or IPv6 address",
    })
}

impl Stack {
    /// Finds the first virtio-net device and wraps it in an interface.
    pub fn open(cmdline: &Cmdline<'_>, clock: Clock) -> Result<Stack, NetError> {
        let mut transport = None;
        for window in candidate_windows(cmdline) {
            match MmioTransport::probe(window, DEVICE_ID_NET) {
                Ok(Some(t)) => {
                    transport = Some(t);
                    break;
                }
                Ok(None) => {}
                Err(e) => return Err(NetError::Device(format!("{e}"))),
            }
        }
        let transport = transport.ok_or(NetError::NoDevice)?;
        let offload = cmdline.get("probe.csum") != Some("0");
        let mut dev =
            VirtioNet::new(transport, offload).map_err(|e| NetError::Device(format!("{e}")))?;
        let mtu_fixed = match cmdline.get("probe.mtu") {
            Some(v) => {
                let mtu = v.parse::<usize>().map_err(|_| NetError::BadArg {
                    key: "probe.mtu",
                    value: v.into(),
                    expected: "a link MTU in bytes, e.g. 1500",
                })?;
                dev.set_mtu(mtu);
                true
            }
            None => false,
        };
        let waiter = Waiter::from_cmdline(cmdline, &clock, dev.irq())?;
        let epoch = rdtsc();
        let iface = new_interface(&mut dev, epoch, Instant::from_micros(0));
        Ok(Stack {
            iface_mtu: dev.mtu(),
            mtu_fixed,
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            clock,
            polls: 0,
            idle_ticks: 0,
            waiter,
            epoch,
            dns: Vec::new(),
        })
    }

    /// smoltcp time: microseconds since the stack was opened.
    pub fn now(&self) -> Instant {
        let us = self.clock.ticks_to_ns(rdtsc() - self.epoch) / 1000;
        Instant::from_micros(us as i64)
    }

    /// One poll: process received frames, run socket timers, send as much
    /// as the sockets have ready (smoltcp emits one segment per socket per
    /// egress pass, so passes repeat up to `EGRESS_BATCH` times), then kick
    /// once for the whole batch. A poll that moved nothing may then halt (see
    /// [`Waiter`]).
    pub fn poll(&mut self) {
        self.polls += 1;
        let start = rdtsc();
        let before = self.dev.stats();
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for _ in 1..EGRESS_BATCH {
            if matches!(
                self.iface
                    .poll_egress(now, &mut self.dev, &mut self.sockets),
                PollResult::None
            ) {
                break;
            }
        }
        self.dev.flush();
        let after = self.dev.stats();
        if after.rx_frames == before.rx_frames && after.tx_frames == before.tx_frames {
            if self.waiter.idle(rdtsc()) {
                let delay = self.iface.poll_delay(self.now(), &self.sockets);
                self.waiter.sleep(&mut self.dev, delay);
            }
            self.idle_ticks += rdtsc() - start;
        } else {
            self.waiter.busy();
        }
    }

    /// Polls until `done` returns `Some` or the TSC passes `deadline`.
    pub fn poll_until<T>(
        &mut self,
        deadline: u64,
        mut done: impl FnMut(&mut Stack) -> Option<T>,
    ) -> Option<T> {
        loop {
            self.poll();
            if let Some(v) = done(self) {
                return Some(v);
            }
            if rdtsc() > deadline {
                return None;
            }
        }
    }

    /// Configures the address statically or through DHCP.
    pub fn configure(
        &mut self,
        cmdline: &Cmdline<'_>,
        timeout_ms: u64,
    ) -> Result<AddressInfo, NetError> {
        if let Some(ip) = cmdline.get("probe.ip") {
            let cidr: IpCidr = ip.parse().map_err(|_| NetError::BadArg {
                key: "probe.ip",
                value: ip.into(),
                expected: "an address with prefix length, e.g. 10.0.2.15/24",
            })?;
            let gateway = cmdline
                .get("probe.gw")
                .map(|g| parse_ip("probe.gw", g))
                .transpose()?;
            let dns = cmdline
                .get("probe.dns")
                .map(|d| parse_ip("probe.dns", d))
                .transpose()?;
            self.iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(cidr);
            });
            match gateway {
                Some(IpAddress::Ipv4(gw)) => {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
                }
                Some(IpAddress::Ipv6(gw)) => {
                    let _ = self.iface.routes_mut().add_default_ipv6_route(gw);
                }
                None => {}
            }
            self.dns = dns.into_iter().collect();
            return Ok(AddressInfo {
                cidr,
                gateway,
                dns: self.dns.clone(),
                method: "static",
            });
        }
        self.dhcp(cmdline, timeout_ms)
    }

    fn dhcp(&mut self, cmdline: &Cmdline<'_>, timeout_ms: u64) -> Result<AddressInfo, NetError> {
        let mut socket = dhcpv4::Socket::new();
        socket.set_parameter_request_list(DHCP_REQUEST);
        // One lease per boot: the copy of the answer (read for its MTU option) may live on.
        socket.set_receive_packet_buffer(alloc::vec![0u8; DHCP_PACKET_MAX].leak());
        let handle = self.sockets.add(socket);
        let deadline = self.clock.deadline_ms(timeout_ms);
        let lease = self.poll_until(deadline, |s| {
            match s.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
                Some(dhcpv4::Event::Configured(c)) => {
                    let mtu = c.packet.as_ref().and_then(|p| {
                        p.options()
                            .find(|o| o.kind == DHCP_OPT_MTU && o.data.len() == 2)
                            .map(|o| usize::from(u16::from_be_bytes([o.data[0], o.data[1]])))
                    });
                    Some((c.address, c.router, c.dns_servers.clone(), mtu))
                }
                _ => None,
            }
        });
        // The lease outlives the scenario; the socket is no longer needed.
        self.sockets.remove(handle);
        let Some((address, router, servers, mtu)) = lease else {
            return Err(NetError::DhcpTimeout { ms: timeout_ms });
        };
        if let (Some(mtu), false) = (mtu, self.mtu_fixed) {
            self.apply_mtu(mtu);
        }
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(IpCidr::Ipv4(address));
        });
        if let Some(r) = router {
            let _ = self.iface.routes_mut().add_default_ipv4_route(r);
        }
        self.dns = servers.iter().map(|a| IpAddress::Ipv4(*a)).collect();
        if let Some(d) = cmdline.get("probe.dns") {
            self.dns = alloc::vec![parse_ip("probe.dns", d)?];
        }
        Ok(AddressInfo {
            cidr: IpCidr::Ipv4(address),
            gateway: router.map(IpAddress::Ipv4),
            dns: self.dns.clone(),
            method: "dhcp",
        })
    }

    /// Uses `mtu` for the link (clamped by the driver). smoltcp reads the MTU
    /// once, when its `Interface` is created, so a new one replaces the old;
    /// the caller configures addresses afterwards.
    fn apply_mtu(&mut self, mtu: usize) {
        if self.dev.set_mtu(mtu) == self.iface_mtu {
            return;
        }
        let now = self.now();
        self.iface = new_interface(&mut self.dev, self.epoch, now);
        self.iface_mtu = self.dev.mtu();
    }

    /// The link MTU smoltcp uses.
    pub fn mtu(&self) -> usize {
        self.iface_mtu
    }

    /// Resolves `name` (an address literal is returned as is) with A then
    /// AAAA queries.
    pub fn resolve(&mut self, name: &str, timeout_ms: u64) -> Result<Vec<IpAddress>, NetError> {
        if let Ok(addr) = name.parse::<IpAddress>() {
            return Ok(alloc::vec![addr]);
        }
        if self.dns.is_empty() {
            return Err(NetError::NoDnsServer);
        }
        let deadline = self.clock.deadline_ms(timeout_ms);
        let handle: SocketHandle = self.sockets.add(dns::Socket::new(&self.dns, Vec::new()));
        let mut result = Err(NetError::ResolveFailed { name: name.into() });
        for qtype in [DnsQueryType::A, DnsQueryType::Aaaa] {
            let socket = self.sockets.get_mut::<dns::Socket>(handle);
            let query = match socket.start_query(self.iface.context(), name, qtype) {
                Ok(q) => q,
                Err(e) => {
                    result = Err(NetError::Other(format!(
                        "DNS query for {name:?} not started: {e}"
                    )));
                    break;
                }
            };
            let answer = self.poll_until(deadline, |s| {
                match s
                    .sockets
                    .get_mut::<dns::Socket>(handle)
                    .get_query_result(query)
                {
                    Ok(addrs) => Some(Ok(addrs)),
                    Err(dns::GetQueryResultError::Pending) => None,
                    Err(dns::GetQueryResultError::Failed) => Some(Err(())),
                }
            });
            match answer {
                Some(Ok(addrs)) if !addrs.is_empty() => {
                    result = Ok(addrs.iter().copied().collect());
                    break;
                }
                Some(_) => {}
                None => {
                    self.sockets
                        .get_mut::<dns::Socket>(handle)
                        .cancel_query(query);
                    result = Err(NetError::ResolveTimeout {
                        name: name.into(),
                        ms: timeout_ms,
                    });
                    break;
                }
            }
        }
        self.sockets.remove(handle);
        result
    }
}

/// Formats an address for JSON.
pub fn ip_string(addr: &IpAddress) -> String {
    format!("{addr}")
}

//! What every network scenario shares: bringing the stack up, reading the
//! common keys (`probe.peer`, `probe.count`, `probe.timeout_ms`), the JSON
//! fields about the interface, and RTT percentiles.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::wire::{IpAddress, IpEndpoint};

use super::{Context, Outcome};
use crate::clock::rdtsc;
use crate::cmdline::parse_u64;
use crate::json::JsonLine;
use crate::net::stack::{ip_string, AddressInfo};
use crate::net::{NetError, Stack};

/// Default for `probe.timeout_ms` (connects, DHCP, DNS, idle transfers).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Exit status for a network failure other than a timeout.
pub const STATUS_FAILED: u32 = 1;
/// Exit status for a timeout.
pub const STATUS_TIMEOUT: u32 = 2;

/// A configured stack plus what the scenarios report about it.
pub struct NetRun {
    /// The stack.
    pub stack: Stack,
    /// How it got its address.
    pub addr: AddressInfo,
    /// `probe.timeout_ms`.
    pub timeout_ms: u64,
}

/// Reads `probe.timeout_ms` (or `default`).
pub fn timeout_ms(ctx: &Context<'_>, default: u64) -> Result<u64, NetError> {
    match ctx.cmdline.get("probe.timeout_ms") {
        None => Ok(default),
        Some(v) => parse_u64(v).filter(|&ms| ms > 0).ok_or(NetError::BadArg {
            key: "probe.timeout_ms",
            value: v.into(),
            expected: "a positive number of milliseconds",
        }),
    }
}

/// Reads `probe.count` (or `default`).
pub fn count(ctx: &Context<'_>, default: u64) -> Result<u64, NetError> {
    match ctx.cmdline.get("probe.count") {
        None => Ok(default),
        Some(v) => parse_u64(v).filter(|&n| n > 0).ok_or(NetError::BadArg {
            key: "probe.count",
            value: v.into(),
            expected: "a positive integer",
        }),
    }
}

/// Opens the device and configures the address.
pub fn bring_up(ctx: &Context<'_>, default_timeout_ms: u64) -> Result<NetRun, NetError> {
    let timeout_ms = timeout_ms(ctx, default_timeout_ms)?;
    let mut stack = Stack::open(&ctx.cmdline, ctx.clock)?;
    let addr = stack.configure(&ctx.cmdline, timeout_ms.max(DEFAULT_TIMEOUT_MS))?;
    Ok(NetRun {
        stack,
        addr,
        timeout_ms,
    })
}

/// `HOST:PORT`, `[V6]:PORT`; HOST may be a name (resolved through DNS).
pub fn peer_endpoint(run: &mut NetRun, ctx: &Context<'_>) -> Result<IpEndpoint, NetError> {
    let spec = ctx.cmdline.get("probe.peer").ok_or(NetError::BadArg {
        key: "probe.peer",
        value: String::new(),
        expected: "HOST:PORT",
    })?;
    let bad = || NetError::BadArg {
        key: "probe.peer",
        value: spec.into(),
        expected: "HOST:PORT or [IPV6]:PORT",
    };
    let (host, port) = spec.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    let addr = resolve_first(run, host)?;
    Ok(IpEndpoint::new(addr, port))
}

/// `probe.peer` as a bare address or name (ping).
pub fn peer_host(run: &mut NetRun, ctx: &Context<'_>) -> Result<IpAddress, NetError> {
    let host = ctx.cmdline.get("probe.peer").ok_or(NetError::BadArg {
        key: "probe.peer",
        value: String::new(),
        expected: "an IP address or host name",
    })?;
    resolve_first(run, host)
}

fn resolve_first(run: &mut NetRun, host: &str) -> Result<IpAddress, NetError> {
    let addrs = run.stack.resolve(host, run.timeout_ms)?;
    // Prefer an address of a family the interface has.
    let has_v4 = run.stack.iface.ipv4_addr().is_some();
    addrs
        .iter()
        .find(|a| matches!(a, IpAddress::Ipv4(_)) == has_v4)
        .or(addrs.first())
        .copied()
        .ok_or(NetError::ResolveFailed { name: host.into() })
}

/// A local port in the dynamic range, varied per boot.
pub fn ephemeral_port() -> u16 {
    49152 + (rdtsc() % 16384) as u16
}

/// The scenario's JSON line with the interface fields filled in.
pub fn json(ctx: &Context<'_>, name: &str, ok: bool, run: Option<&NetRun>) -> JsonLine {
    let mut j = ctx.json(name, ok);
    if let Some(run) = run {
        let mac = run.stack.dev.mac();
        let stats = run.stack.dev.stats();
        j = j
            .str("ip", &format!("{}", run.addr.cidr))
            .str("addr_method", run.addr.method)
            .str(
                "mac",
                &format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
                ),
            )
            .u64("rx_frames", stats.rx_frames)
            .u64("tx_frames", stats.tx_frames)
            .u64("kicks", stats.kicks)
            .u64("rx_dropped", stats.rx_dropped)
            .u64("tx_ring_full", stats.tx_ring_full)
            .u64("rx_csum_bad", stats.rx_csum_bad)
            .u64("polls", run.stack.polls)
            .u64(
                "idle_ms",
                run.stack.clock.ticks_to_ns(run.stack.idle_ticks) / 1_000_000,
            )
            .str("wait", &run.stack.waiter.describe())
            .u64("sleeps", run.stack.waiter.sleeps)
            .u64("sleeps_skipped", run.stack.waiter.sleeps_skipped)
            .u64("mtu", run.stack.mtu() as u64)
            .str("virtio_base", &format!("{:#x}", run.stack.dev.base()))
            .str(
                "virtio_features",
                &format!("{:#x}", run.stack.dev.features()),
            );
        let dns = ip_strings(&run.addr.dns);
        j = j.str_array("dns", dns.iter().map(String::as_str));
        if let Some(gw) = &run.addr.gateway {
            j = j.str("gw", &ip_string(gw));
        }
    }
    j
}

/// A failed network scenario: JSON with the error, and `status`.
pub fn failure(ctx: &Context<'_>, name: &str, run: Option<&NetRun>, err: &NetError) -> Outcome {
    let status = match err {
        NetError::BadArg { .. } => crate::exit::STATUS_USAGE,
        NetError::DhcpTimeout { .. } | NetError::ResolveTimeout { .. } => STATUS_TIMEOUT,
        _ => STATUS_FAILED,
    };
    Outcome {
        json: json(ctx, name, false, run).str("error", &format!("{err}")),
        status,
    }
}

/// p50 and p99 of `samples` (ns), in µs.
pub fn percentiles_us(samples: &mut [u64]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let at = |p: usize| samples[(samples.len() - 1) * p / 100] as f64 / 1000.0;
    (at(50), at(99))
}

/// Converts a TSC interval to seconds.
pub fn seconds(ctx: &Context<'_>, ticks: u64) -> f64 {
    ctx.clock.ticks_to_ns(ticks) as f64 / 1e9
}

/// `ADDR:PORT`, with IPv6 addresses in brackets.
pub fn endpoint_string(ep: &IpEndpoint) -> String {
    match ep.addr {
        IpAddress::Ipv4(a) => format!("{a}:{}", ep.port),
        IpAddress::Ipv6(a) => format!("[{a}]:{}", ep.port),
    }
}

/// Addresses as strings, for JSON arrays.
pub fn ip_strings(addrs: &[IpAddress]) -> Vec<String> {
    addrs.iter().map(ip_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_in_microseconds() {
        let mut v: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        assert_eq!(percentiles_us(&mut v), (50.0, 99.0));
        let mut one = [7000];
        assert_eq!(percentiles_us(&mut one), (7.0, 7.0));
        assert_eq!(percentiles_us(&mut []), (0.0, 0.0));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let v4 = IpEndpoint::new("10.0.2.2".parse().unwrap(), 80);
        let v6 = IpEndpoint::new("2001:db8::1".parse().unwrap(), 7010);
        assert_eq!(endpoint_string(&v4), "10.0.2.2:80");
        assert_eq!(endpoint_string(&v6), "[2001:db8::1]:7010");
    }
}

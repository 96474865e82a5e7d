//! ICMP echo to destinations other than the gateway.
//!
//! Design §6: echo should go through unprivileged "ping" sockets
//! (`SOCK_DGRAM`/`IPPROTO_ICMP`), which need `net.ipv4.ping_group_range` to include our
//! group; on our machines it is `1 0` (disabled). This module owns the start-up check
//! (logged once per process) and, in this version, counts relayed echo requests as
//! dropped (`drop_icmp_no_socket`): the relay itself is not implemented yet.

use std::sync::Once;

use crate::core::Core;
use crate::frame::parse::IpInfo;
use crate::icmp::ForeignEcho;

static CHECK: Once = Once::new();

/// Whether the current process's group may open ping sockets, from the sysctl text.
fn group_allowed(range: &str, gid: u32) -> bool {
    let mut it = range.split_whitespace().filter_map(|v| v.parse::<u64>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) => lo <= u64::from(gid) && u64::from(gid) <= hi,
        _ => false,
    }
}

/// Logs, once per process, whether ICMP echo to other hosts can work.
pub(crate) fn log_capability_once() {
    CHECK.call_once(|| {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
            .unwrap_or_default();
        // SAFETY: getgid has no preconditions and cannot fail.
        let gid = unsafe { libc::getgid() };
        if group_allowed(&range, gid) {
            tracing::info!("ICMP ping sockets available (ping_group_range {})", range.trim());
        } else {
            tracing::warn!(
                "net.ipv4.ping_group_range is '{}' and excludes gid {gid}: guest pings to hosts \
                 other than the gateway are dropped (set the sysctl in the sandbox's netns to \
                 enable them)",
                range.trim()
            );
        }
    });
}

/// Relays an echo request to a non-gateway destination (not implemented: counted).
pub(crate) fn relay_echo(core: &mut Core, ip: &IpInfo, echo: &ForeignEcho<'_>) {
    let _ = (ip, echo.ident, echo.seq_no, echo.data);
    core.metrics.drop_icmp_no_socket += 1;
}

#[cfg(test)]
mod tests {
    #[test]
    fn ping_group_range_parsing() {
        assert!(!super::group_allowed("1\t0\n", 0));
        assert!(super::group_allowed("0 2147483647", 1000));
        assert!(!super::group_allowed("", 0));
    }
}

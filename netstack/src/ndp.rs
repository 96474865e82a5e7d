//! Neighbor Discovery (RFC 4861) for the gateway: neighbor advertisements for any address
//! that is not the guest's, and router advertisements carrying the VM's /64 with the
//! autonomous flag so the guest configures itself by SLAAC (RFC 4862).
//!
//! Owns no state beyond learning the guest's IPv6 address from solicitations.

use std::net::Ipv6Addr;

use smoltcp::time::Duration;
use smoltcp::wire::{
    Icmpv6Repr, NdiscNeighborFlags, NdiscPrefixInfoFlags, NdiscPrefixInformation, NdiscRepr,
    NdiscRouterFlags, RawHardwareAddress,
};

use crate::core::Core;
use crate::icmp::push_v6;

/// All-nodes multicast, destination of unsolicited answers.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Handles an NDP message from `src`.
pub(crate) fn handle(core: &mut Core, src: Ipv6Addr, repr: NdiscRepr<'_>) {
    match repr {
        NdiscRepr::NeighborSolicit { target_addr, .. } => {
            if src.is_unspecified() {
                // Duplicate address detection for the guest's own address: stay silent.
                return;
            }
            core.guest6.get_or_insert(src);
            if Some(target_addr) == core.guest6 {
                return;
            }
            let na = NdiscRepr::NeighborAdvert {
                flags: NdiscNeighborFlags::ROUTER
                    | NdiscNeighborFlags::SOLICITED
                    | NdiscNeighborFlags::OVERRIDE,
                target_addr,
                lladdr: Some(RawHardwareAddress::from(core.addrs.gateway_mac)),
            };
            push_v6(core, target_addr, src, &Icmpv6Repr::Ndisc(na));
        }
        NdiscRepr::RouterSolicit { .. } => {
            let dst = if src.is_unspecified() { ALL_NODES } else { src };
            let ra = router_advert(core);
            let gw = core.addrs.gateway6_ll;
            push_v6(core, gw, dst, &Icmpv6Repr::Ndisc(ra));
        }
        _ => {}
    }
}

fn router_advert(core: &Core) -> NdiscRepr<'static> {
    NdiscRepr::RouterAdvert {
        hop_limit: 64,
        flags: NdiscRouterFlags::empty(),
        router_lifetime: Duration::from_secs(1800),
        reachable_time: Duration::from_millis(0),
        retrans_time: Duration::from_millis(0),
        lladdr: Some(RawHardwareAddress::from(core.addrs.gateway_mac)),
        mtu: Some(u32::from(core.cfg.mtu)),
        prefix_info: Some(NdiscPrefixInformation {
            prefix_len: 64,
            flags: NdiscPrefixInfoFlags::ON_LINK | NdiscPrefixInfoFlags::ADDRCONF,
            valid_lifetime: Duration::from_secs(86400),
            preferred_lifetime: Duration::from_secs(14400),
            prefix: core.addrs.prefix6,
        }),
    }
}

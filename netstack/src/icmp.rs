//! ICMPv4 and ICMPv6 from the guest: echo to the gateway is answered locally, NDP goes to
//! [`crate::ndp`], echo to any other destination is handed back to the caller to be
//! relayed through a host ICMP socket ([`crate::ping`]). Errors and other types are dropped.

use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr,
    IpProtocol, Ipv4Repr, Ipv6Repr,
};

use crate::core::Core;
use crate::frame::parse::IpInfo;

/// An echo request for a destination other than the gateway.
pub(crate) struct ForeignEcho<'m> {
    pub ident: u16,
    pub seq_no: u16,
    pub data: &'m [u8],
}

/// Handles an ICMPv4 message (`msg` = whole ICMP message).
pub(crate) fn handle_v4<'m>(
    core: &mut Core,
    ip: &IpInfo,
    msg: &'m [u8],
) -> Option<ForeignEcho<'m>> {
    core.metrics.icmp_frames += 1;
    let Ok(pkt) = Icmpv4Packet::new_checked(msg) else {
        core.metrics.drop_malformed += 1;
        return None;
    };
    let Ok(repr) = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::ignored()) else {
        core.metrics.drop_unsupported += 1;
        return None;
    };
    let Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data,
    } = repr
    else {
        core.metrics.drop_unsupported += 1;
        return None;
    };
    if !core.addrs.is_gateway(&ip.dst) {
        return Some(ForeignEcho {
            ident,
            seq_no,
            data,
        });
    }
    let reply = Icmpv4Repr::EchoReply {
        ident,
        seq_no,
        data,
    };
    let ep = core.to_guest(ip.dst, ip.src);
    core.push_ctrl(&ep, IpProtocol::Icmp, reply.buffer_len(), |buf| {
        reply.emit(
            &mut Icmpv4Packet::new_unchecked(buf),
            &ChecksumCapabilities::default(),
        );
    });
    None
}

/// Handles an ICMPv6 message (`msg` = whole ICMPv6 message).
pub(crate) fn handle_v6<'m>(
    core: &mut Core,
    ip: &IpInfo,
    msg: &'m [u8],
) -> Option<ForeignEcho<'m>> {
    core.metrics.icmp_frames += 1;
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (ip.src, ip.dst) else {
        return None;
    };
    let Ok(pkt) = Icmpv6Packet::new_checked(msg) else {
        core.metrics.drop_malformed += 1;
        return None;
    };
    let Ok(repr) = Icmpv6Repr::parse(&src, &dst, &pkt, &ChecksumCapabilities::ignored()) else {
        core.metrics.drop_unsupported += 1;
        return None;
    };
    match repr {
        Icmpv6Repr::Ndisc(nd) => {
            crate::ndp::handle(core, src, nd);
            None
        }
        Icmpv6Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } => {
            if !core.addrs.is_gateway(&ip.dst) {
                return Some(ForeignEcho {
                    ident,
                    seq_no,
                    data,
                });
            }
            let reply = Icmpv6Repr::EchoReply {
                ident,
                seq_no,
                data,
            };
            push_v6(core, dst, src, &reply);
            None
        }
        _ => {
            // MLD reports and the like need no answer.
            None
        }
    }
}

/// Queues an ICMPv6 message from `src` to `dst`.
pub(crate) fn push_v6(
    core: &mut Core,
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    repr: &Icmpv6Repr<'_>,
) {
    let ep = core.to_guest(IpAddr::V6(src), IpAddr::V6(dst));
    core.push_ctrl(&ep, IpProtocol::Icmpv6, repr.buffer_len(), |buf| {
        repr.emit(
            &src,
            &dst,
            &mut Icmpv6Packet::new_unchecked(buf),
            &ChecksumCapabilities::default(),
        );
    });
}

/// Queues "communication administratively prohibited" for a guest packet whose flow was
/// refused (policy or limits), quoting its IP header and first 8 payload bytes
/// (RFC 792; RFC 4443 §3.1), so the guest fails fast instead of timing out.
pub(crate) fn push_prohibited(core: &mut Core, ip: &IpInfo, l4_head: &[u8]) {
    let quote = &l4_head[..l4_head.len().min(8)];
    match (ip.src, ip.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let repr = Icmpv4Repr::DstUnreachable {
                reason: Icmpv4DstUnreachable::CommProhibited,
                header: Ipv4Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: ip.proto,
                    payload_len: ip.l4_len,
                    hop_limit: 64,
                },
                data: quote,
            };
            let gw = IpAddr::V4(core.addrs.gateway4);
            let ep = core.to_guest(gw, ip.src);
            core.push_ctrl(&ep, IpProtocol::Icmp, repr.buffer_len(), |buf| {
                repr.emit(
                    &mut Icmpv4Packet::new_unchecked(buf),
                    &ChecksumCapabilities::default(),
                );
            });
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let repr = Icmpv6Repr::DstUnreachable {
                reason: Icmpv6DstUnreachable::AdminProhibit,
                header: Ipv6Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: ip.proto,
                    payload_len: ip.l4_len,
                    hop_limit: 64,
                },
                data: quote,
            };
            let gw = core.addrs.gateway6;
            push_v6(core, gw, src, &repr);
        }
        _ => {}
    }
}

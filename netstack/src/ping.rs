//! ICMP echo to destinations other than the gateway, relayed through host ICMP sockets.
//!
//! Design §6: echo goes through unprivileged "ping" sockets (`SOCK_DGRAM`/`IPPROTO_ICMP`),
//! one per (guest source, destination, echo identifier), which need
//! `net.ipv4.ping_group_range` to include our group. On our machines it is `1 0`
//! (disabled), so at start-up we say so once and fall back to one shared raw ICMP socket
//! per family when the process has CAP_NET_RAW; identifiers are then remapped so replies
//! can be told apart from other traffic the raw socket sees. Without either, echo requests
//! are dropped and counted (`drop_icmp_no_socket`). Replies are small and are built as
//! control frames (copied once); this is not a bulk data path.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpProtocol};

use crate::checksum::Checksum;
use crate::core::{Core, InterestOp};
use crate::flow_key::ICMP_TAG;
use crate::icmp::ForeignEcho;
use crate::sys::{self, SockKind};

/// How this process can send ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PingMode {
    /// Unprivileged ping sockets.
    Datagram,
    /// Raw ICMP sockets (CAP_NET_RAW).
    Raw,
    /// Neither: echo requests are dropped.
    Unavailable,
}

/// Set once the start-up message was logged (once per process).
static LOGGED: OnceLock<PingMode> = OnceLock::new();

/// Whether the current process's group may open ping sockets, from the sysctl text.
fn group_allowed(range: &str, gid: u32) -> bool {
    let mut it = range
        .split_whitespace()
        .filter_map(|v| v.parse::<u64>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) => lo <= u64::from(gid) && u64::from(gid) <= hi,
        _ => false,
    }
}

/// Probes how echo can be relayed in the calling thread's network namespace; the first
/// probe of the process logs its outcome.
pub(crate) fn mode() -> PingMode {
    let mode = probe();
    LOGGED.get_or_init(|| {
        log_mode(mode);
        mode
    });
    mode
}

fn probe() -> PingMode {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    // SAFETY: getgid has no preconditions and cannot fail.
    let gid = unsafe { libc::getgid() };
    if group_allowed(&range, gid) && sys::socket(false, SockKind::Ping).is_ok() {
        PingMode::Datagram
    } else if sys::socket(false, SockKind::RawIcmp).is_ok() {
        PingMode::Raw
    } else {
        PingMode::Unavailable
    }
}

fn log_mode(mode: PingMode) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    let how = match mode {
        PingMode::Datagram => {
            tracing::info!("ICMP echo relayed through ping sockets");
            return;
        }
        PingMode::Raw => "falling back to a raw ICMP socket (CAP_NET_RAW)",
        PingMode::Unavailable => {
            "no CAP_NET_RAW either: guest pings to hosts other than the gateway are dropped"
        }
    };
    tracing::warn!(
        "net.ipv4.ping_group_range is '{}' and excludes our group; {how} (the sysctl is per \
         network namespace and can be set in the sandbox's netns)",
        range.trim()
    );
}

/// An echo the guest sent and whose reply we are waiting for.
#[derive(Clone, Copy, Debug)]
struct Pending {
    guest: IpAddr,
    dst: IpAddr,
    guest_ident: u16,
    last: Instant,
}

/// A ping socket of one (guest, destination, identifier) flow.
struct PingSocket {
    fd: OwnedFd,
    pending: Pending,
}

/// The echo relay of one netstack.
pub(crate) struct PingRelay {
    mode: PingMode,
    /// Datagram mode: sockets by token.
    sockets: HashMap<u64, PingSocket>,
    by_flow: HashMap<(IpAddr, IpAddr, u16), u64>,
    next_token: u64,
    /// Raw mode: one socket per family (v4, v6) and the identifier map.
    raw: [Option<OwnedFd>; 2],
    idents: HashMap<(bool, u16), Pending>,
    next_ident: u16,
}

/// Tokens 0 and 1 under [`ICMP_TAG`] are the raw sockets; ping sockets start at 2.
const FIRST_PING_TOKEN: u64 = 2;
/// Most simultaneous echo flows.
const MAX_ECHO_FLOWS: usize = 256;

impl PingRelay {
    pub(crate) fn new() -> Self {
        PingRelay {
            mode: mode(),
            sockets: HashMap::new(),
            by_flow: HashMap::new(),
            next_token: FIRST_PING_TOKEN,
            raw: [None, None],
            idents: HashMap::new(),
            next_ident: 1,
        }
    }

    /// Relays an echo request from `guest` to `dst`.
    pub(crate) fn send(
        &mut self,
        core: &mut Core,
        guest: IpAddr,
        dst: IpAddr,
        echo: &ForeignEcho<'_>,
        now: Instant,
    ) {
        let pending = Pending {
            guest,
            dst,
            guest_ident: echo.ident,
            last: now,
        };
        let (seq_no, data) = (echo.seq_no, echo.data);
        let sent = match self.mode {
            PingMode::Unavailable => false,
            PingMode::Datagram => self.send_datagram(core, pending, seq_no, data),
            PingMode::Raw => self.send_raw(core, pending, seq_no, data),
        };
        if !sent {
            core.metrics.drop_icmp_no_socket += 1;
        }
    }

    fn send_datagram(&mut self, core: &mut Core, p: Pending, seq_no: u16, data: &[u8]) -> bool {
        let key = (p.guest, p.dst, p.guest_ident);
        let token = match self.by_flow.get(&key) {
            Some(&t) => t,
            None => {
                if self.sockets.len() >= MAX_ECHO_FLOWS {
                    core.refuse_over_limit("echo flows");
                    return false;
                }
                let Ok(fd) = sys::socket(p.dst.is_ipv6(), SockKind::Ping) else {
                    return false;
                };
                let t = self.next_token;
                self.next_token += 1;
                core.interest(InterestOp::Add, fd.as_raw_fd(), ICMP_TAG | t, true, false);
                core.metrics.flows_opened += 1;
                self.sockets.insert(t, PingSocket { fd, pending: p });
                self.by_flow.insert(key, t);
                t
            }
        };
        let Some(s) = self.sockets.get_mut(&token) else {
            return false;
        };
        s.pending.last = p.last;
        // The kernel replaces the identifier with the socket's and fills the checksum.
        let msg = echo_message(p.dst, p.guest, 0, seq_no, data);
        send_to(s.fd.as_fd(), &msg, p.dst)
    }

    fn send_raw(&mut self, core: &mut Core, p: Pending, seq_no: u16, data: &[u8]) -> bool {
        let v6 = p.dst.is_ipv6();
        let fam = usize::from(v6);
        if self.raw[fam].is_none() {
            let Ok(fd) = sys::socket(v6, SockKind::RawIcmp) else {
                return false;
            };
            core.interest(
                InterestOp::Add,
                fd.as_raw_fd(),
                ICMP_TAG | fam as u64,
                true,
                false,
            );
            self.raw[fam] = Some(fd);
        }
        // Reuse the host identifier of this flow, or take the next free one.
        let existing = self
            .idents
            .iter()
            .find(|(k, v)| {
                k.0 == v6 && v.guest == p.guest && v.dst == p.dst && v.guest_ident == p.guest_ident
            })
            .map(|(k, _)| k.1);
        let host_ident = match existing {
            Some(i) => i,
            None => {
                if self.idents.len() >= MAX_ECHO_FLOWS {
                    core.refuse_over_limit("echo flows");
                    return false;
                }
                let mut i = self.next_ident;
                while self.idents.contains_key(&(v6, i)) {
                    i = i.wrapping_add(1).max(1);
                }
                self.next_ident = i.wrapping_add(1).max(1);
                core.metrics.flows_opened += 1;
                i
            }
        };
        self.idents.insert((v6, host_ident), p);
        let Some(fd) = self.raw[fam].as_ref() else {
            return false;
        };
        let mut msg = echo_message(p.dst, p.guest, host_ident, seq_no, data);
        if !v6 {
            // Raw ICMPv4 sockets send our checksum as is; ICMPv6 ones compute it.
            let mut ck = Checksum::new();
            ck.add(&msg);
            msg[2..4].copy_from_slice(&ck.finish().to_be_bytes());
        }
        send_to(fd.as_fd(), &msg, p.dst)
    }

    /// Whether `token` (without [`ICMP_TAG`]) is ours and readable: relay replies.
    pub(crate) fn on_ready(&mut self, core: &mut Core, token: u64) {
        let mut buf = [0u8; 2048];
        // Bounded: at most this many datagrams per readiness event.
        for _ in 0..64 {
            let (fd, datagram) = if token < FIRST_PING_TOKEN {
                match self.raw.get(token as usize).and_then(|f| f.as_ref()) {
                    Some(fd) => (fd.as_fd(), false),
                    None => return,
                }
            } else {
                match self.sockets.get(&token) {
                    Some(s) => (s.fd.as_fd(), true),
                    None => return,
                }
            };
            let got = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                sys::recv_vectored(fd, &mut iov, false)
            };
            let Ok(r) = got else {
                return;
            };
            let from = r.from.map(|a| a.ip());
            let v6 = token == 1 || from.is_some_and(|a| a.is_ipv6());
            let mut msg = &buf[..r.len];
            if !v6 && !datagram {
                // Raw IPv4 sockets deliver the IP header too.
                let ihl = usize::from(msg.first().map_or(0, |b| b & 0x0f)) * 4;
                if ihl < 20 || msg.len() < ihl {
                    continue;
                }
                msg = &msg[ihl..];
            }
            if msg.len() < 8 {
                continue;
            }
            let reply_type = if v6 { 129 } else { 0 };
            if msg[0] != reply_type {
                continue;
            }
            let ident = u16::from_be_bytes([msg[4], msg[5]]);
            let seq = u16::from_be_bytes([msg[6], msg[7]]);
            let pending = if datagram {
                self.sockets.get(&token).map(|s| s.pending)
            } else {
                self.idents.get(&(v6, ident)).copied()
            };
            let Some(p) = pending else {
                continue;
            };
            if from.is_some_and(|f| f != p.dst) {
                continue;
            }
            push_reply(core, &p, seq, &msg[8..]);
        }
    }

    /// Closes echo flows idle for longer than `idle`.
    pub(crate) fn expire(&mut self, core: &mut Core, now: Instant, idle: Duration) {
        let old: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.pending.last) >= idle)
            .map(|(&t, _)| t)
            .collect();
        for t in old {
            if let Some(s) = self.sockets.remove(&t) {
                let p = s.pending;
                self.by_flow.remove(&(p.guest, p.dst, p.guest_ident));
                core.interest(
                    InterestOp::Remove,
                    s.fd.as_raw_fd(),
                    ICMP_TAG | t,
                    false,
                    false,
                );
                core.metrics.flows_closed += 1;
            }
        }
        let before = self.idents.len();
        self.idents
            .retain(|_, p| now.saturating_duration_since(p.last) < idle);
        core.metrics.flows_closed += (before - self.idents.len()) as u64;
    }

    /// Live echo flows (ping sockets and raw-socket identifiers).
    pub(crate) fn flow_count(&self) -> usize {
        self.sockets.len() + self.idents.len()
    }

    /// Earliest instant an echo flow expires.
    pub(crate) fn deadline(&self, idle: Duration) -> Option<Instant> {
        let a = self.sockets.values().map(|s| s.pending.last);
        let b = self.idents.values().map(|p| p.last);
        a.chain(b).min().map(|t| t + idle)
    }
}

/// An echo request message (ICMP header + data) with checksum 0 for ICMPv4 raw callers
/// to fill; ICMPv6 checksums are filled by the kernel.
fn echo_message(dst: IpAddr, src: IpAddr, ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let caps = ChecksumCapabilities::ignored();
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let r = Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            let mut v = vec![0u8; r.buffer_len()];
            r.emit(&s, &d, &mut Icmpv6Packet::new_unchecked(&mut v[..]), &caps);
            v
        }
        _ => {
            let r = Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            };
            let mut v = vec![0u8; r.buffer_len()];
            r.emit(&mut Icmpv4Packet::new_unchecked(&mut v[..]), &caps);
            v
        }
    }
}

fn send_to(fd: std::os::fd::BorrowedFd<'_>, msg: &[u8], dst: IpAddr) -> bool {
    sys::send_vectored(fd, &[IoSlice::new(msg)], Some(&SocketAddr::new(dst, 0))).is_ok()
}

/// Queues the echo reply for the guest, from the destination it pinged.
fn push_reply(core: &mut Core, p: &Pending, seq_no: u16, data: &[u8]) {
    let ep = core.to_guest(p.dst, p.guest);
    match (p.dst, p.guest) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let r = Icmpv6Repr::EchoReply {
                ident: p.guest_ident,
                seq_no,
                data,
            };
            crate::icmp::push_v6(core, s, d, &r);
        }
        _ => {
            let r = Icmpv4Repr::EchoReply {
                ident: p.guest_ident,
                seq_no,
                data,
            };
            core.push_ctrl(&ep, IpProtocol::Icmp, r.buffer_len(), |buf| {
                r.emit(
                    &mut Icmpv4Packet::new_unchecked(buf),
                    &ChecksumCapabilities::default(),
                );
            });
        }
    }
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

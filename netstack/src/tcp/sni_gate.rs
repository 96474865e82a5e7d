//! SNI policy without interception: the first bytes of a guest TCP flow to a TLS port are
//! held until its ClientHello's server name is judged, and only then is the host connection
//! opened (docs/architecture.md, "SNI policy").
//!
//! Owns the hold of one connection ([`HelloHold`]): the guest's bytes (copied, at most
//! [`MAX_CLIENT_HELLO`], ACKed as they are held so a ClientHello spread over several
//! segments arrives), the deadline for the ClientHello, the verdict, the non-blocking
//! connect to the original destination and the flush of the held bytes to it, first and in
//! order. When the flush is complete the hold is dropped and the flow is an ordinary
//! zero-copy translated connection. A refusal of any kind becomes a RST to the guest and a
//! counter; nothing the guest sends can make this panic or hold more than the bound.
//!
//! Never sends a held byte before the verdict, and never forwards guest bytes that came
//! after the held ones before the held ones are all written.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::conn::TcpConn;
use super::{After, TcpState};
use crate::core::Core;
use crate::frame::GuestFrame;
use crate::gate::{Direction, FlowGate, FlowInfo, FlowProto};
use crate::sys;
use crate::tls::{parse_client_hello, HandedFlow, HelloError, MAX_CLIENT_HELLO};

/// Where a held connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the ClientHello.
    Reading,
    /// Allowed; the host connect is in progress.
    Connecting,
    /// Connected; the held bytes are being written (the socket took only part of them).
    Flushing,
}

/// The hold of one guest connection to a TLS port.
#[derive(Debug)]
pub(crate) struct HelloHold {
    /// Guest payload from the first byte on, in stream order (at most [`MAX_CLIENT_HELLO`]).
    held: Vec<u8>,
    /// Bytes of `held` the host socket has taken.
    sent: usize,
    /// Parse again once this many bytes are held.
    need: usize,
    /// The original destination (the gateway mapped to host loopback).
    target: SocketAddr,
    /// The name the destination address was learned from through our DNS (for the log).
    domain: Option<String>,
    /// The ClientHello must be complete by then.
    pub(crate) deadline: Instant,
    phase: Phase,
}

impl HelloHold {
    /// A hold for a connection to `target`, whose ClientHello is due by `deadline`.
    pub(crate) fn new(target: SocketAddr, domain: Option<String>, deadline: Instant) -> Self {
        HelloHold {
            held: Vec::new(),
            sent: 0,
            need: 1,
            target,
            domain,
            deadline,
            phase: Phase::Reading,
        }
    }

    /// Bytes the hold can still take: the receive window we advertise while holding.
    pub(crate) fn room(&self) -> u32 {
        (MAX_CLIENT_HELLO - self.held.len()) as u32
    }

    /// Whether the host socket must be watched for writability (connect or flush pending).
    pub(crate) fn wants_write(&self) -> bool {
        self.phase != Phase::Reading
    }

    /// Whether the deadline still applies (the ClientHello is not complete yet).
    pub(crate) fn reading(&self) -> bool {
        self.phase == Phase::Reading
    }
}

/// Why a held connection is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The policy denied the server name (or there was none and one is required).
    Denied,
    /// Not a TLS handshake, a malformed ClientHello, or the stream ended before it did.
    Malformed,
    /// The ClientHello does not fit [`MAX_CLIENT_HELLO`].
    Oversized,
    /// The host connect failed at once.
    Host,
}

/// Takes `len` in-order guest payload bytes at `off` of `frame` into the hold; once the
/// ClientHello is complete, judges it and starts the connect. Returns how many bytes were
/// taken (what the guest is ACKed for; beyond the hold's room they are dropped and the
/// guest sends them again when the window opens).
pub(crate) fn consume(
    core: &mut Core,
    gate: &dyn FlowGate,
    conn: &mut TcpConn,
    frame: &GuestFrame<'_, '_>,
    off: usize,
    len: usize,
    now: Instant,
) -> Result<usize, Refusal> {
    let Some(hold) = conn.hello.as_mut() else {
        return Ok(0);
    };
    let take = len.min(hold.room() as usize);
    if take < len {
        core.metrics.drop_out_of_window += 1;
    }
    let mut piece = Vec::new();
    if !frame.copy_range(off, take, &mut piece) {
        return Err(Refusal::Malformed);
    }
    hold.held.extend_from_slice(&piece);
    if hold.phase == Phase::Reading && hold.held.len() >= hold.need {
        judge(core, gate, conn, now)?;
    }
    Ok(take)
}

/// The guest sent a FIN while its bytes are held. Before the ClientHello is complete it
/// never will be: refused as malformed. After the verdict the FIN waits (it is not ACKed;
/// the guest sends it again once the flow is established).
pub(crate) fn on_guest_fin(core: &mut Core, conn: &TcpConn) -> Option<Refusal> {
    let hold = conn.hello.as_ref()?;
    if hold.phase == Phase::Reading {
        core.metrics.tls_hello_malformed += 1;
        return Some(Refusal::Malformed);
    }
    None
}

/// Parses what is held; on a complete ClientHello, asks the gate and connects.
fn judge(
    core: &mut Core,
    gate: &dyn FlowGate,
    conn: &mut TcpConn,
    now: Instant,
) -> Result<(), Refusal> {
    let Some(hold) = conn.hello.as_mut() else {
        return Ok(());
    };
    let hello = match parse_client_hello(&hold.held) {
        Ok(h) => h,
        Err(HelloError::Incomplete { need }) => {
            hold.need = need;
            return Ok(());
        }
        Err(HelloError::TooLarge) => {
            core.metrics.tls_hello_oversized += 1;
            return Err(Refusal::Oversized);
        }
        Err(HelloError::NotTls | HelloError::Malformed(_)) => {
            core.metrics.tls_hello_malformed += 1;
            return Err(Refusal::Malformed);
        }
    };
    core.metrics.tls_hellos_judged += 1;
    if hello.server_name.is_none() {
        core.metrics.tls_no_server_name += 1;
    }
    let ip = conn.key.remote.ip();
    let info = FlowInfo {
        direction: Direction::Egress,
        proto: FlowProto::Tcp,
        dst: ip,
        port: conn.key.remote.port(),
        domain: hold.domain.as_deref(),
        to_host: core.addrs.is_gateway(&ip),
    };
    // The address was allowed at the SYN; the name can only narrow that.
    let allow = match hello.server_name.as_deref() {
        Some(name) => gate.decide_server_name(&info, Some(name)).allow,
        None if core.cfg.tls.require_sni => {
            // Refused whatever the gate says; asking it lets it report the refusal.
            let _ = gate.decide_server_name(&info, None);
            false
        }
        None => true,
    };
    if !allow {
        core.metrics.tls_server_name_denied += 1;
        core.metrics.flows_denied += 1;
        return Err(Refusal::Denied);
    }
    if let Some(name) = hello.server_name.as_deref() {
        if hand_over(core, conn, name)? {
            conn.server_name = Some(name.into());
            return Ok(());
        }
    }
    let Some(hold) = conn.hello.as_mut() else {
        return Ok(());
    };
    conn.server_name = hello.server_name.map(String::into_boxed_str);
    // Connected at once or in progress: either way writability reports the outcome.
    if sys::connect(conn.fd.as_fd(), &hold.target).is_err() {
        core.metrics.connect_failures += 1;
        return Err(Refusal::Host);
    }
    hold.phase = Phase::Connecting;
    conn.connect_deadline = Some(now + core.cfg.limits.connect_timeout);
    Ok(())
}

/// Hands an allowed flow to the interception proxy if there is one and it wants `name`:
/// the host side becomes our end of a fresh Unix socket pair (connected at once, so the
/// held bytes are flushed next), the proxy gets the other end. Returns whether it did.
fn hand_over(core: &mut Core, conn: &mut TcpConn, name: &str) -> Result<bool, Refusal> {
    let Some(handoff) = core.cfg.tls.handoff.clone() else {
        return Ok(false);
    };
    if !handoff.0.intercepts(name) {
        core.metrics.tls_spliced += 1;
        return Ok(false);
    }
    let Some(hold) = conn.hello.as_mut() else {
        return Ok(false);
    };
    let (ours, theirs) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "no socket pair for the TLS proxy");
            core.metrics.tls_handoff_failures += 1;
            return Err(Refusal::Host);
        }
    };
    if ours.set_nonblocking(true).is_err() || theirs.set_nonblocking(true).is_err() {
        core.metrics.tls_handoff_failures += 1;
        return Err(Refusal::Host);
    }
    let flow = HandedFlow {
        stream: theirs,
        target: hold.target,
        guest: conn.key.guest,
        server_name: name.to_string(),
    };
    if !handoff.0.take(flow) {
        core.metrics.tls_handoff_failures += 1;
        return Err(Refusal::Host);
    }
    core.metrics.tls_intercepted += 1;
    // The old socket was never connected; dropping it closes it.
    conn.fd = OwnedFd::from(ours);
    conn.fd_replaced = true;
    conn.to_proxy = true;
    hold.phase = Phase::Flushing;
    Ok(true)
}

/// Readiness of the host socket of a held connection: the connect finished (or failed), or
/// the socket drained enough to take more of the held bytes.
pub(crate) fn on_ready(
    core: &mut Core,
    conn: &mut TcpConn,
    readable: bool,
    writable: bool,
) -> After {
    let Some(hold) = conn.hello.as_mut() else {
        return After::Keep;
    };
    match hold.phase {
        Phase::Reading => return After::Keep,
        Phase::Connecting => {
            if !(readable || writable) {
                return After::Keep;
            }
            match sys::take_error(conn.fd.as_fd()) {
                Ok(0) => {
                    let _ = sys::set_nodelay(conn.fd.as_fd());
                    conn.connect_deadline = None;
                    hold.phase = Phase::Flushing;
                }
                _ => {
                    core.metrics.connect_failures += 1;
                    return After::Reset;
                }
            }
        }
        Phase::Flushing if !writable => return After::Keep,
        Phase::Flushing => {}
    }
    flush(core, conn)
}

/// Writes the held bytes not yet taken; when all are, the hold ends and the flow becomes an
/// ordinary established connection.
fn flush(core: &mut Core, conn: &mut TcpConn) -> After {
    let Some(hold) = conn.hello.as_mut() else {
        return After::Keep;
    };
    while hold.sent < hold.held.len() {
        match sys::send_vectored(
            conn.fd.as_fd(),
            &[IoSlice::new(&hold.held[hold.sent..])],
            None,
        ) {
            Ok(0) => return After::Keep,
            Ok(n) => {
                hold.sent += n;
                core.metrics.bytes_guest_to_host += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return After::Keep,
            Err(_) => return After::Reset,
        }
    }
    conn.hello = None;
    conn.state = TcpState::Established;
    super::guest::host_connected(core, conn);
    // The window now follows the host socket, not the hold: tell the guest.
    conn.ack_pending = true;
    After::Keep
}

/// Fires the ClientHello deadline: a guest that sent nothing or too little gets a RST.
pub(crate) fn on_timer(core: &mut Core, conn: &TcpConn, now: Instant) -> After {
    match conn.hello.as_ref() {
        Some(h) if h.reading() && h.deadline <= now => {
            core.metrics.tls_hello_timeouts += 1;
            After::Reset
        }
        _ => After::Keep,
    }
}

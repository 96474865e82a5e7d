//! One vsock stream connection between a guest port and a host Unix socket: its state, the
//! credit accounting of both directions (virtio 1.2 §5.10.6.3), and the bytes it moves.
//!
//! Guest → host: payload goes from the guest's TX buffers straight to the socket
//! (`sendmsg` on iovecs into guest memory). Only what the socket does not take at once is
//! copied, into a per-connection buffer of at most `buf_alloc` bytes — exactly the credit the
//! device advertised, so a guest that respects credit can never make it grow further, and one
//! that does not is reset ([`BadPacket::CreditExceeded`]). `fwd_cnt` counts bytes handed to
//! the socket.
//!
//! Host → guest: the socket is read straight into the guest's RX buffer, after the header
//! slot, never more than the guest's credit (`buf_alloc - (sent - fwd_cnt)` from the guest's
//! last header) nor the buffer's room. With no credit left the device sends one
//! CREDIT_REQUEST and stops polling the socket until a credit update arrives.
//!
//! Closing (Linux's transport sends SHUTDOWN, then expects an RST): a guest SHUTDOWN(SEND)
//! becomes `shutdown(SHUT_WR)` once buffered bytes are flushed; SHUTDOWN(RCV) becomes
//! `shutdown(SHUT_RD)`; both mean the guest closed, and the connection ends with an RST once
//! the buffer is flushed (or the shutdown timeout passes). End of stream from the host
//! becomes SHUTDOWN(SEND), or SHUTDOWN(RCV|SEND) when the client closed entirely, after
//! which the guest's RST (or the timeout) ends it.
//!
//! This module never touches the virtqueues; the muxer hands it validated scatter lists.

use std::num::Wrapping;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use super::metrics::{BadPacket, VsockMetrics};
use super::packet::{Header, Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::queue_io::{window, RxChain};
use super::sys;
use super::txbuf::TxBuf;
use crate::net::iov::GuestIov;

/// A connection's ports: the host side's and the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host side's port (for host-initiated connections, one the device picked).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent (or about to be), waiting for the guest's RESPONSE.
    LocalInit,
    /// Data may flow.
    Established,
    /// Ending: waiting for the buffer to flush or the guest's RST, then an RST.
    Closing,
}

const PENDING_REQUEST: u8 = 1;
const PENDING_RESPONSE: u8 = 2;
const PENDING_CREDIT_UPDATE: u8 = 4;
const PENDING_SHUTDOWN: u8 = 8;

/// What a connection put into an RX buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// A packet of this many bytes (header included).
    Packet(u32),
    /// Nothing to send now.
    Nothing,
    /// The connection must end with an RST (a host socket error).
    Reset,
}

/// What the muxer must do after a guest packet was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the connection.
    Keep,
    /// Close it without a word (the guest sent an RST).
    Close,
    /// Close it and send the guest an RST; `Some(reason)` counts a bad packet.
    Reset(Option<BadPacket>),
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The ports.
    pub key: ConnKey,
    /// The host socket (non-blocking).
    pub sock: OwnedFd,
    /// Whether a host client asked for it (`CONNECT`), as opposed to the guest.
    pub host_initiated: bool,
    /// The state.
    pub state: State,
    /// When the current state times out (request or shutdown).
    pub deadline: Option<Instant>,
    /// Whether the connection is on the muxer's RX ready list.
    pub in_ready: bool,
    /// The credit the device advertises for guest → host bytes.
    buf_alloc: u32,
    /// Guest → host bytes the socket did not take yet.
    buf: TxBuf,
    /// Payload bytes received from the guest.
    rx_cnt: Wrapping<u32>,
    /// Of those, bytes handed to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// The guest's receive buffer size.
    peer_buf_alloc: u32,
    /// The guest's count of bytes it consumed.
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    /// Host bytes read with the CONNECT line, delivered before the socket's.
    prefix: Vec<u8>,
    /// Control packets waiting for an RX buffer (`PENDING_*`).
    pending: u8,
    /// Flags of the SHUTDOWN to send.
    shutdown_flags: u32,
    /// A CREDIT_REQUEST was sent and no credit came since.
    credit_requested: bool,
    /// The socket may have bytes to read (poll said so, or not asked yet).
    host_readable: bool,
    /// The host will send no more (end of stream read).
    host_eof: bool,
    /// The guest will receive no more.
    guest_no_recv: bool,
    /// The guest will send no more.
    guest_no_send: bool,
    /// `shutdown(SHUT_WR)` was done on the socket.
    host_write_shut: bool,
}

impl Conn {
    fn new(key: ConnKey, sock: OwnedFd, host_initiated: bool, buf_alloc: u32) -> Conn {
        Conn {
            key,
            sock,
            host_initiated,
            state: State::LocalInit,
            deadline: None,
            in_ready: false,
            buf_alloc,
            buf: TxBuf::new(buf_alloc as usize),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            prefix: Vec::new(),
            pending: 0,
            shutdown_flags: 0,
            credit_requested: false,
            host_readable: false,
            host_eof: false,
            guest_no_recv: false,
            guest_no_send: false,
            host_write_shut: false,
        }
    }

    /// A host client's connection to guest port `key.peer_port`: a REQUEST is pending, and
    /// `prefix` (bytes that followed the CONNECT line) goes to the guest first.
    pub fn host_initiated(
        key: ConnKey,
        sock: OwnedFd,
        buf_alloc: u32,
        prefix: Vec<u8>,
        deadline: Instant,
    ) -> Conn {
        let mut c = Conn::new(key, sock, true, buf_alloc);
        c.prefix = prefix;
        c.pending = PENDING_REQUEST;
        c.deadline = Some(deadline);
        c
    }

    /// The guest's connection (its REQUEST `req`) to a host listener: established, a
    /// RESPONSE is pending.
    pub fn guest_initiated(key: ConnKey, sock: OwnedFd, buf_alloc: u32, req: &Header) -> Conn {
        let mut c = Conn::new(key, sock, false, buf_alloc);
        c.state = State::Established;
        c.pending = PENDING_RESPONSE;
        c.host_readable = true;
        c.take_credit(req);
        c
    }

    /// Records the guest's credit state from any header it sent for this connection.
    fn take_credit(&mut self, h: &Header) {
        let had = self.peer_credit();
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if self.peer_credit() > had {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can still take (never more than it advertised).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest → host bytes waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the device should poll the socket for reading.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_readable
            && !self.host_eof
            && !self.guest_no_recv
            && self.peer_credit() > 0
    }

    /// Whether the device should poll the socket for writing.
    pub fn wants_write(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether the connection has something for an RX buffer.
    pub fn wants_rx(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        if self.state != State::Established || self.guest_no_recv {
            return false;
        }
        let data = !self.prefix.is_empty() || (self.host_readable && !self.host_eof);
        data && (self.peer_credit() > 0 || !self.credit_requested)
    }

    /// Whether both directions are finished and the connection should end with an RST.
    pub fn finished(&self) -> bool {
        self.buf.is_empty()
            && self.pending == 0
            && self.guest_no_send
            && (self.guest_no_recv || self.host_eof)
    }

    /// The socket polled readable (or hung up).
    pub fn on_readable(&mut self) {
        self.host_readable = true;
    }

    fn header(&mut self, guest_cid: u64, op: Op) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header::host_to_guest(
            guest_cid,
            self.key.local_port,
            self.key.peer_port,
            op,
            self.buf_alloc,
            self.fwd_cnt.0,
        )
    }

    /// Asks for a CREDIT_UPDATE when the guest believes less than half of the buffer is
    /// free and more is.
    fn check_credit_update(&mut self) {
        let guest_view_used = (self.rx_cnt - self.fwd_cnt_sent).0;
        let guest_view_free = self.buf_alloc.saturating_sub(guest_view_used);
        if guest_view_free < self.buf_alloc / 2 && self.fwd_cnt != self.fwd_cnt_sent {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
    }

    /// Applies a guest packet (ports and CIDs already matched) with payload in
    /// `[HDR_LEN, HDR_LEN + len)` of `iov`.
    pub fn on_guest_packet(
        &mut self,
        h: &Header,
        op: Op,
        iov: &GuestIov,
        scratch: &mut Vec<libc::iovec>,
        metrics: &VsockMetrics,
    ) -> Verdict {
        if op == Op::Rst {
            VsockMetrics::add(&metrics.rst_received, 1);
            return Verdict::Close;
        }
        self.take_credit(h);
        match op {
            Op::Request => Verdict::Reset(Some(BadPacket::Protocol)),
            Op::Response => {
                if self.state != State::LocalInit || self.pending & PENDING_REQUEST != 0 {
                    return Verdict::Reset(Some(BadPacket::Protocol));
                }
                self.state = State::Established;
                self.deadline = None;
                self.host_readable = true;
                // Counted before the client can see its OK line.
                VsockMetrics::add(&metrics.host_established, 1);
                let ok = super::connect_line::ok_line(self.key.local_port);
                match sys::send_bytes(self.sock.as_raw_fd(), ok.as_bytes()) {
                    Ok(n) if n == ok.len() => Verdict::Keep,
                    _ => {
                        VsockMetrics::add(&metrics.host_io_errors, 1);
                        Verdict::Reset(None)
                    }
                }
            }
            Op::Rw => self.on_data(h, iov, scratch, metrics),
            Op::Shutdown => self.on_shutdown(h.flags),
            Op::CreditRequest => {
                self.pending |= PENDING_CREDIT_UPDATE;
                Verdict::Keep
            }
            Op::CreditUpdate | Op::Rst => Verdict::Keep,
        }
    }

    fn on_data(
        &mut self,
        h: &Header,
        iov: &GuestIov,
        scratch: &mut Vec<libc::iovec>,
        metrics: &VsockMetrics,
    ) -> Verdict {
        if self.state != State::Established || self.guest_no_send {
            return Verdict::Reset(Some(BadPacket::Protocol));
        }
        let len = h.len as usize;
        if len > self.buf.room() {
            return Verdict::Reset(Some(BadPacket::CreditExceeded));
        }
        let mut sent = 0;
        if self.buf.is_empty() && len > 0 {
            window(iov, super::packet::HDR_LEN, len, scratch);
            // SAFETY: `scratch` holds bounds-checked ranges of the guest's TX chain, mapped
            // for as long as the worker holds guest memory (which it does for this call).
            match unsafe { sys::send_iov(self.sock.as_raw_fd(), scratch) } {
                Ok(n) => sent = n,
                Err(e) if sys::would_block(&e) => {}
                Err(_) => {
                    VsockMetrics::add(&metrics.host_io_errors, 1);
                    return Verdict::Reset(None);
                }
            }
        }
        if sent < len {
            let copied = self
                .buf
                .push_from(iov, super::packet::HDR_LEN + sent, len - sent);
            VsockMetrics::add(&metrics.bytes_buffered, copied as u64);
        }
        self.rx_cnt += Wrapping(len as u32);
        self.fwd_cnt += Wrapping(sent as u32);
        VsockMetrics::add(&metrics.bytes_guest_to_host, sent as u64);
        self.check_credit_update();
        Verdict::Keep
    }

    fn on_shutdown(&mut self, flags: u32) -> Verdict {
        if self.state == State::LocalInit {
            return Verdict::Reset(Some(BadPacket::Protocol));
        }
        let fd = self.sock.as_raw_fd();
        if flags & SHUTDOWN_RCV != 0 && !self.guest_no_recv {
            self.guest_no_recv = true;
            sys::shutdown(fd, libc::SHUT_RD);
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.guest_no_send = true;
        }
        if flags & SHUTDOWN_BOTH == SHUTDOWN_BOTH && self.state != State::Closing {
            self.state = State::Closing;
            // The muxer sets the deadline (it knows the timeout).
            self.deadline = None;
        }
        self.shut_write_if_flushed();
        Verdict::Keep
    }

    fn shut_write_if_flushed(&mut self) {
        if self.guest_no_send && self.buf.is_empty() && !self.host_write_shut {
            self.host_write_shut = true;
            sys::shutdown(self.sock.as_raw_fd(), libc::SHUT_WR);
        }
    }

    /// The socket polled writable: flushes buffered guest bytes. Returns false if the
    /// socket failed (the connection must be reset).
    pub fn on_writable(&mut self, metrics: &VsockMetrics) -> bool {
        while !self.buf.is_empty() {
            let (a, b) = self.buf.slices();
            let iov = [
                libc::iovec {
                    iov_base: a.as_ptr().cast_mut().cast(),
                    iov_len: a.len(),
                },
                libc::iovec {
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                },
            ];
            let n = if b.is_empty() { 1 } else { 2 };
            // SAFETY: the iovecs describe the buffer's own slices, borrowed for the call.
            match unsafe { sys::send_iov(self.sock.as_raw_fd(), &iov[..n]) } {
                Ok(0) => break,
                Ok(n) => {
                    self.buf.consume(n);
                    self.fwd_cnt += Wrapping(n as u32);
                    VsockMetrics::add(&metrics.bytes_guest_to_host, n as u64);
                }
                Err(e) if sys::would_block(&e) => break,
                Err(_) => {
                    VsockMetrics::add(&metrics.host_io_errors, 1);
                    return false;
                }
            }
        }
        self.check_credit_update();
        self.shut_write_if_flushed();
        true
    }

    /// Ends the host-initiated request (deadline passed): nothing to do on the socket; the
    /// muxer closes it and sends the guest an RST.
    pub fn is_request_pending(&self) -> bool {
        self.state == State::LocalInit
    }

    /// Writes this connection's next packet into `chain`; `scratch` is reused iovec space.
    pub fn emit(
        &mut self,
        guest_cid: u64,
        chain: &RxChain,
        scratch: &mut Vec<libc::iovec>,
        metrics: &VsockMetrics,
    ) -> Emit {
        use super::packet::HDR_LEN;
        if self.pending & PENDING_REQUEST != 0 {
            self.pending &= !PENDING_REQUEST;
            return self.put(guest_cid, Op::Request, chain);
        }
        if self.pending & PENDING_RESPONSE != 0 {
            self.pending &= !PENDING_RESPONSE;
            return self.put(guest_cid, Op::Response, chain);
        }
        if self.pending & PENDING_CREDIT_UPDATE != 0 {
            self.pending &= !PENDING_CREDIT_UPDATE;
            VsockMetrics::add(&metrics.credit_updates_sent, 1);
            return self.put(guest_cid, Op::CreditUpdate, chain);
        }
        let can_send = self.state == State::Established && !self.guest_no_recv;
        let credit = self.peer_credit() as usize;
        let room = chain.payload_room().min(credit);
        if can_send && room > 0 && !self.prefix.is_empty() {
            let n = room.min(self.prefix.len());
            chain.iov.write_at(HDR_LEN, &self.prefix[..n]);
            self.prefix.drain(..n);
            return self.put_data(guest_cid, n, chain, metrics);
        }
        if can_send && room > 0 && self.host_readable && !self.host_eof {
            window(&chain.iov, HDR_LEN, room, scratch);
            // SAFETY: `scratch` holds bounds-checked, device-writable ranges of an RX chain
            // the device owns until it publishes it; guest memory stays mapped meanwhile.
            match unsafe { sys::recv_iov(self.sock.as_raw_fd(), scratch) } {
                Ok(0) => self.on_host_eof(),
                Ok(n) => return self.put_data(guest_cid, n, chain, metrics),
                Err(e) if sys::would_block(&e) => self.host_readable = false,
                Err(_) => {
                    VsockMetrics::add(&metrics.host_io_errors, 1);
                    return Emit::Reset;
                }
            }
        }
        if self.pending & PENDING_SHUTDOWN != 0 && self.prefix.is_empty() {
            self.pending &= !PENDING_SHUTDOWN;
            let mut h = self.header(guest_cid, Op::Shutdown);
            h.flags = self.shutdown_flags;
            chain.iov.write_at(0, &h.to_bytes());
            return Emit::Packet(HDR_LEN as u32);
        }
        let data_waiting = !self.prefix.is_empty() || (self.host_readable && !self.host_eof);
        if can_send && credit == 0 && data_waiting && !self.credit_requested {
            self.credit_requested = true;
            VsockMetrics::add(&metrics.credit_requests_sent, 1);
            return self.put(guest_cid, Op::CreditRequest, chain);
        }
        Emit::Nothing
    }

    /// The host side ended its stream: tell the guest (SHUTDOWN SEND, or both directions if
    /// the client closed entirely).
    fn on_host_eof(&mut self) {
        self.host_eof = true;
        self.host_readable = false;
        self.shutdown_flags = SHUTDOWN_SEND;
        if sys::peer_hung_up(self.sock.as_raw_fd()) {
            self.shutdown_flags = SHUTDOWN_BOTH;
            self.state = State::Closing;
            self.deadline = None;
        }
        self.pending |= PENDING_SHUTDOWN;
    }

    fn put(&mut self, guest_cid: u64, op: Op, chain: &RxChain) -> Emit {
        let h = self.header(guest_cid, op);
        chain.iov.write_at(0, &h.to_bytes());
        Emit::Packet(super::packet::HDR_LEN as u32)
    }

    fn put_data(
        &mut self,
        guest_cid: u64,
        n: usize,
        chain: &RxChain,
        metrics: &VsockMetrics,
    ) -> Emit {
        let mut h = self.header(guest_cid, Op::Rw);
        h.len = n as u32;
        chain.iov.write_at(0, &h.to_bytes());
        self.tx_cnt += Wrapping(n as u32);
        VsockMetrics::add(&metrics.bytes_host_to_guest, n as u64);
        Emit::Packet((super::packet::HDR_LEN + n) as u32)
    }
}

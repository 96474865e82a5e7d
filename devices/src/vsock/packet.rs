//! The 44-byte virtio-vsock packet header (virtio 1.2 §5.10.6) and the constants of the
//! stream protocol.
//!
//! A header is always parsed from a copy ([`Header::from_bytes`] takes an owned array the
//! caller copied out of guest memory) and built into a caller's array ([`Header::to_bytes`]),
//! so the guest can never change a field between a check and its use. Nothing here
//! allocates or touches guest memory.
//!
//! Layout, all little endian: `src_cid` u64, `dst_cid` u64, `src_port` u32, `dst_port` u32,
//! `len` u32, `type` u16, `op` u16, `flags` u32, `buf_alloc` u32, `fwd_cnt` u32.

/// Size of the header on the wire.
pub const HDR_LEN: usize = 44;

/// The host's context id (virtio 1.2 §5.10.4: well-known CIDs 0–2 are reserved; 2 is the
/// host).
pub const HOST_CID: u64 = 2;

/// `type`: stream socket (`VIRTIO_VSOCK_TYPE_STREAM`).
pub const TYPE_STREAM: u16 = 1;

/// `flags` of a SHUTDOWN: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of a SHUTDOWN: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Event id of the event queue's only event, `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`
/// (virtio 1.2 §5.10.6.6).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// The operations of the stream protocol (virtio 1.2 §5.10.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request,
    /// Connection accepted.
    Response,
    /// Connection reset (refused, or aborted).
    Rst,
    /// The sender will not receive and/or send any more (see [`SHUTDOWN_RCV`],
    /// [`SHUTDOWN_SEND`]).
    Shutdown,
    /// Stream data.
    Rw,
    /// The sender's receive buffer state (`buf_alloc`, `fwd_cnt`) changed.
    CreditUpdate,
    /// The sender asks for a credit update.
    CreditRequest,
}

impl Op {
    /// The op's wire value.
    pub fn code(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }

    /// The op for a wire value; `None` for values the protocol does not define.
    pub fn from_code(code: u16) -> Option<Op> {
        Some(match code {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload bytes following the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`Op::code`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN: [`SHUTDOWN_RCV`] | [`SHUTDOWN_SEND`]).
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from that buffer so far (wrapping).
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Parses a header from bytes the caller copied out of guest memory.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Header {
        Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// The header's wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if the header names one the protocol defines.
    pub fn operation(&self) -> Option<Op> {
        Op::from_code(self.op)
    }

    /// A stream header from the host (`HOST_CID`, `local_port`) to the guest (`guest_cid`,
    /// `peer_port`), with no payload and the given credit state.
    pub fn host_to_guest(
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        op: Op,
        buf_alloc: u32,
        fwd_cnt: u32,
    ) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op.code(),
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_survives_its_wire_form_field_by_field() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 52,
            len: 4096,
            type_: TYPE_STREAM,
            op: Op::Shutdown.code(),
            flags: SHUTDOWN_BOTH,
            buf_alloc: 256 * 1024,
            fwd_cnt: u32::MAX,
        };
        let b = h.to_bytes();
        // Spot-check the offsets against the spec's layout.
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..28], &4096u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &4u16.to_le_bytes());
        assert_eq!(&b[40..44], &[0xff; 4]);
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(h.operation(), Some(Op::Shutdown));
    }

    #[test]
    fn every_op_maps_back_and_unknown_codes_do_not() {
        for code in 1..=7 {
            let op = Op::from_code(code).expect("defined");
            assert_eq!(op.code(), code);
        }
        for code in [0, 8, 0xffff] {
            assert_eq!(Op::from_code(code), None);
        }
    }
}

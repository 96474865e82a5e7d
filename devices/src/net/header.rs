//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6): 12 bytes in front of
//! every frame on both queues once VERSION_1 is negotiated.
//!
//! The device parses it only from a copy ([`VirtioNetHdr::from_bytes`]); guest memory may
//! change under us at any time.

/// Size of the header with VERSION_1 (it always includes `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// `flags`: `csum_start`/`csum_offset` are valid; the checksum is still to be computed.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was validated (RX only, with GUEST_CSUM).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCPv4 segmentation offload.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCPv6 segmentation offload.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type` flag: the frame uses ECN.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header (host byte order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers to replicate per segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where (after `csum_start`) the checksum goes.
    pub csum_offset: u16,
    /// Number of RX buffers this frame spans (MRG_RXBUF; 1 otherwise).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Parses the header from its 12-byte little-endian wire form.
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    /// Encodes the header into its 12-byte little-endian wire form.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Whether the frame is a GSO super-frame (TSO/UFO).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN != VIRTIO_NET_HDR_GSO_NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_is_little_endian() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b[4..6], [0xa8, 0x05]);
        assert_eq!(VirtioNetHdr::from_bytes(&b), h);
        assert!(h.is_gso());
        assert!(!VirtioNetHdr::default().is_gso());
    }
}

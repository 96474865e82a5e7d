//! vsock descriptor chains → validated scatter lists over guest memory.
//!
//! A chain is walked once, when it is taken from its queue: each descriptor's direction is
//! checked (TX chains are device-readable, RX chains device-writable), each range is resolved
//! and bounds-checked through vm-memory, buffers over the device's own rings are refused, and
//! the descriptor count is capped. A TX chain's 44-byte header is then copied out and parsed,
//! and its `len` checked against the bytes the chain really carries. What survives is a
//! [`GuestIov`] into guest memory; payload bytes are never copied here.
//!
//! The header may be split over descriptors in any way (Linux puts it in a descriptor of its
//! own on TX; on RX, 6.1 posts one 4 KiB + header buffer while older kernels post two).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

use super::metrics::BadPacket;
use super::packet::{Header, HDR_LEN};
use crate::net::iov::GuestIov;
use crate::virtio::ring_layout::RingLayout;

/// Largest payload of one packet the device accepts or builds (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most descriptors in one chain.
pub const MAX_CHAIN_DESCRIPTORS: usize = 64;
/// Most memory segments one chain may resolve to.
pub const MAX_CHAIN_SEGMENTS: usize = 2 * MAX_CHAIN_DESCRIPTORS;

/// Walks `chain` into `iov` (all descriptors device-writable if `writable`), keeping at most
/// `max_len` bytes; every descriptor's range is validated even past that.
fn walk<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    rings: &RingLayout,
    writable: bool,
    max_len: usize,
    iov: &mut GuestIov,
) -> Result<(), BadPacket>
where
    M: Deref,
    M::Target: GuestMemory,
{
    iov.clear();
    let mut descriptors = 0usize;
    let mut last_has_next = false;
    for desc in chain {
        descriptors += 1;
        last_has_next = desc.has_next();
        if descriptors > MAX_CHAIN_DESCRIPTORS {
            return Err(BadPacket::TooManyDescriptors);
        }
        if desc.is_write_only() != writable {
            return Err(BadPacket::WrongDirection);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err(BadPacket::OutOfMemory);
        }
        if rings.overlaps(desc.addr().0, len as u64) {
            return Err(BadPacket::OverlapsRing);
        }
        let take = len.min(max_len.saturating_sub(iov.len()));
        if take == 0 {
            continue;
        }
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), take) {
            let slice = slice.map_err(|_| BadPacket::OutOfMemory)?;
            if iov.segments() >= MAX_CHAIN_SEGMENTS {
                return Err(BadPacket::TooManyDescriptors);
            }
            iov.push(slice.ptr_guard_mut().as_ptr(), slice.len());
        }
    }
    if descriptors == 0 || last_has_next {
        return Err(BadPacket::Truncated);
    }
    Ok(())
}

/// A validated TX packet: its header (parsed from a copy) and the chain as a scatter list,
/// header included; the payload is `[HDR_LEN, HDR_LEN + header.len)` of it.
#[derive(Debug, Default)]
pub struct TxPacket {
    /// Head descriptor index (for the used ring).
    pub head: u16,
    /// The whole chain.
    pub iov: GuestIov,
    /// The header, parsed from a copy.
    pub header: Header,
}

impl TxPacket {
    /// An empty packet with room for the largest accepted chain.
    pub fn new() -> Self {
        Self {
            head: 0,
            iov: GuestIov::with_capacity(MAX_CHAIN_SEGMENTS),
            header: Header::default(),
        }
    }

    /// Validates `chain` and loads it; on error `self.head` still names the chain.
    pub fn load<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        rings: &RingLayout,
    ) -> Result<(), BadPacket>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.head = chain.head_index();
        walk(
            chain,
            mem,
            rings,
            false,
            HDR_LEN + MAX_PAYLOAD,
            &mut self.iov,
        )?;
        let mut hdr = [0u8; HDR_LEN];
        if self.iov.read_at(0, &mut hdr) < HDR_LEN {
            return Err(BadPacket::HeaderTooShort);
        }
        self.header = Header::from_bytes(&hdr);
        let len = self.header.len as usize;
        if len > MAX_PAYLOAD {
            return Err(BadPacket::TooLong);
        }
        if len > self.iov.len() - HDR_LEN {
            return Err(BadPacket::LenBeyondBuffer);
        }
        Ok(())
    }

    /// The payload length (checked against the chain by [`Self::load`]).
    pub fn payload_len(&self) -> usize {
        self.header.len as usize
    }
}

/// A validated RX chain: device-writable buffers for one packet (header + payload).
#[derive(Debug, Default)]
pub struct RxChain {
    /// Head descriptor index (for the used ring).
    pub head: u16,
    /// Where the header and payload go.
    pub iov: GuestIov,
}

impl RxChain {
    /// An empty chain with room for the largest accepted one.
    pub fn new() -> Self {
        Self {
            head: 0,
            iov: GuestIov::with_capacity(MAX_CHAIN_SEGMENTS),
        }
    }

    /// Validates `chain` (at least the header plus one byte) and loads it; on error
    /// `self.head` still names the chain.
    pub fn load<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        rings: &RingLayout,
    ) -> Result<(), BadPacket>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.head = chain.head_index();
        walk(
            chain,
            mem,
            rings,
            true,
            HDR_LEN + MAX_PAYLOAD,
            &mut self.iov,
        )?;
        // A buffer with no room for payload could carry control packets only; no driver
        // posts one, and accepting it would leave data waiting with a buffer in hand.
        if self.iov.len() <= HDR_LEN {
            return Err(BadPacket::HeaderTooShort);
        }
        Ok(())
    }

    /// Payload bytes the chain can take after the header.
    pub fn payload_room(&self) -> usize {
        self.iov.len().saturating_sub(HDR_LEN)
    }
}

/// Fills `out` with the iovecs of bytes `[skip, skip + max)` of `src` (fewer if `src` is
/// shorter); returns how many bytes they cover.
pub fn window(src: &GuestIov, mut skip: usize, max: usize, out: &mut Vec<libc::iovec>) -> usize {
    out.clear();
    let mut left = max;
    for v in src.as_raw() {
        if left == 0 {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - skip).min(left);
        out.push(libc::iovec {
            // `skip < iov_len`: the pointer stays inside the same checked segment.
            iov_base: v.iov_base.cast::<u8>().wrapping_add(skip).cast(),
            iov_len: n,
        });
        left -= n;
        skip = 0;
    }
    max - left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cut_across_segments() {
        let mut a = [0u8; 5];
        let mut b = [0u8; 7];
        let mut iov = GuestIov::with_capacity(2);
        iov.push(a.as_mut_ptr(), a.len());
        iov.push(b.as_mut_ptr(), b.len());
        let mut out = Vec::new();
        assert_eq!(window(&iov, 3, 6, &mut out), 6);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].iov_len, out[1].iov_len), (2, 4));
        assert_eq!(out[1].iov_base.cast::<u8>(), b.as_mut_ptr());
        assert_eq!(window(&iov, 10, 100, &mut out), 2);
        assert_eq!(window(&iov, 12, 100, &mut out), 0);
        assert!(out.is_empty());
    }
}

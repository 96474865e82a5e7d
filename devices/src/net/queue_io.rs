//! Turning descriptor chains into validated scatter lists over guest memory.
//!
//! A chain is walked exactly once, when it is taken from its queue: every descriptor's
//! direction is checked, every range is resolved through vm-memory (which bounds-checks it
//! against the guest's regions, splitting it where it crosses a region boundary), and the
//! chain's descriptor count and byte length are capped. What survives is a [`GuestIov`] into
//! guest memory; no frame byte is copied here except the 12-byte TX header, which is parsed
//! from a copy. A chain that fails any check is rejected with a [`MalformedReason`]; the
//! caller returns it to the used ring with length 0 and counts it.
//!
//! Buffers that overlap the device's own rings (descriptor tables, avail and used rings) are
//! refused too ([`MalformedReason::OverlapsRing`], see [`crate::virtio::ring_layout`]); buffers
//! that overlap each other are not detected (that would cost a search per chain) and need not
//! be: the device only ever reaches guest memory through raw iovecs and vm-memory accessors,
//! never through Rust references, so overlapping writes give the guest garbage, not the host
//! undefined behaviour.
//!
//! virtio-queue's iterator already stops after `queue size` descriptors and on unreadable
//! descriptors; we detect such a cut by the NEXT flag on the last descriptor we saw.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

use super::header::{VirtioNetHdr, VNET_HDR_LEN};
use super::iov::GuestIov;
use super::metrics::MalformedReason;
use crate::virtio::ring_layout::RingLayout;

/// Most descriptors the device accepts in one chain (Linux uses at most MAX_SKB_FRAGS + 2).
pub const MAX_CHAIN_DESCRIPTORS: usize = 64;
/// Most memory segments one chain may resolve to (a descriptor may cross regions).
pub const MAX_CHAIN_SEGMENTS: usize = 2 * MAX_CHAIN_DESCRIPTORS;
/// Largest Ethernet frame the device carries: 64 KiB of payload plus Ethernet + VLAN headers
/// (a TSO super-frame is carried whole, design §5).
pub const MAX_FRAME_LEN: usize = 65_536 + 18;
/// Largest TX chain: header plus the largest frame.
pub const MAX_TX_CHAIN_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Ethernet header length; shorter TX frames are rejected.
pub const ETH_HDR_LEN: usize = 14;

/// Walks `chain`, appending its buffers (which must all be device-writable if `writable`,
/// all device-readable otherwise) to `iov`, and stops adding bytes past `max_len`
/// (`too_long_is_error` decides whether exceeding it rejects the chain). A buffer that
/// overlaps one of `rings` rejects the chain.
fn walk<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemoryMmap,
    rings: &RingLayout,
    writable: bool,
    max_len: usize,
    too_long_is_error: bool,
    iov: &mut GuestIov,
) -> Result<(), MalformedReason>
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
            return Err(MalformedReason::TooManyDescriptors);
        }
        if desc.is_write_only() != writable {
            return Err(MalformedReason::WrongDirection);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        let room = max_len.saturating_sub(iov.len());
        let take = if len > room {
            if too_long_is_error {
                return Err(MalformedReason::TooLong);
            }
            room
        } else {
            len
        };
        if take == 0 {
            // Still validate the range: a buffer outside guest memory is malformed even if
            // we would not use it.
            if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
                return Err(MalformedReason::OutOfMemory);
            }
            continue;
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), len) {
            return Err(MalformedReason::OutOfMemory);
        }
        if rings.overlaps(desc.addr().0, len as u64) {
            return Err(MalformedReason::OverlapsRing);
        }
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), take) {
            let slice = slice.map_err(|_| MalformedReason::OutOfMemory)?;
            if iov.segments() >= MAX_CHAIN_SEGMENTS {
                return Err(MalformedReason::TooManyDescriptors);
            }
            iov.push(slice.ptr_guard_mut().as_ptr(), slice.len());
        }
    }
    if descriptors == 0 {
        return Err(MalformedReason::BadHead);
    }
    if last_has_next {
        return Err(MalformedReason::Truncated);
    }
    Ok(())
}

/// A validated TX chain: the whole buffer (header + frame) and the frame alone, both as
/// scatter lists into guest memory, plus the header parsed from a copy.
#[derive(Debug, Default)]
pub struct TxChain {
    /// Head descriptor index (for the used ring).
    pub head: u16,
    /// Header followed by the frame.
    pub full: GuestIov,
    /// The Ethernet frame (header skipped).
    pub frame: GuestIov,
    /// The virtio-net header, parsed from a copy.
    pub header: VirtioNetHdr,
}

impl TxChain {
    /// An empty chain with room for the largest accepted chain (allocated once per worker).
    pub fn new() -> Self {
        Self {
            head: 0,
            full: GuestIov::with_capacity(MAX_CHAIN_SEGMENTS),
            frame: GuestIov::with_capacity(MAX_CHAIN_SEGMENTS),
            header: VirtioNetHdr::default(),
        }
    }

    /// Validates `chain` (none of its buffers may overlap `rings`) and loads it into `self`.
    /// On error `self.head` still names the chain.
    pub fn load<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        rings: &RingLayout,
    ) -> Result<(), MalformedReason>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.head = chain.head_index();
        self.frame.clear();
        walk(
            chain,
            mem,
            rings,
            false,
            MAX_TX_CHAIN_LEN,
            true,
            &mut self.full,
        )?;
        if self.full.len() < VNET_HDR_LEN {
            return Err(MalformedReason::HeaderTooShort);
        }
        if self.full.len() < VNET_HDR_LEN + ETH_HDR_LEN {
            return Err(MalformedReason::FrameTooShort);
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        self.full.read_at(0, &mut hdr);
        self.header = VirtioNetHdr::from_bytes(&hdr);
        self.frame.extend_skipping(&self.full, VNET_HDR_LEN);
        Ok(())
    }
}

/// A validated RX chain: device-writable buffers into guest memory.
#[derive(Debug, Default)]
pub struct RxChain {
    /// Head descriptor index (for the used ring).
    pub head: u16,
    /// Where the header and frame bytes go.
    pub iov: GuestIov,
}

impl RxChain {
    /// An empty chain with room for `segments` segments.
    pub fn with_capacity(segments: usize) -> Self {
        Self {
            head: 0,
            iov: GuestIov::with_capacity(segments),
        }
    }

    /// Validates `chain` (none of its buffers may overlap `rings`) and loads it into `self`.
    /// Bytes beyond the header plus the largest frame are ignored (never written). On error
    /// `self.head` still names the chain.
    pub fn load<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        rings: &RingLayout,
    ) -> Result<(), MalformedReason>
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
            MAX_TX_CHAIN_LEN,
            false,
            &mut self.iov,
        )?;
        if self.iov.len() < VNET_HDR_LEN {
            return Err(MalformedReason::HeaderTooShort);
        }
        Ok(())
    }
}

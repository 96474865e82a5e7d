//! Turning a descriptor chain into a validated block request.
//!
//! A chain is walked exactly once, when the worker takes it from the queue, and nothing in it
//! is trusted (virtio 1.2 §5.2.6, §2.7.4):
//!
//! 1. The **status byte** is the last byte of the last descriptor, which must be
//!    device-writable, non-empty, inside guest memory and clear of the rings. Without one the
//!    chain cannot be answered: it is dropped (returned with length 0) and counted. So is a
//!    chain cut short (a loop or a bad `next`: the iterator stops after a queue's worth of
//!    descriptors and the last one still says NEXT).
//! 2. Every other rule failure is answered with `VIRTIO_BLK_S_IOERR`: no empty descriptor, no
//!    device-readable descriptor after a device-writable one, every buffer inside guest
//!    memory and clear of the rings, at least 16 device-readable bytes for the header.
//! 3. The 16-byte **header** is copied out of guest memory and parsed from the copy (the guest
//!    may rewrite it meanwhile; we never look again).
//! 4. Per type: IN and GET_ID take only device-writable data, OUT only device-readable data,
//!    FLUSH none. IN/OUT data is a whole number of sectors, and `sector × 512 + length` is
//!    computed with checked arithmetic and must not pass the capacity. OUT on a read-only
//!    drive is refused. Device-writable buffers of an IN may not overlap each other or the
//!    status byte (the kernel writes them while the request is in flight).
//!
//! What survives is a [`Request`]: its data as iovecs into guest memory (ranges resolved
//! through vm-memory, split where they cross a region), the byte offset in the image and the
//! status byte's guest address. The framing of the chain is free (VERSION_1 implies
//! ANY_LAYOUT): the header may span descriptors, and data may share a descriptor with the
//! header or the status byte.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

use super::metrics::RequestError;
use super::request_type::*;
use super::SECTOR_SIZE;
use crate::virtio::ring_layout::RingLayout;

/// Bytes of the request header: type (le32), reserved (le32), sector (le64).
pub const HEADER_LEN: u64 = 16;
/// Most memory segments one request's data may resolve to (a queue's worth of descriptors,
/// each possibly split across two memory regions); well under `IOV_MAX`.
pub const MAX_SEGMENTS: usize = 512;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestKind {
    /// Read sectors into the guest's buffers.
    #[default]
    In,
    /// Write the guest's buffers to sectors.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the drive's id.
    GetId,
    /// A type the device does not implement (answered `VIRTIO_BLK_S_UNSUPP`).
    Other(u32),
}

impl RequestKind {
    fn from_type(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => RequestKind::In,
            VIRTIO_BLK_T_OUT => RequestKind::Out,
            VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
            VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
            other => RequestKind::Other(other),
        }
    }
}

/// A validated request (or, after a refusal, what is known of it: its head and, unless the
/// chain was dropped, its status byte).
#[derive(Debug)]
pub struct Request {
    /// Head descriptor index (for the used ring).
    pub head: u16,
    /// What the request asks for.
    pub kind: RequestKind,
    /// Byte offset in the image (IN and OUT).
    pub offset: u64,
    /// The data buffers as iovecs into guest memory; capacity [`MAX_SEGMENTS`], never grown,
    /// so the array does not move while the kernel reads it.
    pub data: Vec<libc::iovec>,
    /// Total bytes of `data`.
    pub data_len: u64,
    /// Guest address of the status byte; `None` if the chain has no usable one.
    pub status: Option<GuestAddress>,
}

// SAFETY: the iovecs point into guest memory that stays mapped while the worker owning the
// request holds its `GuestMemoryMmap`; moving the request between threads changes nothing.
unsafe impl Send for Request {}

impl Default for Request {
    fn default() -> Self {
        Self::new()
    }
}

impl Request {
    /// An empty request with room for [`MAX_SEGMENTS`] segments (allocated once per slot).
    pub fn new() -> Self {
        Self {
            head: 0,
            kind: RequestKind::In,
            offset: 0,
            data: Vec::with_capacity(MAX_SEGMENTS),
            data_len: 0,
            status: None,
        }
    }

    fn reset(&mut self, head: u16) {
        self.head = head;
        self.kind = RequestKind::In;
        self.offset = 0;
        self.data.clear();
        self.data_len = 0;
        self.status = None;
    }

    /// Appends the guest range `[addr, addr + len)` (already checked to be in guest memory)
    /// as iovecs.
    fn push_range(
        &mut self,
        mem: &GuestMemoryMmap,
        addr: u64,
        len: usize,
    ) -> Result<(), RequestError> {
        for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(addr), len) {
            let slice = slice.map_err(|_| RequestError::OutOfMemory)?;
            if self.data.len() == MAX_SEGMENTS {
                return Err(RequestError::TooManySegments);
            }
            self.data.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        self.data_len += len as u64;
        Ok(())
    }

    /// Copies `src` into the data buffers from their start; returns the bytes copied.
    pub fn write_data(&self, src: &[u8]) -> usize {
        let mut done = 0;
        for v in &self.data {
            if done == src.len() {
                break;
            }
            let n = v.iov_len.min(src.len() - done);
            // SAFETY: `[iov_base, iov_base + n)` lies inside a segment checked against guest
            // memory when the request was parsed (n <= iov_len), kept mapped by the worker's
            // memory handle; `src[done..done + n]` is in bounds and never overlaps guest memory.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr().add(done), v.iov_base.cast::<u8>(), n);
            }
            done += n;
        }
        done
    }
}

/// One descriptor as read from the chain.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    writable: bool,
}

/// Validates chains into [`Request`]s; owns its scratch space so parsing allocates nothing.
#[derive(Debug)]
pub struct RequestParser {
    capacity: u64,
    read_only: bool,
    rings: RingLayout,
    descs: Vec<Desc>,
    ranges: Vec<(u64, u64)>,
}

impl RequestParser {
    /// A parser for a drive of `capacity` bytes whose queue rings are `rings`.
    pub fn new(capacity: u64, read_only: bool, rings: RingLayout, queue_size: u16) -> Self {
        Self {
            capacity,
            read_only,
            rings,
            descs: Vec::with_capacity(usize::from(queue_size)),
            ranges: Vec::with_capacity(usize::from(queue_size)),
        }
    }

    /// The drive's capacity changed (its image was swapped).
    pub fn set_capacity(&mut self, capacity: u64) {
        self.capacity = capacity;
    }

    /// Validates `chain` into `req`. On error `req.head` names the chain and `req.status` is
    /// set unless the error [drops the chain](RequestError::drops_chain).
    pub fn parse<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        req: &mut Request,
    ) -> Result<(), RequestError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        req.reset(chain.head_index());
        self.descs.clear();
        let mut last_has_next = false;
        for d in chain {
            last_has_next = d.has_next();
            self.descs.push(Desc {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        let Some(last) = self.descs.last().copied() else {
            return Err(RequestError::BadHead);
        };
        if last_has_next {
            return Err(RequestError::Truncated);
        }
        req.status = Some(self.status_byte(mem, last)?);
        let (readable, writable) = self.check_descriptors(mem)?;
        if readable < HEADER_LEN {
            return Err(RequestError::HeaderTooShort);
        }
        let mut hdr = [0u8; HEADER_LEN as usize];
        self.copy_header(mem, &mut hdr)?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&hdr[8..16]);
        let sector = u64::from_le_bytes(sector);
        req.kind = RequestKind::from_type(kind);
        let data_readable = readable - HEADER_LEN;
        // The last descriptor is writable and non-empty, so `writable >= 1`.
        let data_writable = writable - 1;
        match req.kind {
            RequestKind::In | RequestKind::GetId => {
                if data_readable != 0 {
                    return Err(RequestError::WrongDirection);
                }
                self.collect_writable(mem, req, data_writable)?;
            }
            RequestKind::Out => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                if data_writable != 0 {
                    return Err(RequestError::WrongDirection);
                }
                self.collect_readable(mem, req)?;
            }
            RequestKind::Flush => {
                if data_readable != 0 || data_writable != 0 {
                    return Err(RequestError::WrongDirection);
                }
            }
            RequestKind::Other(_) => return Ok(()),
        }
        if matches!(req.kind, RequestKind::In | RequestKind::Out) {
            if !req.data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::Unaligned);
            }
            let offset = sector
                .checked_mul(SECTOR_SIZE)
                .ok_or(RequestError::OutOfRange)?;
            let end = offset
                .checked_add(req.data_len)
                .ok_or(RequestError::OutOfRange)?;
            if end > self.capacity {
                return Err(RequestError::OutOfRange);
            }
            req.offset = offset;
        }
        if req.kind == RequestKind::In {
            self.check_writable_overlap()?;
        }
        Ok(())
    }

    /// The status byte: the last byte of the last descriptor, which must be usable.
    fn status_byte(&self, mem: &GuestMemoryMmap, last: Desc) -> Result<GuestAddress, RequestError> {
        if !last.writable || last.len == 0 {
            return Err(RequestError::NoStatus);
        }
        let addr = last
            .addr
            .checked_add(u64::from(last.len) - 1)
            .ok_or(RequestError::NoStatus)?;
        if !GuestMemoryBackend::check_range(mem, GuestAddress(addr), 1)
            || self.rings.overlaps(addr, 1)
        {
            return Err(RequestError::NoStatus);
        }
        Ok(GuestAddress(addr))
    }

    /// Checks every descriptor's length, order and range; returns the device-readable and
    /// device-writable byte counts.
    fn check_descriptors(&self, mem: &GuestMemoryMmap) -> Result<(u64, u64), RequestError> {
        let (mut readable, mut writable) = (0u64, 0u64);
        for d in &self.descs {
            if d.len == 0 {
                return Err(RequestError::ZeroLength);
            }
            if d.writable {
                writable += u64::from(d.len);
            } else if writable > 0 {
                return Err(RequestError::WrongDirection);
            } else {
                readable += u64::from(d.len);
            }
            if !GuestMemoryBackend::check_range(mem, GuestAddress(d.addr), d.len as usize) {
                return Err(RequestError::OutOfMemory);
            }
            if self.rings.overlaps(d.addr, u64::from(d.len)) {
                return Err(RequestError::OverlapsRing);
            }
        }
        Ok((readable, writable))
    }

    /// Copies the first [`HEADER_LEN`] device-readable bytes into `hdr`.
    fn copy_header(&self, mem: &GuestMemoryMmap, hdr: &mut [u8]) -> Result<(), RequestError> {
        let mut got = 0usize;
        for d in self.descs.iter().take_while(|d| !d.writable) {
            if got == hdr.len() {
                break;
            }
            let n = (hdr.len() - got).min(d.len as usize);
            mem.read_slice(&mut hdr[got..got + n], GuestAddress(d.addr))
                .map_err(|_| RequestError::OutOfMemory)?;
            got += n;
        }
        Ok(())
    }

    /// OUT data: the device-readable bytes after the header.
    fn collect_readable(
        &self,
        mem: &GuestMemoryMmap,
        req: &mut Request,
    ) -> Result<(), RequestError> {
        let mut skip = HEADER_LEN;
        for d in self.descs.iter().take_while(|d| !d.writable) {
            let len = u64::from(d.len);
            if skip >= len {
                skip -= len;
                continue;
            }
            // `skip < len`, so the range stays inside the checked descriptor.
            req.push_range(mem, d.addr + skip, (len - skip) as usize)?;
            skip = 0;
        }
        Ok(())
    }

    /// IN and GET_ID data: the device-writable bytes before the status byte (`len` of them).
    fn collect_writable(
        &self,
        mem: &GuestMemoryMmap,
        req: &mut Request,
        mut len: u64,
    ) -> Result<(), RequestError> {
        for d in self.descs.iter().filter(|d| d.writable) {
            if len == 0 {
                break;
            }
            let take = u64::from(d.len).min(len);
            req.push_range(mem, d.addr, take as usize)?;
            len -= take;
        }
        Ok(())
    }

    /// Refuses device-writable descriptors that overlap each other (the status byte is part
    /// of the last one).
    fn check_writable_overlap(&mut self) -> Result<(), RequestError> {
        self.ranges.clear();
        self.ranges.extend(
            self.descs
                .iter()
                .filter(|d| d.writable)
                .map(|d| (d.addr, d.addr + u64::from(d.len))),
        );
        self.ranges.sort_unstable();
        if self.ranges.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err(RequestError::Overlap);
        }
        Ok(())
    }
}

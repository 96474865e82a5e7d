//! Guest frame access: parse headers out of scattered guest buffers, and build ours.
//!
//! Owns the rule that guest memory is read exactly once per header: the first bytes of a
//! frame are copied into a stack buffer ([`GuestFrame`]) and every header is parsed from
//! that copy with smoltcp `wire` views, after lengths were validated against the whole
//! frame. Payload is never copied here: callers get iovecs that still point into the
//! guest's buffers ([`GuestFrame::payload_iovecs`]). It must never trust a length field
//! before checking it against the bytes that exist.

pub(crate) mod build;
pub(crate) mod parse;

use std::io::IoSlice;

/// Bytes copied out of the guest for header parsing: Ethernet (14) + the largest IPv4
/// header (60) + the largest TCP header (60) fits; IPv6 (40) + TCP (60) too.
pub(crate) const HDR_COPY: usize = 14 + 60 + 60;

/// Most scatter segments one payload is passed to a host socket with.
pub(crate) const MAX_SEGS: usize = 64;

/// One frame from the guest: a private copy of its headers plus its scattered segments.
pub(crate) struct GuestFrame<'f, 'a> {
    segs: &'f [IoSlice<'a>],
    total: usize,
    hdr: [u8; HDR_COPY],
    hdr_len: usize,
}

impl<'f, 'a> GuestFrame<'f, 'a> {
    /// Copies the first [`HDR_COPY`] bytes out of `segs`.
    pub(crate) fn new(segs: &'f [IoSlice<'a>]) -> Self {
        let mut hdr = [0u8; HDR_COPY];
        let mut hdr_len = 0;
        let mut total = 0usize;
        for s in segs {
            if hdr_len < HDR_COPY {
                let n = s.len().min(HDR_COPY - hdr_len);
                hdr[hdr_len..hdr_len + n].copy_from_slice(&s[..n]);
                hdr_len += n;
            }
            total = total.saturating_add(s.len());
        }
        GuestFrame {
            segs,
            total,
            hdr,
            hdr_len,
        }
    }

    /// Total frame length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    /// The copied header bytes (at most [`HDR_COPY`]).
    pub(crate) fn header(&self) -> &[u8] {
        &self.hdr[..self.hdr_len]
    }

    /// Copies `len` bytes at `off` into `out` (replacing its contents). Used for small
    /// control-plane messages (DHCP, DNS, ICMP, NDP) that are parsed as a whole.
    /// Returns false if the range is outside the frame.
    pub(crate) fn copy_range(&self, off: usize, len: usize, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        if end > self.total {
            return false;
        }
        let mut pos = 0usize;
        for s in self.segs {
            let (a, b) = (pos, pos + s.len());
            pos = b;
            if b <= off || a >= end {
                continue;
            }
            let from = off.max(a) - a;
            let to = end.min(b) - a;
            out.extend_from_slice(&s[from..to]);
        }
        true
    }

    /// Fills `out` with iovecs covering `len` bytes at `off`, pointing into guest memory.
    /// Returns the number used, or `None` if the range is outside the frame or needs more
    /// than `out.len()` segments.
    pub(crate) fn payload_iovecs(
        &self,
        off: usize,
        len: usize,
        out: &mut [IoSlice<'f>],
    ) -> Option<usize> {
        let end = off.checked_add(len)?;
        if end > self.total {
            return None;
        }
        let mut n = 0;
        let mut pos = 0usize;
        let segs: &'f [IoSlice<'a>] = self.segs;
        for s in segs {
            let (a, b) = (pos, pos + s.len());
            pos = b;
            if b <= off || a >= end || a == b {
                continue;
            }
            let from = off.max(a) - a;
            let to = end.min(b) - a;
            let slot = out.get_mut(n)?;
            let seg: &'f IoSlice<'a> = s;
            let bytes: &'f [u8] = &seg[from..to];
            *slot = IoSlice::new(bytes);
            n += 1;
        }
        Some(n)
    }
}

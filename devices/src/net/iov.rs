//! Scatter lists over guest memory.
//!
//! A [`GuestIov`] is a list of `libc::iovec`s whose ranges were bounds-checked through
//! vm-memory when their descriptor chain was taken from a queue. They point straight into the
//! guest's mapping, so frames move between guest memory and a backend with no staging copy
//! (`readv`/`writev` on a tap, or slices handed to the netstack).
//!
//! Validity: a `GuestIov` is only dereferenced by the device worker while it holds a clone of
//! the `GuestMemoryMmap` it was built from, which keeps the mappings alive. The guest may write
//! the memory concurrently (it is shared with a running vCPU); everything here treats the
//! bytes as untrusted and copies before parsing.

use std::io::{IoSlice, IoSliceMut};

/// A scatter list into guest memory.
#[derive(Debug, Default)]
pub struct GuestIov {
    iov: Vec<libc::iovec>,
    len: usize,
}

// SAFETY: the iovecs point into guest memory that stays mapped while the owning worker holds
// the `GuestMemoryMmap`; moving the list to another thread does not change that.
unsafe impl Send for GuestIov {}

impl GuestIov {
    /// An empty list with room for `n` segments.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            iov: Vec::with_capacity(n),
            len: 0,
        }
    }

    /// Removes all segments, keeping the allocation.
    pub fn clear(&mut self) {
        self.iov.clear();
        self.len = 0;
    }

    /// Appends a segment. The caller has bounds-checked `[ptr, ptr+len)` against guest memory.
    pub fn push(&mut self, ptr: *mut u8, len: usize) {
        if len == 0 {
            return;
        }
        self.iov.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        });
        self.len += len;
    }

    /// Appends all segments of `other`.
    pub fn extend_from(&mut self, other: &GuestIov) {
        self.iov.extend_from_slice(&other.iov);
        self.len += other.len;
    }

    /// Appends the segments of `other` from byte `skip` on.
    pub fn extend_skipping(&mut self, other: &GuestIov, mut skip: usize) {
        for v in &other.iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            // `skip < iov_len`, so the new pointer stays inside the same checked segment.
            self.push(v.iov_base.cast::<u8>().wrapping_add(skip), v.iov_len - skip);
            skip = 0;
        }
    }

    /// Total bytes covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is covered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.iov.len()
    }

    /// The raw iovecs (for `readv`/`writev`).
    pub fn as_raw(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// The segments as `IoSlice`s.
    pub fn as_io_slices(&self) -> &[IoSlice<'_>] {
        // SAFETY: `IoSlice` is documented to be ABI compatible with `iovec` on Unix; every
        // iovec points into mapped guest memory that outlives `&self` (module docs).
        unsafe { std::slice::from_raw_parts(self.iov.as_ptr().cast(), self.iov.len()) }
    }

    /// The segments as `IoSliceMut`s (for backends that write into guest RX buffers).
    pub fn as_io_slices_mut(&mut self) -> &mut [IoSliceMut<'_>] {
        // SAFETY: as in `as_io_slices`; RX segments come from write-only descriptors the
        // device owns until it returns them to the used ring.
        unsafe { std::slice::from_raw_parts_mut(self.iov.as_mut_ptr().cast(), self.iov.len()) }
    }

    /// Copies bytes from offset `off` into `dst`; returns how many were copied.
    pub fn read_at(&self, mut off: usize, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for v in &self.iov {
            if done == dst.len() {
                break;
            }
            if off >= v.iov_len {
                off -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - off).min(dst.len() - done);
            // SAFETY: `[iov_base+off, +n)` lies inside a checked guest segment (off + n <=
            // iov_len) and `dst[done..done+n]` is in bounds; guest memory never overlaps `dst`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    v.iov_base.cast::<u8>().add(off),
                    dst.as_mut_ptr().add(done),
                    n,
                );
            }
            done += n;
            off = 0;
        }
        done
    }

    /// Copies `src` into the list starting at offset `off`; returns how many bytes fit.
    pub fn write_at(&self, mut off: usize, src: &[u8]) -> usize {
        let mut done = 0;
        for v in &self.iov {
            if done == src.len() {
                break;
            }
            if off >= v.iov_len {
                off -= v.iov_len;
                continue;
            }
            let n = (v.iov_len - off).min(src.len() - done);
            // SAFETY: destination range lies inside a checked guest segment (off + n <=
            // iov_len); `src[done..done+n]` is in bounds and never overlaps guest memory.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src.as_ptr().add(done),
                    v.iov_base.cast::<u8>().add(off),
                    n,
                );
            }
            done += n;
            off = 0;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_across_segments() {
        let mut a = [0u8; 5];
        let mut b = [0u8; 7];
        let mut iov = GuestIov::with_capacity(2);
        iov.push(a.as_mut_ptr(), a.len());
        iov.push(b.as_mut_ptr(), b.len());
        assert_eq!(iov.len(), 12);
        assert_eq!(iov.write_at(3, &[1, 2, 3, 4]), 4);
        let mut out = [0u8; 6];
        assert_eq!(iov.read_at(2, &mut out), 6);
        assert_eq!(out, [0, 1, 2, 3, 4, 0]);
        let mut tail = GuestIov::with_capacity(2);
        tail.extend_skipping(&iov, 6);
        assert_eq!(tail.len(), 6);
        assert_eq!(tail.segments(), 1);
        assert_eq!(iov.write_at(10, &[9, 9, 9]), 2);
        drop(iov);
        drop(tail);
        assert_eq!(a, [0, 0, 0, 1, 2]);
        assert_eq!(b, [3, 4, 0, 0, 0, 9, 9]);
    }
}

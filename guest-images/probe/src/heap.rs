//! The global allocator: power-of-two size classes with per-class free lists,
//! carved by a bump pointer out of the largest RAM range above the image.
//!
//! Freed blocks go back to their class's list and are reused for requests of
//! the same class, so a workload that allocates and frees buffers of steady
//! sizes (smoltcp socket buffers, queue memory) does not grow the heap.
//! Blocks of class C are aligned to min(C, 4096); requests with a larger
//! alignment are bumped fresh and never come from a free list.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr::null_mut;

use crate::start_info::RamRange;

/// Number of size classes: 16 B (2^4) .. 2^35.
const CLASSES: usize = 32;
const MIN_SHIFT: u32 = 4;
const PAGE: usize = 4096;

struct HeapState {
    next: usize,
    end: usize,
    free: [usize; CLASSES],
}

/// The probe's allocator (single vCPU, no interrupts: no locking needed).
pub struct ProbeHeap {
    state: UnsafeCell<HeapState>,
}

// SAFETY: the probe runs on one vCPU with interrupts off and never re-enters
// the allocator, so the state is never accessed concurrently.
unsafe impl Sync for ProbeHeap {}

#[cfg_attr(not(test), global_allocator)]
static HEAP: ProbeHeap = ProbeHeap::empty();

/// Heap bounds, for reporting.
pub fn bounds() -> (usize, usize) {
    HEAP.bounds()
}

impl ProbeHeap {
    /// An allocator with no memory yet (every allocation fails).
    pub const fn empty() -> ProbeHeap {
        ProbeHeap {
            state: UnsafeCell::new(HeapState {
                next: 0,
                end: 0,
                free: [0; CLASSES],
            }),
        }
    }

    /// Remaining bump range `(next, end)`.
    pub fn bounds(&self) -> (usize, usize) {
        // SAFETY: single-threaded; see `Sync` impl.
        let s = unsafe { &*self.state.get() };
        (s.next, s.end)
    }

    /// Hands the allocator the memory `start..end`.
    ///
    /// # Safety
    /// The range must be RAM the probe owns exclusively from now on, and this
    /// must be called before the first allocation.
    pub unsafe fn set_region(&self, start: usize, end: usize) {
        // SAFETY: per the contract, no allocation is live; single-threaded.
        let s = unsafe { &mut *self.state.get() };
        s.next = start;
        s.end = end;
    }
}

/// Hands the allocator its memory: see [`pick_region`].
pub fn init(ram: &[Option<RamRange>], image_end: u64, fallback_len: u64) {
    let region = pick_region(ram, image_end, fallback_len);
    // SAFETY: `region` is RAM from the VMM's map above the image (nothing else
    // lives there once start_info has been copied out), and this runs before
    // the first allocation.
    unsafe { HEAP.set_region(region.start as usize, region.end as usize) };
}

/// The largest RAM range (or the part of one) above `image_end`; without a
/// memory map, `fallback_len` bytes after the image are assumed to be RAM.
pub fn pick_region(ram: &[Option<RamRange>], image_end: u64, fallback_len: u64) -> RamRange {
    let mut best = RamRange { start: 0, end: 0 };
    for r in ram.iter().flatten() {
        let start = r.start.max(image_end);
        if r.end > start && r.end - start > best.end - best.start {
            best = RamRange { start, end: r.end };
        }
    }
    if best.end == best.start {
        best = RamRange {
            start: image_end,
            end: image_end + fallback_len,
        };
    }
    best
}

fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    let shift = size.next_power_of_two().trailing_zeros();
    let class = (shift - MIN_SHIFT) as usize;
    (class < CLASSES).then_some(class)
}

impl HeapState {
    fn bump(&mut self, size: usize, align: usize) -> *mut u8 {
        let start = match self.next.checked_add(align - 1) {
            Some(v) => v & !(align - 1),
            None => return null_mut(),
        };
        match start.checked_add(size) {
            Some(end) if end <= self.end => {
                self.next = end;
                start as *mut u8
            }
            _ => null_mut(),
        }
    }
}

// SAFETY: blocks handed out are disjoint (bump pointer only moves forward,
// free-list blocks are exclusively owned until reallocated), sized to the
// class size >= layout.size() and aligned to >= layout.align().
unsafe impl GlobalAlloc for ProbeHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(&layout) else {
            return null_mut();
        };
        let size = 1usize << (class as u32 + MIN_SHIFT);
        // SAFETY: single-threaded, non-reentrant (see `Sync` impl).
        let s = unsafe { &mut *self.state.get() };
        if layout.align() <= PAGE && s.free[class] != 0 {
            let block = s.free[class];
            // SAFETY: a free block stores the next free block in its first word.
            s.free[class] = unsafe { *(block as *const usize) };
            return block as *mut u8;
        }
        s.bump(size, layout.align().max(size.min(PAGE)))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(&layout) else {
            return;
        };
        if layout.align() > PAGE {
            // Over-aligned blocks are rare (queue rings); leak rather than
            // mix alignments in one free list.
            return;
        }
        // SAFETY: single-threaded; ptr is a block of this class we handed out,
        // at least 16 bytes long and 8-aligned, now owned by the allocator.
        unsafe {
            let s = &mut *self.state.get();
            *(ptr as *mut usize) = s.free[class];
            s.free[class] = ptr as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_over(region: &mut [u8]) -> ProbeHeap {
        let heap = ProbeHeap::empty();
        let start = region.as_mut_ptr() as usize;
        // SAFETY: the test owns `region` for the heap's lifetime.
        unsafe { heap.set_region(start, start + region.len()) };
        heap
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_reused() {
        let mut region = vec![0u8; 1 << 20];
        let heap = heap_over(&mut region);
        let small = Layout::from_size_align(24, 8).unwrap();
        let page = Layout::from_size_align(5000, 4096).unwrap();
        // SAFETY: layouts are non-zero; blocks are freed with their layouts.
        unsafe {
            let a = heap.alloc(small);
            let b = heap.alloc(small);
            let p = heap.alloc(page);
            assert!(!a.is_null() && !b.is_null() && !p.is_null());
            assert!(
                (b as usize).abs_diff(a as usize) >= 32,
                "32-byte class blocks overlap"
            );
            assert_eq!(p as usize % 4096, 0);
            heap.dealloc(a, small);
            assert_eq!(
                heap.alloc(small),
                a,
                "freed block of the same class is reused"
            );
            heap.dealloc(p, page);
            assert_eq!(heap.alloc(page), p);
        }
    }

    #[test]
    fn exhaustion_returns_null() {
        let mut region = vec![0u8; 8192];
        let heap = heap_over(&mut region);
        let big = Layout::from_size_align(16384, 8).unwrap();
        // SAFETY: non-zero layout.
        assert!(unsafe { heap.alloc(big) }.is_null());
    }

    #[test]
    fn region_is_largest_ram_above_image() {
        let ram = [
            Some(RamRange {
                start: 0,
                end: 0x9fc00,
            }),
            Some(RamRange {
                start: 0x100000,
                end: 0x800_0000,
            }),
            None,
        ];
        let r = pick_region(&ram, 0x300000, 1 << 24);
        assert_eq!((r.start, r.end), (0x300000, 0x800_0000));
        let r = pick_region(&[], 0x300000, 1 << 24);
        assert_eq!((r.start, r.end), (0x300000, 0x300000 + (1 << 24)));
    }
}

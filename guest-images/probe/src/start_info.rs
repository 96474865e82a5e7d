//! Reading the PVH `hvm_start_info` block the VMM left in guest memory.
//!
//! Owns validation: the block is copied out field by field, its magic checked,
//! the command line bounded, and only the memory-map entries below 4 GiB
//! (what the boot page tables map) are used.

use core::cell::UnsafeCell;
use core::ptr::read_unaligned;

/// `hvm_start_info.magic` ("xEn3" with bit 7 of 'E' set).
const MAGIC: u32 = 0x336e_c578;
/// Longest command line the probe reads.
const MAX_CMDLINE: usize = 4096;
/// Most memory-map entries the probe reads.
const MAX_MEMMAP: usize = 64;
/// Memory-map type of usable RAM.
const MEMMAP_RAM: u32 = 1;
/// Highest address the boot page tables map.
#[cfg(not(test))]
const MAPPED_LIMIT: u64 = 1 << 32;
/// Host unit tests build start_info blocks in ordinary (high) memory.
#[cfg(test)]
const MAPPED_LIMIT: u64 = 1 << 63;

/// Why the start_info block could not be used.
#[derive(Debug)]
pub enum StartInfoError {
    /// ebx was 0 or not mapped.
    BadAddress(u64),
    /// The magic did not match.
    BadMagic(u32),
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartInfoError::BadAddress(a) => {
                write!(f, "start_info address {a:#x} is null or not below 4 GiB")
            }
            StartInfoError::BadMagic(m) => {
                write!(f, "start_info magic is {m:#x}, expected {MAGIC:#x}")
            }
        }
    }
}

/// One RAM range from the memory map.
#[derive(Clone, Copy, Debug)]
pub struct RamRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// The parts of `hvm_start_info` the probe uses.
pub struct StartInfo {
    /// The kernel command line (empty if none).
    pub cmdline: &'static str,
    /// `hvm_start_info.version`.
    pub version: u32,
    /// RAM ranges below 4 GiB.
    pub ram: [Option<RamRange>; MAX_MEMMAP],
}

/// Reads a field at `base + offset`.
///
/// # Safety
/// The range must lie in mapped guest memory.
unsafe fn field<T: Copy>(base: u64, offset: u64) -> T {
    // SAFETY: per the caller; fields may be unaligned in a hostile layout.
    unsafe { read_unaligned((base + offset) as *const T) }
}

fn mapped(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT)
}

impl StartInfo {
    /// Parses the block at guest-physical `paddr` (the value of `ebx` at entry).
    pub fn parse(paddr: u64) -> Result<StartInfo, StartInfoError> {
        if !mapped(paddr, 56) {
            return Err(StartInfoError::BadAddress(paddr));
        }
        // SAFETY: paddr..paddr+56 is inside the identity-mapped low 4 GiB.
        let (magic, version, cmdline_paddr) = unsafe {
            (
                field::<u32>(paddr, 0),
                field::<u32>(paddr, 4),
                field::<u64>(paddr, 24),
            )
        };
        if magic != MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let cmdline = read_cmdline(cmdline_paddr);
        let mut ram = [None; MAX_MEMMAP];
        if version >= 1 {
            // SAFETY: as above; version >= 1 blocks are 56 bytes long.
            let (map, entries) = unsafe { (field::<u64>(paddr, 40), field::<u32>(paddr, 48)) };
            let entries = (entries as usize).min(MAX_MEMMAP);
            if mapped(map, entries as u64 * 24) {
                let mut n = 0;
                for i in 0..entries as u64 {
                    // SAFETY: the whole table was checked to be mapped.
                    let (addr, size, kind) = unsafe {
                        (
                            field::<u64>(map, i * 24),
                            field::<u64>(map, i * 24 + 8),
                            field::<u32>(map, i * 24 + 16),
                        )
                    };
                    let end = addr.saturating_add(size).min(MAPPED_LIMIT);
                    if kind == MEMMAP_RAM && addr < end {
                        ram[n] = Some(RamRange { start: addr, end });
                        n += 1;
                    }
                }
            }
        }
        Ok(StartInfo {
            cmdline,
            version,
            ram,
        })
    }
}

/// The command line, copied out of VMM-chosen memory before the heap (which
/// may cover that memory) is set up.
struct CmdlineCopy(UnsafeCell<[u8; MAX_CMDLINE]>);

// SAFETY: written once by `read_cmdline` before anything reads it; the probe
// is single-threaded.
unsafe impl Sync for CmdlineCopy {}

static CMDLINE_COPY: CmdlineCopy = CmdlineCopy(UnsafeCell::new([0; MAX_CMDLINE]));

fn read_cmdline(paddr: u64) -> &'static str {
    if !mapped(paddr, 1) {
        return "";
    }
    let max = (MAPPED_LIMIT - paddr).min(MAX_CMDLINE as u64) as usize;
    // SAFETY: called once, from `StartInfo::parse`, before any reader exists.
    let copy = unsafe { &mut *CMDLINE_COPY.0.get() };
    let mut len = 0;
    while len < max {
        // SAFETY: paddr + len is below paddr + max, inside the mapped range.
        let b = unsafe { *((paddr as usize + len) as *const u8) };
        if b == 0 {
            break;
        }
        copy[len] = b;
        len += 1;
    }
    let bytes: &'static [u8] = &copy[..len];
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        // Keep the valid prefix rather than dropping the whole line.
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<T: Copy>(buf: &mut [u8], off: usize, v: T) {
        // SAFETY: tests keep off + size_of::<T>() inside buf.
        unsafe { core::ptr::write_unaligned(buf.as_mut_ptr().add(off) as *mut T, v) }
    }

    #[test]
    fn parses_a_version_1_block_with_memmap_and_cmdline() {
        let cmdline = b"probe.scenario=hello probe.tsc_khz=1000\0".to_vec();
        let mut map = vec![0u8; 3 * 24];
        for (i, (addr, size, kind)) in [
            (0u64, 0x9fc00u64, 1u32),
            (0x100000, 0x7f00000, 1),
            (0xfeb00000, 0x1000, 2),
        ]
        .into_iter()
        .enumerate()
        {
            put(&mut map, i * 24, addr);
            put(&mut map, i * 24 + 8, size);
            put(&mut map, i * 24 + 16, kind);
        }
        let mut block = vec![0u8; 56];
        put(&mut block, 0, MAGIC);
        put(&mut block, 4, 1u32);
        put(&mut block, 24, cmdline.as_ptr() as u64);
        put(&mut block, 40, map.as_ptr() as u64);
        put(&mut block, 48, 3u32);
        let info = StartInfo::parse(block.as_ptr() as u64).unwrap();
        assert_eq!(info.cmdline, "probe.scenario=hello probe.tsc_khz=1000");
        assert_eq!(info.version, 1);
        let ram: Vec<(u64, u64)> = info
            .ram
            .iter()
            .flatten()
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(
            ram,
            [(0, 0x9fc00), (0x100000, 0x8000000)],
            "only type-1 entries are RAM"
        );

        put(&mut block, 0, 0x1234_5678u32);
        assert!(matches!(
            StartInfo::parse(block.as_ptr() as u64),
            Err(StartInfoError::BadMagic(0x1234_5678))
        ));
        assert!(matches!(
            StartInfo::parse(0),
            Err(StartInfoError::BadAddress(0))
        ));
    }
}

//! The guest's physical memory map, as both PVH (`hvm_memmap_table_entry`) and the Linux zero
//! page (`boot_e820_entry`) describe it.

use crate::layout::{ram_ranges, EBDA_START, HIMEM_START};

/// E820 / PVH type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 / PVH type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEntry {
    /// First guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The memory map for a guest with `mem_bytes` of RAM: low RAM up to the EBDA, the BIOS hole
/// reserved (our MP table lives there), RAM from 1 MiB, and RAM above 4 GiB when needed.
pub fn memory_map(mem_bytes: u64) -> Vec<MemEntry> {
    let mut map = vec![
        MemEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_bytes) {
        let (start, end) = (start.max(HIMEM_START), start + len);
        if end > start {
            map.push(MemEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// The end of RAM below 4 GiB (where the initrd goes at the latest).
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    ram_ranges(mem_bytes)[0].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_entries_add_up_to_memory_minus_the_bios_hole() {
        let mem = 128u64 << 20;
        let map = memory_map(mem);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
        assert_eq!(map.last().unwrap().addr + map.last().unwrap().size, mem);
    }
}

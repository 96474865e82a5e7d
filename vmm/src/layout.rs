//! Guest-physical memory layout shared by the boot code, the device buses and the VM builder.
//!
//! Low memory holds the small boot structures (GDT, page tables, PVH `start_info`, Linux zero
//! page, command line, MP table); the kernel loads at 1 MiB; RAM stops below a 768 MiB MMIO gap
//! under 4 GiB where the virtio-mmio windows live; RAM above the gap continues at 4 GiB.

/// Flat GDT used for the Linux 64-bit entry (and mirrored for PVH).
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT loaded for the Linux 64-bit entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map table.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the Linux 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Boot page tables for the Linux 64-bit entry: PML4, PDPT, then PDs.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First page directory (identity map of the first GiB with 2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we place in guest memory (including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area; the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// First address of high memory (1 MiB): kernels load here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// First IOAPIC pin handed to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// IRQ of the COM1 serial port.
pub const SERIAL_IRQ: u32 = 4;
/// TSS address KVM needs on Intel hosts (three pages just below the MMIO end, unused by RAM).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Most guest memory we accept, in MiB (64 GiB).
pub const MAX_MEM_MIB: u64 = 64 * 1024;

/// Guest RAM ranges `(start, length)` for `mem_bytes` of memory, split around the MMIO gap.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// The address of the `index`th virtio-mmio window.
pub fn virtio_mmio_base(index: u32) -> u64 {
    MMIO_GAP_START + u64::from(index) * VIRTIO_MMIO_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_GAP_START));
        assert_eq!(r[1].0, MMIO_GAP_END);
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        const { assert!(PVH_MODLIST_START >= PVH_INFO_START + 56) };
        const { assert!(PVH_MEMMAP_START >= PVH_MODLIST_START + 32) };
        const { assert!(ZERO_PAGE_START >= PVH_MEMMAP_START + 8 * 24) };
        const { assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START) };
    }
}

//! PVH boot: a 64-bit ELF kernel with a `XEN_ELFNOTE_PHYS32_ENTRY` note, entered in 32-bit
//! protected mode with `ebx` pointing at `hvm_start_info` (memory map, command line, modules).

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::initrd::InitrdPlacement;
use super::memmap::memory_map;
use super::BootError;
use crate::layout::{CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START};

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Writes `hvm_start_info`, its memory map and module list into guest memory.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem_bytes)
        .into_iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::BootParams(e.to_string()))
}

//! Linux 64-bit boot protocol for bzImage kernels: the setup header is checked, a zero page
//! (`boot_params`) is built with the e820 map, command line and initrd, and the vCPU enters at
//! the 64-bit entry point (load address + 0x200) in long mode.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::initrd::InitrdPlacement;
use super::memmap::memory_map;
use super::BootError;
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, ZERO_PAGE_START};

/// "HdrS", the setup header magic.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The oldest boot protocol with the 64-bit entry (2.12).
const MIN_PROTOCOL: u16 = 0x020c;
/// `xloadflags`: the kernel has the 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// `type_of_loader` for a loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags`: the kernel was loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 1;
/// `loadflags`: heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;

/// Checks that `hdr` describes a kernel we can enter through the 64-bit protocol.
pub fn check_header(hdr: &setup_header) -> Result<(), BootError> {
    let magic = hdr.header;
    if magic != HDRS_MAGIC {
        return Err(BootError::BzImage(format!(
            "setup header magic is {magic:#x}, expected HdrS ({HDRS_MAGIC:#x})"
        )));
    }
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        return Err(BootError::BzImage(format!(
            "boot protocol {}.{} is too old; ringfence needs 2.12 or newer (Linux 3.8+)",
            version >> 8,
            version & 0xff
        )));
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BzImage(
            "the kernel has no 64-bit entry point (XLF_KERNEL_64 clear); build an x86_64 kernel"
                .into(),
        ));
    }
    Ok(())
}

/// Builds and writes the zero page for a bzImage whose setup header is `hdr`.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    mut hdr: setup_header,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len.min(CMDLINE_MAX_SIZE) as u32;
    if let Some(i) = initrd {
        hdr.ramdisk_image = i.addr as u32;
        hdr.ramdisk_size = i.size as u32;
    }
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    let map = memory_map(mem_bytes);
    if map.len() > params.e820_table.len() {
        return Err(BootError::BootParams("too many e820 entries".into()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::BootParams(e.to_string()))
}

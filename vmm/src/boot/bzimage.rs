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

/// File offset of `setup_sects` (the setup header starts at 0x1f1).
const SETUP_SECTS_OFFSET: usize = 0x1f1;
/// File offset of `syssize` (size of the protected-mode part in 16-byte paragraphs).
const SYSSIZE_OFFSET: usize = 0x1f4;

/// Checks that a bzImage of `file_len` bytes, whose first bytes are `head` (at least 0x1f8
/// bytes), holds all the setup sectors and protected-mode code its header declares, so a cut-off
/// download is refused before boot instead of crashing the guest.
pub fn check_file_size(head: &[u8], file_len: u64) -> Result<(), BootError> {
    let (Some(&sects), Some(sys)) = (
        head.get(SETUP_SECTS_OFFSET),
        head.get(SYSSIZE_OFFSET..SYSSIZE_OFFSET + 4),
    ) else {
        return Err(BootError::BzImage(format!(
            "the file is truncated: {file_len} bytes end inside the setup header"
        )));
    };
    // A setup_sects of 0 means 4 (boot protocol, "setup_sects").
    let setup_len = (u64::from(if sects == 0 { 4 } else { sects }) + 1) * 512;
    let mut syssize = [0u8; 4];
    syssize.copy_from_slice(sys);
    let protected_len = u64::from(u32::from_le_bytes(syssize)) * 16;
    let needed = setup_len + protected_len;
    if file_len < needed {
        return Err(BootError::BzImage(format!(
            "the file is truncated: {file_len} bytes, but its header declares {setup_len} bytes of setup and {protected_len} bytes of kernel ({needed} in all); rebuild or re-download it"
        )));
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(sects: u8, syssize: u32) -> Vec<u8> {
        let mut h = vec![0u8; 0x206];
        h[SETUP_SECTS_OFFSET] = sects;
        h[SYSSIZE_OFFSET..SYSSIZE_OFFSET + 4].copy_from_slice(&syssize.to_le_bytes());
        h
    }

    #[test]
    fn truncated_files_are_refused_with_the_sizes() {
        let h = head(1, 0x40);
        assert!(check_file_size(&h, 1024 + 0x400).is_ok());
        let err = check_file_size(&h, 1024 + 0x3ff).unwrap_err().to_string();
        assert!(
            err.contains("truncated") && err.contains("2047 bytes"),
            "{err}"
        );
        // setup_sects 0 means 4 sectors.
        assert!(check_file_size(&head(0, 0), 5 * 512 - 1).is_err());
        assert!(check_file_size(&h[..0x1f2], 4096).is_err());
    }
}

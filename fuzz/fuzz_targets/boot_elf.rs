//! A hostile vmlinux/probe ELF through `ringfence run --kernel`'s loading path: format
//! sniffing, linux-loader's ELF header, program header and PVH note parsing
//! (`XEN_ELFNOTE_PHYS32_ENTRY`), segment loading into an 8 MiB guest, the command line and
//! the PVH start_info. The ELF magic, class and machine are forced so every input reaches the
//! ELF parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence::fuzz_entry::load_kernel_bytes;
use ringfence_fuzz::boot::{boot_memory, BOOT_MEM_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut image = data.to_vec();
    if image.len() < 64 {
        image.resize(64, 0);
    }
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[18] = 0x3e; // EM_X86_64
    image[19] = 0;
    let _ = load_kernel_bytes(boot_memory(), BOOT_MEM_BYTES, &image, "console=ttyS0");
});

//! A hostile bzImage through `ringfence run --kernel`'s loading path: the file-size check
//! against `setup_sects`/`syssize`, linux-loader's setup header parse and kernel copy, the
//! boot protocol checks (version, XLF_KERNEL_64) and the zero page (e820 map, command line).
//! The "HdrS" magic is forced so every input reaches the bzImage path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfence::fuzz_entry::load_kernel_bytes;
use ringfence_fuzz::boot::{boot_memory, BOOT_MEM_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut image = data.to_vec();
    if image.len() < 0x206 {
        image.resize(0x206, 0);
    }
    image[0] = 0; // never an ELF
    image[0x202..0x206].copy_from_slice(b"HdrS");
    let _ = load_kernel_bytes(boot_memory(), BOOT_MEM_BYTES, &image, "console=ttyS0");
});

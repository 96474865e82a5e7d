//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).
//!
//! `boot::load_kernel` reads the kernel from a path; the fuzz targets must not write files,
//! so this loads a kernel image held in memory through exactly the same code (format sniffing,
//! the bzImage size and header checks, linux-loader's ELF/PVH-note and bzImage parsers, the
//! command line and the boot structures). No initrd.

use std::io::Cursor;
use std::path::Path;

use vm_memory::GuestMemoryMmap;

use crate::boot::{self, BootError, LoadedKernel};

/// Loads `image` into `mem` (of `mem_bytes` bytes) as `ringfence run --kernel` would, with
/// the command line `cmdline`.
pub fn load_kernel_bytes(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    image: &[u8],
    cmdline: &str,
) -> Result<LoadedKernel, BootError> {
    let cmdline = boot::build_cmdline(cmdline)?;
    let mut reader = Cursor::new(image);
    boot::load_kernel_from(
        mem,
        mem_bytes,
        &mut reader,
        image.len() as u64,
        Path::new("<fuzz input>"),
        None,
        &cmdline,
    )
}

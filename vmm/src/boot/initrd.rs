//! Initial ramdisk placement: page-aligned, as high as the protocol allows below 4 GiB.

use std::fs::File;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;

/// Where the initrd landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest-physical address of the first byte.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads the initrd at `path` at the highest page-aligned address that ends at or below
/// `limit` and starts above `kernel_end`.
pub fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, BootError> {
    let mut file = File::open(path).map_err(|e| BootError::Initrd {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let size = file
        .metadata()
        .map_err(|e| BootError::Initrd {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .len();
    let addr = place(size, kernel_end, limit).ok_or_else(|| BootError::Initrd {
        path: path.to_path_buf(),
        reason: format!(
            "{size} bytes do not fit between the kernel end {kernel_end:#x} and {limit:#x}; give the guest more --mem"
        ),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::Initrd {
            path: path.to_path_buf(),
            reason: format!("copying into guest memory: {e}"),
        })?;
    Ok(InitrdPlacement { addr, size })
}

/// The page-aligned start for `size` bytes ending at or below `limit`, above `floor`.
fn place(size: u64, floor: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !0xfff;
    (start >= floor && size > 0).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_page_aligned_and_below_the_limit() {
        let a = place(5000, 0x20_0000, 0x800_0000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 5000 <= 0x800_0000);
        assert_eq!(place(0x900_0000, 0x20_0000, 0x800_0000), None);
        assert_eq!(place(0, 0, 0x1000), None);
    }
}

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

/// An initrd: a file, and bytes appended after it (a second cpio archive the kernel
/// unpacks over the first: files ringfence gives the guest, see [`cpio_newc`]).
#[derive(Clone, Copy, Debug)]
pub struct Initrd<'a> {
    /// The initrd file.
    pub path: &'a Path,
    /// Appended after the file's bytes (4-byte aligned, as concatenated archives must be).
    pub appended: &'a [u8],
}

impl<'a> From<&'a Path> for Initrd<'a> {
    fn from(path: &'a Path) -> Self {
        Initrd {
            path,
            appended: &[],
        }
    }
}

/// A `newc` cpio archive of `files` (paths without the leading '/', their parent
/// directories created first, mode 0644, owned by root), ending with the trailer.
pub fn cpio_newc(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    let mut ino = 1;
    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in files {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_string());
            }
            at += i + 1;
        }
    }
    for d in &dirs {
        entry(&mut out, ino, d, 0o040755, &[]);
        ino += 1;
    }
    for (path, data) in files {
        entry(&mut out, ino, path, 0o100644, data);
        ino += 1;
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// Loads the initrd (its file, then what is appended) at the highest page-aligned address
/// that ends at or below `limit` and starts above `kernel_end`.
pub fn load(
    mem: &GuestMemoryMmap,
    initrd: Initrd<'_>,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, BootError> {
    let path = initrd.path;
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
    // The appended archive starts 4-byte aligned, as the kernel's unpacker expects.
    let pad = (4 - size % 4) % 4;
    let file_size = size;
    let size = if initrd.appended.is_empty() {
        size
    } else {
        size + pad + initrd.appended.len() as u64
    };
    let addr = place(size, kernel_end, limit).ok_or_else(|| BootError::Initrd {
        path: path.to_path_buf(),
        reason: format!(
            "{size} bytes do not fit between the kernel end {kernel_end:#x} and {limit:#x}; give the guest more --mem"
        ),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, file_size as usize)
        .map_err(|e| BootError::Initrd {
            path: path.to_path_buf(),
            reason: format!("copying into guest memory: {e}"),
        })?;
    if !initrd.appended.is_empty() {
        // The padding is zero: guest memory is zero at boot and nothing was written there.
        mem.write_slice(initrd.appended, GuestAddress(addr + file_size + pad))
            .map_err(|e| BootError::Initrd {
                path: path.to_path_buf(),
                reason: format!("copying the appended files into guest memory: {e}"),
            })?;
    }
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
    fn cpio_archives_have_their_directories_and_trailer() {
        let a = cpio_newc(&[("etc/ringfence/ca.pem".into(), b"PEM".to_vec())]);
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        let etc = text.find("etc\0").unwrap();
        let dir = text.find("etc/ringfence\0").unwrap();
        let file = text.find("etc/ringfence/ca.pem\0").unwrap();
        assert!(etc < dir && dir < file, "{text}");
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(text.matches("070701").count(), 4);
    }

    #[test]
    fn placement_is_page_aligned_and_below_the_limit() {
        let a = place(5000, 0x20_0000, 0x800_0000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 5000 <= 0x800_0000);
        assert_eq!(place(0x900_0000, 0x20_0000, 0x800_0000), None);
        assert_eq!(place(0, 0, 0x1000), None);
    }
}

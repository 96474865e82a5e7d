//! Kernel loading for both boot protocols ringfence speaks: PVH ELF (`vmlinux`, the probe guest,
//! conformance kernels) and bzImage (Linux 64-bit boot protocol).
//!
//! The format is sniffed from the file's first bytes so that a wrong file gets an error that
//! names what was found, before any guest memory is touched.

pub mod bzimage;
pub mod initrd;
pub mod memmap;
pub mod mptable;
pub mod pvh;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use crate::kvm::regs::EntryMode;
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};

/// Errors loading a kernel, its command line or its initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    KernelFile {
        /// The path given with --kernel.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is neither format.
    #[error("{path} is neither a PVH ELF kernel nor a bzImage ({found})")]
    UnknownFormat {
        /// The path given with --kernel.
        path: PathBuf,
        /// What the first bytes look like.
        found: String,
    },
    /// An ELF kernel without the PVH entry note.
    #[error("{0} is an ELF file without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build the kernel with CONFIG_PVH=y, or pass a bzImage")]
    NoPvhNote(PathBuf),
    /// linux-loader rejected the image.
    #[error("cannot load kernel {path}: {reason}")]
    Load {
        /// The path given with --kernel.
        path: PathBuf,
        /// linux-loader's explanation.
        reason: String,
    },
    /// The bzImage setup header is not usable.
    #[error("bzImage rejected: {0}")]
    BzImage(String),
    /// The command line is too long or has characters the kernel cannot take.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// The initrd cannot be loaded.
    #[error("cannot load initrd {path}: {reason}")]
    Initrd {
        /// The path given with --initrd.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Boot parameters did not fit in guest memory.
    #[error("cannot write boot parameters: {0}")]
    BootParams(String),
}

/// The two kernel formats ringfence boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A 64-bit ELF (PVH entry required).
    Elf,
    /// A bzImage with a "HdrS" setup header.
    BzImage,
}

/// Sniffs the format of `file` from its magic numbers, rewinding it afterwards.
pub fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    detect_format_of(file, path)
}

/// [`detect_format`] over any seekable reader (`path` only names it in errors).
fn detect_format_of<R: Read + Seek>(file: &mut R, path: &Path) -> Result<KernelFormat, BootError> {
    let read_err = |source| BootError::KernelFile {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 0x206];
    let n = read_up_to(file, &mut head).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        if head.get(4) != Some(&2) || head.get(18) != Some(&0x3e) {
            return Err(BootError::UnknownFormat {
                path: path.to_path_buf(),
                found: "an ELF file, but not a 64-bit x86-64 one".into(),
            });
        }
        return Ok(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    let found = if n == 0 {
        "the file is empty".to_string()
    } else {
        let preview: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("it starts with bytes {}", preview.join(" "))
    };
    Err(BootError::UnknownFormat {
        path: path.to_path_buf(),
        found,
    })
}

fn read_up_to<R: Read>(file: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Refuses a bzImage shorter than its setup header declares (see
/// [`bzimage::check_file_size`]), rewinding the file afterwards.
fn check_bzimage_size<R: Read + Seek>(
    file: &mut R,
    len: u64,
    path: &Path,
) -> Result<(), BootError> {
    let read_err = |source| BootError::KernelFile {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 0x206];
    let n = read_up_to(file, &mut head).map_err(read_err)?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    bzimage::check_file_size(&head[..n], len)
}

/// What the boot step hands to the vCPU setup.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The detected format.
    pub format: KernelFormat,
    /// How the boot vCPU enters the kernel.
    pub entry: EntryMode,
    /// Where the initrd went, if there was one.
    pub initrd: Option<initrd::InitrdPlacement>,
}

/// Checks a command line before boot: length and characters.
pub fn build_cmdline(text: &str) -> Result<Cmdline, BootError> {
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !text.trim().is_empty() {
        cmdline
            .insert_str(text.trim())
            .map_err(|e| BootError::Cmdline(format!("{e} (in {text:?})")))?;
    }
    Ok(cmdline)
}

/// Loads `kernel` (and `initrd`) into `mem` and writes the boot structures for `cmdline`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &Path,
    initrd: Option<initrd::Initrd<'_>>,
    cmdline: &Cmdline,
) -> Result<LoadedKernel, BootError> {
    let file_err = |source| BootError::KernelFile {
        path: kernel.to_path_buf(),
        source,
    };
    let mut file = File::open(kernel).map_err(file_err)?;
    let len = file.metadata().map_err(file_err)?.len();
    load_kernel_from(mem, mem_bytes, &mut file, len, kernel, initrd, cmdline)
}

/// [`load_kernel`] from any seekable reader holding `len` bytes of kernel image (the fuzz
/// targets load from memory); `kernel` only names the image in errors.
pub(crate) fn load_kernel_from<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    file: &mut F,
    len: u64,
    kernel: &Path,
    initrd: Option<initrd::Initrd<'_>>,
    cmdline: &Cmdline,
) -> Result<LoadedKernel, BootError> {
    let format = detect_format_of(file, kernel)?;
    let load_err = |e: linux_loader::loader::Error| BootError::Load {
        path: kernel.to_path_buf(),
        reason: e.to_string(),
    };
    let result = match format {
        KernelFormat::Elf => {
            Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?
        }
        KernelFormat::BzImage => {
            check_bzimage_size(file, len, kernel)?;
            BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?
        }
    };
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .unwrap_or(1);

    let low_end = memmap::low_ram_end(mem_bytes);
    match format {
        KernelFormat::Elf => {
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => addr.0,
                _ => return Err(BootError::NoPvhNote(kernel.to_path_buf())),
            };
            let placed = initrd
                .map(|i| initrd::load(mem, i, result.kernel_end, low_end))
                .transpose()?;
            pvh::write_start_info(mem, mem_bytes, placed)?;
            Ok(LoadedKernel {
                format,
                entry: EntryMode::Pvh { entry },
                initrd: placed,
            })
        }
        KernelFormat::BzImage => {
            let hdr = result.setup_header.ok_or_else(|| {
                BootError::BzImage("linux-loader returned no setup header".into())
            })?;
            bzimage::check_header(&hdr)?;
            let max = u64::from(hdr.initrd_addr_max).max(0x37ff_ffff) + 1;
            let placed = initrd
                .map(|i| initrd::load(mem, i, result.kernel_end, low_end.min(max)))
                .transpose()?;
            bzimage::write_zero_page(mem, mem_bytes, hdr, cmdline_len, placed)?;
            Ok(LoadedKernel {
                format,
                entry: EntryMode::Linux64 {
                    entry: result.kernel_load.0 + 0x200,
                },
                initrd: placed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_with(bytes: &[u8]) -> (tempfile_path::TempPath, File) {
        let p = tempfile_path::TempPath::new();
        std::fs::File::create(&p.0)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let f = File::open(&p.0).unwrap();
        (p, f)
    }

    mod tempfile_path {
        /// A file path removed on drop.
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                TempPath(
                    std::env::temp_dir()
                        .join(format!("ringfence-boot-test-{}-{n}", std::process::id())),
                )
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn detects_elf_and_bzimage_and_rejects_the_rest() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 0x3e;
        let (p, mut f) = temp_with(&elf);
        assert_eq!(detect_format(&mut f, &p.0).unwrap(), KernelFormat::Elf);

        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let (p, mut f) = temp_with(&bz);
        assert_eq!(detect_format(&mut f, &p.0).unwrap(), KernelFormat::BzImage);

        let (p, mut f) = temp_with(b"#!/bin/sh\necho hi\n");
        let err = detect_format(&mut f, &p.0).unwrap_err().to_string();
        assert!(
            err.contains("neither a PVH ELF kernel nor a bzImage"),
            "{err}"
        );
        assert!(err.contains("23 21 2f 62"), "{err}");

        let (p, mut f) = temp_with(b"");
        let err = detect_format(&mut f, &p.0).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");

        elf[4] = 1;
        let (p, mut f) = temp_with(&elf);
        let err = detect_format(&mut f, &p.0).unwrap_err().to_string();
        assert!(err.contains("not a 64-bit x86-64"), "{err}");
    }

    #[test]
    fn cmdline_rejects_overlong_text() {
        assert!(build_cmdline("console=ttyS0 probe.scenario=hello").is_ok());
        let long = "a".repeat(CMDLINE_MAX_SIZE + 10);
        assert!(build_cmdline(&long).is_err());
    }
}

//! The backing file of a drive: a raw disk image (a regular file or a block device), opened
//! read-only or read-write before the guest boots, with its size checked.
//!
//! This module owns the checks a user can fix before boot (missing file, wrong kind of file,
//! a size the protocol cannot express, a read-only file asked read-write); each error names
//! the path and says what to do. It never reads or writes the image's contents.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use super::SECTOR_SIZE;

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file does not exist.
    #[error("{path}: no such file; create the image first (e.g. `truncate -s 1G {path}` for an empty raw disk)")]
    Missing {
        /// The image path.
        path: PathBuf,
    },
    /// The path names a directory, socket, FIFO or character device.
    #[error("{path} is not a regular file or a block device; give the path of a raw disk image")]
    NotAnImage {
        /// The image path.
        path: PathBuf,
    },
    /// The image is empty.
    #[error("{path} is empty; a disk needs at least one 512-byte sector (e.g. `truncate -s 64M {path}`)")]
    Empty {
        /// The image path.
        path: PathBuf,
    },
    /// The size is not a whole number of sectors.
    #[error("{path} is {size} bytes, not a multiple of 512; virtio-blk counts 512-byte sectors, so resize it (e.g. `truncate -s {rounded} {path}`)")]
    Unaligned {
        /// The image path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The size rounded up to a whole sector.
        rounded: u64,
    },
    /// Read-write was asked for but the file cannot be written.
    #[error(
        "{path} cannot be opened for writing ({source}); make it writable, or attach it read-only"
    )]
    NotWritable {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Any other failure to open or size the file.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// An opened raw disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    read_only: bool,
    size: u64,
}

impl DiskImage {
    /// Opens `path` read-only or read-write and checks that it is a regular file or block
    /// device holding a whole, non-zero number of 512-byte sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ImageError> {
        Self::open_with(path, read_only, false)
    }

    /// As [`DiskImage::open`]; with `allow_empty` an empty file is a drive of no sectors (a
    /// placeholder to be swapped for a real image later, as Firecracker's API allows).
    pub fn open_with(path: &Path, read_only: bool, allow_empty: bool) -> Result<Self, ImageError> {
        let owned = || path.to_path_buf();
        let io_err = |source: io::Error| ImageError::Io {
            path: owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::Missing { path: owned() },
            _ => io_err(e),
        })?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(ImageError::NotAnImage { path: owned() });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EACCES | libc::EROFS | libc::EPERM | libc::ETXTBSY) if !read_only => {
                    ImageError::NotWritable {
                        path: owned(),
                        source: e,
                    }
                }
                _ if e.kind() == io::ErrorKind::NotFound => ImageError::Missing { path: owned() },
                _ => io_err(e),
            })?;
        // Works for block devices too, whose metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(io_err)?;
        if size == 0 && !allow_empty {
            return Err(ImageError::Empty { path: owned() });
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(ImageError::Unaligned {
                path: owned(),
                size,
                rounded: size.div_ceil(SECTOR_SIZE) * SECTOR_SIZE,
            });
        }
        Ok(Self {
            file,
            path: owned(),
            read_only,
            size,
        })
    }

    /// Size in bytes at open time (the drive's capacity; a whole number of sectors).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether the file was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The path it was opened from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file's descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The file's current size in bytes (one `lseek`): smaller than [`size`](Self::size) when
    /// the file was truncated under the running VM.
    pub fn current_size(&self) -> io::Result<u64> {
        // SAFETY: lseek on a descriptor we own; it does not touch memory. The file position is
        // never used (all I/O is at explicit offsets).
        let end = unsafe { libc::lseek(self.file.as_raw_fd(), 0, libc::SEEK_END) };
        u64::try_from(end).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rf-image-{}-{name}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn images_are_checked_before_use() {
        let ok = temp("ok", 4096);
        let img = DiskImage::open(&ok, false).unwrap();
        assert_eq!(
            (img.size(), img.sectors(), img.read_only()),
            (4096, 8, false)
        );
        assert_eq!(img.current_size().unwrap(), 4096);

        let odd = temp("odd", 1000);
        let e = DiskImage::open(&odd, true).unwrap_err().to_string();
        assert!(e.contains("1000 bytes, not a multiple of 512"), "{e}");
        assert!(e.contains("truncate -s 1024"), "{e}");

        let empty = temp("empty", 0);
        let e = DiskImage::open(&empty, true).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");

        let missing = std::env::temp_dir().join("rf-image-does-not-exist");
        let e = DiskImage::open(&missing, true).unwrap_err().to_string();
        assert!(
            e.contains("no such file") && e.contains("rf-image-does-not-exist"),
            "{e}"
        );

        let e = DiskImage::open(&std::env::temp_dir(), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file or a block device"), "{e}");

        for p in [ok, odd, empty] {
            let _ = std::fs::remove_file(p);
        }
    }
}

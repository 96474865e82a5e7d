//! A deterministic newc cpio writer (initramfs images) and the copying of dynamically linked
//! programs with the shared libraries `ldd` lists.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A newc ("070701") cpio archive writer: deterministic (mtime 0, uid/gid 0, inode numbers
/// in order), parent directories created on demand.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    pub fn dir(&mut self, path: &str) {
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        self.parents(path);
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040755, &[], (0, 0));
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        if data.len() > u32::MAX as usize {
            bail!("{path} is too large for a cpio archive");
        }
        self.parents(path);
        self.entry(path, 0o100000 | perm, data, (0, 0));
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120777, target.as_bytes(), (0, 0));
    }

    pub fn node(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, mode, &[], (major, minor));
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

impl Cpio {
    /// Adds the program at `host` as `path` and collects the shared libraries (and the ELF
    /// loader) `ldd` lists for it into `libs`; add those with [`Cpio::libraries`].
    pub fn program(&mut self, path: &str, host: &Path, libs: &mut BTreeSet<String>) -> Result<()> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, 0o755, &data)?;
        let out = Command::new("ldd")
            .arg(host)
            .output()
            .with_context(|| format!("running ldd {}", host.display()))?;
        // A static program makes ldd exit 1 ("not a dynamic executable"): nothing to add.
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("not found") {
            bail!(
                "{} needs libraries this host lacks:\n{text}",
                host.display()
            );
        }
        for word in text.split_whitespace().filter(|w| w.starts_with('/')) {
            libs.insert(word.to_string());
        }
        Ok(())
    }

    /// Adds each library at its own path.
    pub fn libraries(&mut self, libs: &BTreeSet<String>) -> Result<()> {
        for lib in libs {
            let data = std::fs::read(lib).with_context(|| format!("reading {lib}"))?;
            self.file(&lib[1..], 0o755, &data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.file("bin/x", 0o755, b"abc").unwrap();
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
        // "bin" directory first, then the file.
        assert_eq!(&out[110..114], b"bin\0");
    }
}

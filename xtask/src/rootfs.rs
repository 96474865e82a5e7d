//! The Linux image's root filesystem as an ext4 drive (`rootfs.ext4`): the same tree as the
//! initramfs, for guests that boot with their root on virtio-blk (the fleet API's
//! `is_root_device` drive). The cpio archive is unpacked into a scratch directory (device
//! nodes skipped: the kernel mounts devtmpfs on `/dev` after the root) and `mke2fs -d` turns
//! the directory into an image; neither step needs root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Unpacks the newc archive `cpio` into `dir` (regular files, directories, symlinks).
pub fn unpack_newc(cpio: &[u8], dir: &Path) -> Result<u64> {
    let mut at = 0usize;
    let mut bytes = 0u64;
    loop {
        let head = cpio
            .get(at..at + 110)
            .context("cpio archive cut short in a header")?;
        if &head[..6] != b"070701" {
            bail!("cpio archive: bad magic at offset {at}");
        }
        let field = |i: usize| -> Result<usize> {
            let text = std::str::from_utf8(&head[6 + i * 8..14 + i * 8])?;
            Ok(usize::from_str_radix(text, 16)?)
        };
        let (mode, size, name_len) = (field(1)?, field(6)?, field(11)?);
        let name_at = at + 110;
        let name = cpio
            .get(name_at..name_at + name_len.saturating_sub(1))
            .context("cpio archive cut short in a name")?;
        let name = std::str::from_utf8(name).context("cpio archive: a name is not UTF-8")?;
        let data_at = (name_at + name_len + 3) & !3;
        let data = cpio
            .get(data_at..data_at + size)
            .context("cpio archive cut short in file data")?;
        at = (data_at + size + 3) & !3;
        if name == "TRAILER!!!" {
            return Ok(bytes);
        }
        let rel = Path::new(name);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("cpio archive: refusing the path {name:?}");
        }
        let path = dir.join(rel);
        match mode as u32 & 0o170000 {
            0o040000 => std::fs::create_dir_all(&path)?,
            0o100000 => {
                std::fs::write(&path, data)?;
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(mode as u32 & 0o7777),
                )?;
                bytes += data.len() as u64;
            }
            0o120000 => {
                let target = std::str::from_utf8(data)
                    .context("cpio archive: a link target is not UTF-8")?;
                std::os::unix::fs::symlink(target, &path)
                    .with_context(|| format!("symlink {}", path.display()))?;
            }
            _ => {} // device nodes: devtmpfs provides them
        }
    }
}

/// Writes `out`, an ext4 image of the initramfs `cpio` whose `/sbin/init` is the agent.
pub fn ext4_image(cpio: &[u8], out: &Path) -> Result<()> {
    let tree = out.with_extension("tree.tmp");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    std::fs::create_dir_all(&tree)?;
    let bytes = unpack_newc(cpio, &tree)?;
    // With a disk root the kernel runs /sbin/init (busybox's in the initramfs tree), not /init.
    let init = tree.join("sbin/init");
    let _ = std::fs::remove_file(&init);
    std::os::unix::fs::symlink("/init", &init)?;
    // Room for the tree, ext4's metadata and what a guest writes.
    let mib = bytes / (1 << 20) * 5 / 4 + 16;
    let tmp = out.with_extension("ext4.tmp");
    let status = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "ringfence-root",
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(&tree)
        .arg(&tmp)
        .arg(format!("{mib}M"))
        .status()
        .context("cannot run mke2fs (apt-get install e2fsprogs)")?;
    if !status.success() {
        bail!("mke2fs failed ({status}) building {}", out.display());
    }
    std::fs::remove_dir_all(&tree)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::Cpio;

    #[test]
    fn an_archive_unpacks_to_its_tree() {
        let mut c = Cpio::default();
        c.file("bin/x", 0o755, b"abc").unwrap();
        c.symlink("bin/y", "/bin/x");
        c.node("dev/null", 0o020666, 1, 3);
        let dir = std::env::temp_dir().join(format!("rf-rootfs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = unpack_newc(&c.finish(), &dir).unwrap();
        assert_eq!(bytes, 3);
        assert_eq!(std::fs::read(dir.join("bin/x")).unwrap(), b"abc");
        let mode = std::fs::metadata(dir.join("bin/x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(dir.join("bin/y")).unwrap(),
            Path::new("/bin/x")
        );
        assert!(dir.join("dev").is_dir() && !dir.join("dev/null").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_outside_the_tree_is_refused() {
        let mut c = Cpio::default();
        c.file("../escape", 0o644, b"x").unwrap();
        let dir = std::env::temp_dir().join(format!("rf-rootfs-esc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(unpack_newc(&c.finish(), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

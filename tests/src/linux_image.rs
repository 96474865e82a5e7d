//! Finding the Linux guest image built by `cargo xtask image`, asking `ringfence doctor`
//! whether Linux guests can run here, and booting the image under QEMU TCG (which works
//! everywhere, slowly) as a sanity check of the image itself.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::ringfence_bin;

/// The files of a built image.
#[derive(Clone, Debug)]
pub struct LinuxImage {
    /// ELF kernel with the PVH note.
    pub vmlinux: PathBuf,
    /// bzImage kernel.
    pub bzimage: PathBuf,
    /// gzip'd cpio initramfs with the agent as /init.
    pub initramfs: PathBuf,
}

impl LinuxImage {
    fn in_dir(dir: &Path) -> Option<Self> {
        let img = LinuxImage {
            vmlinux: dir.join("vmlinux"),
            bzimage: dir.join("bzImage"),
            initramfs: dir.join("initramfs.cpio.gz"),
        };
        (img.vmlinux.is_file() && img.bzimage.is_file() && img.initramfs.is_file()).then_some(img)
    }
}

/// `$RINGFENCE_LINUX_IMAGE` (a directory), else the newest complete
/// `~/.cache/ringfence/linux-<hash>/` (or under `$RINGFENCE_CACHE`).
pub fn find() -> Result<LinuxImage, String> {
    if let Some(dir) = std::env::var_os("RINGFENCE_LINUX_IMAGE") {
        let dir = PathBuf::from(dir);
        return LinuxImage::in_dir(&dir).ok_or_else(|| {
            format!(
                "RINGFENCE_LINUX_IMAGE={} lacks vmlinux, bzImage or initramfs.cpio.gz",
                dir.display()
            )
        });
    }
    let cache = match std::env::var_os("RINGFENCE_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/ringfence")
        }
    };
    let mut best: Option<(std::time::SystemTime, LinuxImage)> = None;
    for entry in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_image = name
            .strip_prefix("linux-")
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_image {
            continue;
        }
        if let Some(img) = LinuxImage::in_dir(&entry.path()) {
            let t = std::fs::metadata(&img.initramfs)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, img));
            }
        }
    }
    best.map(|(_, i)| i).ok_or_else(|| {
        format!(
            "no Linux guest image in {} (build it with `cargo xtask image`, about 6 minutes)",
            cache.display()
        )
    })
}

/// `Ok(())` when `ringfence doctor` says guest kernels run at full speed, else its verdict.
pub fn linux_guests_supported() -> Result<(), String> {
    let out = Command::new(ringfence_bin())
        .args(["doctor", "--json"])
        .output()
        .map_err(|e| format!("cannot run ringfence doctor: {e}"))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ringfence doctor --json printed no JSON: {e}"))?;
    if report["guest_kernel_mode"] == "native" {
        Ok(())
    } else {
        Err(report["linux_verdict"]
            .as_str()
            .unwrap_or("ringfence doctor gave no verdict")
            .to_string())
    }
}

/// What a QEMU run produced.
#[derive(Debug)]
pub struct QemuRun {
    /// QEMU's exit status (`isa-debug-exit`: `(value << 1) | 1`), None if killed.
    pub status: Option<i32>,
    /// Serial console output.
    pub console: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Boots `kernel` + `initrd` under `qemu-system-x86_64 -M microvm -accel tcg` with
/// `cmdline`, killing QEMU after `limit`.
pub fn run_qemu_tcg(kernel: &Path, initrd: &Path, cmdline: &str, limit: Duration) -> QemuRun {
    run_qemu_tcg_with(kernel, initrd, cmdline, limit, &[])
}

/// QEMU arguments for a virtio-net device on QEMU's user network with `restrict=on`: the
/// guest reaches QEMU's built-in gateway (10.0.2.2, DHCP) and nothing outside.
pub const QEMU_ISOLATED_NET: &[&str] = &[
    "-netdev",
    "user,id=n0,restrict=on",
    "-device",
    "virtio-net-device,netdev=n0",
];

/// [`run_qemu_tcg`] with `extra` QEMU arguments. QEMU appends the `virtio_mmio.device=`
/// words for bzImage kernels (not for PVH ELFs), so network tests boot the bzImage.
pub fn run_qemu_tcg_with(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    limit: Duration,
    extra: &[&str],
) -> QemuRun {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "256",
        ])
        .args(extra)
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    QemuRun {
        status,
        console: reader.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

/// Whether QEMU is installed.
pub fn have_qemu() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

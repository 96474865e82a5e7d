//! `cargo xtask image`: the Linux guest image — a kernel from Debian's `linux-source-6.1` built
//! on `tinyconfig` plus `guest-images/linux/ringfence.config`, and an initramfs (cpio newc,
//! gzip) with the ringfence agent as `/init`, busybox, iperf3, sockperf, curl and socat.
//!
//! Two cache levels under `~/.cache/ringfence/`:
//! - `linux-kernel-<hash>/` (vmlinux, bzImage, config): hash of the fragment, the recipe
//!   version, the kernel source package version and the compiler version; ~5.5 min to build on
//!   2 cores, so agent changes do not trigger it;
//! - `linux-<hash>/` (vmlinux, bzImage, initramfs.cpio.gz, rootfs.ext4): hash of the kernel hash, the
//!   package versions, the agent's sources and the initramfs files; the finished image.
//!
//! The kernel source is unpacked once into `linux-src-<version>/` and built out of tree.
//! The initramfs is written by our own cpio writer, so device nodes (`/dev/console`) need no
//! root.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::cpio::Cpio;
use crate::util::{
    cache_dir, cargo, describe, done, have, is_root, run as run_cmd, step, target_dir,
    workspace_root,
};

/// Bump when the recipe changes in a way the hashed inputs do not show.
const RECIPE_VERSION: u32 = 1;
/// The Debian package with the kernel tarball.
const KERNEL_PACKAGE: &str = "linux-source-6.1";
/// Where that package puts the tarball.
const KERNEL_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Guest programs copied into the initramfs with the shared libraries `ldd` lists.
/// GNU wget replaces busybox's applet: Debian's static busybox 1.35 crashes (SIGSEGV in its
/// option parser) on `wget -T N`, the first option a sandbox user types. dash is `/bin/sh`:
/// busybox's own shell runs its applets before anything on PATH (Debian builds it with
/// FEATURE_SH_STANDALONE), so under it `sh -c 'wget ...'` would still reach the broken applet.
const GUEST_PROGRAMS: &[&str] = &[
    "/usr/bin/dash",
    "/usr/bin/wget",
    "/usr/bin/iperf3",
    "/usr/bin/sockperf",
    "/usr/bin/curl",
    "/usr/bin/socat",
];
/// The static busybox.
const BUSYBOX: &str = "/bin/busybox";

/// A host requirement: a Debian package and a file that proves it is installed.
struct Need {
    package: &'static str,
    file: &'static str,
    why: &'static str,
}

const NEEDS: &[Need] = &[
    Need {
        package: KERNEL_PACKAGE,
        file: KERNEL_TARBALL,
        why: "the kernel source",
    },
    Need {
        package: "make",
        file: "/usr/bin/make",
        why: "building the kernel",
    },
    Need {
        package: "gcc",
        file: "/usr/bin/gcc",
        why: "building the kernel",
    },
    Need {
        package: "flex",
        file: "/usr/bin/flex",
        why: "kernel kconfig",
    },
    Need {
        package: "bison",
        file: "/usr/bin/bison",
        why: "kernel kconfig",
    },
    Need {
        package: "bc",
        file: "/usr/bin/bc",
        why: "kernel build scripts",
    },
    Need {
        package: "libelf-dev",
        file: "/usr/include/libelf.h",
        why: "objtool",
    },
    Need {
        package: "libssl-dev",
        file: "/usr/include/openssl/ssl.h",
        why: "kernel host tools",
    },
    Need {
        package: "xz-utils",
        file: "/usr/bin/xz",
        why: "unpacking the kernel tarball",
    },
    Need {
        package: "busybox-static",
        file: BUSYBOX,
        why: "the initramfs shell and tools",
    },
    Need {
        package: "iperf3",
        file: "/usr/bin/iperf3",
        why: "throughput tests inside the guest",
    },
    Need {
        package: "sockperf",
        file: "/usr/bin/sockperf",
        why: "latency tests inside the guest",
    },
    Need {
        package: "dash",
        file: "/usr/bin/dash",
        why: "/bin/sh inside the guest (busybox's shell prefers its own applets)",
    },
    Need {
        package: "wget",
        file: "/usr/bin/wget",
        why: "GNU wget inside the guest (busybox's crashes on -T)",
    },
    Need {
        package: "curl",
        file: "/usr/bin/curl",
        why: "an HTTP(S) client inside the guest",
    },
    Need {
        package: "e2fsprogs",
        file: "/usr/sbin/mke2fs",
        why: "the ext4 root drive (rootfs.ext4)",
    },
    Need {
        package: "socat",
        file: "/usr/bin/socat",
        why: "TCP/UDP relays and clients inside the guest",
    },
];

/// What `cargo xtask image` produced.
#[derive(Debug)]
pub struct Image {
    /// The image directory.
    pub dir: PathBuf,
    /// ELF kernel with the PVH note.
    pub vmlinux: PathBuf,
    /// bzImage kernel.
    pub bzimage: PathBuf,
    /// gzip'd cpio initramfs.
    pub initramfs: PathBuf,
    /// The same tree as an ext4 image, for a root on a virtio-blk drive (`/sbin/init` is the
    /// agent).
    pub rootfs: PathBuf,
}

/// Entry point: `cargo xtask image [--jobs N]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut jobs = default_jobs();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jobs" | "-j" => {
                let v = it.next().context("--jobs needs a number")?;
                jobs = v
                    .parse()
                    .with_context(|| format!("--jobs {v:?} is not a number"))?;
            }
            other => bail!("unknown option {other:?}; usage: cargo xtask image [--jobs N]"),
        }
    }
    let image = build(jobs)?;
    link_latest(&image.dir)?;
    println!("\nLinux guest image ready in {}:", image.dir.display());
    println!("  vmlinux    {}", image.vmlinux.display());
    println!("  bzImage    {}", image.bzimage.display());
    println!("  initramfs  {}", image.initramfs.display());
    println!(
        "run it (on a host where `ringfence doctor` says Linux guests run):\n  ringfence run --linux -- uname -a"
    );
    Ok(())
}

/// Kernel build jobs when none are asked for: one per CPU this process may use.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Points `~/.cache/ringfence/linux` at the newest image, where `ringfence run --linux` looks.
fn link_latest(dir: &Path) -> Result<()> {
    let link = cache_dir()?.join("linux");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir, &link)
        .with_context(|| format!("linking {} to {}", link.display(), dir.display()))
}

/// Builds (or finds in the cache) the kernel and the initramfs.
pub fn build(jobs: usize) -> Result<Image> {
    ensure_host_packages()?;
    let cache = cache_dir()?;
    let versions = package_versions()?;
    let fragment_path = workspace_root().join("guest-images/linux/ringfence.config");
    let fragment = std::fs::read_to_string(&fragment_path)
        .with_context(|| format!("reading {}", fragment_path.display()))?;

    let mut kh = DefaultHasher::new();
    (RECIPE_VERSION, &fragment, versions.get(KERNEL_PACKAGE)).hash(&mut kh);
    command_output(Command::new("gcc").arg("--version"))
        .unwrap_or_default()
        .hash(&mut kh);
    let kernel_hash = format!("{:016x}", kh.finish());
    let kernel_dir = cache.join(format!("linux-kernel-{kernel_hash}"));
    if kernel_dir.join("bzImage").is_file() && kernel_dir.join("vmlinux").is_file() {
        println!("    kernel up to date ({})", kernel_dir.display());
    } else {
        build_kernel(
            &cache,
            &versions,
            &fragment,
            &fragment_path,
            &kernel_dir,
            jobs,
        )?;
    }
    let entry = pvh_entry(&std::fs::read(kernel_dir.join("vmlinux"))?)
        .context("the built vmlinux has no PVH note (XEN_ELFNOTE_PHYS32_ENTRY): is CONFIG_PVH=y in the fragment?")?;
    println!("    vmlinux PVH entry at {entry:#x}");

    let agent_dir = workspace_root().join("guest-images/agent");
    let linux_dir = workspace_root().join("guest-images/linux");
    let mut ih = DefaultHasher::new();
    (RECIPE_VERSION, &kernel_hash, &versions).hash(&mut ih);
    hash_tree(&agent_dir, &mut ih)?;
    hash_tree(&linux_dir, &mut ih)?;
    let image_dir = cache.join(format!("linux-{:016x}", ih.finish()));
    let image = Image {
        vmlinux: image_dir.join("vmlinux"),
        bzimage: image_dir.join("bzImage"),
        initramfs: image_dir.join("initramfs.cpio.gz"),
        rootfs: image_dir.join("rootfs.ext4"),
        dir: image_dir.clone(),
    };
    if image.initramfs.is_file() && image.bzimage.is_file() && image.rootfs.is_file() {
        println!("    image up to date ({})", image_dir.display());
        return Ok(image);
    }
    let agent = build_agent()?;
    std::fs::create_dir_all(&image_dir)?;
    let t = step("initramfs: agent, busybox, iperf3, sockperf, curl, socat and their libraries");
    let cpio = initramfs(&agent, &linux_dir)?;
    let tmp = image_dir.join("initramfs.cpio.gz.tmp");
    gzip_to(&cpio, &tmp)?;
    std::fs::copy(kernel_dir.join("vmlinux"), &image.vmlinux)?;
    std::fs::copy(kernel_dir.join("bzImage"), &image.bzimage)?;
    crate::rootfs::ext4_image(&cpio, &image.rootfs)?;
    std::fs::rename(&tmp, &image.initramfs)?;
    println!(
        "    initramfs: {} KiB uncompressed, {} KiB gzip; rootfs.ext4 {} MiB",
        cpio.len() / 1024,
        std::fs::metadata(&image.initramfs)?.len() / 1024,
        std::fs::metadata(&image.rootfs)?.len() >> 20
    );
    done(t);
    Ok(image)
}

/// Installs missing packages as root, or fails with the exact command.
fn ensure_host_packages() -> Result<()> {
    let missing: Vec<&Need> = NEEDS
        .iter()
        .filter(|n| !Path::new(n.file).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for n in &missing {
        println!("    missing: {} ({}; for {})", n.package, n.file, n.why);
    }
    let names: Vec<&str> = missing.iter().map(|n| n.package).collect();
    let command = format!("apt-get install -y {}", names.join(" "));
    if !is_root() || !have("apt-get") {
        bail!("install the missing packages first: sudo {command}");
    }
    let t = step(&format!("installing {}", names.join(" ")));
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    done(t);
    Ok(())
}

/// Installed versions of every package the image depends on.
fn package_versions() -> Result<std::collections::BTreeMap<&'static str, String>> {
    let mut out = std::collections::BTreeMap::new();
    for n in NEEDS {
        let v = command_output(
            Command::new("dpkg-query")
                .args(["-W", "-f", "${Version}"])
                .arg(n.package),
        )
        .with_context(|| format!("asking dpkg for the version of {}", n.package))?;
        out.insert(n.package, v.trim().to_string());
    }
    Ok(out)
}

fn command_output(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .output()
        .with_context(|| format!("cannot start: {}", describe(cmd)))?;
    if !o.status.success() {
        bail!("command failed ({}): {}", o.status, describe(cmd));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn hash_tree(dir: &Path, h: &mut DefaultHasher) -> Result<()> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    for f in files {
        f.strip_prefix(dir).unwrap_or(&f).hash(h);
        std::fs::read(&f)
            .with_context(|| format!("reading {}", f.display()))?
            .hash(h);
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect_files(&entry.path(), out)?;
        } else {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// Unpacks the source if needed, configures tinyconfig + fragment, builds vmlinux and bzImage.
fn build_kernel(
    cache: &Path,
    versions: &std::collections::BTreeMap<&'static str, String>,
    fragment: &str,
    fragment_path: &Path,
    kernel_dir: &Path,
    jobs: usize,
) -> Result<()> {
    let version = versions
        .get(KERNEL_PACKAGE)
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    let src = cache.join(format!("linux-src-{version}"));
    if !src.join("Makefile").is_file() {
        let t = step(&format!(
            "unpacking {KERNEL_TARBALL} into {}",
            src.display()
        ));
        std::fs::create_dir_all(&src)?;
        run_cmd(
            Command::new("tar")
                .arg("-xJf")
                .arg(KERNEL_TARBALL)
                .arg("--strip-components=1")
                .arg("-C")
                .arg(&src),
        )?;
        done(t);
    }
    // One out-of-tree build directory per source version: a fragment change rebuilds only
    // what the new configuration touches.
    let out = cache.join(format!("linux-build-{version}"));
    std::fs::create_dir_all(&out)?;
    let make = |args: &[&str]| -> Command {
        let mut c = Command::new("nice");
        c.args(["-n", "19", "make", "-C"])
            .arg(&src)
            .arg(format!("O={}", out.display()))
            .args(args);
        c
    };
    let t = step("configuring the kernel: tinyconfig + guest-images/linux/ringfence.config");
    run_cmd(&mut make(&["tinyconfig"]))?;
    run_cmd(
        Command::new(src.join("scripts/kconfig/merge_config.sh"))
            .current_dir(&src)
            .arg("-m")
            .arg("-O")
            .arg(&out)
            .arg(out.join(".config"))
            .arg(fragment_path),
    )?;
    run_cmd(&mut make(&["olddefconfig"]))?;
    let config = std::fs::read_to_string(out.join(".config"))?;
    let dropped = missing_config_lines(fragment, &config);
    if !dropped.is_empty() {
        bail!(
            "Kconfig did not keep these fragment lines (a dependency is missing): {}",
            dropped.join(", ")
        );
    }
    done(t);

    let t = step(&format!(
        "building vmlinux and bzImage with {jobs} jobs (about 5.5 min on 2 cores)"
    ));
    run_cmd(&mut make(&[&format!("-j{jobs}"), "vmlinux", "bzImage"]))?;
    done(t);
    std::fs::create_dir_all(kernel_dir)?;
    std::fs::copy(out.join("vmlinux"), kernel_dir.join("vmlinux"))?;
    std::fs::copy(
        out.join("arch/x86/boot/bzImage"),
        kernel_dir.join("bzImage"),
    )?;
    std::fs::write(kernel_dir.join("config"), config)?;
    Ok(())
}

/// Fragment lines (`CONFIG_X=v` or `# CONFIG_X is not set`) absent from the final config.
fn missing_config_lines(fragment: &str, config: &str) -> Vec<String> {
    let have: BTreeSet<&str> = config.lines().map(str::trim).collect();
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("CONFIG_") || (l.starts_with("# CONFIG_") && l.ends_with(" is not set"))
        })
        .filter(|l| {
            // "is not set" is also satisfied by the symbol being absent altogether.
            if let Some(sym) = l
                .strip_prefix("# ")
                .and_then(|s| s.strip_suffix(" is not set"))
            {
                return config.lines().any(|c| c.starts_with(&format!("{sym}=")));
            }
            !have.contains(l)
        })
        .map(String::from)
        .collect()
}

/// The PVH entry point from an ELF's `XEN_ELFNOTE_PHYS32_ENTRY` note, if any.
pub fn pvh_entry(elf: &[u8]) -> Option<u32> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return None;
    }
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != 4 {
            continue; // not PT_NOTE
        }
        let mut at = usize::try_from(u64_at(ph + 8)?).ok()?;
        let end = at.checked_add(usize::try_from(u64_at(ph + 32)?).ok()?)?;
        while at + 12 <= end {
            let namesz = u32_at(at)? as usize;
            let descsz = u32_at(at + 4)? as usize;
            let kind = u32_at(at + 8)?;
            let name = at + 12;
            let desc = name + namesz.next_multiple_of(4);
            if kind == 18 && elf.get(name..name + namesz) == Some(b"Xen\0") && descsz >= 4 {
                return u32_at(desc);
            }
            at = desc + descsz.next_multiple_of(4);
        }
    }
    None
}

/// Builds the agent statically linked (crt-static on the gnu target, in its own target dir so
/// the flag does not invalidate the workspace build).
fn build_agent() -> Result<PathBuf> {
    let t = step("building the guest agent (static)");
    let target = "x86_64-unknown-linux-gnu";
    let dir = target_dir().join("agent-static");
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "-p",
                "ringfence-agent",
                "--target",
                target,
            ])
            .env("CARGO_TARGET_DIR", &dir)
            .env(
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C strip=symbols",
            )
            .current_dir(workspace_root()),
    )?;
    let bin = dir.join(target).join("release/ringfence-agent");
    let bytes = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if has_interp(&bytes) {
        bail!(
            "{} is dynamically linked (has PT_INTERP); it cannot run as /init",
            bin.display()
        );
    }
    done(t);
    Ok(bin)
}

fn has_interp(elf: &[u8]) -> bool {
    let get = |o: usize, n: usize| elf.get(o..o + n);
    let (Some(phoff), Some(phnum)) = (get(32, 8), get(56, 2)) else {
        return false;
    };
    let phoff = u64::from_le_bytes(phoff.try_into().unwrap_or([0; 8])) as usize;
    let phnum = u16::from_le_bytes([phnum[0], phnum[1]]) as usize;
    (0..phnum).any(|i| get(phoff + i * 56, 4) == Some(&3u32.to_le_bytes()))
}

/// The initramfs contents as an uncompressed newc archive.
fn initramfs(agent: &Path, linux_dir: &Path) -> Result<Vec<u8>> {
    let mut cpio = Cpio::default();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", "lib64", "dev", "proc", "sys", "tmp",
        "run", "etc", "root",
    ] {
        cpio.dir(d);
    }
    cpio.node("dev/console", 0o020600, 5, 1);
    cpio.node("dev/null", 0o020666, 1, 3);
    cpio.file("init", 0o755, &std::fs::read(agent)?)?;
    cpio.file(
        "etc/udhcpc.script",
        0o755,
        &std::fs::read(linux_dir.join("udhcpc.script"))?,
    )?;
    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    cpio.file("etc/group", 0o644, b"root:x:0:\n")?;
    cpio.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n")?;

    cpio.file(&BUSYBOX[1..], 0o755, &std::fs::read(BUSYBOX)?)?;
    let list = command_output(Command::new(BUSYBOX).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // Programs the image ships itself take the applet's place.
        let shipped = GUEST_PROGRAMS.iter().any(|p| p[1..] == *applet);
        if applet == "bin/sh" {
            cpio.symlink(applet, "/usr/bin/dash");
        } else if applet != "bin/busybox" && !shipped {
            cpio.symlink(applet, "/bin/busybox");
        }
    }
    let mut libs = BTreeSet::new();
    for prog in GUEST_PROGRAMS {
        cpio.program(&prog[1..], Path::new(prog), &mut libs)?;
    }
    cpio.libraries(&libs)?;
    Ok(cpio.finish())
}

/// Writes `data` gzip-compressed to `path`.
pub fn gzip_to(data: &[u8], path: &Path) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot start gzip")?;
    child
        .stdin
        .take()
        .context("gzip has no stdin")?
        .write_all(data)?;
    let status = child.wait()?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_are_checked() {
        let frag = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n";
        let cfg = "CONFIG_A=y\nCONFIG_B=y\n";
        assert_eq!(
            missing_config_lines(frag, cfg),
            vec!["# CONFIG_B is not set", "CONFIG_C=y"]
        );
    }
}

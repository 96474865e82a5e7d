//! `cargo xtask nested`: the nested harness's kit and its test suite (design §3 item 2a).
//!
//! Where `/dev/kvm` cannot run a guest kernel at full speed, Linux guests run one level down:
//! an outer VM under QEMU's software CPU with emulated AMD SVM loads `kvm_amd`, and ringfence
//! inside it boots the project's Linux image. This module assembles what the outer VM needs:
//!
//! - Debian's cloud kernel (`linux-image-<version>-cloud-amd64`, fetched with
//!   `apt-get download`, cached in `~/.cache/ringfence/nested/<package>/`) and the modules the
//!   outer VM loads: irqbypass, kvm, kvm-amd (the hypervisor), tun (`--net tap:`), dummy (the
//!   TEST-NET addresses its servers listen on), qemu_fw_cfg (how the scenario list gets in);
//! - `outer.cpio`: busybox, those modules, `/init` (`tests/nested/init.sh`), ringfence and the
//!   runner `rf-nested` (debug builds, debug info stripped), tcpdump, each with the shared
//!   libraries `ldd` lists, and the Linux guest image where `ringfence run --linux` looks.
//!
//! The kit lands in `target/nested/kit/`; the tests (`tests/tests/nested_linux.rs`) find it
//! through `$RINGFENCE_NESTED_KIT`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cpio::Cpio;
use crate::util::{cache_dir, cargo, done, is_root, run, step, target_dir, workspace_root};
use crate::{deps, image};

/// The meta-package whose dependency names the current cloud kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// Modules the outer VM loads, in load order (path under `lib/modules/<version>/kernel/`).
const MODULES: &[&str] = &[
    "virt/lib/irqbypass.ko",
    "arch/x86/kvm/kvm.ko",
    "arch/x86/kvm/kvm-amd.ko",
    "drivers/net/tun.ko",
    "drivers/net/dummy.ko",
    "drivers/firmware/qemu_fw_cfg.ko",
];
/// Host programs copied into the outer VM with their libraries.
const OUTER_PROGRAMS: &[&str] = &["/usr/bin/tcpdump"];
/// Environment variable the tests read the kit directory from.
pub const KIT_ENV: &str = "RINGFENCE_NESTED_KIT";

/// Entry point: `cargo xtask nested [--build-only] [-- TEST-FILTER...]`.
pub fn run_cmd(args: &[String]) -> Result<()> {
    let build_only = args.iter().any(|a| a == "--build-only");
    let filters: Vec<&String> = args.iter().skip_while(|a| *a != "--").skip(1).collect();
    if let Some(bad) = args
        .iter()
        .take_while(|a| *a != "--")
        .find(|a| *a != "--build-only")
    {
        bail!(
            "unknown option {bad:?}; usage: cargo xtask nested [--build-only] [-- TEST-FILTER...]"
        );
    }
    deps::ensure_all(&[deps::TEST_PACKAGES])?;
    let linux = image::build(image::default_jobs())?;
    build_binaries()?;
    let kit = build_kit(&linux.dir)?;
    println!("    kit: {}", kit.display());
    if build_only {
        return Ok(());
    }
    let t = step("nested Linux-guest scenarios (tests/tests/nested_linux.rs)");
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["test", "-p", "ringfence-tests", "--test", "nested_linux"])
        .env(KIT_ENV, &kit);
    if !filters.is_empty() {
        cmd.arg("--").args(filters);
    }
    run(&mut cmd)?;
    done(t);
    Ok(())
}

/// Builds the debug `ringfence` and `rf-nested` binaries the kit takes.
pub fn build_binaries() -> Result<()> {
    let t = step("cargo build -p ringfence -p ringfence-tests --bins");
    run(cargo().current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "ringfence",
        "-p",
        "ringfence-tests",
        "--bins",
    ]))?;
    done(t);
    Ok(())
}

/// Assembles the kit from the debug binaries `cargo build --workspace --bins` made and the
/// Linux image in `image_dir`; returns the kit directory.
pub fn build_kit(image_dir: &Path) -> Result<PathBuf> {
    build_kit_with(image_dir, None)
}

/// Programs the benchmark kit adds: the baselines and the host side of iperf3.
const BENCH_PROGRAMS: &[&str] = &[
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/passt",
    "/usr/bin/iperf3",
    "/usr/bin/sockperf",
];
/// Firmware QEMU microvm loads (qboot), for the benchmark kit.
const QEMU_FILES: &[&str] = &[
    "/usr/share/qemu/qboot.rom",
    "/usr/share/qemu/bios-microvm.bin",
];

/// [`build_kit`]; given a (release) `ringfence` binary, the benchmark kit instead: that
/// binary, QEMU and its microvm firmware (the Linux boot benchmark compares ringfence with
/// QEMU inside the same outer VM), passt and iperf3, in `target/nested/bench-kit/`.
pub fn build_kit_with(image_dir: &Path, bench_ringfence: Option<&Path>) -> Result<PathBuf> {
    let with_qemu = bench_ringfence.is_some();
    let t = step("nested harness kit: outer kernel, modules, ringfence, runner, Linux image");
    let kernel = outer_kernel()?;
    let kit = target_dir().join(if with_qemu {
        "nested/bench-kit"
    } else {
        "nested/kit"
    });
    std::fs::create_dir_all(&kit)?;
    std::fs::copy(kernel.join("vmlinuz"), kit.join("vmlinuz"))
        .context("copying the outer kernel")?;

    let mut cpio = Cpio::default();
    for d in [
        "bin", "sbin", "usr/bin", "dev", "proc", "sys", "tmp", "etc", "root",
    ] {
        cpio.dir(d);
    }
    cpio.node("dev/console", 0o020600, 5, 1);
    // tcpdump drops privileges to its own user, even when it only reads a file; passt to
    // nobody.
    cpio.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\ntcpdump:x:100:100:tcpdump:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    cpio.file(
        "etc/group",
        0o644,
        b"root:x:0:\ntcpdump:x:100:\nnogroup:x:65534:\n",
    )?;
    cpio.file("bin/busybox", 0o755, &read(Path::new("/bin/busybox"))?)?;
    let init = workspace_root().join("tests/nested/init.sh");
    cpio.file("init", 0o755, &read(&init)?)?;
    for m in MODULES {
        let name = module_name(m);
        cpio.file(
            &format!("lib/modules/{name}"),
            0o644,
            &read(&kernel.join(name))?,
        )?;
    }
    let mut libs = BTreeSet::new();
    let debug = target_dir().join("debug");
    for bin in ["ringfence", "rf-nested"] {
        let stripped = kit.join(bin);
        let built = match (bin, bench_ringfence) {
            ("ringfence", Some(release)) => release.to_path_buf(),
            _ => debug.join(bin),
        };
        run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(built)
            .arg(&stripped))
        .with_context(|| format!("{bin} is not built: run `cargo build --workspace --bins`"))?;
        cpio.program(&format!("usr/bin/{bin}"), &stripped, &mut libs)?;
    }
    for prog in OUTER_PROGRAMS {
        cpio.program(&prog[1..], Path::new(prog), &mut libs)?;
    }
    if with_qemu {
        // tests/nested/init.sh moves the root to a tmpfs first (passt pivot_roots).
        cpio.file("etc/rf-tmpfs-root", 0o644, b"")?;
        for prog in BENCH_PROGRAMS {
            cpio.program(&prog[1..], Path::new(prog), &mut libs)?;
        }
        for f in QEMU_FILES {
            // bios-microvm.bin is a link to qboot.rom in Debian's package.
            let real = std::fs::canonicalize(f).with_context(|| format!("{f} is missing"))?;
            cpio.file(&f[1..], 0o644, &read(&real)?)?;
        }
    }
    cpio.libraries(&libs)?;
    let guest = "root/.cache/ringfence/linux";
    let files: &[&str] = if with_qemu {
        &["bzImage", "vmlinux", "initramfs.cpio.gz"]
    } else {
        &["bzImage", "initramfs.cpio.gz"]
    };
    for f in files {
        cpio.file(&format!("{guest}/{f}"), 0o644, &read(&image_dir.join(f))?)?;
    }
    // The root drive, compressed (it is mostly free space); scenarios unpack a copy each.
    let rootfs_gz = kit.join("rootfs.ext4.gz");
    crate::image::gzip_to(&read(&image_dir.join("rootfs.ext4"))?, &rootfs_gz)?;
    cpio.file(
        &format!("{guest}/rootfs.ext4.gz"),
        0o644,
        &read(&rootfs_gz)?,
    )?;
    let archive = cpio.finish();
    std::fs::write(kit.join("outer.cpio"), &archive)?;
    println!(
        "    outer.cpio: {} MiB ({} shared libraries)",
        archive.len() >> 20,
        libs.len()
    );
    done(t);
    Ok(kit)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The cached cloud kernel directory (vmlinuz and the modules), fetched when missing.
fn outer_kernel() -> Result<PathBuf> {
    let base = cache_dir()?.join("nested");
    let package = match current_kernel_package() {
        Ok(p) => p,
        Err(e) => {
            // Offline: any kernel fetched before will do.
            if let Some(cached) = newest_cached(&base) {
                println!("    {e:#}; using the cached {}", cached.display());
                return Ok(cached);
            }
            return Err(e);
        }
    };
    let dir = base.join(&package);
    if dir.join("vmlinuz").is_file() && MODULES.iter().all(|m| dir.join(module_name(m)).is_file()) {
        return Ok(dir);
    }
    let t = step(&format!(
        "fetching {package} (the outer VM's kernel and kvm modules)"
    ));
    let scratch = base.join(format!("{package}.download"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    run(Command::new("apt-get")
        .args(["-o", "APT::Sandbox::User=root", "download", &package])
        .current_dir(&scratch))
    .with_context(|| {
        format!("downloading {package} (apt-get download); check the package archive is reachable")
    })?;
    let deb = std::fs::read_dir(&scratch)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = scratch.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let version = package.trim_start_matches("linux-image-");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        tree.join(format!("boot/vmlinuz-{version}")),
        dir.join("vmlinuz"),
    )
    .with_context(|| format!("{package} has no boot/vmlinuz-{version}"))?;
    for m in MODULES {
        let from = tree.join(format!("lib/modules/{version}/kernel/{m}"));
        std::fs::copy(&from, dir.join(module_name(m))).with_context(|| {
            format!("{package} lacks {m} (is it built as a module in this kernel?)")
        })?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    done(t);
    Ok(dir)
}

fn module_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn newest_cached(base: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(base)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("vmlinuz").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// `linux-image-<version>-cloud-amd64`, the package the meta-package depends on now.
fn current_kernel_package() -> Result<String> {
    let ask = || -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["depends", KERNEL_META])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
            .map(String::from)
    };
    if let Some(p) = ask() {
        return Ok(p);
    }
    if !is_root() {
        bail!("apt does not know {KERNEL_META}; run `sudo apt-get update` first");
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    ask().with_context(|| {
        format!("apt knows no {KERNEL_META} even after `apt-get update`: is Debian's main archive in the apt sources?")
    })
}

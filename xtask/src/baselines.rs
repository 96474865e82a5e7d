//! The strongest baselines for `cargo xtask bench`: QEMU 10 from Debian's `bookworm-backports`
//! and passt 2025 built from Debian 13's source package, kept in
//! `~/.cache/ringfence/baselines/`, keyed by version.
//!
//! Nothing on the system changes. apt runs with a private configuration under
//! `baselines/apt/` (its own source list, package lists and download cache, on the same Debian
//! mirror the system's apt uses), so no source is added to `/etc/apt` and no package is
//! installed: QEMU's `.deb`s are unpacked with `dpkg-deb -x`, passt's upstream tarball is built
//! with `make`. The system's `qemu-system-x86_64` and `passt` stay what they were. This module
//! must never run `dpkg -i` or `apt-get install`, nor write outside the cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::util::{cache_dir, describe, have};

/// The QEMU package version taken from `bookworm-backports`.
pub const QEMU10_VERSION: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";

/// The upstream passt snapshot of Debian 13's source package.
pub const PASST_UPSTREAM: &str = "0.0~git20250503.587980c";

/// The binary packages that make up QEMU's x86 system emulator.
const QEMU_PACKAGES: [&str; 3] = ["qemu-system-x86", "qemu-system-common", "qemu-system-data"];

/// The key Debian's archive signs its suites with (bookworm's and trixie's).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// QEMU 10, unpacked into the cache.
#[derive(Clone, Debug)]
pub struct Qemu10 {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// Its firmware directory (for `-L`).
    pub firmware: PathBuf,
    /// Whether its `-netdev help` lists `vhost-user`.
    pub vhost_user: bool,
}

/// What of the strongest baselines is available, with the reason where one is not.
#[derive(Clone, Debug)]
pub struct Found {
    /// QEMU 10, or why not.
    pub qemu10: Result<Qemu10, String>,
    /// The passt 2025 binary, or why not.
    pub passt2025: Result<PathBuf, String>,
}

fn root() -> Result<PathBuf> {
    Ok(cache_dir()?.join("baselines"))
}

fn qemu_dir(root: &Path) -> PathBuf {
    root.join(format!("qemu-{}", QEMU10_VERSION.replace(':', "_")))
}

fn passt_dir(root: &Path) -> PathBuf {
    root.join(format!("passt-{PASST_UPSTREAM}"))
}

/// Progress for the user, on stderr.
fn say(msg: &str) {
    eprintln!("    baselines: {msg}");
}

/// What is already in the cache; nothing is downloaded or built.
pub fn cached() -> Found {
    let hint = "not in the cache; `cargo xtask bench --baselines latest` fetches it";
    match root() {
        Ok(root) => Found {
            qemu10: check_qemu(&qemu_dir(&root))
                .map_err(|e| format!("QEMU {QEMU10_VERSION} {hint} ({e:#})")),
            passt2025: check_passt(&passt_dir(&root))
                .map_err(|e| format!("passt {PASST_UPSTREAM} {hint} ({e:#})")),
        },
        Err(e) => Found {
            qemu10: Err(format!("{e:#}")),
            passt2025: Err(format!("{e:#}")),
        },
    }
}

/// Fetches and builds whatever is missing (the user asked for it with `--baselines latest`),
/// then reports what is there. A failure of one baseline is its reason, not an error: the
/// benchmark goes on without it.
pub fn install_latest() -> Found {
    let root = match root() {
        Ok(r) => r,
        Err(e) => {
            return Found {
                qemu10: Err(format!("{e:#}")),
                passt2025: Err(format!("{e:#}")),
            }
        }
    };
    let found = cached();
    if found.qemu10.is_ok() && found.passt2025.is_ok() {
        say(&format!(
            "QEMU {QEMU10_VERSION} and passt {PASST_UPSTREAM} already in {}",
            root.display()
        ));
        return found;
    }
    say(&format!(
        "fetching into {} only: apt runs with a private configuration there (sources: \
         bookworm-backports binaries, trixie sources, from the Debian mirror your apt uses); \
         nothing is added to /etc/apt, nothing installed, the system's QEMU and passt are not replaced",
        root.display()
    ));
    let apt = PrivateApt::new(&root.join("apt")).and_then(|a| a.update().map(|()| a));
    let qemu10 = match (&found.qemu10, &apt) {
        (Ok(q), _) => Ok(q.clone()),
        (Err(_), Ok(apt)) => fetch_qemu(apt, &qemu_dir(&root)).map_err(|e| format!("{e:#}")),
        (Err(_), Err(e)) => Err(format!("{e:#}")),
    };
    let passt2025 = match (&found.passt2025, &apt) {
        (Ok(p), _) => Ok(p.clone()),
        (Err(_), Ok(apt)) => build_passt(apt, &passt_dir(&root)).map_err(|e| format!("{e:#}")),
        (Err(_), Err(e)) => Err(format!("{e:#}")),
    };
    for (what, r) in [
        ("QEMU 10", qemu10.as_ref().err()),
        ("passt 2025", passt2025.as_ref().err()),
    ] {
        if let Some(e) = r {
            say(&format!("{what}: not available: {e}"));
        }
    }
    Found { qemu10, passt2025 }
}

/// Runs `cmd` with its output captured; fails with the command line and its stderr.
fn output(cmd: &mut Command) -> Result<Output> {
    let o = cmd
        .output()
        .with_context(|| format!("cannot start: {}", describe(cmd)))?;
    if !o.status.success() {
        bail!(
            "command failed ({}): {}\n{}",
            o.status,
            describe(cmd),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(o)
}

/// apt with its own source list, lists and cache under one directory.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path) -> Result<Self> {
        for d in [
            "parts",
            "lists/partial",
            "cache/archives/partial",
            "downloads",
        ] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let mirror = system_mirror()?;
        let list = format!(
            "deb [signed-by={KEYRING}] {mirror} bookworm-backports main\n\
             deb-src [signed-by={KEYRING}] {mirror} trixie main\n"
        );
        std::fs::write(dir.join("sources.list"), &list)?;
        say(&format!(
            "private apt sources ({}):\n{}",
            dir.join("sources.list").display(),
            list.lines()
                .map(|l| format!("        {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
        Ok(PrivateApt {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = &self.dir;
        for (k, v) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", d.join("parts")),
            ("Dir::State::Lists", d.join("lists")),
            ("Dir::Cache", d.join("cache")),
        ] {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
        // The lists are ours alone; the system's apt lock is not involved.
        c.args(["-o", "Debug::NoLocking=1", "-q"]);
        c
    }

    fn update(&self) -> Result<()> {
        say("apt-get update (private lists)");
        output(self.command("apt-get").arg("update"))?;
        Ok(())
    }
}

/// The Debian mirror serving the system's `bookworm main`, from `apt-cache policy`.
fn system_mirror() -> Result<String> {
    let o = output(Command::new("apt-cache").arg("policy"))?;
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3 && w[2] == "bookworm/main" && w[1].contains("://"))
                .then(|| w[1].to_string())
        })
        .context("no `bookworm main` source in apt's configuration (see `apt-cache policy`)")
}

fn fetch_qemu(apt: &PrivateApt, dir: &Path) -> Result<Qemu10> {
    let dl = apt.dir.join("downloads");
    let wanted: Vec<String> = QEMU_PACKAGES
        .iter()
        .map(|p| format!("{p}={QEMU10_VERSION}"))
        .collect();
    say(&format!("apt-get download {}", wanted.join(" ")));
    output(
        apt.command("apt-get")
            .current_dir(&dl)
            .arg("download")
            .args(&wanted),
    )?;
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let version_in_name = QEMU10_VERSION.replace(':', "%3a");
    for p in QEMU_PACKAGES {
        let deb = std::fs::read_dir(&dl)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|f| {
                let n = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                n.starts_with(&format!("{p}_{version_in_name}_")) && n.ends_with(".deb")
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {p} {QEMU10_VERSION} in {}",
                    dl.display()
                )
            })?;
        say(&format!("dpkg-deb -x {}", deb.display()));
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)
        .with_context(|| format!("moving {} into place", staging.display()))?;
    let q = check_qemu(dir)?;
    say(&format!(
        "QEMU {QEMU10_VERSION} ready: {}",
        q.binary.display()
    ));
    Ok(q)
}

/// QEMU in `dir` if it runs and says it is version 10.
fn check_qemu(dir: &Path) -> Result<Qemu10> {
    let binary = dir.join("usr/bin/qemu-system-x86_64");
    let firmware = dir.join("usr/share/qemu");
    if !binary.is_file() {
        bail!("{} is missing", binary.display());
    }
    let o = output(Command::new(&binary).arg("--version")).with_context(|| {
        format!(
            "{} does not run (missing libraries? see `ldd`)",
            binary.display()
        )
    })?;
    let version = String::from_utf8_lossy(&o.stdout);
    if !version.contains("version 10.") {
        bail!(
            "{} is not QEMU 10: {}",
            binary.display(),
            version.lines().next().unwrap_or("")
        );
    }
    let help = output(Command::new(&binary).args(["-netdev", "help"]))?;
    let vhost_user = String::from_utf8_lossy(&help.stdout)
        .lines()
        .any(|l| l.trim() == "vhost-user");
    Ok(Qemu10 {
        binary,
        firmware,
        vhost_user,
    })
}

fn build_passt(apt: &PrivateApt, dir: &Path) -> Result<PathBuf> {
    for tool in ["make", "cc", "tar", "xz"] {
        if !have(tool) {
            bail!("building passt needs `{tool}` (Debian: build-essential, xz-utils)");
        }
    }
    let src = apt.dir.join("source");
    std::fs::create_dir_all(&src)?;
    let tarball = src.join(format!("passt_{PASST_UPSTREAM}.orig.tar.xz"));
    if !tarball.is_file() {
        say("apt-get source --download-only passt/trixie");
        let mut cmd = apt.command("apt-get");
        cmd.current_dir(&src)
            .args(["source", "--download-only", "passt/trixie"]);
        // The archive has answered 404 for the .dsc while serving both tarballs; apt then
        // exits non-zero. The upstream tarball (hash-checked by apt against the trixie
        // Sources index) is all the build needs.
        let o = cmd
            .output()
            .with_context(|| format!("cannot start: {}", describe(&cmd)))?;
        if !tarball.is_file() {
            bail!(
                "`{}` did not fetch {} ({}):\n{}",
                describe(&cmd),
                tarball.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    let build = apt.dir.join("build");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    say(&format!("tar -xJf {}", tarball.display()));
    output(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&build),
    )?;
    let tree = std::fs::read_dir(&build)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("Makefile").is_file())
        .with_context(|| format!("no Makefile in the unpacked {}", tarball.display()))?;
    // One target per make: `passt.avx2` lists `passt` as a prerequisite, and make would pass
    // its AVX2 flags down to it if both were built in one go.
    for target in ["passt", "passt.avx2"] {
        say(&format!(
            "nice -n 10 make {target} in {} (under a minute)",
            tree.display()
        ));
        output(
            Command::new("nice")
                .args(["-n", "10", "make", target])
                .arg(format!("VERSION={PASST_UPSTREAM}"))
                .current_dir(&tree),
        )?;
    }
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for bin in ["passt", "passt.avx2"] {
        if tree.join(bin).is_file() {
            std::fs::copy(tree.join(bin), staging.join(bin))
                .with_context(|| format!("copying {bin} into {}", staging.display()))?;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)
        .with_context(|| format!("moving {} into place", staging.display()))?;
    let _ = std::fs::remove_dir_all(&build);
    let p = check_passt(dir)?;
    say(&format!("passt {PASST_UPSTREAM} ready: {}", p.display()));
    Ok(p)
}

/// passt in `dir` if it runs and says it is the 2025 snapshot.
fn check_passt(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("passt");
    if !bin.is_file() {
        bail!("{} is missing", bin.display());
    }
    // `passt --version` leaves its text in stdio's buffer when stdout is a pipe (it `_exit`s),
    // so the version is looked for in the binary, where the build put it.
    let bytes = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if !bytes
        .windows(PASST_UPSTREAM.len())
        .any(|w| w == PASST_UPSTREAM.as_bytes())
    {
        bail!("{} is not passt {PASST_UPSTREAM}", bin.display());
    }
    Ok(bin)
}

//! Building the probe guest (guest-images/probe), cached in `~/.cache/ringfence/probe-<hash>/`
//! keyed by a hash of every input file, and installed where `ringfence run` looks for it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::{cache_dir, cargo, done, run, step, target_dir, workspace_root};

/// Where the probe's sources live.
pub fn source_dir() -> PathBuf {
    workspace_root().join("guest-images/probe")
}

/// Hash of the probe's inputs: every file under the probe folder except its target dir.
fn inputs_hash(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut h = DefaultHasher::new();
    for rel in &files {
        rel.hash(&mut h);
        std::fs::read(dir.join(rel))
            .with_context(|| format!("reading {}", rel.display()))?
            .hash(&mut h);
    }
    if let Ok(v) = std::process::Command::new("rustc")
        .arg("--version")
        .output()
    {
        v.stdout.hash(&mut h);
    }
    Ok(format!("{:016x}", h.finish()))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// Builds the probe if its inputs changed, installs it next to the ringfence binaries and in
/// the cache, and returns the cached ELF path.
pub fn build() -> Result<PathBuf> {
    let src = source_dir();
    let hash = inputs_hash(&src)?;
    let cache = cache_dir()?;
    let cached = cache.join(format!("probe-{hash}")).join("probe.elf");
    if cached.is_file() {
        println!("    probe guest up to date ({})", cached.display());
    } else {
        let t = step("building the probe guest (guest-images/probe, release)");
        // One target dir per checkout: two checkouts building at once must not overwrite each
        // other's ELF between the build and the copy below.
        let mut h = DefaultHasher::new();
        src.hash(&mut h);
        let probe_target = cache.join(format!("probe-target-{:016x}", h.finish()));
        let mut cmd = cargo();
        cmd.current_dir(&src)
            .args(["build", "--release"])
            .env("CARGO_TARGET_DIR", &probe_target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET");
        run(&mut cmd)?;
        let built = probe_target.join("x86_64-unknown-linux-gnu/release/probe");
        if !built.is_file() {
            bail!(
                "the probe build finished but {} is missing",
                built.display()
            );
        }
        std::fs::create_dir_all(cached.parent().unwrap_or(&cache))?;
        std::fs::copy(&built, &cached)
            .with_context(|| format!("copying the probe to {}", cached.display()))?;
        done(t);
    }
    install(&cached)?;
    Ok(cached)
}

/// Copies the ELF where `ringfence run` finds it without --kernel.
fn install(elf: &Path) -> Result<()> {
    let mut places = vec![cache_dir()?.join("probe.elf")];
    for profile in ["debug", "release"] {
        places.push(target_dir().join(profile).join("probe.elf"));
    }
    for dest in places {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(elf, &dest).with_context(|| format!("installing {}", dest.display()))?;
    }
    Ok(())
}

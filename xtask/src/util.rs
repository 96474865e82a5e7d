//! Small helpers shared by the xtask commands: paths, running commands, step banners.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// `~/.cache/ringfence` (or `$RINGFENCE_CACHE`), created if missing.
pub fn cache_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("RINGFENCE_CACHE") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            PathBuf::from(home).join(".cache/ringfence")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The workspace's cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The cargo binary that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Prints a step banner and returns a timer for [`done`].
pub fn step(name: &str) -> Instant {
    println!("\n==> {name}");
    Instant::now()
}

/// Prints how long a step took.
pub fn done(started: Instant) {
    println!("    done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Runs `cmd`, failing with its command line when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("command failed ({status}): {}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot start: {}", describe(cmd)))
}

/// A printable command line.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds the release `ringfence` binary and the `rf-peer` traffic peer, returning their paths.
pub fn build_release_binaries() -> Result<(PathBuf, PathBuf)> {
    let t = step("building ringfence and rf-peer (release)");
    run(cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "ringfence",
        "-p",
        "benches",
        "--bin",
        "ringfence",
        "--bin",
        "rf-peer",
    ]))?;
    done(t);
    let dir = target_dir().join("release");
    Ok((dir.join("ringfence"), dir.join("rf-peer")))
}

//! Finding the built probe guest, which `ringfence run` boots when no `--kernel` is given.

use std::path::PathBuf;

/// Environment variable that names the probe ELF explicitly.
pub const PROBE_ENV: &str = "RINGFENCE_PROBE";
/// File name of the probe ELF where `cargo xtask` installs it.
pub const PROBE_FILE: &str = "probe.elf";

/// The places searched for the probe, in order.
pub fn candidates() -> Vec<PathBuf> {
    let mut list = Vec::new();
    if let Some(p) = std::env::var_os(PROBE_ENV) {
        list.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            list.push(dir.join(PROBE_FILE));
            if let Some(up) = dir.parent() {
                list.push(up.join(PROBE_FILE));
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        list.push(
            PathBuf::from(home)
                .join(".cache/ringfence")
                .join(PROBE_FILE),
        );
    }
    list
}

/// The first existing probe ELF, or the list of places looked at.
pub fn find() -> Result<PathBuf, Vec<PathBuf>> {
    let list = candidates();
    match list.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(list),
    }
}

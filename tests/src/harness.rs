//! Running guests through the real `ringfence` binary.
//!
//! The binary is `$RINGFENCE_BIN` when set, else `ringfence` in the directory above the test
//! executable (`target/<profile>/ringfence`; `cargo xtask test` builds it first). Tests call
//! [`kvm_unavailable`] first and print `SKIPPED: <why>` when it returns a reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the `ringfence` binary should be.
pub fn ringfence_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGFENCE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/<test> -> target/debug/ringfence
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("ringfence"))
        .unwrap_or_else(|| PathBuf::from("ringfence"))
}

/// Why guests cannot run here, or `None` when /dev/kvm opens read-write and the binary exists.
pub fn kvm_unavailable() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Some(format!("/dev/kvm is not usable: {e}"));
    }
    let bin = ringfence_bin();
    if !bin.is_file() {
        return Some(format!(
            "the ringfence binary is not at {} (build it with `cargo build -p ringfence` or set RINGFENCE_BIN)",
            bin.display()
        ));
    }
    None
}

/// Prints the skip line and returns true when KVM or the binary is missing.
pub fn skip_without_kvm() -> bool {
    match kvm_unavailable() {
        Some(why) => {
            let _ =
                std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED: {why}\n")); // uncaptured, so CI logs show it
            true
        }
        None => false,
    }
}

/// A directory removed on drop, unique per process and call.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/ringfence-test-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("ringfence-test-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Writes `bytes` to `name` inside the directory and returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The result of one `ringfence run`.
#[derive(Debug)]
pub struct RunResult {
    /// Process exit status (None when killed by a signal).
    pub status: Option<i32>,
    /// Captured stdout (the guest's serial console).
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl From<Output> for RunResult {
    fn from(o: Output) -> Self {
        RunResult {
            status: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Options for one guest run.
#[derive(Clone, Debug, Default)]
pub struct RunOpts<'a> {
    /// `--initrd`.
    pub initrd: Option<&'a Path>,
    /// `--cmdline`.
    pub cmdline: Option<&'a str>,
    /// `--mem` in MiB.
    pub mem_mib: Option<u64>,
    /// `--vcpus`.
    pub vcpus: Option<u32>,
    /// `--timeout` in seconds (default 20, so a broken guest cannot hang the test).
    pub timeout_secs: Option<u32>,
    /// `--net` (default `none`: boot tests see exactly the command line they pass, without
    /// the `virtio_mmio.device=` word a network device adds).
    pub net: Option<&'a str>,
}

/// Runs `ringfence run --kernel <kernel>` with `opts` and waits for it.
pub fn run_guest(kernel: &Path, opts: &RunOpts<'_>) -> RunResult {
    let mut cmd = Command::new(ringfence_bin());
    cmd.arg("run").arg("--kernel").arg(kernel);
    if let Some(i) = opts.initrd {
        cmd.arg("--initrd").arg(i);
    }
    if let Some(c) = opts.cmdline {
        cmd.arg("--cmdline").arg(c);
    }
    if let Some(m) = opts.mem_mib {
        cmd.arg("--mem").arg(m.to_string());
    }
    if let Some(v) = opts.vcpus {
        cmd.arg("--vcpus").arg(v.to_string());
    }
    cmd.arg("--net").arg(opts.net.unwrap_or("none"));
    cmd.arg("--timeout")
        .arg(opts.timeout_secs.unwrap_or(20).to_string());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", ringfence_bin().display()))
        .into()
}

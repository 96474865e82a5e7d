//! Helpers shared by the end-to-end test files: locating the binaries and the probe guest,
//! deciding whether a test must skip, and throwaway network namespaces with a tap inside
//! (and, in [`lossy`], a lossy path to a server in a second namespace).

#![allow(dead_code)]

pub mod embedded;
pub mod lossy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub use ringfence_tests::harness::ringfence_bin;

/// Runs the probe under `ringfence run --net user` (the userspace netstack, bounded by a
/// 240 s timeout) with extra ringfence flags and probe words.
pub fn run_user(probe: &Path, flags: &[&str], words: &[&str]) -> Output {
    Command::new(ringfence_bin())
        .args(["run", "--kernel"])
        .arg(probe)
        .args(["--net", "user", "--timeout", "240"])
        .args(flags)
        .arg("--")
        .args(words)
        .stdin(Stdio::null())
        .output()
        .expect("run ringfence")
}

/// The host-side traffic peer (`benches/src/bin/rf-peer.rs`).
pub fn peer_bin() -> PathBuf {
    ringfence_bin().with_file_name("rf-peer")
}

/// The probe ELF and a usable /dev/kvm, or the reason the test must skip.
pub fn kvm_and_probe() -> Result<PathBuf, String> {
    if let Some(why) = ringfence_tests::harness::kvm_unavailable() {
        return Err(why);
    }
    match std::env::var_os("RINGFENCE_PROBE").map(PathBuf::from) {
        Some(p) if p.is_file() => Ok(p),
        _ => {
            Err("RINGFENCE_PROBE does not name a built probe guest (run `cargo xtask test`)".into())
        }
    }
}

/// Like [`kvm_and_probe`], plus root, `ip`, /dev/net/tun and the peer binary.
pub fn netns_ready() -> Result<PathBuf, String> {
    let probe = kvm_and_probe()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespace tests need root".into());
    }
    if std::fs::metadata("/dev/net/tun").is_err() {
        return Err("/dev/net/tun is missing".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("the `ip` tool (iproute2) is not installed".into());
    }
    if !peer_bin().is_file() {
        return Err(format!(
            "{} not built (run `cargo xtask test`)",
            peer_bin().display()
        ));
    }
    Ok(probe)
}

/// Skips the test (printing `SKIPPED: why`) unless `$check` succeeds.
#[macro_export]
macro_rules! require {
    ($check:expr) => {
        match $check {
            Ok(v) => v,
            Err(why) => {
                let _ = std::io::Write::write_fmt(
                    &mut std::io::stderr(),
                    format_args!("SKIPPED: {why}\n"),
                ); // uncaptured, so CI logs show it
                return;
            }
        }
    };
}

/// Hex SHA-256 of `bytes` bytes of the probe's pattern `byte[i] = i % 251`.
pub fn pattern_sha256(bytes: u64) -> String {
    ringfence_tests::nested::services::pattern_sha256(bytes)
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that a run exited 0, showing `what` and its output otherwise.
pub fn assert_exit_ok(o: &Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: {}\n{}",
        stdout(o),
        stderr(o)
    );
}

/// The probe's result line in console output `text` (it starts with `{"scenario":`).
pub fn result_line(text: &str) -> Option<&str> {
    text.lines().find(|l| l.starts_with("{\"scenario\":"))
}

/// The probe's JSON result line.
pub fn result_json(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let line = result_line(&out)
        .unwrap_or_else(|| panic!("no JSON result line in:\n{out}\nstderr:\n{}", stderr(o)));
    serde_json::from_str(line).expect("valid JSON")
}

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
}

/// A network namespace with a persistent tap `rft0` at 192.0.2.1/24, removed on drop.
pub struct TapNetns {
    /// Namespace name.
    pub name: String,
    /// Tap interface name inside it.
    pub tap: String,
}

impl TapNetns {
    /// Creates the namespace and the tap (vnet_hdr, up, 192.0.2.1/24 and 2001:db8::1/64).
    pub fn new() -> Self {
        let name = format!(
            "rf-t{}-{}",
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = TapNetns {
            name,
            tap: "rft0".into(),
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &ns.name, "tuntap", "add", &ns.tap, "mode", "tap", "vnet_hdr",
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            &ns.tap,
        ]);
        ip(&["-n", &ns.name, "link", "set", &ns.tap, "up"]);
        ns
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Starts `rf-peer ARGS` inside the namespace and waits for its `listening` line.
    pub fn peer(&self, args: &[&str]) -> Child {
        let mut cmd = self.command(&peer_bin());
        cmd.args(args);
        start_peer(cmd).0
    }

    /// Runs the probe under ringfence inside the namespace with `--net tap:rft0`.
    pub fn run_probe(&self, probe: &Path, extra: &[&str], words: &[&str]) -> Output {
        let mut c = self.command(&ringfence_bin());
        c.args(["run", "--kernel"])
            .arg(probe)
            .args(["--net", &format!("tap:{}", self.tap), "--timeout", "120"])
            .args(extra)
            .arg("--")
            .args(["probe.ip=192.0.2.2/24", "probe.gw=192.0.2.1"])
            .args(words)
            .stdin(Stdio::null());
        c.output().expect("run ringfence")
    }
}

impl Drop for TapNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Starts an `rf-peer` command, waits for `listening ADDR` and returns the bound address.
pub fn start_peer(mut cmd: Command) -> (Child, std::net::SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rf-peer");
    let out = child.stdout.as_mut().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("read peer");
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("rf-peer said {line:?}"));
    (child, addr)
}

/// Starts `rf-peer ARGS` on this host (for user-mode tests: loopback only).
pub fn host_peer(args: &[&str]) -> (Child, std::net::SocketAddr) {
    let mut cmd = Command::new(peer_bin());
    cmd.args(args);
    start_peer(cmd)
}

/// The peer's last JSON line (after it exits).
pub fn peer_result(child: Child) -> serde_json::Value {
    let o = child.wait_with_output().expect("wait rf-peer");
    let out = stdout(&o);
    let line = out.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("rf-peer output {out:?}, stderr {}", stderr(&o)))
}

/// The snap length and records of a pcap file in memory: (captured length, length on the wire)
/// of each. Parsed here because the pcap-file crate rejects records longer on the wire than the
/// snap length, which is what a capture with a snap length is made of (tcpdump reads them).
pub fn pcap_records(bytes: &[u8]) -> (u32, Vec<(u32, u32)>) {
    let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert!(bytes.len() >= 24, "no pcap header");
    assert_eq!(word(0), 0xa1b2_c3d4, "pcap magic");
    let snaplen = word(16);
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let (incl, orig) = (word(at + 8), word(at + 12));
        records.push((incl, orig));
        at += 16 + incl as usize;
    }
    assert_eq!(at, bytes.len(), "the last record is whole");
    (snaplen, records)
}

/// Serialises the VM-heavy tests of one test binary (each has its own lock).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A VM's serial output collected in memory (a `Console::Sink`).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was written so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What was written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The probe's JSON result line (panics, showing the console, if there is none).
    pub fn result_json(&self) -> serde_json::Value {
        let text = self.text();
        result_line(&text)
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no result line: {text}"))
    }
}

/// `ringfence run --kernel KERNEL FLAGS -- probe.scenario=hello`: what the CLI tests run to
/// see whether bad flags are refused before boot.
#[allow(dead_code)]
pub fn run_hello(kernel: &std::path::Path, flags: &[&str]) -> Output {
    Command::new(ringfence_tests::harness::ringfence_bin())
        .arg("run")
        .arg("--kernel")
        .arg(kernel)
        .args(flags)
        .args(["--", "probe.scenario=hello"])
        .output()
        .expect("run ringfence")
}

/// The run ended with status 125 before the guest said hello, and stderr names every needle.
#[allow(dead_code)]
pub fn assert_refused(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
    assert!(!stdout(o).contains("hello"), "the guest ran: {}", stdout(o));
}

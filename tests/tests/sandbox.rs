//! Least privilege end to end (docs/security.md): a forbidden syscall on a device thread is
//! fatal and says so; a running VMM has no inherited descriptors, `no_new_privs`, a seccomp
//! filter, guest RAM excluded from core dumps and (started as root) only CAP_NET_RAW left;
//! and `--net user` runs as an unprivileged user with nothing but access to /dev/kvm.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `getpgid` on x86_64: the syscall the test hook makes.
const SYS_GETPGID: i64 = 121;
/// Guest RAM of the lock-down test, so its mapping is easy to find in smaps.
const MEM_MIB: u64 = 96;

#[test]
fn a_forbidden_syscall_on_a_device_thread_is_fatal_and_says_so() {
    let probe = require!(kvm_and_probe());
    let run = |seccomp: &str| {
        Command::new(ringfence_bin())
            .args(["run", "--kernel"])
            .arg(&probe)
            .args(["--net", "user", "--timeout", "60", "--seccomp", seccomp])
            .args([
                "--",
                "probe.scenario=ping",
                "probe.peer=172.16.0.1",
                "probe.count=1",
            ])
            .env("RINGFENCE_TEST_SECCOMP_VIOLATION", "worker")
            .stdin(Stdio::null())
            .output()
            .expect("run ringfence")
    };
    let o = run("on");
    assert_eq!(o.status.code(), Some(125), "{}\n{}", stdout(&o), stderr(&o));
    let want = format!(
        "ringfence: seccomp: thread worker made disallowed syscall {SYS_GETPGID}; rerun with --seccomp off to debug"
    );
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    // Without filters the same hook is harmless and the guest finishes.
    let o = run("off");
    assert_exit_ok(&o, "--seccomp off with the violation hook");
}

#[test]
fn the_api_server_thread_is_filtered_too() {
    // No KVM needed: the API thread filters itself before it serves anything.
    let dir = ringfence_tests::harness::TempDir::new("api-seccomp");
    let sock = dir.path().join("api.sock");
    let o = Command::new(ringfence_bin())
        .arg("api")
        .arg("--api-sock")
        .arg(&sock)
        .env("RINGFENCE_TEST_SECCOMP_VIOLATION", "api")
        .stdin(Stdio::null())
        .output()
        .expect("run ringfence api");
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let want = format!("ringfence: seccomp: thread api made disallowed syscall {SYS_GETPGID}");
    assert!(stderr(&o).contains(&want), "{}", stderr(&o));
}

/// Starts a spinning probe with `fd` inherited as descriptor 9 and waits for its ready line.
fn spawn_locked_down(probe: &Path, inherited: &std::fs::File, net: &str) -> Child {
    use std::os::fd::AsRawFd;
    let fd = inherited.as_raw_fd();
    let mut cmd = Command::new(ringfence_bin());
    cmd.args(["run", "--kernel"])
        .arg(probe)
        .args([
            "--net",
            net,
            "--mem",
            &MEM_MIB.to_string(),
            "--timeout",
            "120",
        ])
        .args(["--", "probe.scenario=spin:1000000000000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe and touches only the child's descriptor table; the
    // copy on 9 has no CLOEXEC, so the child inherits it as a careless parent's fd would be.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn ringfence");
    let mut out = child.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("probe: ready") {
        let n = out.read(&mut buf).expect("read stdout");
        assert!(
            n > 0,
            "stdout closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    child
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The main thread installs its filter right after starting the vCPUs; wait (bounded) for it.
fn wait_for_seccomp(pid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mode = status_field(pid, "Seccomp");
        if mode == "2" || Instant::now() > deadline {
            return mode;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a mapping of exactly `kib` KiB in /proc/PID/smaps carries VmFlag `dd`.
fn guest_ram_is_dontdump(pid: u32, kib: u64) -> Option<bool> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let want = format!("{kib} kB");
    let mut size_matches = false;
    let mut found = None;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size_matches = v.trim() == want;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if size_matches {
                let dd = flags.split_whitespace().any(|f| f == "dd");
                found = Some(found.unwrap_or(false) || dd);
            }
        }
    }
    found
}

#[test]
fn a_running_vmm_is_locked_down() {
    let probe = require!(kvm_and_probe());
    let marker = std::env::temp_dir().join(format!("rf-inherited-{}", std::process::id()));
    let inherited = std::fs::File::create(&marker).expect("marker file");
    let mut child = spawn_locked_down(&probe, &inherited, "user");
    let pid = child.id();
    let seccomp = wait_for_seccomp(pid);
    let open: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    let no_new_privs = status_field(pid, "NoNewPrivs");
    let cap_eff = status_field(pid, "CapEff");
    let cap_bnd = status_field(pid, "CapBnd");
    let dd = guest_ram_is_dontdump(pid, MEM_MIB * 1024);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&marker);

    assert!(!open.contains(&marker), "inherited fd still open: {open:?}");
    assert_eq!(no_new_privs, "1");
    assert_eq!(seccomp, "2", "the main thread has no seccomp filter");
    assert_eq!(
        dd,
        Some(true),
        "guest RAM mapping missing or without MADV_DONTDUMP"
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root keeps only CAP_NET_RAW (bit 13) for the lazily opened raw ICMP socket.
        assert_eq!(cap_eff, "0000000000002000", "CapEff");
        assert_eq!(cap_bnd, "0000000000002000", "CapBnd");
    }
}

#[test]
fn without_a_network_a_root_start_keeps_no_capability() {
    let probe = require!(kvm_and_probe());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the capability drop is only observable when started as root");
        return;
    }
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut child = spawn_locked_down(&probe, &devnull, "none");
    let pid = child.id();
    let seccomp = wait_for_seccomp(pid);
    let cap_eff = status_field(pid, "CapEff");
    let cap_prm = status_field(pid, "CapPrm");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seccomp, "2");
    assert_eq!(cap_eff, "0000000000000000");
    assert_eq!(cap_prm, "0000000000000000");
}

/// Grants uid 65534 read/write on /dev/kvm with an ACL entry; on drop, removes it, or all
/// extended entries (the mask `setfacl -m` adds) if /dev/kvm had none before.
struct KvmAcl {
    had_acl: bool,
}

impl KvmAcl {
    fn grant() -> Result<Self, String> {
        let before = Command::new("getfacl")
            .args(["--skip-base", "--omit-header", "/dev/kvm"])
            .output()
            .map_err(|e| format!("getfacl is not installed ({e})"))?;
        let had_acl = !stdout(&before).trim().is_empty();
        let o = Command::new("setfacl")
            .args(["-m", "u:65534:rw", "/dev/kvm"])
            .output()
            .map_err(|e| format!("setfacl is not installed ({e})"))?;
        if !o.status.success() {
            return Err(format!("setfacl on /dev/kvm failed: {}", stderr(&o)));
        }
        Ok(KvmAcl { had_acl })
    }
}

impl Drop for KvmAcl {
    fn drop(&mut self) {
        let args: &[&str] = if self.had_acl {
            &["-x", "u:65534", "/dev/kvm"]
        } else {
            &["-b", "/dev/kvm"]
        };
        let _ = Command::new("setfacl").args(args).status();
    }
}

#[test]
fn net_user_runs_as_an_unprivileged_user() {
    let probe = require!(kvm_and_probe());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: switching to an unprivileged uid needs root");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setpriv (util-linux) is not installed");
        return;
    }
    if !peer_bin().is_file() {
        eprintln!("SKIPPED: {} not built", peer_bin().display());
        return;
    }
    let _acl = require!(KvmAcl::grant());
    // The probe may live under a directory uid 65534 cannot read: hand it a copy.
    let dir = std::env::temp_dir().join(format!("rf-unpriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let elf = dir.join("probe.elf");
    std::fs::copy(&probe, &elf).expect("copy probe");
    let bin = dir.join("ringfence");
    std::fs::copy(ringfence_bin(), &bin).expect("copy ringfence");
    for (path, mode) in [(&dir, 0o755), (&elf, 0o644), (&bin, 0o755)] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let (peer, addr) = host_peer(&["sink", "127.0.0.1:0", "--timeout", "120"]);
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["run", "--kernel"])
        .arg(&elf)
        .args([
            "--net",
            "user",
            "--net-rule",
            "allow@host",
            "--timeout",
            "120",
            "--",
        ])
        .args([
            "probe.scenario=tcp-send",
            &format!("probe.peer=host.ringfence.internal:{}", addr.port()),
            "probe.bytes=10000000",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    let _ = std::fs::remove_dir_all(&dir);
    assert_exit_ok(&o, "ringfence as uid 65534");
    let r = peer_result(peer);
    assert_eq!(r["bytes"], 10_000_000, "{r}");
    assert_eq!(r["pattern_ok"], true, "{r}");
}

/// With `ping_group_range` excluding us (as on our hosts), guest pings to a host other than
/// the gateway go through a raw ICMP socket the netstack opens lazily, after the capability
/// drop: a root start keeps CAP_NET_RAW for it.
#[test]
fn a_root_start_still_relays_guest_pings_after_dropping_privileges() {
    let probe = require!(kvm_and_probe());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the raw ICMP fallback needs a root start");
        return;
    }
    let o = Command::new(ringfence_bin())
        .args(["run", "--kernel"])
        .arg(&probe)
        .args([
            "--net",
            "user",
            "--net-preset",
            "allow-all",
            "--timeout",
            "60",
        ])
        .args([
            "--",
            "probe.scenario=ping",
            "probe.peer=127.0.0.1",
            "probe.count=3",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ringfence");
    assert_exit_ok(&o, "ping 127.0.0.1 from the guest");
    assert_eq!(result_json(&o)["received"], 3, "{}", stdout(&o));
}

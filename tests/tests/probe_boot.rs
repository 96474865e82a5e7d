//! End-to-end: the probe guest booted by the real `ringfence` binary on KVM — ready line, JSON
//! result, exit statuses, vCPUs, console file, timeout, signals, bad input — and the same ELF
//! under QEMU microvm.

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

macro_rules! probe_or_skip {
    () => {
        require!(kvm_and_probe())
    };
}

fn ringfence(args: &[&str]) -> Output {
    Command::new(ringfence_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ringfence")
}

fn run_probe(probe: &std::path::Path, extra: &[&str], words: &[&str]) -> Output {
    let mut args = vec!["run", "--kernel", probe.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(words);
    ringfence(&args)
}

#[test]
fn hello_prints_ready_and_result_and_exits_zero() {
    let probe = probe_or_skip!();
    let o = run_probe(&probe, &[], &["probe.scenario=hello"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o).lines().next(), Some("probe: ready"));
    let j = result_json(&o);
    assert!(j["ready_tsc"].as_u64().unwrap_or(0) > 0, "{j}");
    assert_eq!(j["scenario"], "hello");
    assert_eq!(j["ok"], true);
    // ringfence hands the probe KVM's TSC rate on the command line.
    assert_eq!(j["tsc_source"], "cmdline");
    assert!(j["tsc_khz"].as_u64().unwrap_or(0) > 100_000);
    assert!(
        stderr(&o).is_empty(),
        "a clean exit prints nothing on stderr: {}",
        stderr(&o)
    );
}

#[test]
fn guest_exit_status_becomes_ringfence_status() {
    let probe = probe_or_skip!();
    for code in [0, 7, 42, 255] {
        let o = run_probe(&probe, &[], &[&format!("probe.scenario=exit:{code}")]);
        assert_eq!(o.status.code(), Some(code), "exit:{code}: {}", stderr(&o));
    }
}

#[test]
fn guest_crashes_are_reported_with_their_own_status() {
    let probe = probe_or_skip!();
    // A CPU exception is caught by the probe's CPL0 handler: it prints the vector and exits
    // with 0x71; a Rust panic exits with 0x70. Neither collides with ringfence's 124-126.
    let o = run_probe(&probe, &[], &["probe.scenario=fault:ud"]);
    assert_eq!(o.status.code(), Some(0x71), "{}", stdout(&o));
    let o = run_probe(&probe, &[], &["probe.scenario=fault:panic"]);
    assert_eq!(o.status.code(), Some(0x70), "{}", stdout(&o));
}

#[test]
fn spin_runs_in_user_mode_and_reports_cycles() {
    let probe = probe_or_skip!();
    let o = run_probe(&probe, &[], &["probe.scenario=spin:10000000"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["iterations"], 10_000_000);
    assert!(j["cycles"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn two_vcpus_and_large_memory_boot() {
    let probe = probe_or_skip!();
    let o = run_probe(
        &probe,
        &["--vcpus", "2", "--mem", "1024"],
        &["probe.scenario=hello"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(result_json(&o)["ok"], true);
}

#[test]
fn console_file_receives_the_serial_output() {
    let probe = probe_or_skip!();
    let path = std::env::temp_dir().join(format!("ringfence-console-{}.log", std::process::id()));
    let o = run_probe(
        &probe,
        &["--console", path.to_str().unwrap()],
        &["probe.scenario=hello"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&path).expect("console file");
    let _ = std::fs::remove_file(&path);
    assert!(text.contains("probe: ready"), "{text}");
    assert!(text.contains("\"scenario\":\"hello\""), "{text}");
    assert!(!stdout(&o).contains("probe: ready"));
}

#[test]
fn timeout_stops_a_guest_that_never_exits() {
    let probe = probe_or_skip!();
    let t = Instant::now();
    let o = run_probe(
        &probe,
        &["--timeout", "0.5"],
        &["probe.scenario=spin:1000000000000000"],
    );
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("did not exit within 0.5 s"),
        "{}",
        stderr(&o)
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stopping must not hang"
    );
}

/// Starts a probe that spins for ever (with `extra` ringfence flags) and returns once its
/// ready line is out, so the VM is surely running; the caller stops it.
fn spawn_spinning_probe(probe: &std::path::Path, extra: &[&str]) -> std::process::Child {
    let mut child = Command::new(ringfence_bin())
        .args(["run", "--kernel", probe.to_str().unwrap()])
        .args(extra)
        .args(["--", "probe.scenario=spin:1000000000000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 64];
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("probe: ready") {
        assert!(start.elapsed() < Duration::from_secs(10), "no ready line");
        let n = out.read(&mut buf).expect("read");
        assert!(n > 0, "stdout closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    child
}

/// `(thread name, nice)` of every thread of process `pid`, from /proc.
fn thread_nice_values(pid: u32) -> Vec<(String, i64)> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let stat =
            std::fs::read_to_string(entry.expect("task").path().join("stat")).expect("task stat");
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        // Fields after the name: state is the first, nice the 17th (stat field 19).
        let nice = stat[close + 2..]
            .split_whitespace()
            .nth(16)
            .and_then(|v| v.parse().ok())
            .expect("nice field");
        threads.push((stat[open + 1..close].to_string(), nice));
    }
    threads
}

#[test]
fn vcpu_nice_lowers_the_vcpu_threads_only() {
    let probe = probe_or_skip!();
    let mut child = spawn_spinning_probe(&probe, &["--vcpus", "2", "--vcpu-nice", "7"]);
    // The ready line comes from vCPU 0; the second vCPU thread may still be starting (named
    // and niced by itself), so look until both are there or 10 s pass.
    let deadline = Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let threads = thread_nice_values(child.id());
        let settled = threads
            .iter()
            .filter(|(n, nice)| n.starts_with("vcpu") && *nice == 7)
            .count()
            == 2;
        if settled || Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    let vcpus: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("vcpu"))
        .collect();
    assert_eq!(vcpus.len(), 2, "{threads:?}");
    assert!(vcpus.iter().all(|(_, nice)| *nice == 7), "{threads:?}");
    // KVM's own workers in the process (`kvm-nx-lpage-recovery`) are created by the first
    // KVM_RUN and inherit the vCPU's nice; every ringfence thread besides the vCPUs keeps the
    // nice it was started with (this test's own: 0 unless the tests run under `nice`).
    // SAFETY: getpriority only reads its integer arguments.
    let inherited = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    assert!(
        threads
            .iter()
            .filter(|(n, _)| !n.starts_with("vcpu") && !n.starts_with("kvm-"))
            .all(|(_, nice)| *nice == i64::from(inherited)),
        "only vCPU threads are lowered: {threads:?}"
    );
}

#[test]
fn sigint_stops_the_vm_cleanly() {
    let probe = probe_or_skip!();
    let mut child = spawn_spinning_probe(&probe, &[]);
    // SAFETY: the pid is our live child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ringfence did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("stopped by signal 2"), "{err}");
}

#[test]
fn bad_input_gives_one_clear_line_and_a_nonzero_exit() {
    let probe = probe_or_skip!();
    let probe = probe.to_str().unwrap();
    let text_file =
        std::env::temp_dir().join(format!("ringfence-notakernel-{}", std::process::id()));
    std::fs::write(&text_file, "#!/bin/sh\necho not a kernel\n").unwrap();
    let tf = text_file.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["run", "--kernel", "/nonexistent/vmlinux"],
            125,
            "cannot read kernel /nonexistent/vmlinux",
        ),
        (
            &["run", "--kernel", tf],
            125,
            "neither a PVH ELF kernel nor a bzImage",
        ),
        (
            &["run", "--kernel", probe, "--mem", "0"],
            125,
            "--mem must be at least 1 MiB",
        ),
        (
            &["run", "--kernel", probe, "--mem", "100000000"],
            125,
            "is more than",
        ),
        (
            &["run", "--kernel", probe, "--vcpus", "0"],
            125,
            "--vcpus must be at least 1",
        ),
        (
            &["run", "--kernel", probe, "--vcpus", "300"],
            125,
            "--vcpus 300 is more than",
        ),
        (
            &["run", "--kernel", probe, "--timeout", "soon"],
            125,
            "--timeout must be a positive number",
        ),
        (
            &[
                "run",
                "--kernel",
                probe,
                "--console",
                "/nonexistent/dir/log",
            ],
            125,
            "cannot open console file",
        ),
        (
            &["run", "--bogus-flag"],
            2,
            "unexpected argument '--bogus-flag'",
        ),
        (&["run", "--mem", "lots"], 2, "invalid value 'lots'"),
        (
            &["run", "--vcpu-nice", "20"],
            2,
            "invalid value '20' for '--vcpu-nice <N>'",
        ),
    ];
    for (args, code, needle) in cases {
        let o = ringfence(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        if *code == 125 {
            assert_eq!(
                err.trim().lines().count(),
                1,
                "{args:?}: one line, got {err:?}"
            );
            assert!(err.starts_with("ringfence: error: "), "{err}");
        }
    }
    let _ = std::fs::remove_file(&text_file);
}

#[test]
fn without_kernel_the_built_probe_boots() {
    let _probe = probe_or_skip!();
    let o = ringfence(&["run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(result_json(&o)["scenario"], "hello");
}

#[test]
fn doctor_reports_kvm_and_a_speed_verdict() {
    let _probe = probe_or_skip!();
    let o = ringfence(&["doctor", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    let mode = j["guest_kernel_mode"].as_str().unwrap_or("");
    assert!(mode == "emulated" || mode == "native", "{j}");
    assert!(j["speeds"]["cpl3_ns_per_iter"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(j["checks"]
        .as_array()
        .map(|a| a.len() >= 5)
        .unwrap_or(false));
}

#[test]
fn the_same_elf_boots_under_qemu_microvm() {
    let probe = probe_or_skip!();
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have_qemu {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!(
                "SKIPPED: qemu-system-x86_64 is not installed (cargo xtask test installs it)\n"
            ),
        ); // uncaptured, so CI logs show it
        return;
    }
    let o = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-m",
            "128",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
        .arg(&probe)
        .args(["-append", "probe.scenario=exit:3"])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu");
    // isa-debug-exit: status (3 << 1) | 1.
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(result_json(&o)["status"], 3);
}

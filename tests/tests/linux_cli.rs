//! `ringfence run --linux -- CMD`: on hosts where guest kernels run at full speed, the smoke
//! tests of the Linux path (command output and status, SMP, DHCP + a fetch from a host server
//! through the host alias); where `ringfence doctor` finds guest kernel mode emulated, the
//! refusal with doctor's measured reason, and `SKIPPED:` for the smoke tests.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

fn doctor_native() -> (bool, String) {
    let o = Command::new(ringfence_bin())
        .args(["doctor", "--json"])
        .output()
        .expect("doctor");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("doctor json");
    (
        j["guest_kernel_mode"] == "native",
        j["linux_verdict"].as_str().unwrap_or("").to_string(),
    )
}

fn linux(flags: &[&str], cmd: &[&str]) -> Output {
    Command::new(ringfence_bin())
        .args(["run", "--linux", "--timeout", "120"])
        .args(flags)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run ringfence")
}

/// Runs the smoke test body on a native host with the image, or explains why not.
fn smoke_or_skip() -> bool {
    if let Err(why) = kvm_and_probe() {
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("SKIPPED: {why}\n")); // uncaptured, so CI logs show it
        return false;
    }
    let (native, verdict) = doctor_native();
    if !native {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("SKIPPED: Linux smoke test needs hardware virtualization ({verdict}); on this host the same checks run in the nested harness (tests/tests/nested_linux.rs)\n"),
        ); // uncaptured, so CI logs show it
        return false;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let image =
        std::env::var("RINGFENCE_LINUX_IMAGE").unwrap_or(format!("{home}/.cache/ringfence/linux"));
    if !std::path::Path::new(&image).join("bzImage").is_file() {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("SKIPPED: no Linux image in {image} (run `cargo xtask image`)\n"),
        ); // uncaptured, so CI logs show it
        return false;
    }
    true
}

#[test]
fn linux_refuses_with_doctors_reason_where_kernels_are_emulated() {
    let _probe = require!(kvm_and_probe());
    let (native, verdict) = doctor_native();
    if native {
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!(
                "SKIPPED: this host runs guest kernels natively (the smoke tests cover it)\n"
            ),
        ); // uncaptured, so CI logs show it
        return;
    }
    let o = linux(&[], &["sh", "-c", "echo hi; exit 7"]);
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    assert!(err.contains("--linux cannot run here"), "{err}");
    assert!(err.contains("ringfence doctor"), "{err}");
    assert!(
        verdict.contains("emulated") && err.contains("emulated"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = linux(&[], &[]);
    assert!(stderr(&o).contains("needs a command"), "{}", stderr(&o));
}

#[test]
fn linux_command_output_and_status() {
    if !smoke_or_skip() {
        return;
    }
    let o = linux(&[], &["sh", "-c", "echo hi; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(
        stdout(&o).lines().any(|l| l.trim() == "hi"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn linux_sees_two_vcpus() {
    if !smoke_or_skip() {
        return;
    }
    let o = linux(&["--vcpus", "2"], &["nproc"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).lines().any(|l| l.trim() == "2"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn linux_gets_dhcp_and_fetches_from_the_host() {
    if !smoke_or_skip() {
        return;
    }
    let (peer, addr) = host_peer(&["source", "127.0.0.1:0", "1000", "--timeout", "120"]);
    let script = format!("nc host.ringfence.internal {} | wc -c", addr.port());
    let o = linux(&["--net-rule", "allow@host"], &["sh", "-c", &script]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).lines().any(|l| l.trim() == "1000"),
        "{}",
        stdout(&o)
    );
    assert_eq!(peer_result(peer)["bytes"], 1000);
}

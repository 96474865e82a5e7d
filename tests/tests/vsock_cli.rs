//! `ringfence run --vsock uds=PATH[,cid=N]`: bad settings and socket paths in use are
//! refused before the guest boots, naming the value to fix; a good one boots the probe guest
//! with the socket bound (a stale one replaced) and removes it when the VM ends — under the
//! seccomp filters, which let only the tearing-down thread unlink, and only there.

mod common;

use std::os::unix::net::UnixListener;

use common::*;
use ringfence_tests::harness::{ringfence_bin, TempDir};

fn run(kernel: &std::path::Path, flags: &[&str]) -> std::process::Output {
    run_hello(kernel, &[&["--net", "none"], flags].concat())
}

#[test]
fn bad_vsock_settings_are_refused_before_boot() {
    if !ringfence_bin().exists() {
        return eprintln!("SKIPPED: {} is not built", ringfence_bin().display());
    }
    let dir = TempDir::new("vsock-cli");
    // Parsed before anything else: no kernel, no KVM needed.
    let kernel = dir.path().join("no-kernel");
    let long = format!("uds=/tmp/{}", "x".repeat(100));
    for (value, needles) in [
        ("cid=3", vec!["--vsock", "\"cid=3\"", "uds=PATH is missing"]),
        ("uds=/tmp/v.sock,cid=2", vec!["cid=2", "3 to 4294967294"]),
        ("uds=/tmp/v.sock,cid=-1", vec!["cid=-1"]),
        ("uds=/tmp/v.sock,cid=x3", vec!["cid=x3"]),
        ("uds=/tmp/v.sock,port=52", vec!["unknown key \"port\""]),
        ("uds=/a,uds=/b", vec!["uds= given twice"]),
        ("/tmp/v.sock", vec!["\"/tmp/v.sock\" is not KEY=VALUE"]),
        (long.as_str(), vec!["too long", "at most 96"]),
    ] {
        let o = run(&kernel, &["--vsock", value]);
        assert_refused(&o, &needles);
    }
}

#[test]
fn a_socket_path_in_use_is_refused_and_a_good_one_serves_and_is_removed() {
    let probe = match kvm_and_probe() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let dir = TempDir::new("vsock-path");
    // A live listener: refused, and left alone.
    let live_path = dir.path().join("live.sock");
    let live = UnixListener::bind(&live_path).expect("bind");
    let flag = format!("uds={}", live_path.display());
    let o = run(&probe, &["--vsock", &flag]);
    assert_refused(
        &o,
        &[&live_path.display().to_string(), "another process serves"],
    );
    drop(live);
    // A file that is not a socket: refused and kept.
    let file = dir.file("notes.txt", b"keep");
    let o = run(&probe, &["--vsock", &format!("uds={}", file.display())]);
    assert_refused(&o, &["notes.txt", "not a socket"]);
    assert_eq!(std::fs::read(&file).expect("kept"), b"keep");
    // A directory that does not exist.
    let missing = dir.path().join("nope/v.sock");
    let o = run(&probe, &["--vsock", &format!("uds={}", missing.display())]);
    assert_refused(&o, &["nope"]);

    // The stale socket left by `live` is replaced; the guest runs; the socket is gone after.
    assert!(live_path.exists(), "a stale socket file stays behind");
    let o = run(&probe, &["--vsock", &format!("{flag},cid=7")]);
    assert_exit_ok(&o, "probe with --vsock");
    assert!(stdout(&o).contains("hello"), "{}", stdout(&o));
    assert!(
        !live_path.exists(),
        "the socket file is removed at teardown: {}",
        stderr(&o)
    );
}

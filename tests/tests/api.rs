//! `ringfence api` (Firecracker's API on a Unix socket) with the probe guest on KVM: the call
//! sequence an orchestrator makes boots the guest and the process ends with its status;
//! calls in the wrong state, bad bodies and a socket in use are refused with Firecracker's
//! 400 `fault_message`; `--config-file --no-api` boots without a socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ringfence_tests::harness::{ringfence_bin, TempDir};

/// One request over a fresh connection; (status, body).
fn call(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Starts `ringfence` with `args` and waits (at most 10 s) for its socket.
fn start(args: &[&str], sock: &Path) -> Child {
    let child = Command::new(ringfence_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringfence");
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn sock_in(dir: &TempDir) -> PathBuf {
    dir.path().join("api.sock")
}

#[test]
fn the_call_sequence_of_an_orchestrator_boots_the_guest_and_returns_its_status() {
    let probe = match kvm_and_probe() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let dir = TempDir::new("api");
    let sock = sock_in(&dir);
    let s = sock.to_str().expect("utf-8");
    // Firecracker's own command line.
    let child = start(&["--api-sock", s, "--id", "vm-7"], &sock);
    let (st, body) = call(&sock, "GET", "/", "");
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("\"state\":\"Not started\"") && body.contains("vm-7"),
        "{body}"
    );
    assert_eq!(
        call(
            &sock,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#
        )
        .0,
        204
    );
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "probe.scenario=exit:7"}}"#,
        probe.display()
    );
    assert_eq!(call(&sock, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(
        call(
            &sock,
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#
        )
        .0,
        204
    );
    assert_eq!(
        call(
            &sock,
            "PUT",
            "/network-policy",
            r#"{"preset": "public-only"}"#
        )
        .0,
        204
    );
    let (st, body) = call(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    assert_eq!(st, 204, "{body}");
    let out = child.wait_with_output().expect("ringfence ends");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sock.exists(), "the socket is removed at the end");
}

#[test]
fn wrong_state_bad_bodies_and_a_busy_socket_are_refused() {
    let probe = match kvm_and_probe() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let dir = TempDir::new("api-bad");
    let sock = sock_in(&dir);
    let s = sock.to_str().expect("utf-8");
    let mut child = start(&["api", "--api-sock", s], &sock);
    let fault = |r: (u16, String), says: &str| {
        assert_eq!(r.0, 400, "{}", r.1);
        assert!(
            r.1.contains("fault_message") && r.1.contains(says),
            "{says}: {}",
            r.1
        );
    };
    fault(
        call(&sock, "PUT", "/machine-config", "{not json"),
        "bad machine-config body",
    );
    fault(
        call(
            &sock,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "x": 1}"#,
        ),
        "unknown field",
    );
    fault(
        call(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        ),
        "boot-source first",
    );
    fault(
        call(&sock, "PUT", "/drives/rootfs", r#"{"drive_id": "rootfs"}"#),
        "missing field `is_root_device`",
    );
    fault(
        call(
            &sock,
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "is_root_device": false, "path_on_host": "/nonexistent/rootfs"}"#,
        ),
        "cannot be read",
    );
    fault(call(&sock, "GET", "/nope", ""), "invalid request");
    let big = format!(r#"{{"x": "{}"}}"#, "a".repeat(60 * 1024));
    fault(call(&sock, "PUT", "/logger", &big), "over");
    // A second server on the same socket is refused before it touches it.
    let second = Command::new(ringfence_bin())
        .args(["api", "--api-sock", s])
        .output()
        .expect("run");
    assert_eq!(second.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another process serves this socket"));
    // A running VM refuses pre-boot calls and a second start; the policy changes live.
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "probe.scenario=spin:1000000000000"}}"#,
        probe.display()
    );
    assert_eq!(call(&sock, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(
        call(
            &sock,
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "no-such-tap"}"#
        )
        .0,
        204
    );
    // A data drive (the probe does not touch it) and an empty placeholder, as Kata gives.
    let data = dir.path().join("data.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).expect("write the image");
    let placeholder = dir.path().join("drive_0");
    std::fs::write(&placeholder, b"").expect("write the placeholder");
    for (id, path) in [("data", &data), ("drive_0", &placeholder)] {
        let body = format!(
            r#"{{"drive_id": "{id}", "is_root_device": false, "is_read_only": false, "path_on_host": "{}"}}"#,
            path.display()
        );
        let r = call(&sock, "PUT", &format!("/drives/{id}"), &body);
        assert_eq!(r.0, 204, "{}", r.1);
    }
    fault(
        call(
            &sock,
            "PATCH",
            "/drives/drive_0",
            r#"{"drive_id": "drive_0", "path_on_host": "/dev/null"}"#,
        ),
        "only valid after InstanceStart",
    );
    let uds = dir.path().join("v.sock");
    let vsock = format!(
        r#"{{"guest_cid": 3, "uds_path": "{}", "vsock_id": "root"}}"#,
        uds.display()
    );
    assert_eq!(call(&sock, "PUT", "/vsock", &vsock).0, 204);
    assert_eq!(
        call(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#
        )
        .0,
        204
    );
    let (st, body) = call(&sock, "GET", "/", "");
    assert!(
        st == 200 && body.contains("\"state\":\"Running\""),
        "{body}"
    );
    fault(
        call(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        ),
        "already",
    );
    fault(
        call(&sock, "PUT", "/boot-source", &boot),
        "only valid before InstanceStart",
    );
    // The vsock device serves its socket while the VM runs.
    assert!(
        std::os::unix::net::UnixStream::connect(&uds).is_ok(),
        "the vsock socket {} is served",
        uds.display()
    );
    fault(
        call(&sock, "PUT", "/vsock", &vsock),
        "only valid before InstanceStart",
    );
    fault(
        call(
            &sock,
            "PUT",
            "/drives/late",
            r#"{"drive_id": "late", "is_root_device": false, "path_on_host": "/dev/null"}"#,
        ),
        "only valid before InstanceStart",
    );
    // The placeholder takes a real image while the guest runs; a vanished file, an unknown
    // drive and a file of the wrong size are refused and the VM runs on.
    let patch = |id: &str, path: &str| {
        call(
            &sock,
            "PATCH",
            &format!("/drives/{id}"),
            &format!(r#"{{"drive_id": "{id}", "path_on_host": "{path}"}}"#),
        )
    };
    let r = patch("drive_0", data.to_str().expect("utf-8"));
    assert_eq!(r.0, 204, "{}", r.1);
    fault(patch("drive_0", "/nonexistent/disk.img"), "no such file");
    fault(patch("nope", "/dev/null"), "no drive");
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).expect("write");
    fault(
        patch("drive_0", odd.to_str().expect("utf-8")),
        "not a multiple of 512",
    );
    std::fs::remove_file(&data).expect("remove the image under the running VM");
    let (st, body) = call(&sock, "GET", "/", "");
    assert!(st == 200 && body.contains("\"started\":true"), "{body}");
    assert_eq!(
        call(&sock, "PATCH", "/network-policy", r#"{"preset": "none"}"#).0,
        204
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_config_file_boots_without_an_api_socket() {
    let probe = match kvm_and_probe() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let dir = TempDir::new("api-config");
    // Kata's configuration shape: the old `ht_enabled`, a read-only drive and an empty
    // placeholder, an interface on a tap that does not exist, with empty rate limiters.
    let rootfs = dir.file("rootfs", &vec![0u8; 1 << 20]);
    let placeholder = dir.file("drive_0", b"");
    let cfg = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "probe.scenario=exit:3"}},
            "machine-config": {{"ht_enabled": false, "vcpu_count": 1, "mem_size_mib": 64}},
            "drives": [
                {{"drive_id": "rootfs", "is_read_only": true, "is_root_device": false, "path_on_host": "{}"}},
                {{"drive_id": "drive_0", "is_read_only": false, "is_root_device": false, "path_on_host": "{}"}}],
            "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0_kata",
                "rx_rate_limiter": {{}}, "tx_rate_limiter": {{}}}}]}}"#,
        probe.display(),
        rootfs.display(),
        placeholder.display()
    );
    let file = dir.file("vm.json", cfg.as_bytes());
    let out = Command::new(ringfence_bin())
        .args(["--config-file", file.to_str().expect("utf-8"), "--no-api"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.file("bad.json", br#"{"drives": [{"drive_id": "root"}]}"#);
    let out = Command::new(ringfence_bin())
        .args(["--config-file", bad.to_str().expect("utf-8"), "--no-api"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field `is_root_device`"));
}

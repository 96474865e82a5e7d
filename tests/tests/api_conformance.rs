//! Firecracker's published API description (`tests/data/firecracker/firecracker.yaml`,
//! Apache-2.0, from firecracker-microvm/firecracker at 81b38b9, 2026-08-21) drives a
//! schema-based test of `ringfence api` with schemathesis: for every operation ringfence
//! implements it sends bodies generated from the schema, valid and invalid, and checks that
//! no answer is a server error, every status and body is one the description documents, every
//! body is JSON, and data the schema forbids is refused.
//!
//! schemathesis comes from PyPI into `~/.cache/ringfence/schemathesis/venv` (`cargo xtask
//! test` installs it; `$RINGFENCE_SCHEMATHESIS` names another binary); without it the test
//! prints `SKIPPED:`. It speaks TCP, so a relay on 127.0.0.1 carries its requests to the
//! API's Unix socket. No request starts a VM: no generated path names a bootable kernel.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringfence_tests::harness::{ringfence_bin, TempDir};

/// The operations ringfence implements, as a regular expression over the description's paths.
const IMPLEMENTED: &str = "^/(|actions|boot-source|drives/\\{drive_id\\}|logger|machine-config|metrics|network-interfaces/\\{iface_id\\}|version|vsock)$";

fn schemathesis() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RINGFENCE_SCHEMATHESIS") {
        return Ok(p.into());
    }
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let bin = PathBuf::from(home).join(".cache/ringfence/schemathesis/venv/bin/schemathesis");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "schemathesis is not installed at {} (`cargo xtask test` installs it from PyPI)",
            bin.display()
        ))
    }
}

fn description() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/firecracker/firecracker.yaml")
}

/// Relays every TCP connection on a loopback port to the Unix socket `sock`; returns the port.
fn relay(sock: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let Ok(unix) = UnixStream::connect(&sock) else {
                continue;
            };
            let (mut tcp_in, mut unix_in) = (tcp, unix);
            let (Ok(mut tcp_out), Ok(mut unix_out)) = (tcp_in.try_clone(), unix_in.try_clone())
            else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_in, &mut unix_out);
                let _ = unix_out.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_in, &mut tcp_out);
                let _ = tcp_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn the_api_conforms_to_firecracker_s_description() {
    let st = match schemathesis() {
        Ok(p) => p,
        Err(why) => return eprintln!("SKIPPED: {why}"),
    };
    let dir = TempDir::new("api-conformance");
    let sock = dir.path().join("api.sock");
    // Both run in the temporary directory: the fuzzed calls name relative files (a logger's
    // `log_path`) that the API creates, and schemathesis keeps its caches in its working
    // directory; neither may land in the source tree.
    let mut api = Command::new(ringfence_bin())
        .args(["api", "--api-sock"])
        .arg(&sock)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringfence api");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sock.exists(), "ringfence api did not create its socket");
    let port = relay(sock);
    let out = Command::new(&st)
        .current_dir(dir.path())
        .arg("--config-file")
        .arg(description().with_file_name("schemathesis.toml"))
        .arg("run")
        .arg(description())
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--include-path-regex", IMPLEMENTED])
        .args(["--mode", "all", "--max-examples", "40", "--seed", "1"])
        .args(["--request-timeout", "10", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let _ = api.kill();
    let mut api_err = String::new();
    if let Some(mut e) = api.stderr.take() {
        let _ = e.read_to_string(&mut api_err);
    }
    let _ = api.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found nonconforming answers (status {}):\n{report}\n{}\nringfence api stderr:\n{api_err}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Every implemented operation was exercised, not just the ones that happened to match.
    for op in [
        "PUT /drives/{drive_id}",
        "PATCH /drives/{drive_id}",
        "PUT /vsock",
        "PUT /machine-config",
        "PUT /actions",
    ] {
        assert!(
            report.contains(op),
            "schemathesis did not test {op}:\n{report}"
        );
    }
}

#[test]
fn the_description_s_version_is_the_one_ringfence_reports() {
    let yaml = std::fs::read_to_string(description()).expect("read firecracker.yaml");
    let version = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("version: "))
        .expect("info.version in firecracker.yaml");
    assert_eq!(version, ringfence::api::FIRECRACKER_API_VERSION);
}

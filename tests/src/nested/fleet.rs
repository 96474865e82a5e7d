//! Fleet scenarios: ringfence driven through Firecracker's API the way Kata Containers'
//! Firecracker driver drives it (`src/runtime/virtcontainers/fc.go` in kata-containers,
//! read 2026-12-07; the sequence is written out in docs/fleet.md).
//!
//! `rf-nested kata DIR` replays it inside the outer VM:
//! 1. `firecracker --version`, parsed as Kata parses it (second word of the first line,
//!    `v` trimmed, at least 0.21.1);
//! 2. Kata's `fcConfig.json`: `machine-config` with `ht_enabled`, `boot-source` with Kata's
//!    kernel parameters (root on `/dev/vda1`, read-only), the rootfs drive (read-only, not
//!    `is_root_device`: a partitioned image) and eight empty placeholder drives
//!    `drive_0`..`drive_7`, a tap-named interface with empty rate limiters, the hybrid vsock
//!    (`guest_cid` 3, `kata.hvsock`, `vsock_id` `root`), a logger and metrics on FIFOs;
//! 3. `firecracker --api-sock run/firecracker.socket --config-file fcConfig.json`, then
//!    `GET /` until the instance reports `started`;
//! 4. the agent over the hybrid vsock (`CONNECT 1024`), a hot-plugged block device
//!    (`PATCH /drives/drive_0` to a file with data), the network, a guest-initiated vsock
//!    connection to `kata.hvsock_1025` (Kata's log port), and the end of the sandbox.
//!
//! Each step prints a `CHECK name value` line the test reads.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Kata's agent port (`vSockPort`).
pub const AGENT_PORT: u32 = 1024;
/// Kata's agent log port (`vSockLogsPort`): the guest connects out to it.
pub const LOG_PORT: u32 = 1025;
/// Kata's kernel parameters for a Firecracker VM with its root on virtio-blk
/// (`commonVirtioblkKernelRootParams` + `fcKernelParams`, debug console).
pub const KATA_KERNEL_PARAMS: &str = "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0";
/// What the hot-plugged drive holds at its start.
pub const HOTPLUG_MARKER: &str = "kata-hotplug-ok";
/// The status the sandbox's command ends with once told to stop.
pub const SANDBOX_STATUS: i32 = 5;

/// Writes `output`: an MBR with one Linux partition at 1 MiB holding `input` (an ext4
/// image), the layout of Kata's `kata-containers.img`.
pub fn mbr_wrap(input: &Path, output: &Path) -> Result<(), String> {
    let fs = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let sectors = u32::try_from(fs.len().div_ceil(512))
        .map_err(|_| format!("{} is too large for an MBR partition", input.display()))?;
    let mut disk = vec![0u8; 1 << 20];
    let entry = &mut disk[446..462];
    entry[0] = 0x80; // bootable
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS: use the LBA fields
    entry[4] = 0x83; // Linux
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk.extend_from_slice(&fs);
    disk.resize((1 << 20) + sectors as usize * 512, 0);
    std::fs::write(output, disk).map_err(|e| format!("{}: {e}", output.display()))
}

/// Kata's `fcConfig.json` for a sandbox in `dir` (see the module docs).
pub fn kata_config(dir: &Path, kernel: &Path, boot_args: &str) -> Value {
    let p = |name: &str| dir.join(name).display().to_string();
    let mut drives = vec![json!({
        "drive_id": "rootfs", "is_read_only": true, "is_root_device": false,
        "path_on_host": p("rootfs"),
    })];
    for i in 0..8 {
        drives.push(json!({
            "drive_id": format!("drive_{i}"), "is_read_only": false, "is_root_device": false,
            "path_on_host": p(&format!("drive_{i}")),
        }));
    }
    json!({
        "boot-source": {"kernel_image_path": kernel.display().to_string(), "boot_args": boot_args},
        "machine-config": {"ht_enabled": false, "mem_size_mib": 256, "vcpu_count": 1},
        "drives": drives,
        "vsock": {"guest_cid": 3, "uds_path": p("kata.hvsock"), "vsock_id": "root"},
        "network-interfaces": [{
            "iface_id": "eth0", "guest_mac": "02:42:ac:11:00:02", "host_dev_name": "tap0_kata",
            "rx_rate_limiter": {}, "tx_rate_limiter": {},
        }],
        "logger": {"level": "Debug", "log_path": p("logs.fifo")},
        "metrics": {"metrics_path": p("metrics.fifo")},
    })
}

/// Checks a `firecracker --version` output the way Kata does.
pub fn kata_accepts_version(output: &str) -> Result<String, String> {
    let first = output.lines().next().unwrap_or_default();
    let word = first
        .split(' ')
        .nth(1)
        .ok_or(format!("no version in {first:?}"))?;
    let version = word.trim().trim_start_matches('v');
    let mut parts = version.split(['.', '-']).map(str::parse::<u64>);
    let (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{version:?} is not a semantic version"));
    };
    if (major, minor, patch) < (0, 21, 1) {
        return Err(format!("{version} is older than Kata's minimum 0.21.1"));
    }
    Ok(version.to_string())
}

/// One HTTP/1.1 exchange with the API socket: (status, body).
pub fn api_call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s =
        UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("no HTTP response: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A connection to guest port `port` through the hybrid vsock socket `uds`
/// (`CONNECT <port>\n`, answered `OK <host port>\n`).
pub fn vsock_connect(uds: &Path, port: u32) -> Result<BufReader<UnixStream>, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if !line.starts_with("OK ") {
        return Err(format!("CONNECT {port} was answered {line:?}"));
    }
    Ok(reader)
}

/// Sends one agent request and reads its answer (`EXEC`: the output and `EXIT n`).
pub fn agent_request(conn: &mut BufReader<UnixStream>, request: &str) -> Result<String, String> {
    conn.get_mut()
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    conn.read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    let Some(n) = line.strip_prefix("OUTPUT ") else {
        return Ok(line.trim_end().to_string());
    };
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("bad OUTPUT line {line:?}"))?;
    let mut out = vec![0u8; n];
    conn.read_exact(&mut out)
        .map_err(|e| format!("read output: {e}"))?;
    let mut exit = String::new();
    conn.read_line(&mut exit)
        .map_err(|e| format!("read exit: {e}"))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        exit.trim_end()
    ))
}

fn check(name: &str, value: impl std::fmt::Display) {
    println!("CHECK {name} {value}");
}

/// Retries `attempt` every 100 ms until it succeeds or `limit` passes.
fn within<T>(limit: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("after {} s: {e}", limit.as_secs()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Creates a FIFO and drains it on a thread (as Kata's runtime reads its log and metrics
/// FIFOs), counting the lines into `lines_file`.
fn drained_fifo(path: &Path) -> Result<std::sync::Arc<std::sync::atomic::AtomicUsize>, String> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated path; mkfifo only creates a file.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (path, count) = (path.to_path_buf(), lines.clone());
    std::thread::spawn(move || {
        // Opening the read end blocks until the writer opens it: the thread waits there.
        if let Ok(f) = std::fs::File::open(&path) {
            for _ in BufReader::new(f).lines().map_while(Result::ok) {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    Ok(lines)
}

/// The whole replay in `dir`, which holds `rootfs.ext4` (the image's root filesystem);
/// `ringfence` is the binary to stand in for `firecracker`, `kernel` the guest kernel,
/// `agent_args` the agent's command-line parameters (the sandbox command).
pub fn kata(dir: &Path, ringfence: &Path, kernel: &Path, agent_args: &str) -> Result<i32, String> {
    let fc = dir.join("firecracker");
    let _ = std::fs::remove_file(&fc);
    std::os::unix::fs::symlink(ringfence, &fc).map_err(|e| format!("symlink: {e}"))?;
    let out = Command::new(&fc)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", fc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    check(
        "version",
        kata_accepts_version(&text).unwrap_or_else(|e| format!("refused: {e}")),
    );

    mbr_wrap(&dir.join("rootfs.ext4"), &dir.join("rootfs"))?;
    for i in 0..8 {
        std::fs::write(dir.join(format!("drive_{i}")), b"").map_err(|e| e.to_string())?;
    }
    let log_lines = drained_fifo(&dir.join("logs.fifo"))?;
    let metric_lines = drained_fifo(&dir.join("metrics.fifo"))?;
    std::fs::create_dir_all(dir.join("run")).map_err(|e| e.to_string())?;
    let config = kata_config(dir, kernel, &format!("{KATA_KERNEL_PARAMS} {agent_args}"));
    let config_path = dir.join("fcConfig.json");
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let socket = dir.join("run/firecracker.socket");
    let console = std::fs::File::create(dir.join("console.log")).map_err(|e| e.to_string())?;
    let mut child: Child = Command::new(&fc)
        .arg("--api-sock")
        .arg(&socket)
        .arg("--config-file")
        .arg(&config_path)
        .stdout(console.try_clone().map_err(|e| e.to_string())?)
        .stderr(console)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", fc.display()))?;
    let result = drive_sandbox(dir, &socket, &mut child);
    let status = match result {
        Ok(()) => within(Duration::from_secs(120), || match child.try_wait() {
            Ok(Some(s)) => Ok(s.code().unwrap_or(-1)),
            _ => Err("still running".into()),
        }),
        Err(e) => Err(e),
    };
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    check(
        "log_lines",
        log_lines.load(std::sync::atomic::Ordering::Relaxed),
    );
    check(
        "metric_lines",
        metric_lines.load(std::sync::atomic::Ordering::Relaxed),
    );
    let status = status?;
    check("exit", status);
    Ok(status)
}

/// Steps 3 and 4 of the replay, on the started process.
fn drive_sandbox(dir: &Path, socket: &Path, child: &mut Child) -> Result<(), String> {
    let info = within(Duration::from_secs(120), || {
        if let Ok(Some(s)) = child.try_wait() {
            return Ok(Err(format!("the VMM exited with {s} before it started")));
        }
        let (status, body) = api_call(socket, "GET", "/", None)?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        match v.get("started") {
            Some(Value::Bool(true)) => Ok(Ok(format!("{status} {}", v["state"]))),
            _ => Err("not started yet".into()),
        }
    })??;
    check("started", info);
    let (status, _) = api_call(
        socket,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"FlushMetrics"}"#),
    )?;
    check("flush_metrics", status);

    let uds = dir.join("kata.hvsock");
    let mut agent = within(Duration::from_secs(180), || {
        let mut conn = vsock_connect(&uds, AGENT_PORT)?;
        agent_request(&mut conn, "PING").map(|pong| (conn, pong))
    })?;
    check("agent", agent.1.replace(' ', "_"));

    let root = agent_request(
        &mut agent.0,
        "EXEC grep ' / ' /proc/mounts | cut -d' ' -f1,3,4 | cut -d, -f1",
    )?;
    check("root", root.replace('\n', " "));

    let data = dir.join("hotplug.img");
    let mut bytes = HOTPLUG_MARKER.as_bytes().to_vec();
    bytes.resize(1 << 20, 0);
    std::fs::write(&data, bytes).map_err(|e| e.to_string())?;
    let body =
        json!({"drive_id": "drive_0", "path_on_host": data.display().to_string()}).to_string();
    let (status, reply) = api_call(socket, "PATCH", "/drives/drive_0", Some(&body))?;
    check("patch", format!("{status} {reply}"));
    let seen = within(Duration::from_secs(60), || {
        let out = agent_request(
            &mut agent.0,
            "EXEC cat /sys/block/vdb/size; head -c 15 /dev/vdb; echo",
        )?;
        if out.starts_with("2048\n") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .unwrap_or_else(|e| e);
    check("hotplug", seen.replace('\n', " "));

    let net = agent_request(
        &mut agent.0,
        "EXEC wget -q -T 30 -O- http://192.0.2.10:8080/",
    )?;
    check("net", net.replace('\n', " "));

    let listener =
        UnixListener::bind(format!("{}_{LOG_PORT}", uds.display())).map_err(|e| e.to_string())?;
    listener.set_nonblocking(false).map_err(|e| e.to_string())?;
    let accept = std::thread::spawn(move || -> Result<String, String> {
        let (s, _) = listener.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim_end().to_string())
    });
    let sent = agent_request(
        &mut agent.0,
        &format!("EXEC echo hello-from-guest | socat -t 5 - VSOCK-CONNECT:2:{LOG_PORT}"),
    )?;
    let got = accept
        .join()
        .map_err(|_| "the accept thread panicked".to_string())?;
    check(
        "guest_initiated",
        format!(
            "{} ({})",
            got.unwrap_or_else(|e| e),
            sent.replace('\n', " ")
        ),
    );

    let stop = agent_request(&mut agent.0, "EXEC touch /run/stop")?;
    check("stop", stop.replace('\n', " "));
    Ok(())
}

/// The sandbox's command: waits until told to stop over the agent channel.
pub fn sandbox_command() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("while [ ! -e /run/stop ]; do sleep 0.2; done; exit {SANDBOX_STATUS}"),
    ]
}

/// Where the outer VM keeps the Linux image (`rootfs.ext4.gz`, `bzImage`).
pub fn outer_image_dir() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/ringfence/linux")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_parses_versions_as_kata_does() {
        assert_eq!(
            kata_accepts_version("Firecracker v1.17.0\nmore").unwrap(),
            "1.17.0"
        );
        assert!(kata_accepts_version("ringfence 0.1.0").is_err());
        assert!(kata_accepts_version("Firecracker").is_err());
    }

    #[test]
    fn the_mbr_points_at_the_filesystem() {
        let dir = std::env::temp_dir().join(format!("rf-mbr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fs"), vec![7u8; 1000]).unwrap();
        mbr_wrap(&dir.join("fs"), &dir.join("disk")).unwrap();
        let disk = std::fs::read(dir.join("disk")).unwrap();
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        assert_eq!(u32::from_le_bytes(disk[454..458].try_into().unwrap()), 2048);
        assert_eq!(u32::from_le_bytes(disk[458..462].try_into().unwrap()), 2);
        assert_eq!(disk.len(), (1 << 20) + 1024);
        assert_eq!(disk[1 << 20], 7);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_config_has_kata_s_shape() {
        let c = kata_config(Path::new("/d"), Path::new("/k"), "x");
        assert_eq!(c["drives"].as_array().unwrap().len(), 9);
        assert_eq!(c["machine-config"]["ht_enabled"], false);
        assert_eq!(c["vsock"]["vsock_id"], "root");
    }
}

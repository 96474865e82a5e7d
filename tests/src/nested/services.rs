//! The outer VM's servers: what a guest under test talks to.
//!
//! They listen on every address of the outer VM (`[::]`, dual-stack): its loopback (which a
//! ringfence guest reaches as `host.ringfence.internal`) and the TEST-NET, private and
//! metadata addresses the outer init script puts on a dummy interface, so a policy refusal can
//! always be checked against a live server. The outer VM has no network device: nothing here
//! can reach, or be reached from, any other machine.
//!
//! | port | service |
//! |---|---|
//! | udp 53 on 127.0.0.1 | DNS for [`ZONE`] (the upstream resolver ringfence forwards to) |
//! | tcp 8080 | HTTP/1.0: `hello from <the address the client reached>` |
//! | tcp 5201 | sink: reads to EOF, answers `sink bytes=N sha256=HEX` |
//! | tcp 5202 | source: sends [`SOURCE_BYTES`] of the pattern `byte[i] = i % 251`, then closes |
//! | udp 7 | echo |
//! | tcp 8443 | TLS (self-signed), answering the server name it was sent ([`super::tls_service`]) |

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Names the outer DNS server answers: TEST-NET stands in for the public internet,
/// `private.test` points into private space (rebinding protection must drop it).
pub const ZONE: &[(&str, &str)] = &[
    ("allowed.test", "192.0.2.10"),
    ("allowed.test", "2001:db8::10"),
    ("denied.test", "192.0.2.11"),
    ("private.test", "10.1.2.3"),
];

/// Addresses the outer init script adds to its dummy interface, each with the servers above.
pub const DUMMY_ADDRESSES: &[&str] = &[
    "192.0.2.10/32",
    "192.0.2.11/32",
    "10.1.2.3/32",
    "169.254.169.254/32",
    "2001:db8::10/128",
    // The metadata address embedded in IPv6 (NAT64, 6to4, Teredo): a policy that took these
    // for plain IPv6 would reach the servers here.
    "64:ff9b::a9fe:a9fe/128",
    "2002:a9fe:a9fe::1/128",
    "2001:0:a9fe:a9fe::5601:5601/128",
];

/// HTTP port.
pub const HTTP_PORT: u16 = 8080;
/// Hashing sink port.
pub const SINK_PORT: u16 = 5201;
/// Pattern source port.
pub const SOURCE_PORT: u16 = 5202;
/// UDP echo port.
pub const UDP_ECHO_PORT: u16 = 7;
/// Bytes the source sends per connection (64 MiB).
pub const SOURCE_BYTES: u64 = 64 << 20;

/// How long a connection may sit idle before a server gives up on it.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// For a direct run on a host (see [`super::direct`]): checks that this process is in network
/// and mount namespaces of its own (so the test interface, the servers' ports and the ping
/// setting below touch nothing of the host's), then bind-mounts a private `/etc/resolv.conf`
/// (a file in `dir`, the run's log directory) for [`setup_outer_network`] to write. Nothing
/// is mounted over `/tmp`: the build's binaries may live there.
pub fn isolate_direct_run(dir: &std::path::Path) -> Result<(), String> {
    let ns = |p: &str| std::fs::read_link(p).map_err(|e| format!("{p}: {e}"));
    // The parent is the program that started `unshare`, in the host's namespaces.
    // SAFETY: getppid has no preconditions and touches no memory.
    let parent = unsafe { libc::getppid() };
    let theirs = |kind: &str| ns(&format!("/proc/{parent}/ns/{kind}"));
    if ns("/proc/self/ns/net")? == theirs("net")? || ns("/proc/self/ns/mnt")? == theirs("mnt")? {
        return Err("a direct run must be in network and mount namespaces of its own (start it with `unshare --net --mount`); refusing to change the host's network".into());
    }
    command(&["mount", "--make-rprivate", "/"])?;
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "").map_err(|e| format!("{}: {e}", resolv.display()))?;
    let resolv = resolv.to_string_lossy();
    command(&["mount", "--bind", &resolv, "/etc/resolv.conf"])
}

/// Prepares the outer VM's network: loopback up, an interface `rf-test` with
/// [`DUMMY_ADDRESSES`] (a dummy; a veth pair where the kernel has no dummy driver, as on some
/// hosts of a direct run), `/etc/resolv.conf` pointing at the DNS server below (ringfence
/// forwards guest queries there), and ping sockets for every group (so the netstack can
/// answer guest pings; this is the namespace's own setting). Returns what failed.
pub fn setup_outer_network() -> Vec<String> {
    let mut failures = Vec::new();
    let mut step = |args: &[&str]| {
        if let Err(e) = command(args) {
            failures.push(e);
        }
    };
    step(&["ip", "link", "set", "lo", "up"]);
    if command(&["ip", "link", "add", "rf-test", "type", "dummy"]).is_err() {
        step(&[
            "ip",
            "link",
            "add",
            "rf-test",
            "type",
            "veth",
            "peer",
            "name",
            "rf-test-peer",
        ]);
        step(&["ip", "link", "set", "rf-test-peer", "up"]);
    }
    step(&["ip", "link", "set", "rf-test", "up"]);
    for a in DUMMY_ADDRESSES {
        step(&["ip", "addr", "add", a, "dev", "rf-test"]);
    }
    step(&["sysctl", "-w", "net.ipv4.ping_group_range=0 2147483647"]);
    if let Err(e) = std::fs::write("/etc/resolv.conf", "nameserver 127.0.0.1\n") {
        failures.push(format!("/etc/resolv.conf: {e}"));
    }
    failures
}

/// Runs a set-up command (its output to /dev/null): `Err` names it when it fails.
fn command(args: &[&str]) -> Result<(), String> {
    let ok = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` failed", args.join(" ")))
    }
}

/// Starts every server on its own thread; returns the ones that failed to start.
pub fn start_all() -> Vec<String> {
    let mut failures = Vec::new();
    let any = |port| SocketAddr::from((IpAddr::from([0u16; 8]), port));
    let tcp: [(u16, Handler); 3] = [
        (HTTP_PORT, serve_http),
        (SINK_PORT, serve_sink),
        (SOURCE_PORT, serve_source),
    ];
    for (port, handler) in tcp {
        match TcpListener::bind(any(port)) {
            Ok(l) => {
                std::thread::spawn(move || accept_loop(l, handler));
            }
            Err(e) => failures.push(format!("tcp port {port}: {e}")),
        }
    }
    if let Err(e) = super::tls_service::start() {
        failures.push(e);
    }
    match UdpSocket::bind(any(UDP_ECHO_PORT)) {
        Ok(s) => {
            std::thread::spawn(move || udp_echo(&s));
        }
        Err(e) => failures.push(format!("udp echo: {e}")),
    }
    match UdpSocket::bind(("127.0.0.1", 53)) {
        Ok(s) => {
            std::thread::spawn(move || dns(&s));
        }
        Err(e) => failures.push(format!("dns: {e}")),
    }
    failures
}

/// Serves one accepted connection.
type Handler = fn(TcpStream) -> io::Result<()>;

fn accept_loop(listener: TcpListener, handler: Handler) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let _ = handler(stream);
        });
    }
}

/// Answers any request with one line naming the local address the client reached.
fn serve_http(mut s: TcpStream) -> io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        match s.read(&mut buf)? {
            0 => break,
            n => req.extend_from_slice(&buf[..n]),
        }
    }
    let local = s.local_addr()?.ip();
    let local = match local {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(local, IpAddr::V4),
        v4 => v4,
    };
    let body = format!("hello from {local}\n");
    write!(
        s,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads to EOF, then answers with the byte count and SHA-256 of what arrived.
fn serve_sink(mut s: TcpStream) -> io::Result<()> {
    let mut h = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => {
                h.update(&buf[..n]);
                total += n as u64;
            }
        }
    }
    writeln!(s, "sink bytes={total} sha256={:x}", h.finalize())
}

/// Sends [`SOURCE_BYTES`] of the pattern and closes.
fn serve_source(mut s: TcpStream) -> io::Result<()> {
    let chunk: Vec<u8> = (0..251u64 * 256).map(benches::peer::pattern_byte).collect();
    let mut left = SOURCE_BYTES;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
}

fn udp_echo(s: &UdpSocket) {
    let mut buf = [0u8; 65536];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        let _ = s.send_to(&buf[..n], from);
    }
}

fn dns(s: &UdpSocket) {
    let mut zone = std::collections::HashMap::<String, Vec<IpAddr>>::new();
    for (name, ip) in ZONE {
        if let Ok(ip) = ip.parse() {
            zone.entry((*name).to_string()).or_default().push(ip);
        }
    }
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        if let Some(resp) = benches::dns::answer(&buf[..n], &zone) {
            let _ = s.send_to(&resp, from);
        }
    }
}

/// Hex SHA-256 of `bytes` bytes of the pattern `byte[i] = i % 251` (the source's, and the
/// probe guest's).
pub fn pattern_sha256(bytes: u64) -> String {
    let chunk: Vec<u8> = (0..251u64 * 4096)
        .map(benches::peer::pattern_byte)
        .collect();
    let mut h = Sha256::new();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        h.update(&chunk[..n]);
        left -= n as u64;
    }
    format!("{:x}", h.finalize())
}

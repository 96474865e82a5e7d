//! An HTTP/1.1 GET made *as the guest* with `VmHandle::dial_out`: the guest's policy judges
//! the destination (here a rule allows one loopback port), and the embedder gets a plain
//! `TcpStream`. The server is this example's own, on 127.0.0.1.
//!
//! ```text
//! cargo run -p ringfence --example http_client -- $(cargo xtask probe | tail -1)
//! ```
//!
//! Prints the response's status line; exits non-zero if anything fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use ringfence::embed::{NetHandleError, Proto};
use ringfence::net::NetBackendSpec;
use ringfence::{Console, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let probe = std::env::args()
        .nth(1)
        .ok_or("usage: http_client PROBE_ELF (build the probe with `cargo xtask probe`)")?;

    // The server: answers one request.
    let server = TcpListener::bind("127.0.0.1:0")?;
    let addr = server.local_addr()?;
    std::thread::spawn(move || -> std::io::Result<()> {
        let (conn, _) = server.accept()?;
        let mut request = BufReader::new(&conn);
        let mut line = String::new();
        while request.read_line(&mut line)? > 2 {
            line.clear(); // up to the empty line that ends the head
        }
        (&conn)
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
    });

    // A guest with the user network whose policy allows exactly that port on loopback. The
    // probe's `serve` scenario brings the network up (the policy lives on its device thread).
    let mut config = VmConfig::new(&probe);
    config.cmdline = "probe.scenario=serve probe.port=80 probe.timeout_ms=60000".into();
    config.pass_tsc_khz = true;
    config.legacy_pit = false;
    config.console = Console::Sink(Box::new(std::io::sink()));
    config.timeout = Some(Duration::from_secs(60));
    config.net.backend = NetBackendSpec::User;
    config.net.user.policy.rules = vec![format!("allow@loopback:tcp:{}", addr.port())];
    let vm = Vm::new(config).start()?;

    let mut conn = None;
    for _ in 0..6 {
        match vm.dial_out(Proto::Tcp, addr) {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            // The guest has not set its network device up yet.
            Err(NetHandleError::NotReady) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut conn = conn.ok_or("the guest's network did not come up")?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    println!("{status}");
    vm.kill();
    vm.wait();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected response: {response:?}").into());
    }
    Ok(())
}

//! `rf-nested`: the nested harness's program inside the outer VM (see
//! `ringfence_tests::nested`).
//!
//! ```text
//! rf-nested run [--direct] LIST RESULTS
//!                                   run the scenarios in LIST, result lines to RESULTS
//!                                   (--direct: on a host, in namespaces of its own)
//! rf-nested get ADDR [SECS]         HTTP GET / from ADDR, retried until it answers; prints the body
//! rf-nested udp ADDR TEXT [SECS]    send TEXT to ADDR, retried until a reply; prints the reply
//! rf-nested time LABEL CMD ARGS... run CMD (output to /dev/null), print
//!                                   `TIME LABEL <ms> <exit status>`
//! rf-nested guest-ram PID MIB LABEL=TEXT...
//!                                   count each TEXT in the guest RAM of VMM process PID
//!                                   (guest of MIB MiB); prints `CHECK ram_LABEL N` lines
//! rf-nested vsock UDS PORT REQUEST [SECS]
//!                                   send one agent REQUEST to guest vsock PORT through the
//!                                   vsock Unix socket UDS (CONNECT PORT), retried until it
//!                                   answers; prints the answer
//! rf-nested kata DIR CMD...       replay Kata's Firecracker call sequence in DIR (which holds
//!                                   rootfs.ext4) with CMD as the sandbox's command; prints
//!                                   `CHECK` lines, exits with the VM's status
//! rf-nested outer KIT SECS SCRIPT... (on the host) boot the outer VM from the kit in KIT,
//!                                   run each SCRIPT there as a scenario of its own (deadline
//!                                   SECS each; one that a frozen outer VM interrupts runs again
//!                                   in a new one), print their outputs in order, exit with the
//!                                   first failing status
//! ```
//! The clients retry because a guest's server may not be up yet; they give up after SECS
//! (default 30) with status 1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ringfence_tests::nested::runner;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") if args.len() == 3 => run(&args[1], &args[2], false),
        Some("run") if args.len() == 4 && args[1] == "--direct" => run(&args[2], &args[3], true),
        Some("get") if args.len() >= 2 => get(&args[1], secs(args.get(2))),
        Some("udp") if args.len() >= 3 => udp(&args[1], &args[2], secs(args.get(3))),
        Some("time") if args.len() >= 3 => time(&args[1], &args[2..]),
        Some("guest-ram") if args.len() >= 4 => guest_ram(&args[1], &args[2], &args[3..]),
        Some("kata") if args.len() >= 3 => kata(&args[1], &args[2..]),
        Some("vsock") if args.len() >= 4 => vsock(&args[1], &args[2], &args[3], secs(args.get(4))),
        Some("outer") if args.len() >= 4 => {
            return outer(&args[1], secs(args.get(2)), &args[3..]);
        }
        _ => Err("usage: rf-nested run [--direct] LIST RESULTS | get ADDR [SECS] | udp ADDR TEXT [SECS] | time LABEL CMD... | guest-ram PID MIB LABEL=TEXT... | vsock UDS PORT REQUEST [SECS] | kata DIR CMD... | outer KIT SECS SCRIPT...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rf-nested: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Counts strings in a VM's guest RAM and prints one `CHECK ram_LABEL N` line each.
fn guest_ram(pid: &str, mib: &str, labelled: &[String]) -> Result<(), String> {
    let pid: u32 = pid.parse().map_err(|_| format!("bad PID {pid:?}"))?;
    let mib: u64 = mib.parse().map_err(|_| format!("bad MIB {mib:?}"))?;
    let pairs: Vec<(&str, &str)> = labelled
        .iter()
        .map(|l| l.split_once('=').ok_or(format!("{l:?} is not LABEL=TEXT")))
        .collect::<Result<_, _>>()?;
    let patterns: Vec<&[u8]> = pairs.iter().map(|(_, t)| t.as_bytes()).collect();
    let counts = ringfence_tests::nested::guest_ram::count_in_guest(pid, mib, &patterns)?;
    for ((label, _), n) in pairs.iter().zip(counts) {
        println!("CHECK ram_{label} {n}");
    }
    Ok(())
}

/// Runs ad-hoc scenarios in outer VMs and mirrors their results.
fn outer(kit: &str, limit: Duration, scripts: &[String]) -> ExitCode {
    use ringfence_tests::nested::{outer, scenario::Scenario};
    let kit_dir = std::path::PathBuf::from(kit);
    let kit = outer::Kit {
        kernel: kit_dir.join("vmlinuz"),
        initrd: kit_dir.join("outer.cpio"),
    };
    let scenarios: Vec<Scenario> = scripts
        .iter()
        .enumerate()
        .map(|(i, script)| {
            Scenario::new(&format!("adhoc-{}", i + 1), script).timeout(limit.as_secs())
        })
        .collect();
    let logs = kit_dir.join("../adhoc-logs");
    let run = match outer::run_suite(&kit, &scenarios, &logs) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("rf-nested: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut status = 0;
    for s in &scenarios {
        match run.outcome(&s.name) {
            Ok(o) => {
                print!("{}", o.stdout);
                eprint!("{}", o.stderr);
                let st = o.status.map_or(1, |s| s.clamp(0, 255) as u8);
                if status == 0 {
                    status = st;
                }
            }
            Err(e) => {
                eprintln!("rf-nested: {e}");
                status = status.max(1);
            }
        }
    }
    ExitCode::from(status)
}

/// Times one command from spawn to exit (for ratios between systems in one outer VM).
fn time(label: &str, cmd: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let status = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cmd[0]))?;
    println!(
        "TIME {label} {:.1} {}",
        started.elapsed().as_secs_f64() * 1e3,
        status.code().unwrap_or(-1)
    );
    Ok(())
}

fn kata(dir: &str, cmd: &[String]) -> Result<(), String> {
    use ringfence_tests::nested::fleet;
    let image = fleet::outer_image_dir();
    let agent_args = ringfence_agent::protocol::cmd_param(cmd).map_err(|e| e.to_string())?;
    let ringfence = std::path::Path::new("/usr/bin/ringfence");
    let status = fleet::kata(
        std::path::Path::new(dir),
        ringfence,
        &image.join("bzImage"),
        &agent_args,
    )?;
    if status == fleet::SANDBOX_STATUS {
        Ok(())
    } else {
        Err(format!("the sandbox ended with status {status}"))
    }
}

fn vsock(uds: &str, port: &str, request: &str, limit: Duration) -> Result<(), String> {
    use ringfence_tests::nested::fleet;
    let port: u32 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let answer = retry(limit, || {
        let mut conn = fleet::vsock_connect(std::path::Path::new(uds), port)?;
        fleet::agent_request(&mut conn, request)
    })?;
    println!("{answer}");
    Ok(())
}

fn secs(arg: Option<&String>) -> Duration {
    Duration::from_secs(arg.and_then(|s| s.parse().ok()).unwrap_or(30))
}

fn addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("bad address {text:?}: {e} (expected IP:PORT)"))
}

fn run(list: &str, results: &str, direct: bool) -> Result<(), String> {
    println!("rf-nested: environment {}", runner::environment());
    let out = std::fs::OpenOptions::new()
        .write(true)
        .open(results)
        .map_err(|e| format!("cannot open the result port {results}: {e}"))?;
    runner::run(std::path::Path::new(list), Box::new(out), direct)
}

/// Retries `attempt` every 200 ms until it succeeds or `limit` passes.
fn retry<T>(limit: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("gave up after {} s: {e}", limit.as_secs()))
            }
            Err(e) => {
                eprintln!("rf-nested: retrying: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn get(target: &str, limit: Duration) -> Result<(), String> {
    let to = addr(target)?;
    let body = retry(limit, || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut resp = Vec::new();
        // A server that closes without reading the request makes its kernel reset the
        // connection after the response: what arrived before the reset still counts.
        if let Err(e) = s.read_to_end(&mut resp) {
            if resp.is_empty() {
                return Err(format!("read: {e}"));
            }
            eprintln!("rf-nested: the connection was reset after the response ({e})");
        }
        let text = String::from_utf8_lossy(&resp).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((_, body)) => Ok(body.to_string()),
            None if text.is_empty() => Err("the connection closed without a response".into()),
            None => Ok(text),
        }
    })?;
    print!("{body}");
    Ok(())
}

fn udp(target: &str, text: &str, limit: Duration) -> Result<(), String> {
    let to = addr(target)?;
    let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .map_err(|e| format!("{e}"))?;
    let sock = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let reply = retry(limit, || {
        sock.send_to(text.as_bytes(), to)
            .map_err(|e| format!("send to {to}: {e}"))?;
        let mut buf = [0u8; 2048];
        let (n, _) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no reply: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?;
    println!("{reply}");
    Ok(())
}

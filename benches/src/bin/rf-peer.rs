//! `rf-peer`: the host-side peer of the benchmarks and network tests.
//!
//! ```text
//! rf-peer sink    ADDR [--conns N] [--timeout S]       read each connection to EOF
//!                 [--parallel]                         ... all N at once, one aggregate line
//!                                                      (source: BYTES split over the N)
//! rf-peer source  ADDR BYTES [--conns N] [--timeout S] send BYTES of the pattern i % 251
//! rf-peer echo    ADDR [--conns N] [--timeout S]       echo each connection until EOF
//!                 [--keep-going]                       ... a connection that fails (e.g. is
//!                                                      reset) prints an error line, the
//!                                                      server goes on
//! rf-peer udp-echo ADDR [--max N] [--timeout S]        echo datagrams until idle
//! rf-peer dns     ADDR NAME=IP[,IP]... [--timeout S]   static DNS responder (UDP)
//! rf-peer send    ADDR BYTES [--busy-core]             client: connect, send BYTES of the pattern
//! rf-peer recv    ADDR [--busy-core]                   client: connect, read to EOF, check it
//! ```
//! Servers print `listening ADDR` once bound, then one JSON line per connection; clients print
//! their one JSON line. `--busy-core` keeps one more CPU spinning during a client transfer,
//! the way the probe guest's vCPU does, so a VM-less run faces the same CPU pressure.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use benches::peer;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rf-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or(format!("{name} needs a number")),
        None => Ok(default),
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let mode = args
        .first()
        .ok_or("usage: rf-peer sink|source|echo|udp-echo|dns|send|recv ADDR ...")?;
    let addr: SocketAddr = args
        .get(1)
        .ok_or("missing ADDR (e.g. 127.0.0.1:5201)")?
        .parse()
        .map_err(|e| format!("bad ADDR: {e}"))?;
    let conns = flag(&args, "--conns", 1)?;
    let timeout = Duration::from_secs(flag(&args, "--timeout", 60)?);
    if mode == "dns" {
        let entries: Vec<String> = args[2..]
            .iter()
            .take_while(|a| !a.starts_with("--"))
            .cloned()
            .collect();
        let zone = benches::dns::parse_zone(&entries)?;
        let sock = UdpSocket::bind(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
        println!(
            "listening {}",
            sock.local_addr().map_err(|e| e.to_string())?
        );
        let n = benches::dns::serve(&sock, &zone, timeout).map_err(|e| e.to_string())?;
        println!("{{\"role\":\"dns\",\"answered\":{n}}}");
        return Ok(());
    }
    if mode == "udp-echo" {
        let sock = UdpSocket::bind(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
        println!(
            "listening {}",
            sock.local_addr().map_err(|e| e.to_string())?
        );
        let n = peer::udp_echo(&sock, timeout, flag(&args, "--max", u64::MAX)?)
            .map_err(|e| e.to_string())?;
        println!("{{\"role\":\"udp-echo\",\"datagrams\":{n}}}");
        return Ok(());
    }
    if mode == "send" || mode == "recv" {
        return client(mode, addr, &args, timeout);
    }
    let listener = peer::listen(addr).map_err(|e| e.to_string())?;
    println!(
        "listening {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let parallel = args.iter().any(|a| a == "--parallel");
    let keep_going = args.iter().any(|a| a == "--keep-going");
    let rounds = if parallel { 1 } else { conns };
    for _ in 0..rounds {
        let t = match mode.as_str() {
            "sink" if parallel => peer::parallel(&listener, conns, timeout, peer::sink_stream),
            "source" if parallel => {
                let bytes: u64 = args
                    .get(2)
                    .and_then(|b| b.parse().ok())
                    .ok_or("source needs BYTES")?;
                let each = bytes / conns.max(1);
                peer::parallel(&listener, conns, timeout, move |s| {
                    peer::source_stream(s, each)
                })
            }
            "sink" => peer::sink_one(&listener, timeout),
            "source" => {
                let bytes: u64 = args
                    .get(2)
                    .and_then(|b| b.parse().ok())
                    .ok_or("source needs BYTES")?;
                peer::source_one(&listener, bytes, timeout)
            }
            "echo" => peer::echo_one(&listener, timeout),
            other => return Err(format!("unknown mode {other:?}")),
        };
        let t = match t {
            // An accept that timed out is not a connection: stop either way.
            Err(e) if keep_going && e.kind() != std::io::ErrorKind::TimedOut => {
                let e = e.to_string().replace('"', "'");
                println!("{{\"role\":\"{mode}\",\"error\":\"{e}\"}}");
                continue;
            }
            t => t.map_err(|e| e.to_string())?,
        };
        print_transfer(mode, &t);
    }
    Ok(())
}

/// `send` / `recv`: one client connection, optionally with a busy core beside it.
fn client(mode: &str, addr: SocketAddr, args: &[String], timeout: Duration) -> Result<(), String> {
    let busy = args
        .iter()
        .any(|a| a == "--busy-core")
        .then(peer::BusyCore::start);
    let s = peer::connect(addr, timeout).map_err(|e| e.to_string())?;
    let (t, _, _) = if mode == "send" {
        let bytes: u64 = args
            .get(2)
            .and_then(|b| b.parse().ok())
            .ok_or("send needs BYTES")?;
        peer::source_stream(s, bytes)
    } else {
        peer::sink_stream(s)
    }
    .map_err(|e| e.to_string())?;
    drop(busy);
    print_transfer(mode, &t);
    Ok(())
}

fn print_transfer(role: &str, t: &peer::Transfer) {
    println!(
        "{{\"role\":\"{role}\",\"bytes\":{},\"seconds\":{:.6},\"gbps\":{:.3},\"pattern_ok\":{}}}",
        t.bytes,
        t.seconds,
        t.gbps(),
        t.pattern_ok
    );
}

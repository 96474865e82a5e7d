//! A small supervisor built on the embedding API: starts N probe VMs in this one process,
//! serves a "tool" to each of them through `Vm::listen` (reachable by that guest alone, at
//! `host.ringfence.internal:9000`, with no host port opened and whatever the guest's policy
//! says), and collects every VM's exit status.
//!
//! The tool here counts the bytes a guest uploads and checks them against the probe's
//! pattern; each guest runs the probe's `tcp-send` scenario against it.
//!
//! ```text
//! cargo run -p ringfence --example supervisor -- $(cargo xtask probe | tail -1) 4
//! ```

use std::io::Read;
use std::time::Duration;

use ringfence::embed::{GuestListener, Proto};
use ringfence::net::NetBackendSpec;
use ringfence::{Console, Vm, VmConfig, VmExit};

/// The port the tool is served on, in every guest.
const TOOL_PORT: u16 = 9000;
/// What each guest uploads.
const UPLOAD: &str = "16M";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let probe = args
        .next()
        .ok_or("usage: supervisor PROBE_ELF [N] (build the probe with `cargo xtask probe`)")?;
    let n: usize = match args.next() {
        Some(v) => v
            .parse()
            .map_err(|_| format!("N must be a count, got {v:?}"))?,
        None => 3,
    };

    let mut vms = Vec::with_capacity(n);
    let mut tools = Vec::with_capacity(n);
    for i in 0..n {
        let mut config = VmConfig::new(&probe);
        config.cmdline = format!(
            "probe.scenario=tcp-send probe.peer=host.ringfence.internal:{TOOL_PORT} probe.bytes={UPLOAD}"
        );
        config.pass_tsc_khz = true; // the probe's clock
        config.legacy_pit = false;
        config.console = Console::Sink(Box::new(std::io::sink()));
        config.timeout = Some(Duration::from_secs(60));
        config.net.backend = NetBackendSpec::User;
        let mut vm = Vm::new(config);
        // Registered before the guest runs, so its first connect finds the tool.
        let listener = vm.listen(Proto::Tcp, TOOL_PORT)?;
        tools.push(std::thread::spawn(move || serve_tool(i, listener)));
        vms.push(vm.start()?);
    }

    for (i, (vm, tool)) in vms.iter().zip(tools).enumerate() {
        let exit = vm.wait();
        let served = tool.join().map_err(|_| "a tool thread panicked")?;
        match (&exit, served) {
            (VmExit::GuestStatus(0), Ok(bytes)) => {
                println!("vm {i}: exit status 0, tool received {bytes} bytes, pattern intact")
            }
            (_, Ok(bytes)) => println!(
                "vm {i}: {exit} (status {}), tool got {bytes} bytes",
                exit.status()
            ),
            (_, Err(e)) => println!(
                "vm {i}: {exit} (status {}), tool failed: {e}",
                exit.status()
            ),
        }
    }
    Ok(())
}

/// Accepts one connection from guest `i` and reads it to the end, checking the probe's
/// pattern (byte k = k mod 251). Returns the byte count.
fn serve_tool(i: usize, listener: GuestListener) -> Result<u64, String> {
    let mut conn = listener
        .accept_timeout(Duration::from_secs(60))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("guest {i} did not connect within 60 s"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = conn.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(total);
        }
        for (k, b) in buf[..n].iter().enumerate() {
            if u64::from(*b) != (total + k as u64) % 251 {
                return Err(format!(
                    "byte {} differs from the pattern",
                    total + k as u64
                ));
            }
        }
        total += n as u64;
    }
}

//! The benchmark's own network namespace: a tap at 192.0.2.1 for the tap systems, and a veth
//! link with a default route so that passt (which copies the host's addressing) has
//! something to copy. Traffic never leaves this namespace.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// Host-side address of the tap.
pub const TAP_HOST: &str = "192.0.2.1";
/// Guest address on the tap.
pub const TAP_GUEST: &str = "192.0.2.2";

/// A namespace that is deleted on drop.
pub struct BenchNetns {
    /// Its name.
    pub name: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl BenchNetns {
    /// Creates `rf-bench-<pid>` with tap `rfb0` (vnet_hdr) and veth `rfd0`/`rfd1`.
    pub fn create() -> Result<Self> {
        let name = format!("rf-bench-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        let ns = BenchNetns { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "tuntap", "add", "rfb0", "mode", "tap", "vnet_hdr"])?;
        ip(&["-n", n, "addr", "add", "192.0.2.1/24", "dev", "rfb0"])?;
        ip(&["-n", n, "link", "set", "rfb0", "up"])?;
        // No `dummy` driver on our kernels: a veth pair gives passt an addressed, routed link.
        ip(&[
            "-n", n, "link", "add", "rfd0", "type", "veth", "peer", "name", "rfd1",
        ])?;
        ip(&["-n", n, "addr", "add", "198.51.100.1/24", "dev", "rfd0"])?;
        ip(&["-n", n, "link", "set", "rfd0", "up"])?;
        ip(&["-n", n, "link", "set", "rfd1", "up"])?;
        ip(&["-n", n, "route", "add", "default", "via", "198.51.100.254"])?;
        Ok(ns)
    }

    /// A command running `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Starts `rf-peer ARGS` and waits for its `listening` line.
    pub fn peer(&self, bin: &Path, args: &[&str]) -> Result<Peer> {
        use std::io::{BufRead, BufReader};
        let mut child = self
            .command(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting rf-peer")?;
        let out = child.stdout.as_mut().context("rf-peer stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("listening") {
            let _ = child.kill();
            bail!("rf-peer did not start: {line:?}");
        }
        Ok(Peer { child: Some(child) })
    }
}

/// A running `rf-peer` server, killed if dropped before [`Peer::result`] (a failed run must
/// not leave it holding its port for the next system).
pub struct Peer {
    child: Option<Child>,
}

impl Peer {
    /// Waits for the peer to finish and returns its last JSON line.
    pub fn result(mut self) -> Result<serde_json::Value> {
        let child = self.child.take().context("rf-peer already reaped")?;
        last_json_line(&child.wait_with_output()?.stdout)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last line of an `rf-peer` run's stdout, parsed as JSON.
pub fn last_json_line(stdout: &[u8]) -> Result<serde_json::Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("rf-peer said {text:?}"))
}

impl Drop for BenchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

//! The host's own loopback ceiling, measured in the same run as the VMs: no VM at all, a
//! native `rf-peer send`/`recv` client in place of the guest, talking to the same `rf-peer`
//! sink/source on the namespace's 127.0.0.1, with one more core kept busy (`--busy-core`) the
//! way the probe guest's busy-polling vCPU keeps one busy. A user-mode VMM cannot move bytes
//! between the guest and a host loopback socket faster than this: its device thread does the
//! client's socket work and more, under the same CPU pressure. Reported as system
//! `host-loopback`, so the report's ratio column shows how many times passt the host itself
//! reaches.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::netns::{last_json_line, BenchNetns};
use super::report::Metric;

/// The name of this pseudo-system in reports and `--systems`.
pub const NAME: &str = "host-loopback";

/// One client run against a peer already listening; returns the peer's measured Gbit/s after
/// checking both ends agree on an intact byte count.
fn transfer(
    ns: &BenchNetns,
    peer: &Path,
    server: &[&str],
    client: &[&str],
    bytes: u64,
) -> Result<f64> {
    let server = ns.peer(peer, server)?;
    let out = ns
        .command(peer)
        .args(client)
        .output()
        .context("running the rf-peer client")?;
    if !out.status.success() {
        bail!(
            "rf-peer {}: {}",
            client.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let c = last_json_line(&out.stdout)?;
    let s = server.result()?;
    for (side, v) in [("client", &c), ("server", &s)] {
        if v["bytes"] != bytes || v["pattern_ok"] != true {
            bail!("{NAME}: {side} reported {v} (expected {bytes} intact bytes)");
        }
    }
    Ok(s["gbps"].as_f64().unwrap_or(0.0))
}

/// The ceiling's figures so far, one entry per completed repetition.
#[derive(Debug, Default)]
pub struct Samples {
    g2h: Vec<f64>,
    h2g: Vec<f64>,
}

impl Samples {
    /// The report's `tcp_g2h_gbps` (client sends to the sink) and `tcp_h2g_gbps` (the
    /// source sends to the client) for [`NAME`].
    pub fn into_metrics(self) -> Vec<Metric> {
        [("tcp_g2h_gbps", self.g2h), ("tcp_h2g_gbps", self.h2g)]
            .into_iter()
            .map(|(metric, samples)| Metric {
                system: NAME.into(),
                metric: metric.into(),
                unit: "Gbit/s".into(),
                samples,
                lower_is_better: false,
            })
            .collect()
    }
}

/// Measures one transfer of `bytes` each way and appends both to `out`, both or none.
pub fn run_rep(ns: &BenchNetns, peer: &Path, bytes: u64, out: &mut Samples) -> Result<()> {
    let n = bytes.to_string();
    let g2h = transfer(
        ns,
        peer,
        &["sink", "127.0.0.1:5111", "--timeout", "60"],
        &[
            "send",
            "127.0.0.1:5111",
            &n,
            "--busy-core",
            "--timeout",
            "60",
        ],
        bytes,
    )?;
    let h2g = transfer(
        ns,
        peer,
        &["source", "127.0.0.1:5112", &n, "--timeout", "60"],
        &["recv", "127.0.0.1:5112", "--busy-core", "--timeout", "60"],
        bytes,
    )?;
    out.g2h.push(g2h);
    out.h2g.push(h2g);
    Ok(())
}

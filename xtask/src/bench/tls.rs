//! `cargo xtask bench tls`: one TLS flow direct vs through the interception proxy (issue 17
//! item 5). The measurement is `benches/benches/tls.rs` (rounds interleaved there); this runs
//! it and turns its samples into report rows: `tls-direct` is the baseline of
//! `ringfence-tls-intercept`.

use anyhow::{bail, Context, Result};

use super::report::{Metric, Report};

/// Runs the bench with `rounds` rounds and adds its rows to `report`.
pub fn run(rounds: usize, report: &mut Report) -> Result<()> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["bench", "-p", "benches", "--bench", "tls"])
        .env("RF_TLS_BENCH_ROUNDS", rounds.to_string())
        .output()
        .context("running cargo bench -p benches --bench tls")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "cargo bench --bench tls failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RF_TLS_SAMPLES "))
        .context("the tls bench printed no RF_TLS_SAMPLES line")?;
    let v: serde_json::Value = serde_json::from_str(line).context("RF_TLS_SAMPLES is not JSON")?;
    let samples = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    for (system, key, metric, unit, lower) in [
        ("tls-direct", "direct_gbit", "tls_gbit", "Gbit/s", false),
        (
            "ringfence-tls-intercept",
            "intercepted_gbit",
            "tls_gbit",
            "Gbit/s",
            false,
        ),
        (
            "tls-direct",
            "direct_ttfb_ms",
            "tls_first_byte_ms",
            "ms",
            true,
        ),
        (
            "ringfence-tls-intercept",
            "intercepted_ttfb_ms",
            "tls_first_byte_ms",
            "ms",
            true,
        ),
        (
            "ringfence-tls-intercept",
            "cold_ttfb_ms",
            "tls_first_byte_new_name_ms",
            "ms",
            true,
        ),
    ] {
        report.metrics.push(Metric {
            system: system.into(),
            metric: metric.into(),
            unit: unit.into(),
            samples: samples(key),
            lower_is_better: lower,
        });
    }
    report.notes.push(
        "tls: one HTTPS flow (256 MiB download; 1-byte response for first-byte time) from a rustls client to a rustls server on loopback, direct vs handed to the TLS interception proxy over a socket pair as the netstack hands a guest flow; rounds interleaved. A spliced guest flow costs the direct flow plus the netstack translation, which is the same for spliced and intercepted flows (see the net rows).".into(),
    );
    Ok(())
}

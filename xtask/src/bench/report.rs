//! Benchmark results: statistics over repetitions, and the `report.json` / `report.md` files.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

/// One metric of one system over several repetitions.
#[derive(Clone, Debug)]
pub struct Metric {
    /// System name (`ringfence`, `qemu-microvm`, ...).
    pub system: String,
    /// Metric name (`boot_exit_ms`, ...).
    pub metric: String,
    /// Unit.
    pub unit: String,
    /// Every repetition's value.
    pub samples: Vec<f64>,
    /// Whether smaller is better (for ratios and charts).
    pub lower_is_better: bool,
}

impl Metric {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    /// The q-quantile (nearest rank).
    pub fn quantile(&self, q: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    /// The median.
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }
}

/// Everything one `cargo xtask bench` run measured.
#[derive(Default)]
pub struct Report {
    /// All metrics, in the order measured.
    pub metrics: Vec<Metric>,
    /// Host facts.
    pub host: serde_json::Value,
    /// Notes printed under the table (method, caveats).
    pub notes: Vec<String>,
}

impl Report {
    /// The JSON form: `{"results":[{"system","metric","value","unit",...}], "host", "date"}`.
    pub fn to_json(&self, date: &str) -> serde_json::Value {
        let results: Vec<_> = self
            .metrics
            .iter()
            .map(|m| {
                json!({
                    "system": m.system,
                    "metric": m.metric,
                    "value": m.median(),
                    "unit": m.unit,
                    "p90": m.quantile(0.9),
                    "min": m.quantile(0.0),
                    "max": m.quantile(1.0),
                    "runs": m.samples.len(),
                })
            })
            .collect();
        json!({"results": results, "host": self.host, "date": date, "notes": self.notes})
    }

    /// The Markdown form: one row per metric and system with median, p90, spread and the
    /// ratios to that metric's baselines (see [`baselines_for`]).
    pub fn to_markdown(&self, date: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# ringfence benchmark report\n");
        let _ = writeln!(md, "Date: {date}  ");
        let _ = writeln!(md, "Host: {}\n", self.host);
        let _ = writeln!(
            md,
            "| metric | system | median | p90 | min–max | runs | ratio to baseline |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for m in &self.metrics {
            let ratio = self.ratios(m).join("; ");
            let ratio = if ratio.is_empty() {
                "–".into()
            } else {
                ratio
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} {} | {:.2} | {:.2}–{:.2} | {} | {} |",
                m.metric,
                m.system,
                m.median(),
                m.unit,
                m.quantile(0.9),
                m.quantile(0.0),
                m.quantile(1.0),
                m.samples.len(),
                ratio
            );
        }
        for n in &self.notes {
            let _ = writeln!(md, "\n{n}");
        }
        md
    }

    /// The median of `metric` for `system`, if it was measured.
    fn median_of(&self, system: &str, metric: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|b| b.metric == metric && b.system == system && !b.samples.is_empty())
            .map(Metric::median)
            .filter(|v| *v > 0.0)
    }

    /// `m`'s ratios: to the strongest of its baselines that was measured in this run, and also
    /// to the long-standing one (the last in [`baselines_for`]) when that differs.
    fn ratios(&self, m: &Metric) -> Vec<String> {
        let better = if m.lower_is_better { "lower" } else { "higher" };
        let candidates: Vec<&str> = baselines_for(&m.system, &m.metric)
            .iter()
            .copied()
            .filter(|b| *b != m.system)
            .collect();
        let mut out = Vec::new();
        let strongest = candidates
            .iter()
            .find_map(|b| self.median_of(b, &m.metric).map(|v| (*b, v)));
        if let Some((b, v)) = strongest {
            out.push(format!(
                "{:.2}x vs {b} ({better} is better)",
                m.median() / v
            ));
        }
        if let Some(classic) = candidates.last() {
            if strongest.map(|(b, _)| b) != Some(*classic) {
                if let Some(v) = self.median_of(classic, &m.metric) {
                    out.push(format!("{:.2}x vs {classic}", m.median() / v));
                }
            }
        }
        out
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let date = today();
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&self.to_json(&date))?,
        )?;
        std::fs::write(dir.join("report.md"), self.to_markdown(&date))?;
        Ok(())
    }
}

/// The systems each result is compared with, strongest first: QEMU microvm for boot; QEMU 10
/// on a tap, then the system QEMU on a tap, for the tap systems; QEMU 10 with passt 2025 over
/// vhost-user, then over a socket, then the system QEMU with its passt, for the user-mode
/// systems. The report leads with the first one measured in the run.
pub fn baselines_for(system: &str, metric: &str) -> &'static [&'static str] {
    if let Some(base) = thread_per_vm_baseline(system) {
        base
    } else if system.starts_with("ringfence-user-pcap") {
        // What capturing costs: against the same system without a capture, same rounds.
        &["ringfence-user"]
    } else if metric.starts_with("boot_") || metric == "vmm_cpu_ms" || metric == "rss_overhead_mib"
    {
        &["qemu-microvm"]
    } else if metric.starts_with("tls_") {
        &["tls-direct"]
    } else if system.ends_with("-tap") {
        &["qemu10-tap", "qemu-tap"]
    } else {
        &["qemu10-passt-vhost-user", "qemu10-passt", "qemu-passt"]
    }
}

/// The density benchmark's shared-device-thread systems are compared with the thread-per-VM
/// system of the same VMs and guest wait (halting, or `-spin`), measured in the same rounds
/// (and, with 8 VMs, first with 8 QEMU + passt pairs, as are the thread-per-VM systems).
fn thread_per_vm_baseline(system: &str) -> Option<&'static [&'static str]> {
    Some(match system {
        "ringfence-shared-8vm" => &["qemu10-passt-8vm", "qemu-passt-8vm", "ringfence-lib-8vm"],
        "ringfence-lib-8vm" | "ringfence-lib-spin-8vm" => &["qemu10-passt-8vm", "qemu-passt-8vm"],
        "ringfence-shared-32vm" => &["ringfence-lib-32vm"],
        "ringfence-shared-spin-8vm" | "ringfence-shared-devnice-spin-8vm" => &[
            "qemu10-passt-8vm",
            "qemu-passt-8vm",
            "ringfence-lib-spin-8vm",
        ],
        "ringfence-shared-spin-32vm" | "ringfence-shared-devnice-spin-32vm" => {
            &["ringfence-lib-spin-32vm"]
        }
        _ => return None,
    })
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's published algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let m = Metric {
            system: "s".into(),
            metric: "m".into(),
            unit: "ms".into(),
            samples: vec![5.0, 1.0, 3.0, 2.0, 4.0],
            lower_is_better: true,
        };
        assert_eq!(m.median(), 3.0);
        assert_eq!(m.quantile(0.9), 5.0);
        assert_eq!(m.quantile(0.0), 1.0);
    }

    #[test]
    fn ratios_lead_with_the_strongest_baseline_measured() {
        let m = |system: &str, v: f64| Metric {
            system: system.into(),
            metric: "tcp_g2h_gbps".into(),
            unit: "Gbit/s".into(),
            samples: vec![v],
            lower_is_better: false,
        };
        let mut r = Report {
            metrics: vec![
                m("ringfence-user", 12.0),
                m("qemu10-passt", 8.0),
                m("qemu-passt", 4.0),
            ],
            ..Default::default()
        };
        let rf = r.metrics[0].clone();
        assert_eq!(
            r.ratios(&rf),
            [
                "1.50x vs qemu10-passt (higher is better)",
                "3.00x vs qemu-passt"
            ]
        );
        r.metrics.push(m("qemu10-passt-vhost-user", 10.0));
        assert_eq!(
            r.ratios(&rf)[0],
            "1.20x vs qemu10-passt-vhost-user (higher is better)"
        );
        r.metrics
            .retain(|x| x.system != "qemu10-passt" && x.system != "qemu10-passt-vhost-user");
        assert_eq!(r.ratios(&rf), ["3.00x vs qemu-passt (higher is better)"]);
        // A baseline is not compared with itself.
        let q = r.metrics[1].clone();
        assert!(r.ratios(&q).is_empty());
    }

    #[test]
    fn date_has_the_iso_shape() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}

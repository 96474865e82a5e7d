//! What an idle VM costs the host: the probe's `idle` scenario (its vCPU halted at CPL0 with
//! interrupts on) under ringfence, host CPU of the whole process from `/proc/<pid>/stat` over a
//! fixed window after boot. The same probe spinning at CPL3 is measured beside it as the
//! "busy" reference.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::procstat;
use super::report::{Metric, Report};

/// Time given to boot before the window opens.
const SETTLE: Duration = Duration::from_secs(1);

/// Measures `runs` windows of `window` each for the idle and the spinning probe.
pub fn run(
    bin: &Path,
    probe: &Path,
    runs: usize,
    window: Duration,
    report: &mut Report,
) -> Result<()> {
    for (system, scenario) in [
        ("ringfence-idle", "probe.scenario=idle"),
        ("ringfence-spin", "probe.scenario=spin:1000000000000000"),
    ] {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut child = Command::new(bin)
                .args(["run", "--kernel"])
                .arg(probe)
                .args(["--timeout", "600", "--", scenario])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            std::thread::sleep(SETTLE);
            let before = procstat::read(child.id());
            std::thread::sleep(window);
            let after = procstat::read(child.id());
            let _ = child.kill();
            let _ = child.wait();
            if let (Some(a), Some(b)) = (before, after) {
                // The whole process: an idle guest's cost is the VMM's wake-ups, a busy
                // guest's is its own execution, which the kernel charges here too.
                let cpu = (b.user + b.system) - (a.user + a.system);
                samples.push(100.0 * cpu / window.as_secs_f64());
            }
        }
        report.metrics.push(Metric {
            system: system.into(),
            metric: "host_cpu_pct".into(),
            unit: "% of a core".into(),
            samples,
            lower_is_better: true,
        });
    }
    report.notes.push(format!(
        "host_cpu_pct: CPU (user + system, guest time included) of the ringfence process over {:.0} s, {:.0} s after start; \
         ringfence-idle runs the probe's `idle` scenario (vCPU halted), ringfence-spin the probe spinning at CPL3. \
         /proc counts in clock ticks (10 ms), so an idle figure of 0 means less than one tick per window.",
        window.as_secs_f64(),
        SETTLE.as_secs_f64()
    ));
    Ok(())
}

//! Boot benchmark: the same probe ELF under ringfence and QEMU microvm, interleaved run by run,
//! measuring process start → ready line, start → exit, VMM CPU time and peak RSS.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use super::measure::{run_measured, RunSample};
use super::report::{Metric, Report};

/// The probe prints this as soon as its runtime is up.
const READY_MARKER: &str = "probe: ready";
/// Guest memory for every system, MiB.
pub const GUEST_MEM_MIB: u32 = 128;
/// A single boot may not take longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// The command line every system gets.
fn probe_cmdline(tsc_khz: Option<u64>) -> String {
    let mut s = String::from("probe.scenario=hello");
    if let Some(k) = tsc_khz {
        s.push_str(&format!(" probe.tsc_khz={k}"));
    }
    s
}

/// ringfence's command for the probe.
pub fn ringfence_cmd(bin: &Path, probe: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(bin);
    c.arg("run")
        .arg("--kernel")
        .arg(probe)
        .args(["--mem", &GUEST_MEM_MIB.to_string()])
        .arg("--no-pit")
        // QEMU gets no network device either.
        .args(["--net", "none"])
        .args(["--cmdline", cmdline]);
    c
}

/// QEMU microvm's command for the probe (the same ELF and memory), with extra devices.
pub fn qemu_cmd(probe: &Path, cmdline: &str, extra: &[&str]) -> Command {
    qemu_cmd_at(Path::new("qemu-system-x86_64"), None, probe, cmdline, extra)
}

/// [`qemu_cmd`] with a given QEMU binary and, for a QEMU outside the system, its firmware
/// directory (`-L`).
pub fn qemu_cmd_at(
    qemu: &Path,
    firmware: Option<&Path>,
    probe: &Path,
    cmdline: &str,
    extra: &[&str],
) -> Command {
    let mut c = Command::new(qemu);
    if let Some(dir) = firmware {
        c.arg("-L").arg(dir);
    }
    // The same legacy devices as ringfence's probe runs: no PIT, PIC or RTC.
    c.args(["-M", "microvm,pit=off,pic=off,rtc=off", "-enable-kvm"])
        .args(["-cpu", "host,-arch-capabilities"])
        .args(["-m", &GUEST_MEM_MIB.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(extra)
        .arg("-kernel")
        .arg(probe)
        .args(["-append", cmdline]);
    c
}

/// Extracts `"tsc_khz":N` from the probe's JSON line.
fn tsc_khz(sample: &RunSample) -> Option<u64> {
    sample.stdout.iter().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l.trim()).ok()?;
        v.get("tsc_khz")?.as_u64()
    })
}

struct Series {
    system: &'static str,
    samples: Vec<RunSample>,
}

fn check(system: &str, s: &RunSample, expect: i32) -> Result<()> {
    if s.code() != Some(expect) || s.ready.is_none() {
        bail!(
            "{system}: the probe did not boot as expected (exit {:?}, ready line seen: {}); output:\n{}",
            s.code(),
            s.ready.is_some(),
            s.stdout.join("\n")
        );
    }
    Ok(())
}

/// Runs `runs` interleaved boots of each system and adds the metrics to `report`.
pub fn run(bin: &Path, probe: &Path, runs: usize, report: &mut Report) -> Result<()> {
    // One warm-up run of each (page cache, KVM module state), and the TSC rate for QEMU.
    let warm = run_measured(
        &mut ringfence_cmd(bin, probe, &probe_cmdline(None)),
        READY_MARKER,
        RUN_LIMIT,
    )?;
    check("ringfence", &warm, 0)?;
    let cmdline = probe_cmdline(tsc_khz(&warm));
    let qwarm = run_measured(&mut qemu_cmd(probe, &cmdline, &[]), READY_MARKER, RUN_LIMIT)?;
    // isa-debug-exit: status (0 << 1) | 1.
    check("qemu-microvm", &qwarm, 1)?;

    let mut rf = Series {
        system: "ringfence",
        samples: Vec::new(),
    };
    let mut qm = Series {
        system: "qemu-microvm",
        samples: Vec::new(),
    };
    for i in 0..runs {
        print!("\r    boot run {}/{runs}", i + 1);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let s = run_measured(
            &mut ringfence_cmd(bin, probe, &cmdline),
            READY_MARKER,
            RUN_LIMIT,
        )?;
        check("ringfence", &s, 0)?;
        rf.samples.push(s);
        let s = run_measured(&mut qemu_cmd(probe, &cmdline, &[]), READY_MARKER, RUN_LIMIT)?;
        check("qemu-microvm", &s, 1)?;
        qm.samples.push(s);
    }
    println!();
    for series in [rf, qm] {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let add = |metric: &str, unit: &str, f: &dyn Fn(&RunSample) -> f64| Metric {
            system: series.system.to_string(),
            metric: metric.to_string(),
            unit: unit.to_string(),
            samples: series.samples.iter().map(f).collect(),
            lower_is_better: true,
        };
        report.metrics.push(add("boot_ready_ms", "ms", &|s| {
            s.ready.map(ms).unwrap_or(f64::NAN)
        }));
        report
            .metrics
            .push(add("boot_exit_ms", "ms", &|s| ms(s.exit)));
        report.metrics.push(add("vmm_cpu_ms", "ms", &|s| ms(s.cpu)));
        report.metrics.push(add("rss_overhead_mib", "MiB", &|s| {
            s.max_rss_kib as f64 / 1024.0
        }));
    }
    report.notes.push(format!(
        "Boot: the same probe ELF ({GUEST_MEM_MIB} MiB, 1 vCPU, scenario hello) under each system, {runs} interleaved runs after one warm-up each. \
boot_ready_ms = process start to the probe's `probe: ready` line on stdout; boot_exit_ms = process start to reaped exit; \
vmm_cpu_ms = user+system CPU of the VMM process (wait4 rusage); rss_overhead_mib = its peak RSS (guest memory is mapped lazily, so only the few pages the probe touches count)."
    ));
    Ok(())
}

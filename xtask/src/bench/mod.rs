//! `cargo xtask bench`: ringfence against QEMU on the same probe guest, in one run, with a
//! report in `target/bench/`.

mod boot;
mod measure;
mod report;

use anyhow::{bail, Result};

use crate::util::{cargo, done, run as run_cmd, step, target_dir, workspace_root};
use crate::{deps, probe};

/// Parses bench options and runs the chosen suites.
pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut runs = if quick { 5 } else { 20 };
    let mut suites = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a positive number"))?;
            }
            "boot" => suites.push("boot"),
            other => bail!("unknown bench option {other:?} (try: boot, --quick, --runs N)"),
        }
    }
    if suites.is_empty() {
        suites.push("boot");
    }
    deps::ensure_all(&[deps::TEST_PACKAGES, deps::BENCH_PACKAGES])?;
    let t = step("building ringfence (release)");
    run_cmd(cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "ringfence",
    ]))?;
    done(t);
    let probe_elf = probe::build()?;
    let bin = target_dir().join("release/ringfence");

    let mut report = report::Report {
        host: host_facts(),
        ..Default::default()
    };
    for suite in suites {
        if suite == "boot" {
            let t = step(&format!(
                "boot: ringfence vs qemu-microvm, {runs} runs each (about {} s)",
                runs / 4 + 2
            ));
            boot::run(&bin, &probe_elf, runs, &mut report)?;
            done(t);
        }
    }
    let dir = target_dir().join("bench");
    report.write(&dir, "qemu-microvm")?;
    let md = std::fs::read_to_string(dir.join("report.md"))?;
    println!("\n{md}");
    println!("written: {}/report.json, report.md", dir.display());
    Ok(())
}

fn host_facts() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    serde_json::json!({"cpu": cpu, "cores": cores, "kernel": kernel})
}

//! `cargo xtask bench`: ringfence against QEMU on the same probe guest, in one run, with a
//! report in `target/bench/`. `cargo xtask bench idle` (not in the default set) measures what
//! an idle VM costs the host; `cargo xtask bench density` (not in the default set either) how
//! fast VMs start and how many idle ones one process holds; `cargo xtask bench tls` what TLS
//! interception costs one flow. `cargo xtask bench --linux --nested [--nested-parts
//! boot,net,idle]` runs the Linux guest's comparisons inside the nested harness's outer VM
//! (all three parts unless `--nested-parts` picks some).

mod boot;
mod ceiling;
mod density;
mod density_qemu;
mod idle;
mod measure;
mod nested_idle;
mod nested_linux;
mod nested_net;
mod net;
mod netns;
mod procstat;
mod report;
mod svg;
mod tls;

use std::time::Duration;

use anyhow::{bail, Result};

use crate::util::{done, step, target_dir};
use crate::{baselines, deps, probe};

/// Parses bench options and runs the chosen suites.
pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut runs: Option<usize> = None;
    let mut suites = Vec::new();
    let mut only: Option<Vec<String>> = None;
    let (mut linux, mut nested_flag) = (false, false);
    let mut nested_parts: Vec<String> = Vec::new();
    let mut fetch_baselines = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--runs" => {
                runs = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| anyhow::anyhow!("--runs needs a positive number"))?,
                );
            }
            "--systems" => {
                let list = it.next().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--systems needs a comma-separated list, e.g. ringfence-user,qemu-passt"
                    )
                })?;
                let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
                for n in &names {
                    if n != ceiling::NAME && !net::System::ALL.iter().any(|s| s.name() == n) {
                        bail!(
                            "--systems: unknown system {n:?} (known: {}, {})",
                            net::System::ALL.map(|s| s.name()).join(", "),
                            ceiling::NAME
                        );
                    }
                }
                only = Some(names);
            }
            "--baselines" => match it.next().map(String::as_str) {
                Some("latest") => fetch_baselines = true,
                Some("cached") => fetch_baselines = false,
                other => bail!(
                    "--baselines takes `latest` (fetch QEMU 10 and build passt 2025 into ~/.cache/ringfence/baselines/ if missing) or `cached` (use them only if already there, the default); got {other:?}"
                ),
            },
            "boot" => suites.push("boot"),
            "net" => suites.push("net"),
            "idle" => suites.push("idle"),
            "density" => suites.push("density"),
            "tls" => suites.push("tls"),
            "density-net" => suites.push("density-net"),
            "--nested-parts" => {
                let list = it.next().ok_or_else(|| {
                    anyhow::anyhow!(
                        "--nested-parts needs a comma-separated list of {}",
                        nested_linux::PARTS.join(", ")
                    )
                })?;
                for p in list.split(',').map(str::trim) {
                    if !nested_linux::PARTS.contains(&p) {
                        bail!(
                            "--nested-parts: unknown part {p:?} (known: {})",
                            nested_linux::PARTS.join(", ")
                        );
                    }
                    nested_parts.push(p.to_string());
                }
            }
            "--linux" => linux = true,
            "--nested" => nested_flag = true,
            other => {
                bail!("unknown bench option {other:?} (try: boot, net, idle, density, density-net, tls, --quick, --runs N, --systems A,B, --baselines latest|cached, --linux --nested [--nested-parts boot,net,idle])")
            }
        }
    }
    match (linux, nested_flag) {
        (true, true) => suites.push("linux-nested"),
        (true, false) => bail!("{}", linux_refusal()),
        (false, true) => bail!("--nested goes with --linux: cargo xtask bench --linux --nested"),
        (false, false) if !nested_parts.is_empty() => {
            bail!("--nested-parts goes with --linux --nested")
        }
        (false, false) => {}
    }
    if suites.is_empty() {
        suites = vec!["boot", "net"];
    }
    deps::ensure_all(&[deps::TEST_PACKAGES, deps::BENCH_PACKAGES])?;
    let strongest = if !suites.contains(&"net") {
        None
    } else if fetch_baselines {
        let t = step(&format!(
            "baselines: QEMU {} and passt {} into ~/.cache/ringfence/baselines/ (system packages and apt sources untouched)",
            baselines::QEMU10_VERSION,
            baselines::PASST_UPSTREAM
        ));
        let found = baselines::install_latest();
        done(t);
        Some(found)
    } else {
        Some(baselines::cached())
    };
    let mut report = report::Report {
        host: host_facts(),
        ..Default::default()
    };
    if suites.contains(&"linux-nested") {
        nested_linux::run_bench(
            runs.unwrap_or(if quick { 3 } else { 10 }),
            &nested_parts,
            &mut report,
        )?;
        suites.retain(|s| *s != "linux-nested");
    }
    if suites.is_empty() {
        return finish(&report);
    }
    let (bin, peer_bin) = crate::util::build_release_binaries()?;
    let probe_elf = probe::build()?;

    for suite in suites {
        if suite == "boot" {
            let runs = runs.unwrap_or(if quick { 5 } else { 20 });
            let t = step(&format!(
                "boot: ringfence vs qemu-microvm, {runs} runs each (about {} s)",
                runs / 4 + 2
            ));
            boot::run(&bin, &probe_elf, runs, &mut report)?;
            done(t);
        }
        if suite == "idle" {
            let runs = runs.unwrap_or(if quick { 1 } else { 3 });
            let window = Duration::from_secs(if quick { 5 } else { 20 });
            let t = step(&format!(
                "idle: host CPU of an idle and a spinning probe VM, {runs} x {} s each",
                window.as_secs()
            ));
            idle::run(&bin, &probe_elf, runs, window, &mut report)?;
            done(t);
        }
        if suite == "density" {
            let runs = runs.unwrap_or(if quick { 2 } else { 5 });
            let t = step(&format!(
                "density: VM starts ({runs} rounds of 1/10/100, library and CLI), 8 and 32 VMs streaming at once (shared device threads vs a thread per VM), idle VMs held, start/stop cycles (a few minutes)"
            ));
            density::run(&bin, &peer_bin, &probe_elf, runs, &mut report)?;
            done(t);
        }
        if suite == "tls" {
            let rounds = runs.unwrap_or(if quick { 3 } else { 5 });
            let t = step(&format!(
                "tls: one TLS flow direct vs intercepted, {rounds} interleaved rounds (about {} s)",
                rounds * 4
            ));
            tls::run(rounds, &mut report)?;
            done(t);
        }
        if suite == "density-net" {
            let runs = runs.unwrap_or(if quick { 2 } else { 5 });
            let t = step(&format!(
                "density-net: 8 and 32 VMs streaming at once, shared device threads vs a thread per VM, with halting and with busy-polling guests ({runs} rounds)"
            ));
            density::run_net(&peer_bin, &probe_elf, runs, &mut report)?;
            done(t);
        }
        if suite == "net" {
            run_net(
                &bin,
                &probe_elf,
                &peer_bin,
                (quick, runs.unwrap_or(if quick { 2 } else { 5 })),
                only.as_deref(),
                strongest.clone(),
                &mut report,
            )?;
        }
    }
    finish(&report)
}

/// Writes the report and its charts into `target/bench/` and prints the Markdown.
fn finish(report: &report::Report) -> Result<()> {
    let dir = target_dir().join("bench");
    report.write(&dir)?;
    if let Some(svg) = svg::grouped_bars(
        report,
        "TCP throughput, probe guest (higher is better)",
        &["tcp_g2h_gbps", "tcp_h2g_gbps"],
        "Gbit/s",
    ) {
        std::fs::write(dir.join("throughput.svg"), svg)?;
    }
    if let Some(svg) = svg::grouped_bars(
        report,
        "1-byte TCP ping-pong (lower is better)",
        &["rr_p50_us", "rr_p99_us"],
        "µs",
    ) {
        std::fs::write(dir.join("latency.svg"), svg)?;
    }
    if let Some(svg) = svg::grouped_bars(
        report,
        "Boot, process start to exit (lower is better)",
        &["boot_ready_ms", "boot_exit_ms"],
        "ms",
    ) {
        std::fs::write(dir.join("boot.svg"), svg)?;
    }
    if let Some(svg) = svg::grouped_bars(
        report,
        "VM starts to guest-ready per second, by concurrent starts (higher is better)",
        &[
            "vm_starts_per_s_n1",
            "vm_starts_per_s_n10",
            "vm_starts_per_s_n100",
        ],
        "VMs/s",
    ) {
        std::fs::write(dir.join("density.svg"), svg)?;
    }
    let md = std::fs::read_to_string(dir.join("report.md"))?;
    println!("\n{md}");
    println!(
        "written: {}/report.json, report.md and *.svg charts",
        dir.display()
    );
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

/// Why `--linux` cannot run here, in doctor's words.
fn linux_refusal() -> String {
    let bin = target_dir().join("release/ringfence");
    let verdict = std::process::Command::new(&bin)
        .args(["doctor", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .map(|v| {
            (
                v["guest_kernel_mode"].as_str() == Some("native"),
                v["linux_verdict"].as_str().unwrap_or("").to_string(),
            )
        });
    match verdict {
        Some((true, _)) => "--linux: this host runs guest kernels at full speed, but the Linux benchmark (iperf3/sockperf in the guest) is not implemented yet".into(),
        Some((false, why)) => format!("--linux needs a host where guest kernels run at full speed: {why} (see `ringfence doctor`); here, `cargo xtask bench --linux --nested` compares boot times inside the nested harness's outer VM"),
        None => format!("--linux: cannot ask `{} doctor --json`; build ringfence first", bin.display()),
    }
}

/// The network suite: every system that works here, in one namespace.
fn run_net(
    bin: &std::path::Path,
    probe: &std::path::Path,
    peer: &std::path::Path,
    (quick, reps): (bool, usize),
    only: Option<&[String]>,
    strongest: Option<baselines::Found>,
    report: &mut report::Report,
) -> Result<()> {
    let strongest = strongest.unwrap_or_else(baselines::cached);
    if !crate::util::is_root() {
        println!("    SKIPPED net suite: it needs root for its network namespace and taps");
        report
            .notes
            .push("Network suite skipped: not running as root.".into());
        return Ok(());
    }
    let bytes: u64 = if quick { 64 << 20 } else { 256 << 20 };
    let ns = netns::BenchNetns::create()?;
    let warm = measure::run_measured(
        &mut boot::ringfence_cmd(bin, probe, "probe.scenario=hello"),
        "probe: ready",
        std::time::Duration::from_secs(30),
    )?;
    let tsc_khz = warm.stdout.iter().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()?
            .get("tsc_khz")?
            .as_u64()
    });
    let harness = net::NetBench {
        ringfence: bin,
        probe,
        peer,
        tsc_khz,
        bytes,
        rr_count: if quick { 2000 } else { 10000 },
        qemu10: strongest.qemu10.clone().ok(),
        passt2025: strongest.passt2025.clone().ok(),
    };
    let mut systems = Vec::new();
    if user_backend_available(bin) {
        systems.extend([
            net::System::RingfenceUser,
            net::System::RingfenceUserNice,
            net::System::RingfenceUserPcap,
            net::System::RingfenceUserPcap128,
        ]);
    } else {
        report.notes.push(
            "ringfence-user: not measured — `--net user` is not available in this build.".into(),
        );
    }
    systems.extend([net::System::RingfenceTap, net::System::QemuTap]);
    if crate::util::have("passt") {
        systems.push(net::System::QemuPasst);
    }
    systems.push(net::System::QemuUser);
    let mut absent = Vec::new();
    for s in [
        net::System::Qemu10Tap,
        net::System::Qemu10Passt,
        net::System::Qemu10PasstVhostUser,
    ] {
        let why = match (&strongest.qemu10, &strongest.passt2025) {
            (Err(e), _) => Some(e.clone()),
            (Ok(_), Err(e)) if s != net::System::Qemu10Tap => Some(e.clone()),
            (Ok(q), _) if s == net::System::Qemu10PasstVhostUser && !q.vhost_user => {
                Some(format!("{} lists no vhost-user netdev", q.binary.display()))
            }
            _ => None,
        };
        match why {
            None => systems.push(s),
            Some(why) => absent.push((s, why)),
        }
    }
    if let Some(only) = only {
        systems.retain(|s| only.iter().any(|n| n == s.name()));
        absent.retain(|(s, _)| only.iter().any(|n| n == s.name()));
    }
    for (s, why) in absent {
        println!("    {}: not measured — {why}", s.name());
        report
            .notes
            .push(format!("{}: not measured — {why}", s.name()));
    }
    let t = step(&format!(
        "net: {} systems x {reps} repetitions, {} MiB each way + ping-pong (about {} s)",
        systems.len(),
        bytes >> 20,
        (systems.len() + 1) * reps * if quick { 1 } else { 3 }
    ));
    let with_ceiling = only.is_none_or(|o| o.iter().any(|n| n == ceiling::NAME));
    let systems_run = systems.clone();
    // Repetitions are interleaved (every system once, then again), each round starting one
    // system later, so drift in the host's speed over the run hits every system alike.
    let mut live: Vec<Contender> = systems
        .into_iter()
        .map(|s| Contender::Vm(s, net::NetSamples::default()))
        .collect();
    if with_ceiling {
        live.push(Contender::Ceiling(ceiling::Samples::default()));
    }
    for rep in 0..reps {
        if rep > 0 && !live.is_empty() {
            live.rotate_left(1);
        }
        live.retain_mut(|c| {
            print!("\r    repetition {}/{reps}: {:<20}", rep + 1, c.name());
            let _ = std::io::Write::flush(&mut std::io::stdout());
            let res = match c {
                Contender::Vm(system, samples) => harness.run_rep(&ns, *system, samples),
                Contender::Ceiling(samples) => ceiling::run_rep(&ns, peer, bytes, samples),
            };
            if let Err(e) = res {
                println!("\n    {}: failed: {e:#}", c.name());
                report
                    .notes
                    .push(format!("{}: not measured — {e:#}", c.name()));
                return false;
            }
            true
        });
    }
    println!();
    live.sort_by_key(Contender::order);
    for c in live {
        match c {
            Contender::Vm(system, samples) => {
                report.metrics.extend(samples.into_metrics(system.name()))
            }
            Contender::Ceiling(samples) => report.metrics.extend(samples.into_metrics()),
        }
    }
    done(t);
    if systems_run.contains(&net::System::RingfenceUserNice) {
        report.notes.push(
            "ringfence-user-nice: ringfence-user with `--vcpu-nice 10`, so its device thread preempts the busy-polling vCPU instead of queueing behind it (not the default: it also makes the guest yield to every other host process).".into(),
        );
    }
    if systems_run.contains(&net::System::RingfenceUserPcap)
        || systems_run.contains(&net::System::RingfenceUserPcap128)
    {
        report.notes.push(
            "ringfence-user-pcap / ringfence-user-pcap128: ringfence-user writing a pcap of every frame (`--pcap`, whole frames / `--pcap-snaplen 128`) to /tmp, frames handed to a writer thread through a bounded queue (drops counted); compared with ringfence-user of the same rounds.".into(),
        );
    }
    if with_ceiling {
        report.notes.push(format!(
            "{}: no VM — a native rf-peer client in the guest's place, same peers and bytes, with one more core kept busy the way the probe's vCPU is; the most any user-mode VMM could reach here between a guest and a host loopback socket.",
            ceiling::NAME
        ));
    }
    report.notes.push(format!(
        "Network: the probe guest (128 MiB, 1 vCPU) per system in a private namespace; {reps} repetitions of: tcp-send and tcp-recv of {} MiB (throughput measured by the host-side rf-peer, pattern checked), and {} 1-byte TCP round trips (p50/p99 measured in the guest with its TSC). \
cpu_s_per_gb = host CPU seconds (user+system minus guest time from /proc/PID/stat, VMM plus helper such as passt) per GB moved; rss_mib = VMM peak RSS plus helper. \
_p4 metrics: the same transfers over 4 parallel connections (probe.flows=4), aggregate throughput measured by rf-peer --parallel.",
        bytes >> 20, harness.rr_count
    ));
    Ok(())
}

/// One entry of the network suite's round-robin: a VM system or the host's ceiling, with
/// the figures of its repetitions so far.
enum Contender {
    Vm(net::System, net::NetSamples),
    Ceiling(ceiling::Samples),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::Vm(s, _) => s.name(),
            Contender::Ceiling(_) => ceiling::NAME,
        }
    }

    /// Report order: the systems in [`net::System::ALL`] order, then the ceiling.
    fn order(&self) -> usize {
        match self {
            Contender::Vm(s, _) => net::System::ALL
                .iter()
                .position(|a| a == s)
                .unwrap_or(usize::MAX),
            Contender::Ceiling(_) => usize::MAX,
        }
    }
}

fn user_backend_available(bin: &std::path::Path) -> bool {
    std::process::Command::new(bin)
        .args([
            "run",
            "--net",
            "user",
            "--timeout",
            "20",
            "--",
            "probe.scenario=hello",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

//! Density benchmark (`cargo xtask bench density`): how fast VMs start and how many idle ones
//! one process holds, measured by the `density` example (`vmm/examples/density.rs`), which
//! drives the embedding API and prints one JSON line per measurement. VM starts through the
//! CLI (`ringfence run`, one process per VM) are measured here beside it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::density_qemu::{self, QemuPasst};
use super::report::{Metric, Report};
use crate::util::{cargo, run as run_cmd, target_dir, workspace_root};

/// Concurrent starts measured.
const CONCURRENCY: [usize; 3] = [1, 10, 100];
/// `hold` stops at this many VMs.
const HOLD_MAX: usize = 2000;
/// Guest memory of every density VM.
const GUEST_MIB: u64 = 64;
/// Start/stop cycles of the leak check.
const CYCLES: usize = 1000;
/// Upper bound on one driver or CLI round.
const ROUND_LIMIT: Duration = Duration::from_secs(900);
/// VMs streaming to the host peer at once in the network part, and what each uploads (2 GiB
/// in all either way).
const NET_SETS: [(usize, &str); 2] = [(8, "256M"), (32, "64M")];
/// The settings the network part compares, each with the same VMs: system name part, the
/// driver's device-thread mode, and how the guests wait when idle (the probe's `probe.wait=`).
/// `lib` (a device thread per VM, what `Vm::start` does) is the baseline of `shared` (a `Host`
/// with one shared device thread per core); both with guests that halt when idle, as Linux
/// guests do. The `-spin` modes run busy-polling guests, which keep every vCPU runnable for
/// the whole transfer: `lib-spin` is the baseline of `shared-spin` and of
/// `shared-devnice-spin` (the shared threads at nice -10, which needs root).
const NET_MODES: [(&str, &str, &str); 5] = [
    ("lib", "per-vm", "halt"),
    ("shared", "shared", "halt"),
    ("lib-spin", "per-vm", "poll"),
    ("shared-spin", "shared", "poll"),
    ("shared-devnice-spin", "shared:-10", "poll"),
];
/// VMs in the QEMU + passt baseline of the network part.
const QEMU_VMS: usize = 8;
/// The probe's ready line.
const READY: &str = "probe: ready";

/// Builds the `density` driver (release) and returns its path.
pub fn build_driver() -> Result<PathBuf> {
    run_cmd(cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "ringfence",
        "--example",
        "density",
    ]))?;
    Ok(target_dir().join("release/examples/density"))
}

/// Runs the driver with `args`; returns its JSON lines, or fails with its stderr.
fn driver(bin: &Path, probe: &Path, args: &[&str]) -> Result<Vec<Value>> {
    let mut child = Command::new(bin)
        .arg(probe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    // Both pipes drained on their own threads, so a chatty driver never blocks on them.
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().context("no stdout pipe")?));
    let stderr = read_all(Box::new(child.stderr.take().context("no stderr pipe")?));
    let t = Instant::now();
    // Polled rather than waited on, so a hung driver is killed at the round's bound (the
    // child is not reaped before `kill`, so its pid cannot have been reused).
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if t.elapsed() > ROUND_LIMIT {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    let lines: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !status.success() {
        bail!(
            "density {}: {} ({status}{})",
            args.join(" "),
            err.trim(),
            if t.elapsed() > ROUND_LIMIT {
                format!(", killed after {ROUND_LIMIT:?}")
            } else {
                String::new()
            }
        );
    }
    Ok(lines)
}

fn metric(system: &str, name: &str, unit: &str, lower: bool) -> Metric {
    Metric {
        system: system.into(),
        metric: name.into(),
        unit: unit.into(),
        samples: Vec::new(),
        lower_is_better: lower,
    }
}

/// N `ringfence run` processes started at once; seconds from the first spawn to the last
/// guest's ready line.
fn cli_round(bin: &Path, probe: &Path, n: usize) -> Result<f64> {
    let t0 = Instant::now();
    let mut children = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--kernel")
            .arg(probe)
            .args(["--mem", &GUEST_MIB.to_string(), "--no-pit", "--net", "none"])
            .args(["--timeout", "60", "--cmdline", "probe.scenario=exit:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        readers.push(std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
                .find(|l| l.contains(READY))
                .map(|_| Instant::now())
        }));
        children.push(child);
    }
    let mut last = t0;
    let mut missing = 0;
    for r in readers {
        match r.join().ok().flatten() {
            Some(at) => last = last.max(at),
            None => missing += 1,
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    if missing > 0 {
        bail!("{missing} of {n} `ringfence run` processes never printed {READY:?}");
    }
    Ok(last.duration_since(t0).as_secs_f64())
}

/// What one aggregate-network round measured.
struct NetRound {
    gbps: f64,
    gb: f64,
    vmm_host_cpu_s: f64,
    guest_cpu_s: f64,
    peer_cpu_s: f64,
    /// Most threads the driver had during the round, less those before the first start.
    threads_added: f64,
}

/// One round of the network part: `rf-peer sink --parallel` on loopback, the driver's `net`
/// mode against it; the peer's CPU from `wait4`'s rusage.
fn net_round(
    driver_bin: &Path,
    peer: &Path,
    probe: &Path,
    (vms, bytes): (usize, &str),
    (mode, wait): (&str, &str),
) -> Result<NetRound> {
    let n = vms.to_string();
    let mut child = Command::new(peer)
        .args([
            "sink",
            "127.0.0.1:0",
            "--conns",
            &n,
            "--parallel",
            "--timeout",
            "120",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", peer.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout pipe")?).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let Some(port) = first
        .strip_prefix("listening ")
        .and_then(|a| a.rsplit(':').next())
        .map(str::to_string)
    else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("rf-peer said {first:?} instead of `listening ADDR`");
    };
    let out = driver(
        driver_bin,
        probe,
        &["net", &n, bytes, &port, mode, "0", wait],
    );
    if out.is_err() {
        // The guests will not connect: end the peer now rather than at its timeout.
        let _ = child.kill();
    }
    let result = lines
        .map_while(|l| l.ok())
        .find_map(|l| serde_json::from_str::<Value>(&l).ok());
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not reaped yet (std's Child is never waited on after this);
    // `status` and `usage` are valid out-parameters.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        bail!(
            "wait4 on rf-peer failed: {}",
            std::io::Error::last_os_error()
        );
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let peer_cpu_s = tv(usage.ru_utime) + tv(usage.ru_stime);
    let line = out?
        .into_iter()
        .find(|l| l["kind"] == "net")
        .context("the density driver printed no net line")?;
    if line["ok"].as_u64() != Some(vms as u64) {
        bail!("not every guest's upload succeeded: {line}");
    }
    let peer_line = result.context("rf-peer printed no result")?;
    if peer_line["pattern_ok"] != true {
        bail!("rf-peer saw a corrupted stream: {peer_line}");
    }
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    Ok(NetRound {
        gbps: f(&peer_line["gbps"]),
        gb: f(&peer_line["bytes"]) / 1e9,
        vmm_host_cpu_s: f(&line["user_s"]) + f(&line["sys_s"]),
        guest_cpu_s: f(&line["guest_s"]),
        peer_cpu_s,
        threads_added: f(&line["threads_max"]) - f(&line["threads_before"]),
    })
}

/// The network part: every set of VMs under every device-thread setting, `runs` rounds,
/// interleaved (each round runs every set and setting once, in the same order), and with 8
/// VMs the QEMU + passt baseline in the same rounds.
pub fn run_net(peer: &Path, probe: &Path, runs: usize, report: &mut Report) -> Result<()> {
    let bin = build_driver()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // The QEMU + passt baseline (8 VMs only): needs root for its network namespace.
    let qemu = match QemuPasst::find() {
        Ok(q) if root => Ok(q),
        Ok(_) => Err("the QEMU + passt baseline needs root (its own network namespace)".into()),
        Err(e) => Err(e),
    };
    let mut qemu_metrics = match &qemu {
        Ok(q) => {
            let sys = q.system(QEMU_VMS);
            vec![
                metric(&sys, "agg_tcp_g2h_gbps", "Gbit/s", false),
                metric(&sys, "host_cpu_s_per_gb", "s/GB", true),
                metric(&sys, "guest_cpu_s_per_gb", "s/GB", true),
            ]
        }
        Err(why) => {
            println!("    skipping the QEMU + passt baseline: {why}");
            Vec::new()
        }
    };
    // Modes with a device-thread nice value need root.
    let modes: Vec<_> = NET_MODES
        .iter()
        .filter(|(_, mode, _)| root || !mode.contains(':'))
        .collect();
    // Per set and mode: Gbit/s, host CPU/GB, guest CPU/GB, threads added per VM, and (shared
    // modes) the Gbit/s ratio to the thread-per-VM mode with the same guest wait in the same round.
    let mut net: Vec<Vec<[Metric; 5]>> = NET_SETS
        .iter()
        .map(|(vms, _)| {
            modes
                .iter()
                .map(|(name, _, _)| {
                    let sys = format!("ringfence-{name}-{vms}vm");
                    [
                        metric(&sys, "agg_tcp_g2h_gbps", "Gbit/s", false),
                        metric(&sys, "host_cpu_s_per_gb", "s/GB", true),
                        metric(&sys, "guest_cpu_s_per_gb", "s/GB", true),
                        metric(&sys, "threads_per_vm_streaming", "threads", true),
                        metric(&sys, "gbps_ratio_to_thread_per_vm_same_round", "x", false),
                    ]
                })
                .collect()
        })
        .collect();
    for round in 0..runs {
        for ((vms, bytes), modes_metrics) in NET_SETS.iter().zip(net.iter_mut()) {
            let mut per_vm_gbps = [f64::NAN; 2];
            for ((name, mode, wait), [gbps, host, guest, threads, ratio]) in
                modes.iter().zip(modes_metrics.iter_mut())
            {
                print!(
                    "\r    network round {}/{runs}: {vms} VMs x {bytes}, {name}        ",
                    round + 1
                );
                let _ = std::io::Write::flush(&mut std::io::stdout());
                let r = net_round(&bin, peer, probe, (*vms, bytes), (mode, wait))?;
                gbps.samples.push(r.gbps);
                host.samples.push((r.vmm_host_cpu_s + r.peer_cpu_s) / r.gb);
                guest.samples.push(r.guest_cpu_s / r.gb);
                threads.samples.push(r.threads_added / *vms as f64);
                let slot = usize::from(*wait == "poll");
                if *mode == "per-vm" {
                    per_vm_gbps[slot] = r.gbps;
                } else {
                    ratio.samples.push(r.gbps / per_vm_gbps[slot]);
                }
            }
            if let (Ok(q), true) = (&qemu, *vms == QEMU_VMS) {
                print!(
                    "\r    network round {}/{runs}: {vms} VMs x {bytes}, {}        ",
                    round + 1,
                    q.system(*vms)
                );
                let _ = std::io::Write::flush(&mut std::io::stdout());
                let r = density_qemu::round(q, peer, probe, *vms, bytes)?;
                qemu_metrics[0].samples.push(r.gbps);
                qemu_metrics[1].samples.push(r.host_cpu_s / r.gb);
                qemu_metrics[2].samples.push(r.guest_cpu_s / r.gb);
            }
        }
    }
    println!();
    report.metrics.extend(qemu_metrics);
    report.metrics.extend(
        net.into_iter()
            .flatten()
            .flatten()
            .filter(|m| !m.samples.is_empty()),
    );
    report.notes.push(format!(
        "Aggregate network (ringfence-MODE-Nvm): N VMs in the density driver (`--net user`, rule `allow@host`, 64 MiB, 1 vCPU, started through a `Host`) each run the probe's tcp-send to one `rf-peer sink --parallel` on 127.0.0.1 at once, 2 GiB in all ({}); {runs} rounds, every set and mode once per round in the same order. \
MODE lib = a device thread per VM (`DeviceThreads::PerVm`, what `Vm::start` does), shared = one shared device thread per core (`DeviceThreads::Shared(0)`), both with guests that halt when a poll finds nothing for 20 µs (`probe.wait=halt`: sleep until the device's interrupt or the next TCP timer, as a Linux guest does); `-spin` = the same with busy-polling guests (`probe.wait=poll`, every vCPU runnable for the whole transfer); shared-devnice-spin = shared-spin with the shared threads at nice -10 (`HostConfig::device_thread_nice`, root only). \
agg_tcp_g2h_gbps = all bytes / (first connection's start → last one's end), measured by rf-peer; host_cpu_s_per_gb = (driver user + system − guest time, plus rf-peer's CPU) / GB; guest_cpu_s_per_gb = the vCPUs' guest time / GB (it includes each guest's fixed cost of touching its buffers, ~0.13 s per VM on this host); threads_per_vm_streaming = (most threads of the driver during the round − before the first start) / N; gbps_ratio_to_thread_per_vm_same_round = shared / lib (or shared[-devnice]-spin / lib-spin) Gbit/s of the same round. \
{}",
        NET_SETS
            .iter()
            .map(|(vms, bytes)| format!("{vms} x {bytes}"))
            .collect::<Vec<_>>()
            .join(", "),
        match &qemu {
            Ok(q) => format!(
                "{}: {QEMU_VMS} QEMU microvm processes ({} MiB, 1 vCPU), each with its own passt over a stream socket, in a throwaway network namespace, the same probe (polling: QEMU microvm names no IRQ for the probe to halt on) and sink (on the namespace's loopback, reached through passt's gateway mapping), in the same rounds; host CPU = QEMU user + system − guest time + passt + rf-peer (each process's own times, read before it is reaped).",
                q.system(QEMU_VMS),
                super::boot::GUEST_MEM_MIB
            ),
            Err(why) => format!("No QEMU + passt baseline in this run: {why}."),
        }
    ));
    Ok(())
}

/// The whole suite: `runs` interleaved rounds of starts (library and CLI) at each
/// concurrency, then one `hold` and one `cycles` run.
pub fn run(
    ringfence: &Path,
    peer: &Path,
    probe: &Path,
    runs: usize,
    report: &mut Report,
) -> Result<()> {
    let bin = build_driver()?;
    let mut lib_rate: Vec<Metric> = CONCURRENCY
        .iter()
        .map(|n| {
            metric(
                "ringfence-lib",
                &format!("vm_starts_per_s_n{n}"),
                "VMs/s",
                false,
            )
        })
        .collect();
    let mut lib_ready: Vec<Metric> = CONCURRENCY
        .iter()
        .map(|n| {
            metric(
                "ringfence-lib",
                &format!("ready_ms_median_n{n}"),
                "ms",
                true,
            )
        })
        .collect();
    let cpu_names = [
        "guest_cpu_ms_per_vm",
        "user_cpu_ms_per_vm",
        "sys_cpu_ms_per_vm",
    ];
    let mut lib_cpu: Vec<Metric> = cpu_names
        .iter()
        .map(|k| metric("ringfence-lib", &format!("start_{k}_n100"), "ms", true))
        .collect();
    let mut cli_rate: Vec<Metric> = CONCURRENCY
        .iter()
        .map(|n| {
            metric(
                "ringfence-cli",
                &format!("vm_starts_per_s_n{n}"),
                "VMs/s",
                false,
            )
        })
        .collect();
    for round in 0..runs {
        for (i, n) in CONCURRENCY.iter().enumerate() {
            print!("\r    starts round {}/{runs}: n={n:<4}", round + 1);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            for line in driver(&bin, probe, &["starts", &n.to_string(), "1"])? {
                if line["kind"] == "starts" {
                    lib_rate[i].samples.extend(line["vms_per_s"].as_f64());
                    lib_ready[i]
                        .samples
                        .extend(line["ready_ms_median"].as_f64());
                    if *n == 100 {
                        for (m, k) in lib_cpu.iter_mut().zip(cpu_names) {
                            m.samples.extend(line[k].as_f64());
                        }
                    }
                }
            }
            let secs = cli_round(ringfence, probe, *n)?;
            cli_rate[i].samples.push(*n as f64 / secs);
        }
    }
    println!();
    run_net(peer, probe, runs, report)?;
    report.metrics.extend(lib_rate);
    report.metrics.extend(cli_rate);
    report.metrics.extend(lib_ready);
    report.metrics.extend(lib_cpu);

    println!("    hold: idle {GUEST_MIB} MiB VMs until failure or {HOLD_MAX}");
    let lines = driver(
        &bin,
        probe,
        &["hold", &HOLD_MAX.to_string(), &GUEST_MIB.to_string()],
    )?;
    let end = lines
        .iter()
        .find(|l| l["kind"] == "hold_end")
        .context("the density driver printed no hold_end line")?;
    let sys = "ringfence-lib";
    let held = end["vms"].as_f64().unwrap_or(0.0);
    let mut push = |name: &str, unit: &str, v: Option<f64>, lower: bool| {
        let mut m = metric(sys, name, unit, lower);
        m.samples.extend(v);
        report.metrics.push(m);
    };
    push("idle_vms_held", "VMs", Some(held), false);
    let kib_to_mib = |k: Option<f64>| k.map(|v| v / 1024.0);
    push(
        "vmm_overhead_mib_per_idle_vm",
        "MiB",
        kib_to_mib(end["vmm_overhead_kib_per_vm"].as_f64()),
        true,
    );
    push(
        "guest_rss_mib_per_idle_vm",
        "MiB",
        kib_to_mib(end["guest_rss_kib_per_vm"].as_f64()),
        true,
    );
    push(
        "host_memavail_mib_per_idle_vm",
        "MiB",
        kib_to_mib(end["host_mem_kib_per_vm"].as_f64()),
        true,
    );
    push(
        "threads_per_idle_vm",
        "threads",
        end["threads_per_vm"].as_f64(),
        true,
    );
    push("fds_per_idle_vm", "fds", end["fds_per_vm"].as_f64(), true);
    push(
        "idle_cpu_pct_all_held",
        "% of a core",
        end["idle_cpu_pct"].as_f64(),
        true,
    );
    let hold_reason = end["reason"].as_str().unwrap_or("?").to_string();
    let kernel_split = lines
        .iter()
        .find(|l| l["kind"] == "hold_kernel_kib_per_vm")
        .and_then(|l| l["fields"].as_object())
        .map(|f| {
            f.iter()
                .map(|(k, v)| format!("{k} {:.0}", v.as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "not reported".into());
    let guest_ok = end["guest_vma_ok"].as_bool().unwrap_or(false);

    println!("    cycles: {CYCLES} start/stop cycles");
    let lines = driver(&bin, probe, &["cycles", &CYCLES.to_string()])?;
    let samples: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "cycles").collect();
    let at = |n: u64| samples.iter().find(|l| l["vms"].as_u64() == Some(n));
    let last = samples
        .last()
        .context("the density driver printed no cycles line")?;
    let done = last["vms"].as_u64().unwrap_or(0);
    let mut cycle_notes = Vec::new();
    for (from, label) in [(0, "start"), (100, "warm")] {
        let Some(first) = at(from) else { continue };
        let diff =
            |k: &str| last[k].as_f64().unwrap_or(f64::NAN) - first[k].as_f64().unwrap_or(f64::NAN);
        push(
            &format!("cycles_rss_growth_kib_vs_{label}"),
            "KiB",
            Some(diff("rss_kib")),
            true,
        );
        push(
            &format!("cycles_fd_growth_vs_{label}"),
            "fds",
            Some(diff("fds")),
            true,
        );
        push(
            &format!("cycles_heap_in_use_growth_bytes_vs_{label}"),
            "bytes",
            Some(diff("heap_in_use_bytes")),
            true,
        );
        push(
            &format!("cycles_thread_growth_vs_{label}"),
            "threads",
            Some(diff("threads")),
            true,
        );
        cycle_notes.push(format!(
            "after {from} cycles RSS {} KiB, heap in use {} B, {} fds, {} threads",
            first["rss_kib"], first["heap_in_use_bytes"], first["fds"], first["threads"]
        ));
    }
    cycle_notes.push(format!(
        "after {done}: RSS {} KiB, heap in use {} B, {} fds, {} threads; {:.1} s for all cycles",
        last["rss_kib"],
        last["heap_in_use_bytes"],
        last["fds"],
        last["threads"],
        last["elapsed_s"].as_f64().unwrap_or(f64::NAN)
    ));

    report.notes.push(format!(
        "Density (driver `vmm/examples/density.rs`, release build, one process, the probe guest with {GUEST_MIB} MiB, no network, `probe.scenario=idle`): \
vm_starts_per_s_nN = N VMs started at once (N threads each calling `Vm::start`), N / (time from the first call to the last guest's `probe: ready` line on its console sink); {runs} rounds, interleaved with ringfence-cli = N `ringfence run --net none --no-pit -- probe.scenario=exit:0` processes spawned at once, same clock. \
ready_ms_median_nN: median per-VM start → ready within a round. \
start_*_cpu_ms_per_vm_n100: the driver's CPU from /proc/self/stat over a round of 100 starts, per VM: guest (guest_time), user (utime − guest_time) and system."
    ));
    report.notes.push(format!(
        "Idle VMs held: started one after another to their ready line; stopped by: {hold_reason}. \
vmm_overhead = (process RSS − RSS of the guest-RAM mappings) growth / VMs; guest_rss = RSS of the guest-RAM mappings (anonymous `rw-p` VMAs marked MADV_DONTDUMP, VmFlags `dd`, a multiple of the guest size; attribution check {}); \
host_memavail = drop of the host's MemAvailable / VMs (adds KVM's kernel memory per VM; /proc/meminfo growth per VM in KiB: {kernel_split}); idle_cpu_pct_all_held = CPU of the whole process over 5 s with all of them idle.",
        if guest_ok { "passed" } else { "FAILED: guest VMAs ≠ VMs × guest size, split unreliable" }
    ));
    report.notes.push(format!(
        "Start/stop cycles (start → ready → kill → drop, one VM at a time, {CYCLES} cycles; growth = end − start, and end − after 100 warm-up cycles; heap in use = glibc mallinfo2 uordblks + hblkhd, bytes allocated and not freed, which tells a leak from allocator caching in RSS): {}.",
        cycle_notes.join("; ")
    ));
    Ok(())
}

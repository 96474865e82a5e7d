//! Density driver for `cargo xtask bench density`: many probe VMs in this one process through
//! the embedding API, measured from `/proc/self`. Prints one JSON line per measurement on
//! stdout (and nothing else there), so the harness can parse it.
//!
//! ```text
//! density PROBE_ELF starts N ROUNDS     # N concurrent Vm::start() to "probe: ready", ROUNDS times
//! density PROBE_ELF hold MAX MEM_MIB    # idle VMs held at once until failure, MAX, or low memory
//! density PROBE_ELF cycles N            # N start/ready/kill/drop cycles; RSS, fds, threads
//! density PROBE_ELF net N BYTES PORT [MODE] # N VMs each uploading BYTES to 127.0.0.1:PORT at once
//!                                       # MODE: per-vm (a device thread per VM, the default)
//!                                       # or shared (a Host with one device thread per core),
//!                                       # or shared:NICE (the same, its threads at nice NICE);
//!                                       # then optionally the vCPU threads' nice value (0)
//!                                       # and how idle guests wait: poll (spin, the default)
//!                                       # or halt (sleep until an interrupt, as Linux does;
//!                                       # halt:US after US µs of empty polls)
//! ```
//!
//! Every loop is bounded in count and time. RLIMIT_NOFILE is raised to its hard limit first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringfence::host::{DeviceThreads, Host, HostConfig};
use ringfence::{Console, Vm, VmConfig, VmHandle};
use serde_json::json;

/// What the probe prints once it runs at CPL3.
const READY: &[u8] = b"probe: ready";
/// Longest wait for one guest to become ready.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// `hold` stops starting VMs when the host's MemAvailable falls under this.
const MIN_AVAILABLE_KIB: u64 = 2 << 20;
/// `hold` gives up after this long, however many VMs run.
const HOLD_TIME_LIMIT: Duration = Duration::from_secs(600);
/// Window over which the CPU of the held idle VMs is measured.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(5);

/// `/proc/meminfo` fields compared before and after `hold`.
const KERNEL_FIELDS: [&str; 6] = [
    "KernelStack:",
    "PageTables:",
    "SecPageTables:",
    "SUnreclaim:",
    "Percpu:",
    "VmallocUsed:",
];

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: density PROBE_ELF (starts N ROUNDS | hold MAX MEM_MIB | cycles N | net N BYTES PORT [per-vm|shared|shared:NICE [VCPU_NICE [poll|halt|halt:US]]])";
    let probe = PathBuf::from(args.first().ok_or(usage)?);
    let num = |i: usize| -> Res<usize> {
        let v = args.get(i).ok_or(usage)?;
        Ok(v.parse()
            .map_err(|_| format!("{v:?} is not a count; {usage}"))?)
    };
    let nofile = raise_nofile();
    emit(json!({"kind": "rlimit_nofile", "soft": nofile.0, "hard": nofile.1}));
    match args.get(1).map(String::as_str) {
        Some("starts") => starts(&probe, num(2)?.max(1), num(3)?.max(1)),
        Some("hold") => hold(&probe, num(2)?, num(3)? as u64),
        Some("cycles") => cycles(&probe, num(2)?),
        Some("net") => {
            let (threads, device_nice) = match args.get(5).map(String::as_str) {
                None | Some("per-vm") => (DeviceThreads::PerVm, 0),
                Some("shared") => (DeviceThreads::Shared(0), 0),
                Some(m) => match m.strip_prefix("shared:").and_then(|n| n.parse().ok()) {
                    Some(nice) => (DeviceThreads::Shared(0), nice),
                    None => return Err(format!("unknown mode {m:?}; {usage}").into()),
                },
            };
            let nice = match args.get(6) {
                None => 0,
                Some(_) => u8::try_from(num(6)?).map_err(|_| usage)?,
            };
            let guest_wait = match args.get(7).map(String::as_str) {
                None | Some("poll") => GuestWait::Poll,
                Some("halt") => GuestWait::Halt(None),
                Some(w) => match w.strip_prefix("halt:").and_then(|us| us.parse().ok()) {
                    Some(us) => GuestWait::Halt(Some(us)),
                    None => return Err(format!("unknown guest wait {w:?}; {usage}").into()),
                },
            };
            let host = HostConfig {
                device_threads: threads,
                device_thread_nice: device_nice,
                ..HostConfig::default()
            };
            net(
                &probe,
                num(2)?,
                args.get(3).ok_or(usage)?,
                num(4)?,
                host,
                nice,
                guest_wait,
            )
        }
        _ => Err(usage.into()),
    }
}

/// Prints one JSON line on stdout.
fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) afterwards.
fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (0, 0);
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct we own; raising the soft limit to the hard one is
    // always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

/// Console sink that keeps only the last [`TAIL_BYTES`] (where the probe's result line is).
#[derive(Clone, Default)]
struct ConsoleTail(Arc<Mutex<Vec<u8>>>);

/// How much of a console [`ConsoleTail`] keeps.
const TAIL_BYTES: usize = 8192;

impl Write for ConsoleTail {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tail.extend_from_slice(buf);
        let excess = tail.len().saturating_sub(TAIL_BYTES);
        tail.drain(..excess);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleTail {
    /// The probe's result line (the last JSON object on the console), if it printed one.
    fn result(&self) -> Option<serde_json::Value> {
        let tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&tail)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
    }
}

/// Set once when the guest's console shows [`READY`].
#[derive(Default)]
struct ReadyFlag {
    at: Mutex<Option<Instant>>,
    cv: Condvar,
}

impl ReadyFlag {
    fn wait(&self, limit: Duration) -> Option<Instant> {
        let guard = self.at.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, limit, |at| at.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// Console sink that watches for [`READY`] and discards everything.
struct ReadySink {
    flag: Arc<ReadyFlag>,
    tail: Vec<u8>,
    seen: bool,
}

impl Write for ReadySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.seen {
            self.tail.extend_from_slice(buf);
            if self.tail.windows(READY.len()).any(|w| w == READY) {
                self.seen = true;
                let mut at = self.flag.at.lock().unwrap_or_else(|e| e.into_inner());
                *at = Some(Instant::now());
                self.flag.cv.notify_all();
            } else {
                let keep = self.tail.len().saturating_sub(READY.len());
                self.tail.drain(..keep);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An idle probe VM without network, `mem_mib` of guest memory.
fn idle_config(probe: &Path, mem_mib: u64, flag: Arc<ReadyFlag>) -> VmConfig {
    let mut config = VmConfig::new(probe);
    config.cmdline = "probe.scenario=idle".into();
    config.pass_tsc_khz = true;
    config.legacy_pit = false;
    config.mem_mib = mem_mib;
    config.timeout = Some(Duration::from_secs(3600));
    config.console = Console::Sink(Box::new(ReadySink {
        flag,
        tail: Vec::new(),
        seen: false,
    }));
    config
}

/// How long one VM took: inside `Vm::start` (the VMM building it), and start → ready.
#[derive(Clone, Copy)]
struct StartTimes {
    build: Duration,
    ready: Duration,
}

/// Starts one idle VM and waits for its ready line.
fn start_ready(probe: &Path, mem_mib: u64) -> Result<(VmHandle, StartTimes), String> {
    let flag = Arc::new(ReadyFlag::default());
    let t0 = Instant::now();
    let vm = Vm::new(idle_config(probe, mem_mib, flag.clone()))
        .start()
        .map_err(|e| error_chain(&e))?;
    let build = t0.elapsed();
    match flag.wait(READY_LIMIT) {
        Some(at) => Ok((
            vm,
            StartTimes {
                build,
                ready: at.duration_since(t0),
            },
        )),
        None => Err(format!(
            "the guest did not print {:?} within {READY_LIMIT:?} (exit: {:?})",
            String::from_utf8_lossy(READY),
            vm.try_wait()
        )),
    }
}

/// An error and all its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        src = s.source();
    }
    text
}

/// `starts`: ROUNDS rounds of N threads each starting one VM at once; time from the first
/// start call to the last guest's ready line.
fn starts(probe: &Path, n: usize, rounds: usize) -> Res<()> {
    for round in 0..rounds {
        let cpu0 = self_cpu();
        let t0 = Instant::now();
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let probe = probe.to_path_buf();
                std::thread::spawn(move || start_ready(&probe, 64))
            })
            .collect();
        let mut vms = Vec::with_capacity(n);
        let mut latencies = Vec::with_capacity(n);
        let mut builds = Vec::with_capacity(n);
        let mut failure = None;
        for t in threads {
            match t.join() {
                Ok(Ok((vm, times))) => {
                    vms.push(vm);
                    latencies.push(times.ready.as_secs_f64() * 1e3);
                    builds.push(times.build.as_secs_f64() * 1e3);
                }
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some("a start thread panicked".into()),
            }
        }
        let all_ready = t0.elapsed();
        let cpu1 = self_cpu();
        for vm in &vms {
            vm.kill();
        }
        let t_stop = Instant::now();
        drop(vms);
        let stop = t_stop.elapsed();
        if let Some(e) = failure {
            return Err(format!("round {round}: {e}").into());
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
        builds.sort_by(|a, b| a.total_cmp(b));
        let per_vm = |secs: f64| 1e3 * secs / n as f64;
        emit(json!({
            "kind": "starts", "n": n, "round": round,
            "all_ready_s": all_ready.as_secs_f64(),
            "vms_per_s": n as f64 / all_ready.as_secs_f64(),
            "ready_ms_median": latencies[latencies.len() / 2],
            "ready_ms_max": latencies.last().copied().unwrap_or(f64::NAN),
            "build_ms_median": builds[builds.len() / 2],
            "guest_cpu_ms_per_vm": per_vm(cpu1.2 - cpu0.2),
            "user_cpu_ms_per_vm": per_vm((cpu1.0 - cpu1.2) - (cpu0.0 - cpu0.2)),
            "sys_cpu_ms_per_vm": per_vm(cpu1.1 - cpu0.1),
            "stop_all_s": stop.as_secs_f64(),
        }));
    }
    Ok(())
}

/// A snapshot of this process and the host.
struct Sample {
    rss_kib: u64,
    guest_rss_kib: u64,
    guest_vma_kib: u64,
    threads: usize,
    fds: usize,
    mem_available_kib: u64,
    cpu_s: f64,
    heap_in_use: usize,
}

impl Sample {
    fn take(mem_mib: u64) -> Sample {
        let (rss_kib, guest_rss_kib, guest_vma_kib) = smaps(mem_mib << 10);
        Sample {
            rss_kib,
            guest_rss_kib,
            guest_vma_kib,
            threads: count_dir("/proc/self/task"),
            fds: count_dir("/proc/self/fd"),
            mem_available_kib: meminfo("MemAvailable:"),
            cpu_s: self_cpu_s(),
            heap_in_use: heap_in_use(),
        }
    }

    fn json(&self, kind: &str, vms: usize, elapsed: Duration) -> serde_json::Value {
        json!({
            "kind": kind, "vms": vms, "elapsed_s": elapsed.as_secs_f64(),
            "rss_kib": self.rss_kib, "guest_rss_kib": self.guest_rss_kib,
            "guest_vma_kib": self.guest_vma_kib, "threads": self.threads, "fds": self.fds,
            "mem_available_kib": self.mem_available_kib, "cpu_s": self.cpu_s,
            "heap_in_use_bytes": self.heap_in_use,
        })
    }
}

/// Bytes the allocator has handed out and not got back (all glibc arenas and mmapped
/// chunks): growth here over start/stop cycles is a leak, growth of RSS alone is not.
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// A `/proc/meminfo` field in KiB (0 if missing).
fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of this process (guest time included).
fn self_cpu_s() -> f64 {
    let (user, system, _) = self_cpu();
    user + system
}

/// (user, system, guest) CPU seconds of this process; user includes guest, the time vCPU
/// threads spend running guest code.
fn self_cpu() -> (f64, f64, f64) {
    const NONE: (f64, f64, f64) = (f64::NAN, f64::NAN, f64::NAN);
    let Ok(text) = std::fs::read_to_string("/proc/self/stat") else {
        return NONE;
    };
    let Some(close) = text.rfind(')') else {
        return NONE;
    };
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After "(comm)": state is field 3, utime 14, stime 15, guest_time 43 (1-based over the
    // whole line).
    let get = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    match (get(14), get(15)) {
        (Some(u), Some(s)) => (u / hz, s / hz, get(43).unwrap_or(f64::NAN) / hz),
        _ => NONE,
    }
}

/// Total RSS of this process, and the RSS and size of its guest-RAM mappings, in KiB.
///
/// Guest RAM is an anonymous private `rw-p` mapping that ringfence marks `MADV_DONTDUMP`
/// (VmFlags `dd`); adjacent ones may be merged by the kernel into one VMA, so a VMA counts as
/// guest RAM when it is marked so and its size is a whole multiple of the guest size.
/// `guest_vma_kib` lets the caller check the attribution: it must equal VMs × guest size.
fn smaps(guest_kib: u64) -> (u64, u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return (0, 0, 0);
    };
    let (mut total, mut guest, mut guest_size) = (0u64, 0u64, 0u64);
    struct Vma {
        candidate: bool,
        size: u64,
        rss: u64,
        dontdump: bool,
    }
    let mut cur: Option<Vma> = None;
    let mut finish = |v: Option<Vma>, total: &mut u64| {
        if let Some(v) = v {
            *total += v.rss;
            if v.candidate && v.dontdump && guest_kib > 0 && v.size.is_multiple_of(guest_kib) {
                guest += v.rss;
                guest_size += v.size;
            }
        }
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            finish(cur.take(), &mut total);
            let perms = words.next().unwrap_or("");
            let inode = words.nth(2).unwrap_or("1");
            let path = words.next();
            cur = Some(Vma {
                candidate: perms == "rw-p" && inode == "0" && path.is_none(),
                size: 0,
                rss: 0,
                dontdump: false,
            });
            continue;
        }
        let Some(v) = cur.as_mut() else { continue };
        let value = || words.clone().next().and_then(|x| x.parse::<u64>().ok());
        match first {
            "Size:" => v.size = value().unwrap_or(0),
            "Rss:" => v.rss = value().unwrap_or(0),
            "VmFlags:" => v.dontdump = line.split_whitespace().any(|f| f == "dd"),
            _ => {}
        }
    }
    finish(cur.take(), &mut total);
    (total, guest, guest_size)
}

/// `hold`: starts idle VMs one after another, each to its ready line, until a start fails,
/// `max` run, MemAvailable falls under 2 GiB or 10 minutes pass; then measures what the idle
/// VMs cost in CPU, and stops them all.
fn hold(probe: &Path, max: usize, mem_mib: u64) -> Res<()> {
    let t0 = Instant::now();
    let base = Sample::take(mem_mib);
    let base_kernel: Vec<u64> = KERNEL_FIELDS.iter().map(|f| meminfo(f)).collect();
    emit(base.json("hold", 0, t0.elapsed()));
    let mut vms: Vec<VmHandle> = Vec::new();
    let mut reason = format!("reached the bound of {max} VMs");
    let checkpoint = |n: usize| n == 1 || n == 10 || n.is_multiple_of(100);
    while vms.len() < max {
        let avail = meminfo("MemAvailable:");
        if avail < MIN_AVAILABLE_KIB {
            reason = format!("host MemAvailable fell to {} MiB (< 2 GiB)", avail >> 10);
            break;
        }
        if t0.elapsed() > HOLD_TIME_LIMIT {
            reason = format!("time bound of {HOLD_TIME_LIMIT:?} reached");
            break;
        }
        match start_ready(probe, mem_mib) {
            Ok((vm, _)) => vms.push(vm),
            Err(e) => {
                reason = format!("VM {} failed: {e}", vms.len() + 1);
                break;
            }
        }
        if checkpoint(vms.len()) {
            emit(Sample::take(mem_mib).json("hold", vms.len(), t0.elapsed()));
        }
    }
    let end = Sample::take(mem_mib);
    emit(end.json("hold", vms.len(), t0.elapsed()));
    std::thread::sleep(IDLE_CPU_WINDOW);
    let cpu = self_cpu_s() - end.cpu_s;
    let n = vms.len().max(1) as f64;
    let overhead = end.rss_kib as f64
        - base.rss_kib as f64
        - (end.guest_rss_kib as f64 - base.guest_rss_kib as f64);
    emit(json!({
        "kind": "hold_end", "vms": vms.len(), "reason": reason, "mem_mib": mem_mib,
        "start_s": end_elapsed(&t0),
        "vmm_overhead_kib_per_vm": overhead / n,
        "guest_rss_kib_per_vm": (end.guest_rss_kib - base.guest_rss_kib) as f64 / n,
        "guest_vma_ok": end.guest_vma_kib == vms.len() as u64 * (mem_mib << 10),
        "threads_per_vm": (end.threads as f64 - base.threads as f64) / n,
        "fds_per_vm": (end.fds as f64 - base.fds as f64) / n,
        "host_mem_kib_per_vm": (base.mem_available_kib as f64 - end.mem_available_kib as f64) / n,
        "idle_cpu_pct": 100.0 * cpu / IDLE_CPU_WINDOW.as_secs_f64(),
        "idle_window_s": IDLE_CPU_WINDOW.as_secs_f64(),
    }));
    // Where the host memory outside the process went (KVM's per-VM structures, the vCPU
    // threads' kernel stacks, page tables), per VM.
    let kernel: serde_json::Map<String, serde_json::Value> = KERNEL_FIELDS
        .iter()
        .zip(&base_kernel)
        .map(|(f, before)| {
            let per_vm = (meminfo(f) as f64 - *before as f64) / n;
            (f.trim_end_matches(':').to_string(), json!(per_vm))
        })
        .collect();
    emit(json!({"kind": "hold_kernel_kib_per_vm", "fields": kernel}));
    let t_stop = Instant::now();
    for vm in &vms {
        vm.kill();
    }
    drop(vms);
    emit(json!({"kind": "hold_stop", "stop_all_s": t_stop.elapsed().as_secs_f64()}));
    Ok(())
}

fn end_elapsed(t0: &Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// `cycles`: `n` cycles of start → ready → kill → drop, one VM at a time; samples before the
/// first, after the 10th (warm) and every 100th.
fn cycles(probe: &Path, n: usize) -> Res<()> {
    let t0 = Instant::now();
    emit(Sample::take(64).json("cycles", 0, t0.elapsed()));
    for i in 1..=n {
        let (vm, _) = start_ready(probe, 64).map_err(|e| format!("cycle {i}: {e}"))?;
        vm.kill();
        drop(vm);
        if i == 10 || i.is_multiple_of(100) || i == n {
            emit(Sample::take(64).json("cycles", i, t0.elapsed()));
        }
    }
    Ok(())
}

/// How the guests of `net` wait when a poll finds nothing (the probe's `probe.wait=`).
#[derive(Clone, Copy, Debug)]
enum GuestWait {
    /// Spin on: every vCPU stays busy for the whole transfer.
    Poll,
    /// Halt until the device interrupts, as a Linux guest does, after this many µs of
    /// empty polls (`None`: the probe's default).
    Halt(Option<u64>),
}

impl GuestWait {
    /// The probe's command-line words for this mode.
    fn cmdline(self) -> String {
        match self {
            GuestWait::Poll => "probe.wait=poll".into(),
            GuestWait::Halt(None) => "probe.wait=halt".into(),
            GuestWait::Halt(Some(us)) => format!("probe.wait=halt probe.halt_after_us={us}"),
        }
    }

    fn name(self) -> String {
        match self {
            GuestWait::Poll => "poll".into(),
            GuestWait::Halt(None) => "halt".into(),
            GuestWait::Halt(Some(us)) => format!("halt:{us}"),
        }
    }
}

/// `net`: `n` VMs with the user network, each running the probe's `tcp-send` of `bytes` to
/// `host.ringfence.internal:port` (the host's loopback, allowed by an `allow@host` rule) at
/// once, started through a [`Host`] set up with `host_config` (a device thread per VM, or
/// shared ones), their vCPU threads at nice `vcpu_nice` and their guests waiting as `wait`;
/// the peer (`rf-peer sink --parallel`) measures throughput. Prints this process's CPU over
/// the whole run, the most threads it had, and how many guests exited 0.
fn net(
    probe: &Path,
    n: usize,
    bytes: &str,
    port: usize,
    host_config: HostConfig,
    vcpu_nice: u8,
    wait: GuestWait,
) -> Res<()> {
    let threads = host_config.device_threads;
    let host = Host::new(host_config).map_err(|e| error_chain(&e))?;
    let threads_before = count_dir("/proc/self/task");
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            // Bounded by the VMs' own timeout (300 s) plus slack.
            for _ in 0..(400 * 20) {
                if !sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                most = most.max(count_dir("/proc/self/task"));
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    let cpu0 = self_cpu();
    let t0 = Instant::now();
    let mut vms = Vec::with_capacity(n);
    let mut tails = Vec::with_capacity(n);
    for _ in 0..n {
        let mut config = VmConfig::new(probe);
        config.cmdline = format!(
            "probe.scenario=tcp-send probe.peer=host.ringfence.internal:{port} probe.bytes={bytes} {}",
            wait.cmdline()
        );
        config.pass_tsc_khz = true;
        config.legacy_pit = false;
        config.mem_mib = 64;
        config.timeout = Some(Duration::from_secs(300));
        let tail = ConsoleTail::default();
        tails.push(tail.clone());
        config.console = Console::Sink(Box::new(tail));
        config.net.backend = ringfence::net::NetBackendSpec::User;
        config.net.user.policy.rules = vec!["allow@host".into()];
        config.vcpu_nice = vcpu_nice;
        // Each from a fresh thread: a start drops the calling thread's capabilities, which a
        // later start on that thread would need (root with `vcpu_nice`).
        let vm = std::thread::scope(|s| s.spawn(|| host.start(Vm::new(config))).join())
            .map_err(|_| "a start thread panicked")?;
        vms.push(vm.map_err(|e| error_chain(&e))?);
    }
    let mut ok = 0;
    let mut exits = Vec::new();
    for vm in &vms {
        let exit = vm.wait();
        if exit.guest_status() == Some(0) {
            ok += 1;
        } else {
            exits.push(exit.to_string());
        }
    }
    let wall = t0.elapsed();
    let cpu1 = self_cpu();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    // The sampler itself is one of the threads it counted.
    let threads_max = sampler.join().unwrap_or(0).saturating_sub(1);
    drop(vms);
    // What the guests said about their waiting, summed over all of them.
    let results: Vec<serde_json::Value> = tails.iter().filter_map(ConsoleTail::result).collect();
    let sum = |key: &str| -> u64 { results.iter().filter_map(|r| r[key].as_u64()).sum() };
    emit(json!({
        "kind": "net", "n": n, "ok": ok, "failures": exits, "wall_s": wall.as_secs_f64(),
        "mode": if threads == DeviceThreads::PerVm { "per-vm" } else { "shared" },
        "device_thread_nice": host_config.device_thread_nice,
        "device_threads": host.device_threads(),
        "threads_before": threads_before, "threads_max": threads_max, "vcpu_nice": vcpu_nice,
        "guest_wait": wait.name(), "guest_results": results.len(),
        "guest_sleeps": sum("sleeps"), "guest_polls": sum("polls"),
        "guest_idle_ms": sum("idle_ms"),
        "user_s": (cpu1.0 - cpu1.2) - (cpu0.0 - cpu0.2),
        "sys_s": cpu1.1 - cpu0.1,
        "guest_s": cpu1.2 - cpu0.2,
    }));
    Ok(())
}

//! The QEMU baseline of the density benchmark's network part: N QEMU microvm processes, each
//! with its own passt (over a stream socket), each guest running the probe's `tcp-send` to one
//! `rf-peer sink --parallel` at once: what N sandboxes cost when each is a QEMU and a passt.
//!
//! Everything runs inside a throwaway network namespace ([`BenchNetns`]; the guests reach the
//! sink on the namespace's loopback through passt's gateway mapping), with QEMU 10 and passt
//! 2025 from the baselines cache when they are there, else the system's QEMU and passt.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::boot::{qemu_cmd, qemu_cmd_at};
use super::netns::{last_json_line, BenchNetns};

/// Where the sink listens inside the namespace.
const SINK_PORT: u16 = 5301;
/// passt maps the namespace's default gateway to its loopback.
const GATEWAY: &str = "198.51.100.254";
/// Upper bound on one round.
const ROUND_LIMIT: Duration = Duration::from_secs(300);

/// The QEMU and passt a round runs.
pub struct QemuPasst {
    /// QEMU 10 and its firmware, or `None` for the system's QEMU.
    pub qemu10: Option<crate::baselines::Qemu10>,
    /// passt 2025, or the system's `passt`.
    pub passt: PathBuf,
}

impl QemuPasst {
    /// QEMU 10 with passt 2025 from the cache if both are there, else the system's pair (if
    /// present); `Err` says why there is none.
    pub fn find() -> Result<Self, String> {
        let found = crate::baselines::cached();
        match (found.qemu10, found.passt2025) {
            (Ok(q), Ok(p)) => Ok(QemuPasst {
                qemu10: Some(q),
                passt: p,
            }),
            _ if crate::util::have("qemu-system-x86_64") && crate::util::have("passt") => {
                Ok(QemuPasst {
                    qemu10: None,
                    passt: PathBuf::from("passt"),
                })
            }
            (q, p) => Err(format!(
                "no QEMU + passt: {}; {}",
                q.err().unwrap_or_default(),
                p.err().unwrap_or_default()
            )),
        }
    }

    /// The system name in the report.
    pub fn system(&self, vms: usize) -> String {
        match self.qemu10 {
            Some(_) => format!("qemu10-passt-{vms}vm"),
            None => format!("qemu-passt-{vms}vm"),
        }
    }
}

/// What one round measured.
pub struct QemuRound {
    /// Aggregate Gbit/s (rf-peer).
    pub gbps: f64,
    /// GB moved.
    pub gb: f64,
    /// QEMU user + system − guest time, plus passt's and rf-peer's CPU, in seconds.
    pub host_cpu_s: f64,
    /// The vCPUs' guest time, seconds.
    pub guest_cpu_s: f64,
}

/// (user + system, guest) CPU seconds of a process that has exited but is not yet reaped.
fn zombie_cpu(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let get = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(((get(14)? + get(15)?) / hz, get(43)? / hz))
}

/// Waits (up to `deadline`) for `child` to exit without reaping it, reads its CPU times, then
/// reaps it. A child still running at the deadline is killed.
fn wait_cpu(child: &mut Child, deadline: Instant) -> Result<(f64, f64)> {
    let pid = child.id();
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our unreaped child; WNOWAIT leaves it a zombie so /proc still
        // shows its times; `info` is a valid out-parameter.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (si_pid is 0 when the child has not exited).
        let exited = rc == 0 && unsafe { info.si_pid() } != 0;
        if exited {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = zombie_cpu(pid).unwrap_or((f64::NAN, f64::NAN));
    child.wait()?;
    Ok(cpu)
}

/// One round: `vms` QEMU + passt pairs, each guest uploading `bytes`.
pub fn round(
    baseline: &QemuPasst,
    peer: &Path,
    probe: &Path,
    vms: usize,
    bytes: &str,
) -> Result<QemuRound> {
    let ns = BenchNetns::create()?;
    let n = vms.to_string();
    let bind = format!("127.0.0.1:{SINK_PORT}");
    let mut sink = ns
        .command(peer)
        .args([
            "sink",
            &bind,
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
        .context("starting rf-peer")?;
    let mut sink_out = BufReader::new(sink.stdout.take().context("no rf-peer stdout")?);
    let mut first = String::new();
    sink_out.read_line(&mut first)?;
    if !first.starts_with("listening") {
        let _ = sink.kill();
        let _ = sink.wait();
        bail!("rf-peer said {first:?} instead of `listening ADDR`");
    }
    let sockets: Vec<PathBuf> = (0..vms)
        .map(|i| {
            PathBuf::from(format!(
                "/tmp/rf-density-passt-{}-{i}.sock",
                std::process::id()
            ))
        })
        .collect();
    let mut passts = Vec::with_capacity(vms);
    for socket in &sockets {
        let _ = std::fs::remove_file(socket);
        let child = ns
            .command(&baseline.passt)
            .args(["--foreground", "--quiet", "--one-off", "--socket"])
            .arg(socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", baseline.passt.display()))?;
        passts.push(child);
    }
    for socket in &sockets {
        let t = Instant::now();
        while !socket.exists() {
            if t.elapsed() > Duration::from_secs(5) {
                bail!("passt did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let cmdline =
        format!("probe.scenario=tcp-send probe.peer={GATEWAY}:{SINK_PORT} probe.bytes={bytes}");
    let mut qemus = Vec::with_capacity(vms);
    for socket in &sockets {
        let netdev = format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            socket.display()
        );
        let extra = [
            "-global",
            "virtio-mmio.force-legacy=false",
            "-netdev",
            netdev.as_str(),
            "-device",
            "virtio-net-device,netdev=n0",
        ];
        let inner = match &baseline.qemu10 {
            Some(q) => qemu_cmd_at(&q.binary, Some(&q.firmware), probe, &cmdline, &extra),
            None => qemu_cmd(probe, &cmdline, &extra),
        };
        let child = ns
            .command(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting QEMU")?;
        qemus.push(child);
    }
    let deadline = Instant::now() + ROUND_LIMIT;
    let (mut host_cpu_s, mut guest_cpu_s) = (0.0, 0.0);
    for q in &mut qemus {
        let (total, guest) = wait_cpu(q, deadline)?;
        host_cpu_s += total - guest;
        guest_cpu_s += guest;
    }
    for p in &mut passts {
        // --one-off: passt ends when its QEMU has gone.
        let (total, _) = wait_cpu(p, Instant::now() + Duration::from_secs(5))?;
        host_cpu_s += total;
    }
    for socket in &sockets {
        let _ = std::fs::remove_file(socket);
    }
    let (peer_cpu_s, _) = wait_cpu(&mut sink, Instant::now() + Duration::from_secs(130))?;
    host_cpu_s += peer_cpu_s;
    let mut rest = String::new();
    sink_out.read_to_string(&mut rest)?;
    let result = last_json_line(rest.as_bytes())?;
    if result["pattern_ok"] != true {
        bail!("rf-peer saw a corrupted or short stream: {result}");
    }
    let f = |k: &str| result[k].as_f64().unwrap_or(f64::NAN);
    Ok(QemuRound {
        gbps: f("gbps"),
        gb: f("bytes") / 1e9,
        host_cpu_s,
        guest_cpu_s,
    })
}

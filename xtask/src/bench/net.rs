//! Network benchmark: the probe guest's TCP throughput both ways, 1-byte ping-pong latency,
//! host CPU per GB and RSS, for every system that works here, in one run:
//!
//! | system | guest ↔ host path |
//! |---|---|
//! | `ringfence-user` | ringfence virtio-net → userspace netstack → host sockets |
//! | `ringfence-user-nice` | the same with `--vcpu-nice 10` (device threads preempt the vCPU) |
//! | `ringfence-tap` | ringfence virtio-net → tap (kernel) |
//! | `qemu-tap` | QEMU microvm virtio-net (userspace, no vhost-net here) → tap |
//! | `qemu-passt` | QEMU microvm virtio-net → passt over a stream socket |
//! | `qemu-user` | QEMU microvm virtio-net → slirp |
//! | `qemu10-tap` | QEMU 10 microvm virtio-net → tap |
//! | `qemu10-passt` | QEMU 10 microvm virtio-net → passt 2025 over a stream socket |
//! | `qemu10-passt-vhost-user` | QEMU 10 microvm, shared memfd guest memory, `-netdev vhost-user` → `passt --vhost-user` (passt reads and writes the guest's rings itself) |
//!
//! QEMU 10 and passt 2025 come from [`crate::baselines`]; `qemu-*` are the system's QEMU and
//! passt.
//!
//! Everything runs inside a namespace the harness creates; the peers are our own `rf-peer`
//! (the same for every system), on the tap address for tap systems and on the namespace's
//! 127.0.0.1 for the user-mode systems, which reach it through their gateway address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::boot::{qemu_cmd, qemu_cmd_at, GUEST_MEM_MIB};
use super::measure::{run_measured_with, RunSample};
use super::netns::{BenchNetns, TAP_GUEST, TAP_HOST};
use super::report::Metric;

/// The vCPU nice value of `ringfence-user-nice`.
const TUNED_VCPU_NICE: u8 = 10;

/// Time limit for one guest run.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// One system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// ringfence with the userspace netstack.
    RingfenceUser,
    /// The same with the vCPU thread at nice [`TUNED_VCPU_NICE`].
    RingfenceUserNice,
    /// ringfence-user writing a pcap of every frame, whole (`--pcap`).
    RingfenceUserPcap,
    /// ringfence-user writing a pcap with a 128-byte snap length (`--pcap-snaplen 128`).
    RingfenceUserPcap128,
    /// ringfence on a tap.
    RingfenceTap,
    /// QEMU microvm on a tap.
    QemuTap,
    /// QEMU microvm with passt.
    QemuPasst,
    /// QEMU microvm with slirp.
    QemuUser,
    /// QEMU 10 microvm on a tap.
    Qemu10Tap,
    /// QEMU 10 microvm with passt 2025 over a stream socket.
    Qemu10Passt,
    /// QEMU 10 microvm with passt 2025 as its vhost-user backend.
    Qemu10PasstVhostUser,
}

impl System {
    /// Every system the suite knows, in report order.
    pub const ALL: [System; 11] = [
        System::RingfenceUser,
        System::RingfenceUserNice,
        System::RingfenceUserPcap,
        System::RingfenceUserPcap128,
        System::RingfenceTap,
        System::Qemu10Tap,
        System::QemuTap,
        System::Qemu10PasstVhostUser,
        System::Qemu10Passt,
        System::QemuPasst,
        System::QemuUser,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::RingfenceUser => "ringfence-user",
            System::RingfenceUserNice => "ringfence-user-nice",
            System::RingfenceUserPcap => "ringfence-user-pcap",
            System::RingfenceUserPcap128 => "ringfence-user-pcap128",
            System::RingfenceTap => "ringfence-tap",
            System::QemuTap => "qemu-tap",
            System::QemuPasst => "qemu-passt",
            System::QemuUser => "qemu-user",
            System::Qemu10Tap => "qemu10-tap",
            System::Qemu10Passt => "qemu10-passt",
            System::Qemu10PasstVhostUser => "qemu10-passt-vhost-user",
        }
    }

    /// For the capturing systems, the snap length they use (`None`: whole frames).
    fn capture_snaplen(self) -> Option<Option<u32>> {
        match self {
            System::RingfenceUserPcap => Some(None),
            System::RingfenceUserPcap128 => Some(Some(CAPTURE_SNAPLEN)),
            _ => None,
        }
    }

    fn uses_tap(self) -> bool {
        matches!(
            self,
            System::RingfenceTap | System::QemuTap | System::Qemu10Tap
        )
    }

    /// Whether the system runs QEMU 10 and passt 2025 from [`crate::baselines`].
    pub fn needs_qemu10(self) -> bool {
        matches!(
            self,
            System::Qemu10Tap | System::Qemu10Passt | System::Qemu10PasstVhostUser
        )
    }

    fn uses_passt(self) -> bool {
        matches!(
            self,
            System::QemuPasst | System::Qemu10Passt | System::Qemu10PasstVhostUser
        )
    }

    /// Where the host-side peer listens.
    fn peer_bind(self) -> &'static str {
        if self.uses_tap() {
            TAP_HOST
        } else {
            "127.0.0.1"
        }
    }

    /// The address the guest dials to reach the peer.
    fn peer_from_guest(self) -> &'static str {
        match self {
            System::RingfenceTap | System::QemuTap | System::Qemu10Tap => TAP_HOST,
            // The netstack's gateway (first /30 of 172.16.0.0/12) reaches host loopback.
            System::RingfenceUser
            | System::RingfenceUserNice
            | System::RingfenceUserPcap
            | System::RingfenceUserPcap128 => "172.16.0.1",
            // passt maps the (copied) default gateway to the host.
            System::QemuPasst | System::Qemu10Passt | System::Qemu10PasstVhostUser => {
                "198.51.100.254"
            }
            System::QemuUser => "10.0.2.2",
        }
    }

    /// Addressing words for the probe: static on a tap, DHCP otherwise.
    fn addressing(self) -> Vec<String> {
        if self.uses_tap() {
            vec![
                format!("probe.ip={TAP_GUEST}/24"),
                format!("probe.gw={TAP_HOST}"),
            ]
        } else {
            Vec::new()
        }
    }
}

/// Snap length of `ringfence-user-pcap128` (issue 18 asks for 128-byte captures to cost at
/// most 10 % of throughput).
const CAPTURE_SNAPLEN: u32 = 128;

/// Where the capturing systems write their pcap (removed after every run).
fn capture_path() -> PathBuf {
    PathBuf::from(format!("/tmp/rf-bench-capture-{}.pcap", std::process::id()))
}

/// What the harness needs to start guests and peers.
pub struct NetBench<'a> {
    /// The ringfence binary.
    pub ringfence: &'a Path,
    /// The probe ELF.
    pub probe: &'a Path,
    /// The rf-peer binary.
    pub peer: &'a Path,
    /// The probe's TSC rate (so every system uses the same clock).
    pub tsc_khz: Option<u64>,
    /// Bytes per bulk transfer.
    pub bytes: u64,
    /// Ping-pong round trips per run.
    pub rr_count: u32,
    /// QEMU 10, where the `qemu10-*` systems run.
    pub qemu10: Option<crate::baselines::Qemu10>,
    /// passt 2025, for `qemu10-passt` and `qemu10-passt-vhost-user`.
    pub passt2025: Option<PathBuf>,
}

/// One guest run with a possible helper process (passt).
struct GuestRun {
    sample: RunSample,
    helper_rss_kib: u64,
}

impl NetBench<'_> {
    fn vm_command(
        &self,
        ns: &BenchNetns,
        system: System,
        words: &[String],
        socket: &Path,
    ) -> Command {
        let mut cmdline: Vec<String> = system.addressing();
        cmdline.extend_from_slice(words);
        if let Some(k) = self.tsc_khz {
            cmdline.push(format!("probe.tsc_khz={k}"));
        }
        let cmdline = cmdline.join(" ");
        match system {
            System::RingfenceUser
            | System::RingfenceUserNice
            | System::RingfenceUserPcap
            | System::RingfenceUserPcap128
            | System::RingfenceTap => {
                let mut c = ns.command(self.ringfence);
                c.arg("run")
                    .arg("--kernel")
                    .arg(self.probe)
                    .args(["--mem", &GUEST_MEM_MIB.to_string(), "--no-pit"])
                    .args(["--timeout", "170"])
                    .args(["--cmdline", &cmdline])
                    .arg("--net");
                if system == System::RingfenceTap {
                    c.arg("tap:rfb0");
                } else {
                    // The peer is on the host's loopback: the `host` group must be allowed.
                    c.args(["user", "--net-rule", "allow@host"]);
                }
                if system == System::RingfenceUserNice {
                    c.args(["--vcpu-nice", &TUNED_VCPU_NICE.to_string()]);
                }
                if let Some(snap) = system.capture_snaplen() {
                    c.arg("--pcap").arg(capture_path());
                    if let Some(n) = snap {
                        c.args(["--pcap-snaplen", &n.to_string()]);
                    }
                }
                c
            }
            _ => {
                let netdev = match system {
                    System::QemuTap | System::Qemu10Tap => {
                        "tap,id=n0,ifname=rfb0,script=no,downscript=no,vhost=off".to_string()
                    }
                    System::QemuPasst | System::Qemu10Passt => format!(
                        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                        socket.display()
                    ),
                    System::Qemu10PasstVhostUser => "vhost-user,id=n0,chardev=c0".to_string(),
                    _ => "user,id=n0".to_string(),
                };
                let mut extra: Vec<String> = Vec::new();
                if system == System::Qemu10PasstVhostUser {
                    // vhost-user needs guest memory the backend can map: a shared memfd.
                    extra.extend([
                        "-object".into(),
                        format!("memory-backend-memfd,id=mem,size={GUEST_MEM_MIB}M,share=on"),
                        "-machine".into(),
                        "memory-backend=mem".into(),
                        "-chardev".into(),
                        format!("socket,id=c0,path={}", socket.display()),
                    ]);
                }
                extra.extend(
                    [
                        "-global",
                        "virtio-mmio.force-legacy=false",
                        "-netdev",
                        netdev.as_str(),
                        "-device",
                        "virtio-net-device,netdev=n0",
                    ]
                    .map(String::from),
                );
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let inner = match (system.needs_qemu10(), &self.qemu10) {
                    (true, Some(q)) => {
                        qemu_cmd_at(&q.binary, Some(&q.firmware), self.probe, &cmdline, &extra)
                    }
                    _ => qemu_cmd(self.probe, &cmdline, &extra),
                };
                let mut c = ns.command(inner.get_program());
                c.args(inner.get_args());
                c
            }
        }
    }

    /// Starts passt for one QEMU run.
    fn start_passt(&self, ns: &BenchNetns, system: System, socket: &Path) -> Result<Child> {
        let _ = std::fs::remove_file(socket);
        let program = match (system, &self.passt2025) {
            (System::QemuPasst, _) => Path::new("passt"),
            (_, Some(p)) => p.as_path(),
            (_, None) => bail!("{}: passt 2025 is not available", system.name()),
        };
        let mut cmd = ns.command(program);
        if system == System::Qemu10PasstVhostUser {
            cmd.arg("--vhost-user");
        }
        let child = cmd
            .args(["--foreground", "--quiet", "--one-off", "--socket"])
            .arg(socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        for _ in 0..200 {
            if socket.exists() {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("passt did not create {}", socket.display())
    }

    fn run_guest(&self, ns: &BenchNetns, system: System, words: &[String]) -> Result<GuestRun> {
        let socket = PathBuf::from(format!("/tmp/rf-bench-passt-{}.sock", std::process::id()));
        let passt = if system.uses_passt() {
            Some(self.start_passt(ns, system, &socket)?)
        } else {
            None
        };
        let mut cmd = self.vm_command(ns, system, words, &socket);
        let sample = run_measured_with(
            &mut cmd,
            "probe: ready",
            RUN_LIMIT,
            passt.as_ref().map(Child::id),
        );
        let mut helper_rss_kib = 0;
        if let Some(mut p) = passt {
            let pid = p.id();
            helper_rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0);
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_file(&socket);
        if system.capture_snaplen().is_some() {
            // A whole-frame capture of one run is about a GiB: never keep it.
            let _ = std::fs::remove_file(capture_path());
        }
        Ok(GuestRun {
            sample: sample?,
            helper_rss_kib,
        })
    }

    fn result(run: &GuestRun, system: System) -> Result<serde_json::Value> {
        let line = run
            .sample
            .stdout
            .iter()
            .find(|l| l.starts_with("{\"scenario\":"))
            .with_context(|| {
                format!(
                    "{}: no probe result (exit {:?}); stderr: {}; output:\n{}",
                    system.name(),
                    run.sample.code(),
                    run.sample.stderr.trim(),
                    run.sample.stdout.join("\n")
                )
            })?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["ok"] != true {
            bail!("{}: probe reported failure: {line}", system.name());
        }
        Ok(v)
    }

    /// One bulk transfer over `flows` parallel connections (peer `role` sink or source);
    /// returns the aggregate throughput the host-side peer measured, after checking every byte.
    /// Starts the host-side peer with `peer_args`, then runs the guest scenario `scenario`
    /// dialling it on `port` with `words`; returns the run, the guest's result line and the
    /// peer's.
    fn exchange(
        &self,
        ns: &BenchNetns,
        system: System,
        peer_args: &[&str],
        (scenario, port): (&str, u16),
        words: &[String],
    ) -> Result<(GuestRun, serde_json::Value, serde_json::Value)> {
        let peer = ns.peer(self.peer, peer_args)?;
        let mut all = vec![
            format!("probe.scenario={scenario}"),
            format!("probe.peer={}:{port}", system.peer_from_guest()),
        ];
        all.extend_from_slice(words);
        let run = self.run_guest(ns, system, &all)?;
        let guest = Self::result(&run, system)?;
        let host = peer.result()?;
        Ok((run, guest, host))
    }

    fn bulk(
        &self,
        ns: &BenchNetns,
        system: System,
        role: &str,
        port: u16,
        role_args: &[&str],
        flows: u64,
    ) -> Result<f64> {
        let bind = format!("{}:{port}", system.peer_bind());
        let conns = flows.to_string();
        let mut args = vec![role, bind.as_str()];
        args.extend_from_slice(role_args);
        args.extend_from_slice(&["--conns", &conns, "--parallel", "--timeout", "150"]);
        let scenario = if role == "sink" {
            "tcp-send"
        } else {
            "tcp-recv"
        };
        let mut words = vec![format!("probe.flows={flows}")];
        if role == "sink" {
            words.push(format!("probe.bytes={}", self.bytes));
        }
        let (_, _, r) = self.exchange(ns, system, &args, (scenario, port), &words)?;
        let expected = if role == "sink" {
            self.bytes
        } else {
            self.bytes / flows * flows
        };
        if r["bytes"] != expected || r["pattern_ok"] != true {
            bail!(
                "{}: {flows}-flow {role} got {r} (expected {expected} intact bytes)",
                system.name()
            );
        }
        Ok(r["gbps"].as_f64().unwrap_or(0.0))
    }

    /// Runs one repetition for `system` (both transfers, the 4-flow transfers and the
    /// ping-pong) and appends its figures to `out`, all or none.
    pub fn run_rep(&self, ns: &BenchNetns, system: System, out: &mut NetSamples) -> Result<()> {
        let bind = system.peer_bind();
        let limit = "150";
        // guest -> host
        let (run, _, sink) = self.exchange(
            ns,
            system,
            &["sink", &format!("{bind}:5101"), "--timeout", limit],
            ("tcp-send", 5101),
            &[format!("probe.bytes={}", self.bytes)],
        )?;
        if sink["bytes"] != self.bytes || sink["pattern_ok"] != true {
            bail!(
                "{}: sink got {sink} (expected {} intact bytes)",
                system.name(),
                self.bytes
            );
        }
        let g2h = sink["gbps"].as_f64().unwrap_or(0.0);
        let mut host_cpu = cpu_of(&run);
        let rss = (run.sample.max_rss_kib + run.helper_rss_kib) as f64 / 1024.0;

        // host -> guest: every byte checked against the pattern, at a fraction of SHA-256's
        // guest time (the guest must not be what is measured).
        let bytes = self.bytes.to_string();
        let (run, r, source) = self.exchange(
            ns,
            system,
            &[
                "source",
                &format!("{bind}:5102"),
                &bytes,
                "--timeout",
                limit,
            ],
            ("tcp-recv", 5102),
            &["probe.verify=pattern".into()],
        )?;
        if r["bytes"] != self.bytes || r["pattern_ok"] != true {
            bail!(
                "{}: guest received {} of {} bytes (pattern_ok {})",
                system.name(),
                r["bytes"],
                self.bytes,
                r["pattern_ok"]
            );
        }
        let h2g = source["gbps"].as_f64().unwrap_or(0.0);
        host_cpu += cpu_of(&run);

        // The same with 4 parallel flows (aggregate throughput).
        let g2h_p4 = self.bulk(ns, system, "sink", 5104, &[], 4)?;
        let h2g_p4 = self.bulk(ns, system, "source", 5105, &[&bytes], 4)?;

        // 1-byte ping-pong
        let (_, r, _) = self.exchange(
            ns,
            system,
            &["echo", &format!("{bind}:5103"), "--timeout", limit],
            ("tcp-rr", 5103),
            &[format!("probe.count={}", self.rr_count)],
        )?;

        out.g2h.push(g2h);
        out.h2g.push(h2g);
        out.g2h_p4.push(g2h_p4);
        out.h2g_p4.push(h2g_p4);
        out.p50.push(r["p50_us"].as_f64().unwrap_or(f64::NAN));
        out.p99.push(r["p99_us"].as_f64().unwrap_or(f64::NAN));
        out.cpu_per_gb
            .push(host_cpu / (2.0 * self.bytes as f64 / 1e9));
        out.rss.push(rss);
        Ok(())
    }
}

/// The figures of one system's repetitions so far, one entry per completed repetition.
#[derive(Debug, Default)]
pub struct NetSamples {
    g2h: Vec<f64>,
    h2g: Vec<f64>,
    g2h_p4: Vec<f64>,
    h2g_p4: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu_per_gb: Vec<f64>,
    rss: Vec<f64>,
}

impl NetSamples {
    /// The report's metrics for `system`.
    pub fn into_metrics(self, system: &str) -> Vec<Metric> {
        let metric = |name: &str, unit: &str, samples: Vec<f64>, lower: bool| Metric {
            system: system.into(),
            metric: name.into(),
            unit: unit.into(),
            samples,
            lower_is_better: lower,
        };
        vec![
            metric("tcp_g2h_gbps", "Gbit/s", self.g2h, false),
            metric("tcp_h2g_gbps", "Gbit/s", self.h2g, false),
            metric("tcp_g2h_gbps_p4", "Gbit/s", self.g2h_p4, false),
            metric("tcp_h2g_gbps_p4", "Gbit/s", self.h2g_p4, false),
            metric("rr_p50_us", "µs", self.p50, true),
            metric("rr_p99_us", "µs", self.p99, true),
            metric("cpu_s_per_gb", "s/GB", self.cpu_per_gb, true),
            metric("rss_mib", "MiB", self.rss, true),
        ]
    }
}

/// Host CPU seconds of the VMM (guest execution excluded) plus its helper, at the result line.
fn cpu_of(run: &GuestRun) -> f64 {
    match run.sample.cpu_at_result {
        Some((vmm, helper)) => vmm.host() + helper.map(|h| h.host()).unwrap_or(0.0),
        None => run.sample.cpu.as_secs_f64(),
    }
}

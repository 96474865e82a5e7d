//! The Linux guest's network inside the nested outer VM: iperf3 TCP both ways and sockperf TCP
//! ping-pong, ringfence against QEMU microvm with passt and with a tap, all in one outer VM.
//!
//! Every system boots the same image's vmlinux with 256 MiB and one vCPU, and its guest runs
//! the same [`GUEST_SCRIPT`] against a server address given as `$1`; the servers (iperf3,
//! sockperf) run in the outer VM and listen on all its addresses:
//! - `ringfence-user`: `--net user` with `allow@host`; the guest reaches the outer VM's
//!   loopback through the gateway, 172.16.0.1.
//! - `qemu-passt`: QEMU's stream netdev to passt, whose template interface is a dummy
//!   (`rf-up`, 198.51.100.2/24, default route via 198.51.100.1 — passt needs a routable
//!   interface to copy); the outer VM owns 198.51.100.1, so passt's connect lands on loopback.
//! - `ringfence-tap` and `qemu-tap`: a tap `rf-tap` made by the VMM, given 10.9.0.1/24 by the
//!   script as soon as it appears; the guest is 10.9.0.2 (static, there is no DHCP server).
//!
//! Each round boots every system once, in an order that rotates, and is a scenario of its own
//! (see [`super::nested_linux::run_in_outer_vm`]). Absolute figures are emulated speed and
//! mean little; the ratios between systems measured in one run are the result.

use std::path::Path;

use anyhow::{bail, Result};

use super::nested_linux::{run_in_outer_vm, IMAGE, QEMU_MICROVM};
use super::report::{Metric, Report};
use crate::util::{done, step};

/// iperf3's port in the outer VM (5201 is the harness's hashing sink).
const IPERF_PORT: u16 = 5301;
/// sockperf's port in the outer VM.
const SOCKPERF_PORT: u16 = 11111;
/// Seconds each iperf3 and sockperf test runs.
const TEST_SECS: u32 = 3;

/// What the guest runs, with the server's address as `$1`: upload, download, ping-pong; one
/// `NET <what> <value>` line each.
const GUEST_SCRIPT: &str = "for d in up down; do f=; [ $d = down ] && f=-R; \
iperf3 -c $1 -p @IPERF@ -t @SECS@ -f m $f | awk -v d=$d '/receiver/ { for (i = 2; i <= NF; i++) if ($i == \"Mbits/sec\") print \"NET\", d, $(i - 1) }'; done; \
sockperf pp --tcp -i $1 -p @SOCKPERF@ -t @SECS@ | awk '/percentile 50.000/ { print \"NET rtt\", $NF }'";

/// Sets up the outer VM's side once per outer VM: addresses, servers, passt.
const OUTER_SETUP: &str = "if [ ! -e /tmp/rf-bench-ready ]; then
ip link add rf-up type dummy && ip link set rf-up up && ip addr add 198.51.100.2/24 dev rf-up &&
ip route add default via 198.51.100.1 dev rf-up && ip addr add 198.51.100.1/32 dev rf-test || exit 2
iperf3 -s -p @IPERF@ -D || exit 2
setsid sockperf sr --tcp -p @SOCKPERF@ > /tmp/sockperf.log 2>&1 &
setsid passt -f -i rf-up -s /tmp/passt.sock > /tmp/passt.log 2>&1 &
i=0; while [ ! -S /tmp/passt.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -S /tmp/passt.sock ] || { echo 'passt did not start:'; cat /tmp/passt.log; exit 2; }
touch /tmp/rf-bench-ready
fi
# The VMMs make the tap; it gets its address as soon as it appears.
tap_addr() { (i=0; while [ $i -lt 600 ] && ! ip link show rf-tap >/dev/null 2>&1; do sleep 0.1; i=$((i+1)); done
  ip addr add 10.9.0.1/24 dev rf-tap && ip link set rf-tap up) & }
# Runs one system, its NET lines tagged with its name; shows the console if it gave none.
bench() { name=$1; shift; \"$@\" > /tmp/out 2>&1; st=$?
  tr -d '\\r' < /tmp/out | sed -n \"s/^NET /NET $name /p\" > /tmp/net
  cat /tmp/net; echo \"NETSTATUS $name $st\"
  [ -s /tmp/net ] || { echo \"--- $name console:\"; tail -n 30 /tmp/out; } }
";

/// One system under test: its name, how it starts with a guest command line appended, and
/// the address its guest reaches the servers at.
struct System {
    name: &'static str,
    /// Shell command; `@CMDLINE@` is replaced by the guest's command line (already quoted).
    command: String,
    /// Guest network parameters beyond the command.
    guest_net: &'static str,
    server: &'static str,
    /// Whether the system runs on the tap (whose address the script sets once it appears).
    on_tap: bool,
    /// The exit status of a clean run (QEMU's isa-debug-exit turns the agent's 0 into 1).
    ok_status: i32,
}

fn systems() -> Vec<System> {
    let rf = format!(
        "timeout 150 ringfence run --kernel {IMAGE}/vmlinux --initrd {IMAGE}/initramfs.cpio.gz --mem 256"
    );
    let qemu = format!("timeout 150 {QEMU_MICROVM}");
    let tap_guest = "ringfence.ip=10.9.0.2/24 ringfence.gw=10.9.0.1";
    vec![
        System {
            name: "ringfence-user",
            command: format!("{rf} --net user --net-rule allow@host --cmdline @CMDLINE@"),
            guest_net: "",
            server: "172.16.0.1",
            on_tap: false,
            ok_status: 0,
        },
        System {
            name: "qemu-passt",
            command: format!("{qemu} -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/passt.sock -device virtio-net-device,netdev=n0 -append @CMDLINE@"),
            guest_net: "",
            server: "198.51.100.1",
            on_tap: false,
            ok_status: 1,
        },
        System {
            name: "ringfence-tap",
            command: format!("{rf} --net tap:rf-tap --cmdline @CMDLINE@"),
            guest_net: tap_guest,
            server: "10.9.0.1",
            on_tap: true,
            ok_status: 0,
        },
        System {
            name: "qemu-tap",
            command: format!("{qemu} -netdev tap,id=n0,ifname=rf-tap,script=no,downscript=no -device virtio-net-device,netdev=n0 -append @CMDLINE@"),
            guest_net: tap_guest,
            server: "10.9.0.1",
            on_tap: true,
            ok_status: 1,
        },
    ]
}

/// The metrics: the guest script's line tag, the report's name, unit, and direction.
const METRICS: &[(&str, &str, &str, bool)] = &[
    ("up", "linux_nested_tcp_up_mbps", "Mbit/s", false),
    ("down", "linux_nested_tcp_down_mbps", "Mbit/s", false),
    ("rtt", "linux_nested_tcp_pingpong_p50_us", "us", true),
];

fn fill(template: &str) -> String {
    template
        .replace("@IPERF@", &IPERF_PORT.to_string())
        .replace("@SOCKPERF@", &SOCKPERF_PORT.to_string())
        .replace("@SECS@", &TEST_SECS.to_string())
}

/// The shell line that runs `sys` once.
fn run_line(sys: &System) -> Result<String> {
    let script = fill(GUEST_SCRIPT);
    let cmd = ringfence_agent::protocol::cmd_param(["sh", "-c", script.as_str(), "sh", sys.server])
        .map_err(|e| anyhow::anyhow!("encoding the guest command: {e}"))?;
    let cmdline = format!(
        "'console=ttyS0 reboot=k panic=-1 quiet {} {cmd}'",
        sys.guest_net
    );
    Ok(format!(
        "{}bench {} {}",
        if sys.on_tap { "tap_addr; " } else { "" },
        sys.name,
        sys.command.replace("@CMDLINE@", &cmdline)
    ))
}

/// Runs `runs` rounds and adds the network metrics to `report`.
pub fn run(kit: &Path, runs: usize, report: &mut Report) -> Result<()> {
    let systems = systems();
    let setup = fill(OUTER_SETUP);
    let mut rounds = Vec::with_capacity(runs);
    for round in 0..runs {
        let mut script = setup.clone();
        for k in 0..systems.len() {
            script.push_str(&run_line(&systems[(round + k) % systems.len()])?);
            script.push('\n');
        }
        rounds.push(script);
    }
    let t = step(&format!(
        "Linux guest network inside the nested outer VM: iperf3 and sockperf, ringfence vs QEMU with passt and tap, {runs} rotating rounds"
    ));
    let text = run_in_outer_vm(kit, 600, &rounds)?;
    for sys in &systems {
        let statuses: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("NETSTATUS "))
            .filter_map(|l| l.strip_prefix(sys.name).map(str::trim))
            .collect();
        if let Some(bad) = statuses
            .iter()
            .find(|s| s.parse::<i32>().ok() != Some(sys.ok_status))
        {
            bail!(
                "{} exited {bad} instead of {} in the outer VM; output:\n{text}",
                sys.name,
                sys.ok_status
            );
        }
        for (tag, metric, unit, lower_is_better) in METRICS {
            let prefix = format!("NET {} {tag} ", sys.name);
            let samples: Vec<f64> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .filter_map(|v| v.trim().parse().ok())
                .collect();
            if samples.len() != runs {
                bail!(
                    "{} {metric}: {} of {runs} runs measured; output:\n{text}",
                    sys.name,
                    samples.len()
                );
            }
            report.metrics.push(Metric {
                system: sys.name.into(),
                metric: (*metric).into(),
                unit: (*unit).into(),
                samples,
                lower_is_better: *lower_is_better,
            });
        }
    }
    report.notes.push(format!(
        "linux_nested_tcp_*: the Linux image's iperf3 ({TEST_SECS} s, guest to outer VM = up, -R = down) and sockperf TCP ping-pong (median one-way latency, {TEST_SECS} s) against servers in one outer VM under QEMU TCG with emulated SVM; ringfence-user vs QEMU+passt, ringfence-tap vs QEMU+tap ({runs} rounds, order rotating); emulated speed, so read the ratios, not the figures"
    ));
    done(t);
    Ok(())
}

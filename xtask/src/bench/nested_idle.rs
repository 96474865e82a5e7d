//! What an idle Linux guest costs the host (issue 18 item 4), inside the nested outer VM:
//! `ringfence-linux-idle` against `ringfence-linux-busy`.
//!
//! Each round boots the image's vmlinux (256 MiB, one vCPU, no network) under the release
//! `ringfence run` twice, in an order that alternates between rounds: once with the agent
//! running `sleep` (the guest has nothing to do, so its vCPU should halt), once with it running
//! a shell loop that never waits (the reference: a vCPU that never halts). Each guest command
//! first prints a marker on the console; once the marker is on `ringfence`'s standard output
//! and [`SETTLE_SECS`] more have passed, the script reads the process's utime + stime from
//! `/proc/<pid>/stat` (and each thread's run time) at both ends of a [`WINDOW_SECS`] window, timed by the
//! outer VM's `/proc/uptime`, then stops the VM with SIGTERM. The figure is host CPU in % of
//! one core: `(Δutime + Δstime) / Δuptime`, the vCPU thread's time in guest mode included
//! (the kernel charges it to utime).
//!
//! The outer VM runs under QEMU TCG: every guest timer interrupt, VM exit and host wake-up
//! costs far more than on hardware, so the idle figure overstates what an idle guest costs on
//! a real host. Only the idle/busy ratio of one round means anything; it is reported per round
//! as `linux_nested_idle_busy_ratio_pct` (idle over busy, in %, so that the report's two
//! decimals show it). `/proc/<pid>/stat` counts 10 ms ticks, too coarse for an idle guest's
//! few milliseconds per window, so the script also sums the threads' nanosecond run times
//! from `/proc/<pid>/task/*/schedstat` (`linux_nested_sched_cpu_pct`), and the ratio uses
//! those.
//!
//! Each round is a scenario of its own (see [`super::nested_linux::run_in_outer_vm`]), so an
//! outer VM that freezes costs that round, which runs again in a new one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};

use super::nested_linux::{run_in_outer_vm, IMAGE};
use super::report::{Metric, Report};
use crate::util::{done, step};

/// Seconds between the marker and the window's opening (the tail of the command's start).
const SETTLE_SECS: u32 = 1;
/// Seconds of the measuring window.
const WINDOW_SECS: u32 = 8;
/// Seconds each guest command lasts: longer than the settle time and the window together
/// (the VM is stopped as soon as the window closes).
const GUEST_SECS: u32 = 60;
/// Tenths of a second the script waits for the marker (boot under emulation takes 2-3 s).
const BOOT_WAIT_TENTHS: u32 = 900;
/// Seconds each round (two boots, two windows) may take in the outer VM.
const ROUND_DEADLINE_SECS: u64 = 300;
/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on x86-64 Linux, part of its ABI).
const USER_HZ: f64 = 100.0;

/// The console marker: the guest prints it with `printf 'RFIDLE%s\n' MARK`, so the kernel
/// command line (which the guest kernel could echo) never holds it whole.
const MARKER: &str = "RFIDLEMARK";

/// The two guests: system name and the shell command the agent runs.
const GUESTS: [(&str, &str); 2] = [
    (
        "ringfence-linux-idle",
        "printf 'RFIDLE%s\\n' MARK; exec sleep @GUEST@",
    ),
    (
        "ringfence-linux-busy",
        "printf 'RFIDLE%s\\n' MARK; exec timeout @GUEST@ sh -c 'while :; do :; done'",
    ),
];

/// Shell functions for the outer VM: `measure NAME CMD...` starts CMD (a `ringfence run`) in
/// the background, waits for the marker, measures the window and prints
/// `IDLECPU <round> NAME <ticks0> <ticks1> <uptime0> <uptime1>` and
/// `IDLETHREADS <round> NAME <thread>=<ns>...`, or `IDLEFAIL <round> NAME <why>` with the
/// console's tail; it always stops the VM.
const OUTER_FUNCTIONS: &str = r#"# utime+stime of PID in clock ticks (fields 14 and 15; comm may hold spaces).
cpu() { sed 's/^.*) //' /proc/$1/stat 2>/dev/null | awk '{ printf "%.0f\n", $12 + $13 }'; }
# One line per thread of PID: tid, name, nanoseconds run so far (schedstat).
threads() { for t in /proc/$1/task/*; do n=$(cut -d' ' -f1 $t/schedstat 2>/dev/null)
  c=$(tr ' ' _ < $t/comm 2>/dev/null); [ -n "$n" ] && echo "${t##*/} ${c:-?} $n"; done; }
# Whether PID is alive: its stat readable and its state not zombie.
alive() { st=$(sed 's/^.*) //' /proc/$1/stat 2>/dev/null | cut -d' ' -f1); [ -n "$st" ] && [ "$st" != Z ]; }
up() { cut -d' ' -f1 /proc/uptime; }
failed=0
measure() { name=$1; shift
  rm -f /tmp/idle.out /tmp/idle.a /tmp/idle.b
  "$@" > /tmp/idle.out 2>&1 &
  pid=$!
  i=0
  while [ $i -lt @BOOTWAIT@ ] && alive $pid && ! grep -q @MARKER@ /tmp/idle.out; do sleep 0.1; i=$((i+1)); done
  why=
  if ! grep -q @MARKER@ /tmp/idle.out; then why="no marker on the console within $((i / 10)) s"
  elif [ "$(cat /proc/$pid/comm 2>/dev/null)" != ringfence ]; then why="PID $pid is not ringfence"
  else
    sleep @SETTLE@
    a=$(cpu $pid); threads $pid > /tmp/idle.a; t0=$(up)
    sleep @WINDOW@
    b=$(cpu $pid); threads $pid > /tmp/idle.b; t1=$(up)
    if alive $pid && [ -n "$a" ] && [ -n "$b" ]; then
      echo "IDLECPU @ROUND@ $name $a $b $t0 $t1"
      awk -v h="IDLETHREADS @ROUND@ $name" 'NR == FNR { a[$1] = $3; next }
        $1 in a { printf "%s%s=%.0f", (n++ ? " " : h " "), $2, $3 - a[$1] } END { if (!n) printf "%s", h; print "" }' /tmp/idle.a /tmp/idle.b
    else why="the VM ended during the window"; fi
  fi
  kill $pid 2>/dev/null
  i=0; while [ $i -lt 100 ] && alive $pid; do sleep 0.1; i=$((i+1)); done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  if [ -n "$why" ]; then
    failed=1; echo "IDLEFAIL @ROUND@ $name $why"; echo "--- $name console:"; tail -n 30 /tmp/idle.out | tr -d '\r'
  fi
}
"#;

/// Nanoseconds each thread ran in a window, by thread name.
type ThreadTimes = Vec<(String, u64)>;

/// One measured window.
#[derive(Clone, Debug, Default, PartialEq)]
struct Window {
    /// Host CPU of the whole process from `/proc/<pid>/stat`, % of one core.
    host_pct: f64,
    /// Window length, seconds.
    secs: f64,
    /// Nanoseconds each thread ran in the window (threads alive at both ends), by name.
    threads: ThreadTimes,
}

impl Window {
    /// Host CPU from the scheduler's nanosecond run times, % of one core; `None` when the
    /// outer kernel gave none (no schedstat).
    fn sched_pct(&self) -> Option<f64> {
        if self.threads.is_empty() {
            return None;
        }
        let ns: u64 = self.threads.iter().map(|(_, n)| n).sum();
        Some(100.0 * ns as f64 / 1e9 / self.secs)
    }
}

/// Parses the fields after `IDLECPU `: round, system, then utime+stime ticks at the window's
/// ends, and the outer VM's uptime at both ends.
fn parse_cpu(line: &str) -> Option<(usize, String, Window)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let [round, name, c0, c1, t0, t1] = f[..] else {
        return None;
    };
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    let secs = num(t1)? - num(t0)?;
    if secs <= 0.0 {
        return None;
    }
    let cpu = (num(c1)? - num(c0)?) / USER_HZ;
    Some((
        round.parse().ok()?,
        name.to_string(),
        Window {
            host_pct: 100.0 * cpu / secs,
            secs,
            threads: Vec::new(),
        },
    ))
}

/// Parses the fields after `IDLETHREADS `: round, system, then `name=nanoseconds` per thread
/// (a thread whose count went backwards, which cannot happen, is dropped).
fn parse_threads(line: &str) -> Option<(usize, String, ThreadTimes)> {
    let mut f = line.split_whitespace();
    let round = f.next()?.parse().ok()?;
    let name = f.next()?.to_string();
    let threads = f
        .filter_map(|t| {
            let (thread, ns) = t.split_once('=')?;
            Some((thread.to_string(), ns.parse().ok()?))
        })
        .collect();
    Some((round, name, threads))
}

/// The windows in `text`, by round and system.
fn windows(text: &str) -> BTreeMap<usize, BTreeMap<String, Window>> {
    let mut by_round: BTreeMap<usize, BTreeMap<String, Window>> = BTreeMap::new();
    for (round, name, w) in text
        .lines()
        .filter_map(|l| l.strip_prefix("IDLECPU "))
        .filter_map(parse_cpu)
    {
        by_round.entry(round).or_default().insert(name, w);
    }
    for (round, name, threads) in text
        .lines()
        .filter_map(|l| l.strip_prefix("IDLETHREADS "))
        .filter_map(parse_threads)
    {
        if let Some(w) = by_round.get_mut(&round).and_then(|r| r.get_mut(&name)) {
            w.threads = threads;
        }
    }
    by_round
}

/// The script of round `round`: both guests, idle first in even rounds.
fn round_script(round: usize) -> Result<String> {
    let mut script = fill(OUTER_FUNCTIONS, round);
    for k in 0..GUESTS.len() {
        let (name, command) = GUESTS[(round + k) % GUESTS.len()];
        let command = fill(command, round);
        let cmd = ringfence_agent::protocol::cmd_param(["sh", "-c", command.as_str()])
            .map_err(|e| anyhow::anyhow!("encoding the guest command: {e}"))?;
        script.push_str(&format!(
            "measure {name} ringfence run --kernel {IMAGE}/vmlinux --initrd {IMAGE}/initramfs.cpio.gz --mem 256 --net none --no-pit --timeout {} --cmdline 'console=ttyS0 reboot=k panic=-1 quiet ringfence.net=none {cmd}'\n",
            GUEST_SECS + 60
        ));
    }
    script.push_str("exit $failed\n");
    Ok(script)
}

fn fill(template: &str, round: usize) -> String {
    template
        .replace("@BOOTWAIT@", &BOOT_WAIT_TENTHS.to_string())
        .replace("@MARKER@", MARKER)
        .replace("@SETTLE@", &SETTLE_SECS.to_string())
        .replace("@WINDOW@", &WINDOW_SECS.to_string())
        .replace("@GUEST@", &GUEST_SECS.to_string())
        .replace("@ROUND@", &round.to_string())
}

/// Runs `runs` rounds in outer VMs booted from `kit` and adds the idle and busy host CPU (from
/// `/proc/<pid>/stat` and from the threads' schedstat) and the per-round idle/busy ratio to
/// `report`.
pub fn run(kit: &Path, runs: usize, report: &mut Report) -> Result<()> {
    let rounds = (0..runs).map(round_script).collect::<Result<Vec<_>>>()?;
    let t = step(&format!(
        "Linux guest idle inside the nested outer VM: host CPU of ringfence with the guest sleeping and spinning, {runs} interleaved rounds of {WINDOW_SECS} s windows"
    ));
    let text = run_in_outer_vm(kit, ROUND_DEADLINE_SECS, &rounds)?;
    let by_round = windows(&text);
    let mut per_system: Vec<Vec<Window>> = Vec::new();
    for (name, _) in GUESTS {
        let w: Vec<Window> = (0..runs)
            .filter_map(|r| by_round.get(&r)?.get(name).cloned())
            .collect();
        if w.len() != runs {
            bail!(
                "{name}: {} of {runs} windows measured; output:\n{text}",
                w.len()
            );
        }
        per_system.push(w);
    }
    // The scheduler's figure where every window has it: /proc/<pid>/stat counts 10 ms ticks,
    // too coarse for an idle guest's few milliseconds.
    let precise = per_system.iter().flatten().all(|w| w.sched_pct().is_some());
    let mut ratios = Vec::with_capacity(runs);
    for (r, (idle, busy)) in per_system[0].iter().zip(&per_system[1]).enumerate() {
        let pct = |w: &Window| w.sched_pct().filter(|_| precise).unwrap_or(w.host_pct);
        let ratio = if pct(busy) > 0.0 {
            100.0 * pct(idle) / pct(busy)
        } else {
            f64::NAN
        };
        let threads: Vec<String> = idle
            .threads
            .iter()
            .map(|(n, ns)| format!("{n} {:.2} ms", *ns as f64 / 1e6))
            .collect();
        println!(
            "    round {}: idle {:.3} % ({:.2} % by ticks), busy {:.2} % ({:.2} % by ticks) of a core, idle/busy {ratio:.4} %; idle threads over {:.1} s: {}",
            r + 1,
            pct(idle),
            idle.host_pct,
            pct(busy),
            busy.host_pct,
            idle.secs,
            threads.join(", ")
        );
        ratios.push(ratio);
    }
    for ((name, _), w) in GUESTS.iter().zip(&per_system) {
        report.metrics.push(Metric {
            system: (*name).into(),
            metric: "linux_nested_host_cpu_pct".into(),
            unit: "% of a core".into(),
            samples: w.iter().map(|w| w.host_pct).collect(),
            lower_is_better: true,
        });
        if precise {
            report.metrics.push(Metric {
                system: (*name).into(),
                metric: "linux_nested_sched_cpu_pct".into(),
                unit: "% of a core".into(),
                samples: w.iter().filter_map(Window::sched_pct).collect(),
                lower_is_better: true,
            });
        }
    }
    report.metrics.push(Metric {
        system: "ringfence-linux".into(),
        metric: "linux_nested_idle_busy_ratio_pct".into(),
        unit: "% (idle/busy)".into(),
        samples: ratios,
        lower_is_better: true,
    });
    report.notes.push(format!(
        "linux_nested_host_cpu_pct: host CPU (utime + stime from /proc/<pid>/stat, the vCPU's guest-mode time included) of the release `ringfence run` process booting the Linux image (vmlinux, 256 MiB, one vCPU, no network) inside one outer VM under QEMU TCG with emulated SVM, over {WINDOW_SECS} s windows (outer VM's uptime) opened {SETTLE_SECS} s after the guest's command printed its marker; ringfence-linux-idle's guest runs `sleep`, ringfence-linux-busy's a shell loop that never waits ({runs} rounds, the two alternating first). /proc counts 10 ms ticks, so an idle figure of 0 means less than one tick per window. \
linux_nested_sched_cpu_pct: the same window from the scheduler's nanosecond run times (/proc/<pid>/task/*/schedstat, summed over the threads alive at both ends). linux_nested_idle_busy_ratio_pct: idle over busy of the same round, in % ({}). \
Everything runs under emulation, where each timer interrupt, VM exit and wake-up costs far more than on hardware: only the ratio means anything, and it overstates what an idle guest costs on a real host.",
        if precise { "schedstat figures" } else { "tick figures: the outer kernel gave no schedstat" }
    ));
    done(t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_windows() {
        let text = "noise\nIDLECPU 3 ringfence-linux-idle 120 136 100.00 108.00\n\
                    IDLETHREADS 3 ringfence-linux-idle vcpu0=3000000 vm-supervisor=1000000 bad=-5\n\
                    IDLECPU 3 ringfence-linux-busy 1 2 3\n\
                    IDLETHREADS 4 ringfence-linux-idle vcpu0=1\n";
        let w = windows(text);
        assert_eq!(w.len(), 1);
        let idle = &w[&3]["ringfence-linux-idle"];
        assert!((idle.host_pct - 2.0).abs() < 1e-9);
        assert_eq!(
            idle.threads,
            [
                ("vcpu0".into(), 3_000_000),
                ("vm-supervisor".into(), 1_000_000)
            ]
        );
        assert!((idle.sched_pct().unwrap() - 0.05).abs() < 1e-9);
        assert!(!w[&3].contains_key("ringfence-linux-busy"));
        assert!(parse_cpu("1 x 1 2 5.0 5.0").is_none());
    }

    #[test]
    fn rounds_alternate_and_are_filled() {
        let even = round_script(0).unwrap();
        let odd = round_script(1).unwrap();
        let first = |s: &str| {
            s.find("measure ringfence-linux-idle") < s.find("measure ringfence-linux-busy")
        };
        assert!(first(&even) && !first(&odd));
        for placeholder in [
            "@BOOTWAIT@",
            "@MARKER@",
            "@SETTLE@",
            "@WINDOW@",
            "@GUEST@",
            "@ROUND@",
        ] {
            assert!(
                !even.contains(placeholder),
                "{placeholder} left in the script"
            );
        }
        // The marker is never whole on the guest's command line.
        assert!(even
            .lines()
            .filter(|l| l.starts_with("measure "))
            .all(|l| !l.contains(MARKER)));
    }
}

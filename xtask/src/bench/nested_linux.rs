//! `cargo xtask bench --linux --nested`: the Linux guest's boot, ringfence against QEMU microvm,
//! both inside one nested-harness outer VM (QEMU TCG with emulated AMD SVM) on a host whose
//! own KVM cannot run guest kernels at speed.
//!
//! Three parts, each in rounds of its own: the boot (here), the network
//! ([`super::nested_net`]) and the idle guest's host CPU ([`super::nested_idle`]);
//! `--nested-parts boot,net,idle` runs some of them only.
//!
//! Each boot round boots the image's vmlinux (PVH) with the agent running `true` and no network,
//! once under `ringfence run` and once under `qemu-system-x86_64 -M microvm -accel kvm`,
//! alternating which goes first; `rf-nested time` measures process start to exit. Everything
//! runs under emulation, so only the ratio between the two means anything. Each round is a
//! scenario of its own, so an outer VM that freezes (QEMU TCG's nested SVM does, now and then)
//! costs that round, which runs again in a new one.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::report::{Metric, Report};
use crate::util::{done, step, target_dir};

use crate::{image, nested};

/// The guest command line both systems boot with (the agent runs `true`, no network).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet ringfence.net=none ringfence.cmd=true";
/// Where the kit puts the image inside the outer VM.
pub(super) const IMAGE: &str = "/root/.cache/ringfence/linux";
/// QEMU microvm booting the image's vmlinux under the outer VM's KVM, as the baselines run it
/// (no network; `-append` follows). `acpi=off` makes QEMU describe its virtio-mmio devices on
/// the kernel command line, which the image's kernel reads (it has no ACPI).
pub(super) const QEMU_MICROVM: &str = "qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel /root/.cache/ringfence/linux/vmlinux -initrd /root/.cache/ringfence/linux/initramfs.cpio.gz";

/// The parts of the nested benchmark, in the order they run: the boot comparison, the network
/// comparison ([`super::nested_net`]) and the idle guest's host CPU ([`super::nested_idle`]).
/// `--nested-parts` picks some of them.
pub const PARTS: [&str; 3] = ["boot", "net", "idle"];

/// Builds the benchmark kit, then runs `runs` interleaved rounds of each part in `parts` (names
/// from [`PARTS`], checked where `--nested-parts` is parsed; all of them when empty), adding
/// their metrics to `report`.
pub fn run_bench(runs: usize, parts: &[String], report: &mut Report) -> Result<()> {
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let img = image::build(image::default_jobs())?;
    nested::build_binaries()?;
    // The release ringfence, as users run it; QEMU is Debian's release build too.
    let (release, _) = crate::util::build_release_binaries()?;
    let kit = nested::build_kit_with(&img.dir, Some(&release))?;
    if wanted("boot") {
        boot(&kit, runs, report)?;
    }
    if wanted("net") {
        super::nested_net::run(&kit, runs, report)?;
    }
    if wanted("idle") {
        super::nested_idle::run(&kit, runs, report)?;
    }
    Ok(())
}

/// Runs each of `scripts` as a scenario of its own in the outer VM booted from `kit` (a
/// frozen outer VM costs one round, which runs again), `secs` at most each; returns their
/// standard outputs, in order, joined.
pub(super) fn run_in_outer_vm(kit: &Path, secs: u64, scripts: &[String]) -> Result<String> {
    let out = Command::new(target_dir().join("debug/rf-nested"))
        .arg("outer")
        .arg(kit)
        .arg(secs.to_string())
        .args(scripts)
        .output()
        .context("running rf-nested outer")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "the outer VM's scripts ended with {}; output:\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// Boot to exit of the Linux image, ringfence against QEMU microvm, one scenario per round.
fn boot(kit: &Path, runs: usize, report: &mut Report) -> Result<()> {
    let rf = format!(
        "rf-nested time ringfence ringfence run --kernel {IMAGE}/vmlinux --initrd {IMAGE}/initramfs.cpio.gz --mem 256 --net none --no-pit --cmdline '{CMDLINE}'"
    );
    let qemu = format!("rf-nested time qemu-microvm {QEMU_MICROVM} -append '{CMDLINE}'");
    let rounds: Vec<String> = (0..runs)
        .map(|i| {
            if i % 2 == 0 {
                format!("{rf} && {qemu}")
            } else {
                format!("{qemu} && {rf}")
            }
        })
        .collect();
    let t = step(&format!(
        "Linux guest boot inside the nested outer VM: ringfence vs QEMU microvm, {runs} interleaved rounds"
    ));
    let text = run_in_outer_vm(kit, 120, &rounds)?;
    let mut samples: [(&str, i32, Vec<f64>); 2] = [
        ("ringfence", 0, Vec::new()),
        ("qemu-microvm", 1, Vec::new()),
    ];
    for line in text.lines().filter_map(|l| l.strip_prefix("TIME ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [label, ms, status] = f[..] else { continue };
        for (name, ok_status, v) in samples.iter_mut() {
            if label == *name {
                // QEMU's isa-debug-exit turns the agent's 0 into (0 << 1) | 1.
                if status.parse::<i32>().ok() != Some(*ok_status) {
                    bail!("{name} exited {status} instead of {ok_status} in the outer VM; output:\n{text}");
                }
                v.push(ms.parse().unwrap_or(f64::NAN));
            }
        }
    }
    for (name, _, v) in samples {
        if v.len() != runs {
            bail!(
                "{name}: {} of {runs} boots measured; output:\n{text}",
                v.len()
            );
        }
        report.metrics.push(Metric {
            system: name.into(),
            metric: "boot_linux_nested_exit_ms".into(),
            unit: "ms".into(),
            samples: v,
            lower_is_better: true,
        });
    }
    report.notes.push(format!(
        "boot_linux_nested_exit_ms: the Linux image (vmlinux, PVH) running `true` with no network, process start to exit, inside one outer VM under QEMU TCG with emulated SVM ({runs} interleaved rounds); emulated speed, so read the ratio, not the figures"
    ));
    done(t);
    Ok(())
}

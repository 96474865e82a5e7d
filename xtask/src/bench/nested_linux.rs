//! `cargo xtask bench --linux --nested`: the Linux guest's boot, ringfence against QEMU microvm,
//! both inside one nested-harness outer VM (QEMU TCG with emulated AMD SVM) on a host whose
//! own KVM cannot run guest kernels at speed.
//!
//! Each round boots the image's vmlinux (PVH) with the agent running `true` and no network,
//! once under `ringfence run` and once under `qemu-system-x86_64 -M microvm -accel kvm`,
//! alternating which goes first; `rf-nested time` measures process start to exit. Everything
//! runs under emulation, so only the ratio between the two means anything.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::report::{Metric, Report};
use crate::util::{done, step, target_dir};

use crate::{image, nested};

/// The guest command line both systems boot with (the agent runs `true`, no network).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet ringfence.net=none ringfence.cmd=true";
/// Where the kit puts the image inside the outer VM.
const IMAGE: &str = "/root/.cache/ringfence/linux";

/// Runs `runs` interleaved rounds and adds the boot metrics to `report`.
pub fn run_bench(runs: usize, report: &mut Report) -> Result<()> {
    let img = image::build(image::default_jobs())?;
    nested::build_binaries()?;
    // The release ringfence, as users run it; QEMU is Debian's release build too.
    let (release, _) = crate::util::build_release_binaries()?;
    let kit = nested::build_kit_with(&img.dir, Some(&release))?;
    let rf = format!(
        "rf-nested time ringfence ringfence run --kernel {IMAGE}/vmlinux --initrd {IMAGE}/initramfs.cpio.gz --mem 256 --net none --no-pit --cmdline '{CMDLINE}'"
    );
    let qemu = format!(
        "rf-nested time qemu-microvm qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel {IMAGE}/vmlinux -initrd {IMAGE}/initramfs.cpio.gz -append '{CMDLINE}'"
    );
    let script = format!(
        "for i in $(seq {runs}); do if [ $((i % 2)) -eq 1 ]; then {rf}; {qemu}; else {qemu}; {rf}; fi; done"
    );
    let t = step(&format!(
        "Linux guest boot inside the nested outer VM: ringfence vs QEMU microvm, {runs} interleaved rounds"
    ));
    let out = Command::new(target_dir().join("debug/rf-nested"))
        .arg("outer")
        .arg(&kit)
        .arg(&script)
        .arg((60 * runs + 120).to_string())
        .output()
        .context("running rf-nested outer")?;
    let text = String::from_utf8_lossy(&out.stdout);
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
                    bail!("{name} exited {status} instead of {ok_status} in the outer VM; output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
                }
                v.push(ms.parse().unwrap_or(f64::NAN));
            }
        }
    }
    for (name, _, v) in samples {
        if v.len() != runs {
            bail!(
                "{name}: {} of {runs} boots measured; output:\n{text}\n{}",
                v.len(),
                String::from_utf8_lossy(&out.stderr)
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

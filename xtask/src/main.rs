//! ringfence developer tasks: `cargo xtask demo | test | bench | image | fuzz`.

mod baselines;
mod bench;
mod cpio;
mod demo;
mod deps;
mod fuzz;
mod image;
mod nested;
mod probe;
mod pytools;
mod rootfs;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  demo [--no-linux]    install what is missing, build, boot the probe guest, show its network
                       and policy, then a Linux guest (in the nested outer VM where needed)
  test [--no-lint] [--no-linux-image] [--no-nested] [--no-fuzz] [-- FILTER...]
                       fmt --check, clippy -D warnings, build the probe guest and the Linux
                       guest image (cached; ~6 min the first time), the nested harness's kit,
                       run every test (--no-linux-image / --no-nested: the Linux-guest /
                       nested tests then print SKIPPED), then every fuzz target for 30 s
                       (--no-fuzz skips them; without nightly they print SKIPPED)
  bench [boot|net] [--quick] [--runs N] [--systems A,B] [--baselines latest|cached]
                       benchmarks against QEMU on the same probe guest; writes target/bench/;
                       --baselines latest first fetches QEMU 10 (bookworm-backports, unpacked)
                       and builds passt 2025 (Debian 13 source) into
                       ~/.cache/ringfence/baselines/ (nothing installed, no apt source added)
  bench --linux        the same with the Linux guest (refuses where guest kernels are emulated)
  bench --linux --nested [--nested-parts boot,net,idle]
                       the Linux guest inside the nested harness's outer VM: boot, network
                       and idle cost against QEMU / a busy guest (ratios only: emulated)
  image                build the Linux guest image (kernel 6.1 + initramfs with the agent),
                       cached in ~/.cache/ringfence/linux-<hash>/
  fuzz [TARGET] [--seconds N] [--list]
                       cargo-fuzz targets in fuzz/ on nightly (installs cargo-fuzz if missing):
                       each target, or the named one, for N seconds (default 30); fails with
                       the crashing input's path
  probe                build the probe guest only (cached in ~/.cache/ringfence)
  nested [--build-only] [-- FILTER...]
                       Linux guests under ringfence inside an outer VM (QEMU TCG with emulated
                       AMD SVM), for hosts whose /dev/kvm emulates guest kernel mode: builds the
                       kit (Debian cloud kernel + kvm modules, ringfence, the Linux image) and
                       runs tests/tests/nested_linux.rs (part of `test` too)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run_demo(&args[1..]),
        Some("test") => test::run_all(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("probe") => probe::build().map(|p| println!("{}", p.display())),
        Some("image") => image::run(&args[1..]),
        Some("nested") => nested::run_cmd(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("-h") | Some("--help") | Some("help") | None => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprint!("xtask: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

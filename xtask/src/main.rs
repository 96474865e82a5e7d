//! ringfence developer tasks: `cargo xtask demo | test | bench | image`.

mod bench;
mod demo;
mod deps;
mod image;
mod probe;
mod test;
mod util;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  demo                 install what is missing, build, boot the probe guest and show it working
  test [--no-lint] [--no-linux-image] [-- FILTER...]
                       fmt --check, clippy -D warnings, build the probe guest and the Linux
                       guest image (cached; ~6 min the first time), run every test
                       (--no-linux-image: the Linux-guest tests then print SKIPPED)
  bench [boot|net] [--quick] [--runs N] [--systems A,B]
                       benchmarks against QEMU on the same probe guest; writes target/bench/
  bench --linux        the same with the Linux guest (refuses where guest kernels are emulated)
  image                build the Linux guest image (kernel 6.1 + initramfs with the agent),
                       cached in ~/.cache/ringfence/linux-<hash>/
  probe                build the probe guest only (cached in ~/.cache/ringfence)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run_demo(),
        Some("test") => test::run_all(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("probe") => probe::build().map(|p| println!("{}", p.display())),
        Some("image") => image::run(&args[1..]),
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

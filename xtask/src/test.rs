//! `cargo xtask test`: the whole check CI runs — formatting, clippy, the probe guest and Linux
//! guest image builds (both cached by input hash), every unit, property, in-process, KVM
//! and Linux-guest test, and a short run of every fuzz target.

use anyhow::Result;

use crate::util::{cargo, done, run, step, target_dir, workspace_root};
use crate::{deps, fuzz, image, nested, probe, pytools};

/// Runs every check; `args` may contain `--no-lint`, `--no-linux-image`, `--no-nested`,
/// `--no-fuzz` and test-name filters after `--`.
pub fn run_all(args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    let no_lint = args.iter().any(|a| a == "--no-lint");
    let no_image = args.iter().any(|a| a == "--no-linux-image");
    let no_nested = no_image || args.iter().any(|a| a == "--no-nested");
    let no_fuzz = args.iter().any(|a| a == "--no-fuzz");
    let filters: Vec<&String> = args.iter().skip_while(|a| *a != "--").skip(1).collect();
    let root = workspace_root();

    deps::ensure_all(&[deps::TEST_PACKAGES])?;
    let schemathesis = pytools::schemathesis()?;

    if !no_lint {
        let t = step("cargo fmt --check (workspace and probe guest)");
        run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
        run(cargo()
            .current_dir(probe::source_dir())
            .args(["fmt", "--check"]))?;
        done(t);

        let t = step("cargo clippy --workspace --all-targets -- -D warnings");
        run(cargo().current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]))?;
        done(t);

        // Broken intra-doc links and stray HTML in doc comments fail like clippy's lints.
        let t = step("cargo doc --workspace --no-deps (warnings are errors)");
        run(cargo()
            .current_dir(&root)
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--workspace", "--no-deps", "--quiet"]))?;
        done(t);
    }

    let probe_elf = probe::build()?;
    // The Linux-guest tests (the agent under QEMU TCG, boot-protocol checks) run here too; a
    // fresh machine builds the image once, later runs find it in the cache.
    let linux_image = if no_image {
        println!("    --no-linux-image: the Linux-guest tests will print SKIPPED");
        None
    } else {
        let t = step("Linux guest image (cached by input hash; about 6 minutes the first time)");
        let img = image::build(image::default_jobs())?;
        done(t);
        Some(img.dir)
    };

    let t = step("cargo build --workspace --bins");
    run(cargo()
        .current_dir(&root)
        .args(["build", "--workspace", "--bins", "--quiet"]))?;
    done(t);

    // The nested harness's kit: Linux guests under ringfence inside an outer VM
    // (tests/tests/nested_linux.rs); it needs the binaries just built and the image.
    let kit = match (&linux_image, no_nested) {
        (Some(dir), false) => Some(nested::build_kit(dir)?),
        _ => {
            println!("    --no-nested: the nested Linux-guest tests will print SKIPPED");
            None
        }
    };

    let t =
        step("cargo test --workspace (unit, property, in-process, KVM, boot-protocol and nested Linux-guest tests)");
    let mut cmd = cargo();
    cmd.current_dir(&root)
        .args(["test", "--workspace"])
        .env("RINGFENCE_PROBE", &probe_elf)
        .env("RINGFENCE_BIN", target_dir().join("debug/ringfence"))
        .env("RINGFENCE_SCHEMATHESIS", &schemathesis);
    if let Some(dir) = &linux_image {
        cmd.env("RINGFENCE_LINUX_IMAGE", dir);
    }
    if let Some(kit) = &kit {
        cmd.env(nested::KIT_ENV, kit);
    }
    if !filters.is_empty() {
        cmd.arg("--").args(filters);
    }
    run(&mut cmd)?;
    done(t);

    // Every fuzz target for a short while (nightly + cargo-fuzz, see `cargo xtask fuzz`).
    if no_fuzz {
        println!("    --no-fuzz: the fuzz targets were not run");
    } else if !fuzz::nightly_available() {
        println!("SKIPPED: fuzz targets: no nightly toolchain (rustup toolchain install nightly)");
    } else {
        let names: Vec<&str> = fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        fuzz::run_targets(&names, fuzz::DEFAULT_SECONDS)?;
    }

    println!(
        "\nall checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

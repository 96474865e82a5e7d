//! `cargo xtask fuzz [TARGET] [--seconds N] [--list]`: the cargo-fuzz targets in `fuzz/`.
//!
//! The fuzz crate is its own workspace (the main one excludes it) and builds only on the
//! nightly toolchain, with cargo-fuzz (libFuzzer + AddressSanitizer). This module checks for
//! nightly, installs cargo-fuzz when it is missing, builds every target once, then runs each
//! target (or the named one) for N seconds and reports libFuzzer's final figures.
//!
//! Corpora: the checked-in seeds (`fuzz/corpus/<target>/`) are read but never written; what a
//! run discovers goes to `target/fuzz/corpus/<target>/`, kept between runs so coverage builds
//! up. A crash stops everything with the path of the input libFuzzer saved
//! (`target/fuzz/artifacts/<target>/crash-*`) and the command that reproduces it; the fix goes
//! with a regression test in the crate and the input in the seed corpus.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{describe, done, status, step, target_dir, workspace_root};

/// Every fuzz target in `fuzz/fuzz_targets/`, with what it feeds hostile bytes to.
pub const TARGETS: &[(&str, &str)] = &[
    (
        "virtio_chain",
        "descriptor tables, avail rings and buffers in guest memory -> TxChain/RxBuffers, virtio-net header, used ring",
    ),
    (
        "guest_frame",
        "guest Ethernet frames through a whole Netstack: ARP, IPv4/IPv6 (+options, ext headers), TCP, UDP, ICMP, NDP, DHCP, DNS",
    ),
    (
        "dns",
        "DNS query parse, local answers, A/AAAA extraction and the rebind filter",
    ),
    (
        "tls_client_hello",
        "the first bytes of a guest's TLS stream: records, reassembly, ClientHello, SNI",
    ),
    (
        "secret_rewrite",
        "guest request bytes through the TLS proxy's secrets rewriter: whole vs streamed, violations",
    ),
    (
        "api_request",
        "Firecracker-API requests (method, path, JSON body) through the API's state machine",
    ),
    (
        "policy_rule",
        "CLI rule text: parse, print and re-parse, compiled vs linear evaluator",
    ),
    (
        "policy_json",
        "JSON policy documents: parse, round trip, compiled vs linear evaluator",
    ),
    (
        "policy_toml",
        "TOML policy documents: parse, round trip, compiled vs linear evaluator",
    ),
    (
        "boot_elf",
        "ELF kernels: headers, program headers, PVH note, segment loading, start_info",
    ),
    (
        "boot_bzimage",
        "bzImage kernels: size check, setup header, protocol checks, zero page",
    ),
];

/// Seconds each target runs when no `--seconds` is given (also what `cargo xtask test` uses).
pub const DEFAULT_SECONDS: u64 = 30;

/// libFuzzer's figures at the end of one target's run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FuzzStats {
    /// Inputs executed.
    pub runs: u64,
    /// Executions per second (libFuzzer's own average).
    pub exec_per_sec: u64,
    /// Coverage: edges (`cov`).
    pub cov: u64,
    /// Coverage: features (`ft`).
    pub ft: u64,
    /// Inputs in the corpus at the end.
    pub corpus: u64,
}

/// Entry point of `cargo xtask fuzz`.
pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = DEFAULT_SECONDS;
    let mut target: Option<&str> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--list" => {
                for (name, what) in TARGETS {
                    println!("{name:<14} {what}");
                }
                return Ok(());
            }
            "--seconds" => {
                let v = it.next().context("--seconds needs a number")?;
                seconds = v
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .with_context(|| format!("--seconds takes a positive number, not {v:?}"))?;
            }
            name if !name.starts_with('-') && target.is_none() => target = Some(name),
            other => bail!(
                "unknown argument {other:?}; usage: cargo xtask fuzz [TARGET] [--seconds N] [--list]"
            ),
        }
    }
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.iter().any(|(n, _)| *n == t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are: {}",
            TARGETS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => TARGETS.iter().map(|(n, _)| *n).collect(),
    };
    if !nightly_available() {
        bail!("the fuzz targets need the nightly toolchain: rustup toolchain install nightly");
    }
    run_targets(&targets, seconds).map(|_| ())
}

/// Whether the nightly toolchain is installed (through rustup).
pub fn nightly_available() -> bool {
    nightly()
        .args(["cargo", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs cargo-fuzz if needed, builds the targets and runs each for `seconds`, printing a
/// summary table; fails on the first crash with the saved input's path.
pub fn run_targets(targets: &[&str], seconds: u64) -> Result<Vec<(String, FuzzStats)>> {
    ensure_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("fuzz");
    let out = target_dir().join("fuzz");

    let t = step("cargo +nightly fuzz build (release, debug assertions, AddressSanitizer)");
    let mut build = cargo_fuzz(&out);
    build.current_dir(&fuzz_dir).args(["build"]);
    checked(&mut build)?;
    done(t);

    let mut results = Vec::new();
    for name in targets {
        let t = step(&format!("fuzz target {name} for {seconds} s"));
        let stats = run_one(&fuzz_dir, &out, name, seconds)?;
        println!(
            "    {name}: {} executions, {} exec/s, cov {} ft {}, corpus {}",
            stats.runs, stats.exec_per_sec, stats.cov, stats.ft, stats.corpus
        );
        done(t);
        results.push((name.to_string(), stats));
    }
    println!("\n| target | executions | exec/s | cov | ft | corpus |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, s) in &results {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            s.runs, s.exec_per_sec, s.cov, s.ft, s.corpus
        );
    }
    Ok(results)
}

/// `rustup run nightly ...` with the variables of the stable cargo that runs xtask removed, so
/// nothing points the nightly tools back at stable ones.
fn nightly() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly"]);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `cargo fuzz` on nightly, building into `out`.
fn cargo_fuzz(out: &Path) -> Command {
    let mut cmd = nightly();
    cmd.args(["cargo", "fuzz"]).env("CARGO_TARGET_DIR", out);
    cmd
}

/// Runs `cmd`, failing with its command line when it exits non-zero.
fn checked(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("command failed ({st}): {}", describe(cmd));
    }
    Ok(())
}

/// Installs cargo-fuzz with the nightly toolchain unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = nightly()
        .args(["cargo", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    let t = step("cargo-fuzz is missing: cargo +nightly install cargo-fuzz --locked");
    checked(nightly().args(["cargo", "install", "cargo-fuzz", "--locked"]))?;
    done(t);
    Ok(())
}

/// Runs one target for `seconds` with its log in `out/logs/<name>.log`.
fn run_one(fuzz_dir: &Path, out: &Path, name: &str, seconds: u64) -> Result<FuzzStats> {
    let seeds = fuzz_dir.join("corpus").join(name);
    let corpus = out.join("corpus").join(name);
    let artifacts = out.join("artifacts").join(name);
    let logs = out.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log_path = logs.join(format!("{name}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone().context("duplicating the log file")?;
    println!("    log: {}", log_path.display());

    // The first corpus directory is where libFuzzer adds new inputs: the scratch one, never
    // the checked-in seeds.
    let mut cmd = cargo_fuzz(out);
    cmd.current_dir(fuzz_dir)
        .args(["run", name])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(log)
        .stderr(log_err);
    let st = status(&mut cmd)?;
    let text = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    if !st.success() {
        let crash = crash_file(&text);
        let why = failure_lines(&text);
        match crash {
            Some(path) => bail!(
                "fuzz target {name} failed ({st}):\n    {}\n  crashing input: {}\n  reproduce: (cd fuzz && cargo +nightly fuzz run {name} {})\n  full log: {}",
                why.join("\n    "),
                path.display(),
                path.display(),
                log_path.display()
            ),
            None => bail!(
                "fuzz target {name} failed ({st}) without saving an input:\n    {}\n  full log: {}",
                why.join("\n    "),
                log_path.display()
            ),
        }
    }
    parse_stats(&text).with_context(|| {
        format!(
            "libFuzzer printed no final statistics; see {}",
            log_path.display()
        )
    })
}

/// The lines of a failed run's log that say why: the panic and its message, the sanitizer's
/// and libFuzzer's verdicts.
fn failure_lines(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let mut why = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") {
            why.push(*l);
            why.extend(lines.get(i + 1).copied());
        } else if l.starts_with("SUMMARY")
            || l.contains("ERROR: AddressSanitizer")
            || l.contains("ERROR: libFuzzer")
        {
            why.push(*l);
        }
    }
    why.truncate(8);
    why
}

/// The input libFuzzer saved (`Test unit written to PATH`), if it saved one.
fn crash_file(log: &str) -> Option<PathBuf> {
    log.lines()
        .filter_map(|l| l.split("Test unit written to ").nth(1))
        .map(|p| PathBuf::from(p.trim()))
        .next_back()
}

/// Reads the figures from libFuzzer's last status line (`#N DONE cov: C ft: F corp: K/... exec/s:
/// E ...`), falling back to `stat::` lines for what that line lacks.
pub fn parse_stats(log: &str) -> Option<FuzzStats> {
    let line = log
        .lines()
        .rfind(|l| l.starts_with('#') && l.contains("DONE"))?;
    let field = |key: &str| -> Option<u64> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key)?;
        let v = words.next()?;
        v.split('/').next()?.parse().ok()
    };
    let runs = line
        .split_whitespace()
        .next()
        .and_then(|w| w.trim_start_matches('#').parse().ok())?;
    let stat = |key: &str| -> Option<u64> {
        log.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(FuzzStats {
        runs,
        exec_per_sec: field("exec/s:")
            .or_else(|| stat("stat::average_exec_per_sec:"))
            .unwrap_or(0),
        cov: field("cov:").unwrap_or(0),
        ft: field("ft:").unwrap_or(0),
        corpus: field("corp:").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_line_is_parsed() {
        let log = "INFO: Seed: 1\n#2 INITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #88064\tDONE   cov: 502 ft: 2253 corp: 287/196Kb lim: 4614 exec/s: 9784 rss: 464Mb\n\
                   Done 88064 runs in 9 second(s)\nstat::average_exec_per_sec:     9784\n";
        assert_eq!(
            parse_stats(log),
            Some(FuzzStats {
                runs: 88064,
                exec_per_sec: 9784,
                cov: 502,
                ft: 2253,
                corpus: 287
            })
        );
        assert_eq!(parse_stats("nothing here"), None);
    }

    #[test]
    fn failure_lines_keep_the_panic_message() {
        let log = "#1 INITED\nthread '<unnamed>' panicked at fuzz_targets/x.rs:1:2:\nprinted JSON parses back\nstack backtrace:\n==1== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(
            failure_lines(log),
            vec![
                "thread '<unnamed>' panicked at fuzz_targets/x.rs:1:2:",
                "printed JSON parses back",
                "==1== ERROR: libFuzzer: deadly signal"
            ]
        );
    }

    #[test]
    fn crash_path_is_found() {
        let log = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='/t/'; Test unit written to /t/crash-abc\nBase64: AA==\n";
        assert_eq!(crash_file(log), Some(PathBuf::from("/t/crash-abc")));
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        let fuzz = workspace_root().join("fuzz");
        for (name, _) in TARGETS {
            assert!(
                fuzz.join("fuzz_targets")
                    .join(format!("{name}.rs"))
                    .is_file(),
                "{name}"
            );
            assert!(fuzz.join("corpus").join(name).is_dir(), "{name}");
        }
    }
}

//! `cargo xtask demo`: from a fresh machine to a guest visibly working — installs what is
//! missing, builds ringfence and the probe guest, checks the host, and boots a few guests.

use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{describe, status, step};
use crate::{deps, probe};

/// Runs the demo.
pub fn run_demo() -> Result<()> {
    deps::ensure_all(&[deps::TEST_PACKAGES])?;
    let (bin, _peer) = crate::util::build_release_binaries()?;
    let probe_elf = probe::build()?;

    step("ringfence doctor: what this host can do");
    status(Command::new(&bin).arg("doctor"))?;

    let show = |title: &str, words: &[&str], expect: i32| -> Result<()> {
        step(title);
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--kernel"]).arg(&probe_elf).arg("--");
        cmd.args(words);
        println!("    $ {}", describe(&cmd));
        let t = std::time::Instant::now();
        let st = status(&mut cmd)?;
        let code = st.code().unwrap_or(-1);
        println!(
            "    -> exit status {code} after {:.1} ms (process start to exit)",
            t.elapsed().as_secs_f64() * 1e3
        );
        if code != expect {
            bail!("expected exit status {expect}, got {code}");
        }
        Ok(())
    };
    show(
        "boot the probe guest: it prints a ready line and a JSON result",
        &["probe.scenario=hello"],
        0,
    )?;
    show(
        "100 million loop iterations in guest user mode (native speed even here)",
        &["probe.scenario=spin:100000000"],
        0,
    )?;
    show(
        "the guest's exit status becomes ringfence's",
        &["probe.scenario=exit:7"],
        7,
    )?;
    println!("\ndemo finished: ringfence boots guests on this host. Next: `cargo xtask test`.");
    Ok(())
}

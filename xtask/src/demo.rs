//! `cargo xtask demo`: from a fresh machine to a guest visibly working — installs what is
//! missing, builds ringfence and the probe guest, checks the host, boots a few guests, shows
//! the network (a download from a host server through the netstack) and the policy (a refused
//! connection to the metadata address, with the rule that refused it), and then a Linux guest:
//! directly where guest kernels run at full speed, else inside the nested harness's outer VM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{describe, is_root, run, status, step};
use crate::{deps, image, nested, probe};

/// Runs the demo; `--no-linux` skips the Linux guest (which builds the image the first time).
pub fn run_demo(args: &[String]) -> Result<()> {
    let with_linux = !args.iter().any(|a| a == "--no-linux");
    if let Some(bad) = args.iter().find(|a| *a != "--no-linux") {
        bail!("unknown option {bad:?}; usage: cargo xtask demo [--no-linux]");
    }
    deps::ensure_all(&[deps::TEST_PACKAGES])?;
    let (bin, peer) = crate::util::build_release_binaries()?;
    let probe_elf = probe::build()?;

    step("ringfence doctor: what this host can do");
    status(Command::new(&bin).arg("doctor"))?;

    let show = |title: &str, flags: &[&str], words: &[&str], expect: i32| -> Result<()> {
        step(title);
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--kernel"])
            .arg(&probe_elf)
            .args(flags)
            .arg("--");
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
        &[],
        &["probe.scenario=hello"],
        0,
    )?;
    show(
        "100 million loop iterations in guest user mode (native speed even here)",
        &[],
        &["probe.scenario=spin:100000000"],
        0,
    )?;
    show(
        "the guest's exit status becomes ringfence's",
        &[],
        &["probe.scenario=exit:7"],
        7,
    )?;

    // The network: a host server on loopback, reached through the netstack's host alias.
    let (mut source, mut said, addr) = start_source(&peer)?;
    let peer_word = format!("probe.peer=host.ringfence.internal:{}", addr.port());
    let fetched = show(
        "network: the guest downloads 64 MiB from a server on the host's 127.0.0.1 (allow@host)",
        &["--net-rule", "allow@host"],
        &["probe.scenario=tcp-recv", &peer_word],
        0,
    );
    // The server's own account of the transfer (it exits after its one connection).
    let mut line = String::new();
    if fetched.is_ok() && said.read_line(&mut line).is_ok() && !line.is_empty() {
        println!("    host server: {}", line.trim());
    }
    let _ = source.kill();
    let _ = source.wait();
    fetched?;

    // The policy: the default preset refuses the metadata address and says which rule did.
    // Run in a network namespace of its own (only loopback), so the connection could not
    // leave this machine even if the policy were broken.
    step("policy: the default preset refuses the cloud metadata address (169.254.169.254)");
    if is_root() {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--"]).arg(&bin);
        cmd.args(["run", "--kernel"]).arg(&probe_elf).arg("--");
        cmd.args(["probe.scenario=connect", "probe.peer=169.254.169.254:80"]);
        println!("    $ {}", describe(&cmd));
        let code = status(&mut cmd)?.code().unwrap_or(-1);
        println!("    -> exit status {code}: the guest saw its connection refused (the line above names the rule)");
        if code != 1 {
            bail!("expected the probe to report a refused connection (status 1), got {code}");
        }
    } else {
        println!("    (skipped: needs root for a network namespace to run it in)");
    }

    if with_linux {
        linux_guest(&bin)?;
    }
    println!("\ndemo finished: ringfence boots guests on this host. Next: `cargo xtask test`.");
    Ok(())
}

/// What the peer prints after its `listening` line.
type PeerOutput = BufReader<std::process::ChildStdout>;

/// Starts `rf-peer source` on an ephemeral loopback port; returns it, the rest of its output
/// (kept open, so its result line has somewhere to go) and the bound address.
fn start_source(peer: &Path) -> Result<(std::process::Child, PeerOutput, std::net::SocketAddr)> {
    let mut child = Command::new(peer)
        .args(["source", "127.0.0.1:0", "67108864", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", peer.display()))?;
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().context("rf-peer has no stdout")?);
    out.read_line(&mut line)?;
    let addr = line
        .strip_prefix("listening ")
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("rf-peer did not say where it listens: {line:?}"))?;
    Ok((child, out, addr))
}

/// A Linux guest running a command: directly on a host with full-speed guest kernels, else
/// in the nested harness's outer VM.
fn linux_guest(bin: &Path) -> Result<()> {
    let native = Command::new(bin)
        .args(["doctor", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .is_some_and(|j| j["guest_kernel_mode"] == "native");
    let t = step("Linux guest image (cached by input hash; about 6 minutes the first time)");
    let img = image::build(image::default_jobs())?;
    crate::util::done(t);
    let guest = "echo hello from a Linux guest; uname -sr; nproc; ip -4 -o addr show dev eth0; wget -q -O- http://host.ringfence.internal:8080/ || echo refused as expected";
    if native {
        step("a Linux guest: a command, its output and its status");
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--linux", "--vcpus", "2", "--", "sh", "-c", guest])
            .env("RINGFENCE_LINUX_IMAGE", &img.dir);
        println!("    $ {}", describe(&cmd));
        return run(&mut cmd);
    }
    println!("    this host emulates guest kernel mode, so Linux guests run here only inside an outer VM (QEMU TCG with AMD SVM; about a minute)");
    step("a Linux guest under ringfence, inside the nested harness's outer VM");
    nested::build_binaries()?;
    let kit = nested::build_kit(&img.dir)?;
    let script = format!("ringfence run --linux --vcpus 2 --timeout 120 -- sh -c '{guest}'");
    let mut cmd = Command::new(crate::util::target_dir().join("debug/rf-nested"));
    cmd.arg("outer").arg(&kit).arg(&script).arg("300");
    println!("    (outer VM) $ {script}");
    run(&mut cmd)
}

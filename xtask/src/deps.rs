//! Host packages the project needs, installed with apt-get when missing (as root), or the exact
//! command printed otherwise.

use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{have, is_root, run, step};

/// A Debian package and the program that proves it is installed.
pub struct Package {
    /// Debian package name.
    pub name: &'static str,
    /// A program it installs.
    pub program: &'static str,
    /// What the project uses it for.
    pub why: &'static str,
}

/// Packages `cargo xtask test` needs.
pub const TEST_PACKAGES: &[Package] = &[
    Package {
        name: "iproute2",
        program: "ip",
        why: "network namespaces for the network tests",
    },
    Package {
        name: "qemu-system-x86",
        program: "qemu-system-x86_64",
        why: "the probe guest's QEMU compatibility test and the QEMU baselines",
    },
    Package {
        name: "tcpdump",
        program: "tcpdump",
        why: "reading pcap captures in tests",
    },
    Package {
        name: "nftables",
        program: "nft",
        why: "packet loss inside test namespaces",
    },
];

/// Extra packages `cargo xtask bench` needs.
pub const BENCH_PACKAGES: &[Package] = &[Package {
    name: "passt",
    program: "passt",
    why: "the qemu-passt baseline",
}];

/// Installs whatever of `packages` is missing, or fails with the command to run.
pub fn ensure(packages: &[&Package]) -> Result<()> {
    let missing: Vec<&&Package> = packages.iter().filter(|p| !have(p.program)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    for p in &missing {
        println!(
            "    missing: {} (provides {}; for {})",
            p.name, p.program, p.why
        );
    }
    let command = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        names.join(" ")
    );
    if !is_root() {
        bail!("some host packages are missing; install them with:\n    sudo sh -c '{command}'");
    }
    let t = step(&format!("installing {}", names.join(", ")));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&names)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    crate::util::done(t);
    Ok(())
}

/// [`ensure`] over one or more package lists.
pub fn ensure_all(lists: &[&[Package]]) -> Result<()> {
    let all: Vec<&Package> = lists.iter().flat_map(|l| l.iter()).collect();
    ensure(&all)
}

//! End-to-end on KVM: transfers through the `user` netstack stay byte-exact over a lossy path.
//!
//! ringfence runs in one namespace; the "public" server (203.0.113.10, TEST-NET-3) lives in a
//! second namespace behind a veth pair. These kernels have no `netem`, so (design §8) an
//! nftables rule `numgen random mod 20 0 drop` on each side's output chain drops 5% of the
//! packets in both directions.

mod common;

use std::process::{Command, Stdio};

use common::*;

const BYTES: u64 = 16 << 20;

fn sh(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

struct LossyPath {
    vm_ns: String,
    srv_ns: String,
}

impl LossyPath {
    fn new() -> Self {
        let id = std::process::id();
        let p = LossyPath {
            vm_ns: format!("rf-loss-vm-{id}"),
            srv_ns: format!("rf-loss-srv-{id}"),
        };
        for ns in [&p.vm_ns, &p.srv_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &p.vm_ns, "link", "add", "lv0", "type", "veth", "peer", "name", "lv1",
            "netns", &p.srv_ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &p.vm_ns,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "lv0",
        ]);
        sh(&[
            "ip",
            "-n",
            &p.srv_ns,
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            "lv1",
        ]);
        sh(&[
            "ip",
            "-n",
            &p.srv_ns,
            "addr",
            "add",
            "203.0.113.10/32",
            "dev",
            "lo",
        ]);
        sh(&["ip", "-n", &p.vm_ns, "link", "set", "lv0", "up"]);
        sh(&["ip", "-n", &p.srv_ns, "link", "set", "lv1", "up"]);
        sh(&[
            "ip",
            "-n",
            &p.vm_ns,
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "198.51.100.2",
        ]);
        for ns in [&p.vm_ns, &p.srv_ns] {
            sh(&[
                "ip", "netns", "exec", ns, "nft",
                "add table inet loss; add chain inet loss out { type filter hook output priority 0; }; add rule inet loss out meta l4proto tcp numgen random mod 20 0 drop",
            ]);
        }
        p
    }

    fn in_ns(&self, ns: &str, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for LossyPath {
    fn drop(&mut self) {
        for ns in [&self.vm_ns, &self.srv_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn have_nft() -> Result<(), String> {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|_| ())
        .map_err(|_| "nft (Debian package nftables) is not installed".to_string())
}

#[test]
fn transfers_stay_byte_exact_with_five_percent_loss_both_ways() {
    let probe = require!(netns_ready());
    require!(have_nft());
    let path = LossyPath::new();

    let mut c = path.in_ns(&path.srv_ns, &peer_bin());
    c.args(["sink", "203.0.113.10:0", "--timeout", "240"]);
    let (sink, addr) = start_peer(c);
    let o = path
        .in_ns(&path.vm_ns, &ringfence_bin())
        .args(["run", "--kernel"])
        .arg(&probe)
        .args(["--net", "user", "--timeout", "240", "--"])
        .args([
            "probe.scenario=tcp-send",
            &format!("probe.peer=203.0.113.10:{}", addr.port()),
        ])
        .arg(format!("probe.bytes={BYTES}"))
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let r = peer_result(sink);
    assert_eq!(r["bytes"], BYTES, "{r}");
    assert_eq!(r["pattern_ok"], true, "{r}");

    let mut c = path.in_ns(&path.srv_ns, &peer_bin());
    c.args([
        "source",
        "203.0.113.10:0",
        &BYTES.to_string(),
        "--timeout",
        "240",
    ]);
    let (source, addr) = start_peer(c);
    let o = path
        .in_ns(&path.vm_ns, &ringfence_bin())
        .args(["run", "--kernel"])
        .arg(&probe)
        .args(["--net", "user", "--timeout", "240", "--"])
        .args([
            "probe.scenario=tcp-recv",
            &format!("probe.peer=203.0.113.10:{}", addr.port()),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let j = result_json(&o);
    assert_eq!(j["bytes"], BYTES);
    assert_eq!(j["sha256"], pattern_sha256(BYTES).as_str());
    assert_eq!(peer_result(source)["bytes"], BYTES);
}

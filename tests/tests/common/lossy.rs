//! A two-namespace path with random loss, for `user`-backend tests against a "public" server.
//!
//! ringfence runs in one namespace; the server (203.0.113.10, TEST-NET-3) lives in a second
//! namespace behind a veth pair (198.51.100.0/24 between them). These kernels have no `netem`,
//! so (design §8) an nftables rule `numgen random mod 20 0 drop` on each side's output chain
//! drops 5% of the TCP packets in both directions. Both namespaces go away on drop.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{
    pattern_sha256, peer_bin, peer_result, result_json, ringfence_bin, start_peer, stderr, stdout,
};

/// The server's address inside the server namespace.
pub const SERVER_IP: &str = "203.0.113.10";

static PATH_COUNTER: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

/// `nft` is installed, or the reason the test must skip.
pub fn have_nft() -> Result<(), String> {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|_| ())
        .map_err(|_| "nft (Debian package nftables) is not installed".to_string())
}

/// The VM namespace, the server namespace and the lossy veth between them.
pub struct LossyPath {
    /// Where ringfence runs.
    pub vm_ns: String,
    /// Where the server runs.
    pub srv_ns: String,
}

impl LossyPath {
    /// Creates both namespaces (named after `tag`, the process and a counter) and the path.
    pub fn new(tag: &str) -> Self {
        let id = format!(
            "{}-{}",
            std::process::id(),
            PATH_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let p = LossyPath {
            vm_ns: format!("rf-{tag}-vm-{id}"),
            srv_ns: format!("rf-{tag}-srv-{id}"),
        };
        for ns in [&p.vm_ns, &p.srv_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (vm, srv) = (p.vm_ns.as_str(), p.srv_ns.as_str());
        sh(&[
            "ip", "-n", vm, "link", "add", "lv0", "type", "veth", "peer", "name", "lv1", "netns",
            srv,
        ]);
        sh(&[
            "ip",
            "-n",
            vm,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "lv0",
        ]);
        sh(&[
            "ip",
            "-n",
            srv,
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            "lv1",
        ]);
        sh(&[
            "ip",
            "-n",
            srv,
            "addr",
            "add",
            &format!("{SERVER_IP}/32"),
            "dev",
            "lo",
        ]);
        sh(&["ip", "-n", vm, "link", "set", "lv0", "up"]);
        sh(&["ip", "-n", srv, "link", "set", "lv1", "up"]);
        sh(&[
            "ip",
            "-n",
            vm,
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "198.51.100.2",
        ]);
        for ns in [vm, srv] {
            sh(&[
                "ip", "netns", "exec", ns, "nft",
                "add table inet loss; add chain inet loss out { type filter hook output priority 0; }; add rule inet loss out meta l4proto tcp numgen random mod 20 0 drop",
            ]);
        }
        p
    }

    /// A command that runs `program` inside namespace `ns`.
    pub fn in_ns(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Starts `rf-peer ARGS` in the server namespace; returns it and its bound address.
    pub fn server(&self, args: &[&str]) -> (Child, std::net::SocketAddr) {
        let mut c = self.in_ns(&self.srv_ns, &peer_bin());
        c.args(args);
        start_peer(c)
    }

    /// `ringfence run` of the probe with `--net user` in the VM namespace, `words` appended to
    /// its command line; the caller adds environment and runs it.
    pub fn probe<S: AsRef<std::ffi::OsStr>>(
        &self,
        probe: &Path,
        words: impl IntoIterator<Item = S>,
    ) -> Command {
        let mut c = self.in_ns(&self.vm_ns, &ringfence_bin());
        c.args(["run", "--kernel"])
            .arg(probe)
            .args(["--net", "user", "--timeout", "240", "--"])
            .args(words)
            .stdin(Stdio::null());
        c
    }
}

impl LossyPath {
    /// The probe's tcp-send of `bytes` to a sink on the server, with `env` set for ringfence
    /// and `extra` probe words; asserts the sink got every byte of the pattern, in order.
    pub fn send(&self, probe: &Path, bytes: u64, env: &[(&str, &str)], extra: &[&str]) -> Output {
        let (mut sink, addr) =
            self.server(&["sink", &format!("{SERVER_IP}:0"), "--timeout", "240"]);
        let peer = format!("probe.peer={SERVER_IP}:{}", addr.port());
        let count = format!("probe.bytes={bytes}");
        let words = ["probe.scenario=tcp-send", &peer, &count];
        let o = self
            .probe(probe, words.iter().chain(extra))
            .envs(env.iter().copied())
            .output()
            .expect("run");
        if o.status.code() != Some(0) {
            // Say whether the sink was still there: a sink that died explains a stall.
            let state = match sink.try_wait() {
                Ok(Some(status)) => format!("sink exited early: {status}"),
                _ => {
                    let _ = sink.kill();
                    "sink still running".to_string()
                }
            };
            let so = sink.wait_with_output().expect("wait rf-peer");
            panic!(
                "probe failed ({state}; sink said {:?} {:?})\n{}\n{}",
                stdout(&so),
                stderr(&so),
                stdout(&o),
                stderr(&o)
            );
        }
        let r = peer_result(sink);
        eprintln!("tcp-send with {env:?} {extra:?}: sink {r}");
        assert_eq!(r["bytes"], bytes, "{r}");
        assert_eq!(r["pattern_ok"], true, "{r}");
        o
    }

    /// The probe's tcp-recv of `bytes` from a source on the server, with `env` set for
    /// ringfence and `extra` probe words; asserts the guest got every byte (SHA-256).
    pub fn recv(&self, probe: &Path, bytes: u64, env: &[(&str, &str)], extra: &[&str]) -> Output {
        let (source, addr) = self.server(&[
            "source",
            &format!("{SERVER_IP}:0"),
            &bytes.to_string(),
            "--timeout",
            "240",
        ]);
        let peer = format!("probe.peer={SERVER_IP}:{}", addr.port());
        let words = ["probe.scenario=tcp-recv", &peer];
        let o = self
            .probe(probe, words.iter().chain(extra))
            .envs(env.iter().copied())
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
        let j = result_json(&o);
        eprintln!("tcp-recv with {env:?} {extra:?}: {j}");
        assert_eq!(j["bytes"], bytes, "{j}");
        assert_eq!(j["sha256"], pattern_sha256(bytes).as_str(), "{j}");
        assert_eq!(peer_result(source)["bytes"], bytes);
        o
    }
}

impl Drop for LossyPath {
    fn drop(&mut self) {
        for ns in [&self.vm_ns, &self.srv_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

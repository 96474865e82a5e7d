//! End-to-end on KVM: the raw-packet rows of the bypass matrix (docs/security.md). The
//! probe guest crafts frames its own stack would never send (`probe.scenario=raw:CASE`:
//! IP fragments carrying a TCP header, overlapping fragments, simultaneous open, a bare
//! SYN-ACK, ICMP errors quoting forged headers, a resolver of the guest's own choosing) at
//! servers in a namespace the test creates. Every case runs twice: under the policy that
//! must refuse it, and under `allow-all`, where the plain SYN (or query) to the same server
//! must get through, so a refusal is the policy's (or the netstack's), not an absent
//! service. The servers count what reached them: nothing may under the refusing policy.
//!
//! The namespace's loopback holds a public TEST-NET address (203.0.113.10), a private one
//! (10.1.2.3), the metadata address (169.254.169.254) and an "outside" resolver
//! (198.51.100.53, DNS on UDP 53 and a TCP server on 53); one echo server listens on
//! 0.0.0.0 for the others.

mod common;

use std::process::{Child, Command, Output, Stdio};

use common::*;

struct BypassNetns {
    name: String,
    /// The echo server's port (on every address).
    port: u16,
    /// The sandbox resolver (--dns).
    dns_port: u16,
    /// Servers whose connections are counted: (what, child).
    counted: Vec<(&'static str, Child)>,
    others: Vec<Child>,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
}

impl BypassNetns {
    fn new() -> Self {
        let name = format!("rf-byp-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for a in [
            "203.0.113.10/32",
            "10.1.2.3/32",
            "169.254.169.254/32",
            "198.51.100.53/32",
            "2001:db8::10/128",
        ] {
            ip(&["-n", &name, "addr", "add", a, "dev", "lo"]);
        }
        let mut ns = BypassNetns {
            name,
            port: 0,
            dns_port: 0,
            counted: Vec::new(),
            others: Vec::new(),
        };
        ns.start_counted();
        let mut c = ns.command(&peer_bin());
        c.args(["dns", "127.0.0.1:0", "api.test=203.0.113.10"]);
        c.args(["--timeout", "300"]);
        let (child, addr) = start_peer(c);
        ns.dns_port = addr.port();
        ns.others.push(child);
        let mut c = ns.command(&peer_bin());
        c.args(["dns", "198.51.100.53:53", "api.test=203.0.113.10"]);
        c.args(["--timeout", "300"]);
        ns.others.push(start_peer(c).0);
        ns
    }

    /// (Re)starts the servers whose connections are counted: the echo server on every
    /// address (same port as before once it is known) and the TCP server on the outside
    /// resolver's port 53.
    fn start_counted(&mut self) {
        // Dual-stack: IPv4 and IPv6 (and IPv4-mapped) connections alike.
        let bind = format!("[::]:{}", self.port);
        for (what, bind) in [("echo", bind.as_str()), ("tcp-53", "198.51.100.53:53")] {
            let mut c = self.command(&peer_bin());
            c.args([
                "echo",
                bind,
                "--conns",
                "1000",
                "--timeout",
                "300",
                "--keep-going",
            ]);
            let (child, addr) = start_peer(c);
            if what == "echo" {
                self.port = addr.port();
            }
            self.counted.push((what, child));
        }
    }

    /// Stops the counted servers and returns how many connections reached each.
    fn take_counts(&mut self) -> Vec<(&'static str, usize)> {
        self.counted
            .drain(..)
            .map(|(what, mut c)| {
                let _ = c.kill();
                let o = c.wait_with_output().expect("wait rf-peer");
                let n = stdout(&o)
                    .lines()
                    .filter(|l| l.contains("\"role\""))
                    .count();
                (what, n)
            })
            .collect()
    }

    fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Boots the probe's `raw:CASE` (`raw6:CASE` for an IPv6 peer) at `peer` under `flags`.
    fn raw(&self, probe: &std::path::Path, flags: &[&str], case: &str, peer: &str) -> Output {
        self.command(&ringfence_bin())
            .args(["run", "--kernel"])
            .arg(probe)
            .args(["--net", "user", "--timeout", "60", "--net-stats"])
            .args(["--dns", &format!("127.0.0.1:{}", self.dns_port)])
            .args(flags)
            .arg("--")
            .arg(format!(
                "probe.scenario={}:{case}",
                if peer.starts_with('[') { "raw6" } else { "raw" }
            ))
            .arg(format!("probe.peer={peer}"))
            .args(["probe.timeout_ms=3000", "probe.wait_ms=400"])
            .stdin(Stdio::null())
            .output()
            .expect("run ringfence")
    }
}

impl Drop for BypassNetns {
    fn drop(&mut self) {
        for c in self
            .others
            .iter_mut()
            .chain(self.counted.iter_mut().map(|(_, c)| c))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// One row: the case, where it is aimed (`PORT` stands for the echo server's port), the
/// policy that must refuse it and what the guest may see then, and what it sees under
/// allow-all.
struct Row {
    case: &'static str,
    peer: &'static str,
    policy: &'static [&'static str],
    refused: &'static [&'static str],
    allow_all: &'static str,
}

/// Public-only is the default preset: no flags.
const PUBLIC_ONLY: &[&str] = &[];
/// Nothing but one domain (design §7: DNS is egress, not a side door). `--net-preset none`,
/// not `--net-default-egress deny`: the latter keeps public-only's `allow@public` rule.
const DOMAIN_ONLY: &[&str] = &["--net-preset", "none", "--net-rule", "allow@api.test:tcp"];

const ROWS: &[Row] = &[
    // The live checks: a plain SYN is refused (RST) under the policy, reaches under allow-all.
    Row {
        case: "syn",
        peer: "10.1.2.3:PORT",
        policy: PUBLIC_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    Row {
        case: "syn",
        peer: "169.254.169.254:PORT",
        policy: PUBLIC_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    Row {
        case: "syn",
        peer: "127.0.0.2:PORT",
        policy: PUBLIC_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    // 0.0.0.0 is not a destination at all (a host connect to it would reach the host).
    Row {
        case: "syn",
        peer: "0.0.0.0:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    // IP fragments are never reassembled nor forwarded, whatever the policy.
    Row {
        case: "frag-tiny",
        peer: "10.1.2.3:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    Row {
        case: "frag-tiny",
        peer: "203.0.113.10:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    Row {
        case: "frag-overlap",
        peer: "169.254.169.254:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    // Only a bare SYN opens a flow; a SYN-ACK without one is reset, under any policy.
    Row {
        case: "synack",
        peer: "10.1.2.3:PORT",
        policy: PUBLIC_ONLY,
        refused: &["rst"],
        allow_all: "rst",
    },
    Row {
        case: "simopen",
        peer: "169.254.169.254:PORT",
        policy: PUBLIC_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    // ICMP errors from the guest are dropped (nothing relays them, nothing opens).
    Row {
        case: "icmp-unreach",
        peer: "10.1.2.3:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    Row {
        case: "icmp-ttl",
        peer: "169.254.169.254:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    // A resolver of the guest's own choosing, under a policy that does not allow it.
    Row {
        case: "dns-udp",
        peer: "198.51.100.53:53",
        policy: DOMAIN_ONLY,
        refused: &["icmp"],
        allow_all: "udp",
    },
    Row {
        case: "syn",
        peer: "198.51.100.53:53",
        policy: DOMAIN_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    // IPv6 (raw6): loopback, the unspecified address, IPv4-mapped metadata, fragments.
    Row {
        case: "syn",
        peer: "[::1]:PORT",
        policy: PUBLIC_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    Row {
        case: "syn",
        peer: "[::]:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    Row {
        case: "syn",
        peer: "[::ffff:169.254.169.254]:PORT",
        policy: PUBLIC_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    Row {
        case: "frag",
        peer: "[2001:db8::10]:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    Row {
        case: "frag-overlap",
        peer: "[::1]:PORT",
        policy: PUBLIC_ONLY,
        refused: &["none"],
        allow_all: "none",
    },
    Row {
        case: "syn",
        peer: "[2001:db8::10]:PORT",
        policy: DOMAIN_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
    // A public address no rule names.
    Row {
        case: "syn",
        peer: "203.0.113.10:PORT",
        policy: DOMAIN_ONLY,
        refused: &["rst"],
        allow_all: "synack",
    },
];

fn outcome(o: &Output) -> String {
    let v = result_json(o);
    v["outcome"].as_str().unwrap_or("?").to_string()
}

fn stat(o: &Output, key: &str) -> u64 {
    let err = stderr(o);
    let pat = format!("\"{key}\":");
    err.find(&pat)
        .and_then(|i| {
            err[i + pat.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn raw_packet_bypasses_reach_nothing() {
    let probe = require!(netns_ready());
    let mut ns = BypassNetns::new();
    let port = ns.port.to_string();
    let mut report = Vec::new();
    // Pass 1: the refusing policies. Nothing may reach any server.
    for row in ROWS {
        let peer = row.peer.replace("PORT", &port);
        let o = ns.raw(&probe, row.policy, row.case, &peer);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{} {peer}: {}\n{}",
            row.case,
            stdout(&o),
            stderr(&o)
        );
        let got = outcome(&o);
        assert!(
            row.refused.contains(&got.as_str()),
            "{} to {peer} under {:?}: the guest saw {got}, expected one of {:?}\n{}",
            row.case,
            row.policy,
            row.refused,
            stdout(&o)
        );
        report.push(format!(
            "{} {peer} {:?}: {got} (denied {}, unsupported {}, over limit {})",
            row.case,
            row.policy,
            stat(&o, "netstack_flows_denied"),
            stat(&o, "netstack_drop_unsupported"),
            stat(&o, "netstack_flows_over_limit"),
        ));
    }
    for (what, n) in ns.take_counts() {
        assert_eq!(n, 0, "{what} was reached under the refusing policies");
    }
    // Pass 2: allow-all, the live checks.
    ns.start_counted();
    let mut reached = 0;
    for row in ROWS {
        let peer = row.peer.replace("PORT", &port);
        let o = ns.raw(&probe, &["--net-preset", "allow-all"], row.case, &peer);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let got = outcome(&o);
        assert_eq!(
            got,
            row.allow_all,
            "{} to {peer} under allow-all\n{}",
            row.case,
            stdout(&o)
        );
        if got == "synack" {
            reached += 1;
        }
        report.push(format!("{} {peer} allow-all: {got}", row.case));
    }
    // Every SYN-ACK the guest saw was a whole connection at a server (the probe completes
    // it and closes), and nothing else reached one.
    let counts = ns.take_counts();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(total, reached, "connections at the servers {counts:?}");
    eprintln!("bypass matrix (raw):\n  {}", report.join("\n  "));
}

//! End-to-end on KVM: the network policy enforced on a real guest's flows and DNS.
//!
//! ringfence runs inside a namespace the test creates, whose loopback also carries the
//! "public" TEST-NET servers (203.0.113.10, 203.0.113.11), a fake metadata server
//! (169.254.169.254) and a private address (10.1.2.3), all served by one rf-peer listening on
//! 0.0.0.0, plus a static DNS resolver (rf-peer dns) the netstack forwards to.

mod common;

use std::process::{Child, Command, Output, Stdio};

use common::*;

struct PolicyNetns {
    name: String,
    port: u16,
    dns_port: u16,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
}

impl PolicyNetns {
    fn new(tag: &str) -> Self {
        let name = format!("rf-pol-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        for a in [
            "203.0.113.10/32",
            "203.0.113.11/32",
            "169.254.169.254/32",
            "10.1.2.3/32",
        ] {
            ip(&["-n", &name, "addr", "add", a, "dev", "lo"]);
        }
        let mut ns = PolicyNetns {
            name,
            port: 0,
            dns_port: 0,
            children: Vec::new(),
        };
        let mut c = ns.command(&peer_bin());
        // --keep-going: a reset connection must not end the server, or a later refusal would
        // be an absent server rather than the policy.
        c.args([
            "echo",
            "0.0.0.0:0",
            "--conns",
            "1000",
            "--timeout",
            "120",
            "--keep-going",
        ]);
        let (child, addr) = start_peer(c);
        ns.port = addr.port();
        ns.children.push(child);
        let mut c = ns.command(&peer_bin());
        c.args([
            "dns",
            "127.0.0.1:0",
            "api.test=203.0.113.10",
            "evil.test=203.0.113.11",
            "rebind.test=10.1.2.3",
            "--timeout",
            "120",
        ]);
        let (child, addr) = start_peer(c);
        ns.dns_port = addr.port();
        ns.children.push(child);
        ns
    }

    fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Boots the probe with `flags` and `words` on `--net user` using our resolver.
    fn probe(&self, probe: &std::path::Path, flags: &[&str], words: &[String]) -> Output {
        self.command(&ringfence_bin())
            .args(["run", "--kernel"])
            .arg(probe)
            .args(["--net", "user", "--timeout", "60"])
            .args(["--dns", &format!("127.0.0.1:{}", self.dns_port)])
            .args(flags)
            .arg("--")
            .args(words)
            .arg("probe.timeout_ms=3000")
            .stdin(Stdio::null())
            .output()
            .expect("run ringfence")
    }

    fn connect(&self, probe: &std::path::Path, flags: &[&str], host: &str) -> Output {
        self.probe(
            probe,
            flags,
            &[
                "probe.scenario=connect".into(),
                format!("probe.peer={host}:{}", self.port),
            ],
        )
    }

    fn resolve(&self, probe: &std::path::Path, flags: &[&str], name: &str) -> Output {
        self.probe(
            probe,
            flags,
            &[
                "probe.scenario=resolve".into(),
                format!("probe.name={name}"),
            ],
        )
    }
}

impl Drop for PolicyNetns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn default_preset_reaches_public_and_refuses_metadata_private_and_host() {
    let probe = require!(netns_ready());
    let ns = PolicyNetns::new("default");
    let o = ns.connect(&probe, &[], "203.0.113.10");
    assert_eq!(code(&o), Some(0), "public: {}\n{}", stdout(&o), stderr(&o));
    for (host, what) in [
        ("169.254.169.254", "metadata"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "host (gateway alias)"),
    ] {
        let o = ns.connect(&probe, &[], host);
        assert_eq!(code(&o), Some(1), "{what} must be refused: {}", stdout(&o));
        assert!(
            stderr(&o).contains("policy denied"),
            "{what}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn ipv4_mapped_loopback_and_ipv6_link_local_are_refused() {
    let probe = require!(netns_ready());
    let ns = PolicyNetns::new("v6");
    for (peer, what) in [
        (
            "[::ffff:127.0.0.1]",
            "IPv4-mapped loopback (judged as 127.0.0.1)",
        ),
        ("[fe80::5]", "IPv6 link-local"),
        (
            "[fd42:6d73:62::1]",
            "the IPv6 gateway (the host) without allow@host",
        ),
    ] {
        let o = ns.probe(
            &probe,
            &[],
            &[
                "probe.ip=fd42:6d73:62::2/64".into(),
                "probe.gw=fd42:6d73:62::1".into(),
                "probe.scenario=connect".into(),
                format!("probe.peer={peer}:{}", ns.port),
            ],
        );
        assert_eq!(code(&o), Some(1), "{what} must be refused: {}", stdout(&o));
        assert!(
            stderr(&o).contains("policy denied"),
            "{what}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn allow_host_opens_the_host_and_deny_rules_win_first() {
    let probe = require!(netns_ready());
    let ns = PolicyNetns::new("host");
    let o = ns.connect(&probe, &["--net-rule", "allow@host"], "172.16.0.1");
    assert_eq!(code(&o), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let o = ns.connect(&probe, &["--net-rule", "deny@203.0.113.10"], "203.0.113.10");
    assert_eq!(
        code(&o),
        Some(1),
        "a user deny precedes the preset's allow: {}",
        stdout(&o)
    );
    let o = ns.connect(&probe, &["--net-preset", "none"], "203.0.113.10");
    assert_eq!(code(&o), Some(1), "preset none: {}", stdout(&o));
}

#[test]
fn domain_rules_allow_api_and_refuse_evil_even_in_dns() {
    let probe = require!(netns_ready());
    let ns = PolicyNetns::new("domain");
    // A domain-only policy: no preset rules (public-only's `allow@public` would admit
    // 203.0.113.11 whatever the default says), one name allowed.
    let flags = ["--net-preset", "none", "--net-rule", "allow@api.test:tcp"];
    let o = ns.resolve(&probe, &flags, "api.test");
    assert_eq!(code(&o), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("203.0.113.10"), "{}", stdout(&o));
    let o = ns.connect(&probe, &flags, "api.test");
    assert_eq!(
        code(&o),
        Some(0),
        "allowed by name: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let o = ns.resolve(&probe, &flags, "evil.test");
    assert_ne!(
        code(&o),
        Some(0),
        "no allow rule covers evil.test: {}",
        stdout(&o)
    );
    let o = ns.connect(&probe, &flags, "203.0.113.11");
    assert_eq!(code(&o), Some(1), "{}", stdout(&o));
    let o = ns.connect(&probe, &["--net-deny-domain", "evil.test"], "evil.test");
    assert_ne!(code(&o), Some(0), "deny-listed name: {}", stdout(&o));
    // The refusals above were the policy's: the same server answers when nothing refuses.
    let o = ns.connect(&probe, &["--net-preset", "allow-all"], "203.0.113.11");
    assert_eq!(
        code(&o),
        Some(0),
        "live server check: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let o = ns.connect(&probe, &[], "evil.test");
    assert_eq!(
        code(&o),
        Some(0),
        "live server by name: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn a_rebinding_answer_never_reaches_the_guest() {
    let probe = require!(netns_ready());
    let ns = PolicyNetns::new("rebind");
    let o = ns.resolve(&probe, &[], "api.test");
    assert_eq!(
        code(&o),
        Some(0),
        "a public answer passes: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let o = ns.resolve(&probe, &[], "rebind.test");
    assert_ne!(
        code(&o),
        Some(0),
        "10.1.2.3 must be dropped: {}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("10.1.2.3"), "{}", stdout(&o));
}

/// SNI policy on a real guest (`probe.scenario=tls-hello` sends a ClientHello to the echo
/// peer at a public address the policy allows): an allowed server name gets its bytes
/// echoed whole, a deny-listed one is reset and logged with the rule, and bytes that are
/// not TLS on a TLS port are refused and counted in `--net-stats`.
#[test]
fn tls_server_names_are_judged_on_tls_ports() {
    let probe = require!(netns_ready());
    let ns = PolicyNetns::new("sni");
    let port = ns.port.to_string();
    let flags = [
        "--tls-ports",
        port.as_str(),
        "--net-deny-domain",
        ".evil.test",
        "--net-stats",
    ];
    let peer = format!("probe.peer=203.0.113.10:{}", ns.port);
    let hello = |name: &str| {
        ns.probe(
            &probe,
            &flags,
            &[
                "probe.scenario=tls-hello".into(),
                peer.clone(),
                format!("probe.name={name}"),
            ],
        )
    };
    let o = hello("api.test");
    assert_eq!(code(&o), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("\"result\":\"echoed\""),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("\"netstack_tls_hellos_judged\":1"),
        "{}",
        stderr(&o)
    );
    let o = hello("www.evil.test");
    assert_eq!(code(&o), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("policy denied")
            && err.contains("SNI www.evil.test")
            && err.contains("rule 0"),
        "{err}"
    );
    assert!(
        err.contains("\"netstack_tls_server_name_denied\":1"),
        "{err}"
    );
    let o = ns.probe(
        &probe,
        &flags,
        &[
            "probe.scenario=tcp-send".into(),
            peer.clone(),
            "probe.bytes=64K".into(),
        ],
    );
    // tcp-send cannot tell a reset after its last byte from a clean end, so the netstack's
    // counters are the evidence: refused as not TLS, and no byte reached the peer.
    let err = stderr(&o);
    assert!(err.contains("\"netstack_tls_hello_malformed\":1"), "{err}");
    assert!(err.contains("\"netstack_bytes_guest_to_host\":0"), "{err}");
}

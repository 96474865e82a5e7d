//! Policy semantics (design §7) checked on both evaluators: first match, defaults, groups,
//! presets, mapped addresses, domains, DNS queries and DNS answers.

use std::net::IpAddr;

use policy::{
    parse_rules, Action, Decision, DecisionCause, Direction, FlowQuery, HostLists, LinearPolicy,
    Policy, PolicyContext, Preset, Protocol,
};

const HOST: &str = "172.16.0.1";

fn ctx() -> PolicyContext {
    PolicyContext {
        host_addrs: vec![HOST.parse().unwrap(), "fd42::1".parse().unwrap()],
    }
}

/// Both evaluators of one policy; every question is asked of both and must agree.
struct Both {
    compiled: policy::CompiledPolicy,
    linear: LinearPolicy,
}

impl Both {
    fn new(p: &Policy) -> Self {
        Self {
            compiled: p.compile(&ctx()).unwrap(),
            linear: LinearPolicy::new(p, &ctx()),
        }
    }

    fn rules(egress_default: Action, text: &str) -> Self {
        Self::new(&Policy::new(
            egress_default,
            Action::Allow,
            parse_rules(text).unwrap(),
        ))
    }

    fn flow(
        &self,
        dir: Direction,
        dst: &str,
        domain: Option<&str>,
        proto: Protocol,
        port: u16,
    ) -> Decision {
        let q = FlowQuery {
            direction: dir,
            dst: dst.parse().unwrap(),
            domain,
            protocol: proto,
            port,
        };
        let c = self.compiled.decide(&q);
        assert_eq!(c, self.linear.decide(&q), "evaluators disagree on {q:?}");
        c
    }

    fn tcp(&self, dst: &str, port: u16) -> Decision {
        self.flow(Direction::Egress, dst, None, Protocol::Tcp, port)
    }

    fn dns(&self, name: &str) -> Decision {
        let c = self.compiled.decide_dns_query(name);
        assert_eq!(
            c,
            self.linear.decide_dns_query(name),
            "evaluators disagree on {name}"
        );
        c
    }

    fn server_name(&self, name: &str, port: u16) -> Decision {
        let c = self.compiled.decide_server_name(name, Protocol::Tcp, port);
        assert_eq!(
            c,
            self.linear.decide_server_name(name, Protocol::Tcp, port),
            "evaluators disagree on server name {name}:{port}"
        );
        c
    }

    fn answer(&self, name: &str, addr: &str) -> Decision {
        let addr: IpAddr = addr.parse().unwrap();
        let c = self.compiled.check_dns_answer(name, addr);
        assert_eq!(
            c,
            self.linear.check_dns_answer(name, addr),
            "evaluators disagree on {name} {addr}"
        );
        c
    }
}

fn allowed(d: Decision) -> bool {
    d.action == Action::Allow
}

#[test]
fn first_match_wins_and_defaults_apply() {
    let p = Both::rules(
        Action::Allow,
        "deny@10.0.0.5,allow@10.0.0.0/8,deny@10.0.0.0/8:tcp:22",
    );
    assert_eq!(p.tcp("10.0.0.5", 80).rule, Some(0));
    assert!(!allowed(p.tcp("10.0.0.5", 80)));
    assert_eq!(
        p.tcp("10.9.9.9", 22).rule,
        Some(1),
        "the broad allow comes first"
    );
    let d = p.tcp("192.0.2.1", 80);
    assert_eq!(
        (d.action, d.rule, d.cause),
        (Action::Allow, None, DecisionCause::Default)
    );
    let p = Both::new(&Policy::new(Action::Allow, Action::Deny, vec![]));
    assert!(allowed(p.tcp("192.0.2.1", 1)));
    assert!(!allowed(p.flow(
        Direction::Ingress,
        "127.0.0.1",
        None,
        Protocol::Tcp,
        8080
    )));
}

#[test]
fn directions_protocols_and_ports() {
    let p = Both::new(&Policy::new(
        Action::Deny,
        Action::Deny,
        parse_rules(
            "allow@ingress:*:tcp:8080,allow@any:198.51.100.0/24:udp:1000-2000,allow@*:icmpv4",
        )
        .unwrap(),
    ));
    assert!(allowed(p.flow(
        Direction::Ingress,
        "127.0.0.1",
        None,
        Protocol::Tcp,
        8080
    )));
    assert!(
        !allowed(p.tcp("127.0.0.1", 8080)),
        "ingress rule must not open egress"
    );
    for (port, ok) in [
        (999, false),
        (1000, true),
        (1500, true),
        (2000, true),
        (2001, false),
    ] {
        assert_eq!(
            allowed(p.flow(Direction::Egress, "198.51.100.7", None, Protocol::Udp, port)),
            ok,
            "port {port}"
        );
        assert_eq!(
            allowed(p.flow(
                Direction::Ingress,
                "198.51.100.7",
                None,
                Protocol::Udp,
                port
            )),
            ok,
            "port {port}"
        );
    }
    assert!(!allowed(p.flow(
        Direction::Egress,
        "198.51.100.7",
        None,
        Protocol::Tcp,
        1500
    )));
    assert!(allowed(p.flow(
        Direction::Egress,
        "192.0.2.1",
        None,
        Protocol::Icmpv4,
        0
    )));
    assert!(!allowed(p.flow(
        Direction::Egress,
        "2001:db8::1",
        None,
        Protocol::Icmpv6,
        0
    )));
    // A rule with ports never matches portless ICMP.
    let p = Both::rules(Action::Deny, "allow@*:*:1-65535");
    assert!(!allowed(p.flow(
        Direction::Egress,
        "192.0.2.1",
        None,
        Protocol::Icmpv4,
        5
    )));
    assert!(allowed(p.flow(
        Direction::Egress,
        "192.0.2.1",
        None,
        Protocol::Udp,
        65535
    )));
}

#[test]
fn groups_select_the_right_addresses() {
    let p = Both::rules(
        Action::Deny,
        "allow@public:tcp:1,allow@private:tcp:2,allow@loopback:tcp:3,allow@link-local:tcp:4,\
         allow@metadata:tcp:5,allow@multicast:tcp:6,allow@host:tcp:7",
    );
    let groups = [
        ("192.0.2.1", 1),
        ("2001:db8::1", 1),
        ("8.8.8.8", 1),
        ("10.0.0.1", 2),
        ("172.16.0.2", 2),
        ("192.168.1.1", 2),
        ("100.64.0.1", 2),
        ("fd00::1", 2),
        ("127.0.0.1", 3),
        ("::1", 3),
        ("0.0.0.0", 3),
        ("169.254.0.1", 4),
        ("fe80::1", 4),
        ("169.254.169.254", 5),
        ("224.0.0.1", 6),
        ("ff02::1", 6),
        (HOST, 7),
        ("fd42::1", 7),
    ];
    for (addr, port) in groups {
        for probe in 1..=7 {
            assert_eq!(
                allowed(p.tcp(addr, probe)),
                probe == port,
                "{addr} port {probe}"
            );
        }
    }
}

#[test]
fn mapped_ipv6_is_judged_as_ipv4() {
    let p = Both::rules(
        Action::Allow,
        "deny@metadata,deny@10.0.0.0/8,allow@::/0,deny@*",
    );
    assert!(!allowed(p.tcp("::ffff:169.254.169.254", 80)));
    assert_eq!(p.tcp("::ffff:10.1.1.1", 80).rule, Some(1));
    assert_eq!(
        p.tcp("::ffff:192.0.2.1", 80).rule,
        Some(3),
        "::/0 covers real IPv6 only"
    );
    assert_eq!(p.tcp("2001:db8::1", 80).rule, Some(2));
    let p = Both::rules(Action::Deny, "allow@::ffff:192.0.2.0/120");
    assert!(allowed(p.tcp("192.0.2.9", 80)));
    assert!(allowed(p.tcp("::ffff:192.0.2.9", 80)));
}

#[test]
fn domains_match_attributed_names() {
    let p = Both::rules(
        Action::Deny,
        "allow@api.example.com:tcp:443,allow@.example.org",
    );
    let q = |name: Option<&str>| p.flow(Direction::Egress, "192.0.2.1", name, Protocol::Tcp, 443);
    assert!(allowed(q(Some("api.example.com"))));
    assert!(allowed(q(Some("API.Example.com."))));
    assert!(!allowed(q(Some("www.example.com"))));
    assert!(allowed(q(Some("example.org"))), "suffix includes the apex");
    assert!(allowed(q(Some("a.b.example.org"))));
    assert!(!allowed(q(Some("badexample.org"))));
    assert!(
        !allowed(q(Some("a..example.org"))),
        "malformed names match nothing"
    );
    assert!(!allowed(q(None)));
}

#[test]
fn presets_behave_as_documented() {
    let p = Both::new(&Preset::PublicOnly.policy());
    assert!(allowed(p.tcp("192.0.2.1", 443)));
    assert!(allowed(p.tcp("2001:db8::1", 443)));
    for denied in [
        "10.0.0.1",
        "127.0.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "224.0.0.1",
        HOST,
        "0.0.0.0",
    ] {
        assert!(!allowed(p.tcp(denied, 443)), "{denied}");
    }
    assert!(
        allowed(p.flow(Direction::Egress, HOST, None, Protocol::Udp, 53)),
        "DNS to resolver"
    );
    assert!(allowed(p.tcp(HOST, 53)));
    assert!(!allowed(p.tcp(HOST, 54)));
    assert!(allowed(p.dns("anything.example")));

    let p = Both::new(&Preset::NonLocal.policy());
    assert!(allowed(p.tcp("192.0.2.1", 443)));
    assert!(allowed(p.tcp("10.0.0.1", 443)));
    assert!(allowed(p.tcp("fd00::5", 443)));
    for denied in [
        "127.0.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        HOST,
        "fd42::1",
    ] {
        assert!(!allowed(p.tcp(denied, 443)), "{denied}");
    }
    assert!(allowed(p.flow(
        Direction::Egress,
        HOST,
        None,
        Protocol::Udp,
        53
    )));

    let p = Both::new(&Preset::None.policy());
    assert!(!allowed(p.tcp("192.0.2.1", 443)));
    assert!(!allowed(p.flow(
        Direction::Ingress,
        "127.0.0.1",
        None,
        Protocol::Tcp,
        80
    )));

    let p = Both::new(&Preset::AllowAll.policy());
    assert!(allowed(p.tcp("169.254.169.254", 80)));
    assert!(allowed(p.flow(
        Direction::Ingress,
        "127.0.0.1",
        None,
        Protocol::Tcp,
        80
    )));
    assert!(allowed(p.answer("x.example", "127.0.0.1")));
}

#[test]
fn dns_queries_are_not_a_side_door() {
    // Deny by default and rules naming domains: only covered names go upstream.
    let p = Both::rules(
        Action::Deny,
        "allow@.github.com:tcp:443,allow@public:tcp:443",
    );
    assert!(allowed(p.dns("api.github.com")));
    assert!(allowed(p.dns("GitHub.com.")));
    let d = p.dns("exfil-data-here.attacker.example");
    assert_eq!(
        (d.action, d.cause),
        (Action::Deny, DecisionCause::DnsNameNotAllowed)
    );
    assert!(!allowed(p.dns("bad..name")));
    // Deny-lists come first and refuse even under a broad allow.
    let mut policy = Policy::new(
        Action::Allow,
        Action::Allow,
        parse_rules("allow@*").unwrap(),
    );
    policy.prepend_deny_names(
        &[policy::DomainName::parse("tracker.example").unwrap()],
        &[policy::DomainName::parse("ads.example").unwrap()],
    );
    let p = Both::new(&policy);
    assert_eq!(p.dns("tracker.example").rule, Some(0));
    assert_eq!(p.dns("x.ads.example").rule, Some(1));
    assert_eq!(p.dns("ok.example").rule, Some(2));
    assert!(!allowed(p.flow(
        Direction::Egress,
        "192.0.2.1",
        Some("a.ads.example"),
        Protocol::Tcp,
        443
    )));
    // A conditional deny does not decide a DNS question; an unconditional one does.
    let p = Both::rules(
        Action::Deny,
        "deny@.evil.example:tcp:25,deny@.worse.example,allow@*",
    );
    assert!(allowed(p.dns("mx.evil.example")));
    assert!(!allowed(p.dns("a.worse.example")));
    // Deny by default without domain rules: names are not judged, IPs are.
    let p = Both::rules(Action::Deny, "allow@public:tcp:443");
    assert!(allowed(p.dns("anything.example")));
}

#[test]
fn server_names_are_judged_like_dns_names_with_ports() {
    // A deny-list: the name rule decides, address rules never match a name.
    let mut policy = Policy::new(
        Action::Deny,
        Action::Allow,
        parse_rules("allow@public:tcp:443,allow@host").unwrap(),
    );
    policy.prepend_deny_names(
        &[policy::DomainName::parse("evil.test").unwrap()],
        &[policy::DomainName::parse("ads.example").unwrap()],
    );
    let p = Both::new(&policy);
    let d = p.server_name("evil.test", 443);
    assert_eq!((d.action, d.rule), (Action::Deny, Some(0)));
    assert_eq!(p.server_name("x.ads.example", 443).rule, Some(1));
    assert_eq!(
        p.dns("evil.test").rule,
        Some(0),
        "the same rule refuses the query"
    );
    let d = p.server_name("good.example", 443);
    assert_eq!(
        (d.action, d.rule),
        (Action::Allow, None),
        "no name rule: the address decides"
    );
    // An allow-list of names under deny: unnamed server names are refused, as DNS queries are.
    let p = Both::rules(
        Action::Deny,
        "allow@.github.com:tcp:443,allow@203.0.113.5:tcp:443",
    );
    assert_eq!(p.server_name("api.github.com", 443).rule, Some(0));
    let d = p.server_name("other.example", 443);
    assert_eq!(
        (d.action, d.cause),
        (Action::Deny, DecisionCause::DnsNameNotAllowed)
    );
    assert_eq!(d.action, p.dns("other.example").action);
    // Unlike a DNS query, a server name is on a known port: conditional rules count.
    let p = Both::rules(Action::Allow, "deny@.evil.example:tcp:443,allow@*");
    assert!(allowed(p.dns("www.evil.example")));
    assert!(!allowed(p.server_name("www.evil.example", 443)));
    assert!(allowed(p.server_name("www.evil.example", 8443)));
    // `*` rules apply to names; ingress rules never do.
    let p = Both::rules(Action::Allow, "deny@ingress:*,deny@*:tcp:443");
    assert_eq!(p.server_name("a.example", 443).rule, Some(1));
    assert!(allowed(p.server_name("a.example", 80)));
}

#[test]
fn dns_answers_get_rebind_protection() {
    let p = Both::new(&Preset::PublicOnly.policy());
    assert!(allowed(p.answer("ok.example", "192.0.2.1")));
    // (The host group is reachable on port 53 under this preset, so answers naming it pass.)
    for bad in [
        "10.0.0.1",
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "fe80::1",
    ] {
        let d = p.answer("evil.example", bad);
        assert_eq!(
            (d.action, d.cause),
            (Action::Deny, DecisionCause::RebindProtection),
            "{bad}"
        );
    }
    let p = Both::rules(
        Action::Deny,
        "allow@.corp.example,allow@10.1.0.0/16:tcp:22,allow@public",
    );
    assert!(
        allowed(p.answer("git.corp.example", "10.9.9.9")),
        "name rule allows split horizon"
    );
    assert!(
        allowed(p.answer("other.example", "10.1.2.3")),
        "an address rule allows it"
    );
    assert!(!allowed(p.answer("other.example", "10.2.0.1")));
    assert!(!allowed(p.answer("other.example", HOST)));
}

#[test]
fn host_lists_compile_to_rules() {
    let p = HostLists {
        allowed_hosts: vec!["*.example.com".into(), "192.0.2.0/24".into()],
        blocked_hosts: vec!["localhost".into(), "private".into()],
    }
    .to_policy()
    .unwrap();
    let p = Both::new(&p);
    assert!(allowed(p.flow(
        Direction::Egress,
        "203.0.113.1",
        Some("api.example.com"),
        Protocol::Tcp,
        443
    )));
    assert!(allowed(p.tcp("192.0.2.77", 80)));
    assert!(!allowed(p.tcp("203.0.113.1", 80)));
    assert!(!allowed(p.tcp("127.0.0.1", 80)));
    assert!(!allowed(p.tcp(HOST, 80)));
    assert!(!allowed(p.flow(
        Direction::Egress,
        "10.0.0.1",
        Some("api.example.com"),
        Protocol::Tcp,
        443
    )));
}

#[test]
fn empty_policy_uses_defaults_only() {
    let p = Both::new(&Policy::new(Action::Deny, Action::Allow, vec![]));
    assert!(!allowed(p.tcp("192.0.2.1", 80)));
    assert!(allowed(p.dns("x.example")));
    assert!(!allowed(p.answer("x.example", "10.0.0.1")));
}

#[test]
fn compiled_reports_rule_and_stats() {
    let policy = Policy::new(
        Action::Deny,
        Action::Allow,
        parse_rules("allow@public:tcp:443").unwrap(),
    );
    let c = policy.compile(&ctx()).unwrap();
    let d = c.decide(&FlowQuery {
        direction: Direction::Egress,
        dst: "192.0.2.1".parse().unwrap(),
        domain: None,
        protocol: Protocol::Tcp,
        port: 443,
    });
    assert_eq!(
        c.rule(d.rule.unwrap()).unwrap().to_string(),
        "allow@egress:public:tcp:443"
    );
    let s = c.stats();
    assert_eq!(s.rules, 1);
    assert!(s.v4_nodes >= 1 && s.port_classes >= 2);
}

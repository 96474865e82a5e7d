//! The CLI rule syntax: accepted forms, their meaning, round trips, and error texts.

use policy::{
    parse_rule, parse_rules, Action, Destination, Group, PolicyError, Protocol, ProtocolSet,
    RuleDirection,
};

fn shown(text: &str) -> String {
    parse_rule(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .to_string()
}

fn err(text: &str) -> String {
    parse_rule(text).unwrap_err().to_string()
}

#[test]
fn accepted_forms() {
    assert_eq!(shown("allow@public:tcp:443"), "allow@egress:public:tcp:443");
    assert_eq!(shown("deny@metadata"), "deny@egress:metadata");
    assert_eq!(
        shown("allow@10.0.0.0/8:tcp:8000-9000"),
        "allow@egress:10.0.0.0/8:tcp:8000-9000"
    );
    assert_eq!(
        shown("allow@.example.com:tcp,udp:443"),
        "allow@egress:.example.com:tcp,udp:443"
    );
    assert_eq!(shown("allow@*.Example.com"), "allow@egress:.example.com");
    assert_eq!(shown("deny@ingress:*"), "deny@ingress:*");
    assert_eq!(shown("allow@any:host:tcp"), "allow@any:host:tcp");
    assert_eq!(
        shown("allow@example.com:*:80,443"),
        "allow@egress:example.com:*:80,443"
    );
    assert_eq!(shown("allow@1.2.3.4"), "allow@egress:1.2.3.4");
    assert_eq!(
        shown("allow@egress:icmpv4.example.com:icmpv4"),
        "allow@egress:icmpv4.example.com:icmpv4"
    );
}

#[test]
fn ipv6_bare_and_bracketed() {
    assert_eq!(
        shown("allow@egress:2001:db8::/32:tcp:443"),
        "allow@egress:2001:db8::/32:tcp:443"
    );
    assert_eq!(
        shown("allow@2001:db8::1:tcp:443"),
        "allow@egress:2001:db8::1:tcp:443"
    );
    assert_eq!(
        shown("allow@2001:db8::1:udp"),
        "allow@egress:2001:db8::1:udp"
    );
    assert_eq!(shown("deny@2001:db8::1"), "deny@egress:2001:db8::1");
    assert_eq!(shown("deny@::1"), "deny@egress:::1");
    assert_eq!(shown("deny@::"), "deny@egress:::");
    assert_eq!(
        shown("allow@[2001:db8::1]:tcp:22"),
        "allow@egress:2001:db8::1:tcp:22"
    );
    assert_eq!(
        shown("allow@[2001:db8::]/48:tcp"),
        "allow@egress:2001:db8::/48:tcp"
    );
    assert_eq!(
        shown("allow@any:[2001:db8::/48]"),
        "allow@any:2001:db8::/48"
    );
    // Mapped addresses are judged as IPv4, so rules naming them become IPv4 rules.
    assert_eq!(shown("deny@::ffff:10.0.0.1"), "deny@egress:10.0.0.1");
    assert_eq!(
        shown("deny@[::ffff:10.0.0.0]/104"),
        "deny@egress:10.0.0.0/8"
    );
}

#[test]
fn fields_are_typed() {
    let r = parse_rule("allow@any:10.0.0.0/8:tcp,udp:80,8000-9000").unwrap();
    assert_eq!(r.action(), Action::Allow);
    assert_eq!(r.direction(), RuleDirection::Any);
    assert!(matches!(r.destination(), Destination::Cidr(c) if c.len() == 8));
    assert_eq!(
        r.protocols(),
        ProtocolSet::of(&[Protocol::Tcp, Protocol::Udp])
    );
    assert_eq!(r.ports().len(), 2);
    let g = parse_rule("deny@link-local").unwrap();
    assert_eq!(g.destination(), &Destination::Group(Group::LinkLocal));
}

#[test]
fn rule_lists_split_only_before_actions() {
    let rules = parse_rules("allow@public:tcp,udp:80,443, allow@host:udp:53,deny@*").unwrap();
    let text: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "allow@egress:public:tcp,udp:80,443",
            "allow@egress:host:udp:53",
            "deny@egress:*"
        ]
    );
    assert!(parse_rules("allow@public,bogus").is_err());
}

#[test]
fn error_texts_name_the_token() {
    assert_eq!(
        err("allow@*:tcp:9000-80"),
        "bad port range \"9000-80\" in rule \"allow@*:tcp:9000-80\": start must be <= end"
    );
    assert_eq!(
        err("permit@public"),
        "bad action \"permit\" in rule \"permit@public\": expected allow or deny"
    );
    assert!(err("allow public").contains("has no \"@\""));
    assert_eq!(
        err("allow@public:tcp:0"),
        "bad port \"0\" in rule \"allow@public:tcp:0\": expected a number from 1 to 65535"
    );
    assert!(err("allow@public:tcp:70000").contains("bad port \"70000\""));
    assert!(err("allow@public:tcp:80-").contains("bad port range \"80-\""));
    let e = err("allow@public:tpc:443");
    assert!(e.starts_with("bad protocol \"tpc\""), "{e}");
    let e = err("allow@public:443");
    assert!(
        e.contains("ports need a protocol list before them, e.g. public:tcp:443"),
        "{e}"
    );
    let e = err("allow@egres:public");
    assert!(e.starts_with("bad direction \"egres\""), "{e}");
    let e = err("allow@pubic");
    assert!(
        e.contains("bad destination \"pubic\"") && e.contains("not a known group"),
        "{e}"
    );
    let e = err("allow@10.0.0.0/33");
    assert!(
        e.contains("bad destination \"10.0.0.0/33\"") && e.contains("prefix"),
        "{e}"
    );
    let e = err("allow@localhost");
    assert!(e.contains("use the group loopback"), "{e}");
    let e = err("allow@[2001:db8::1:tcp");
    assert!(e.contains("has no \"]\""), "{e}");
    let e = err("allow@1.2.3");
    assert!(e.contains("bad destination \"1.2.3\""), "{e}");
}

#[test]
fn default_actions_parse() {
    assert_eq!("deny".parse::<Action>().unwrap(), Action::Deny);
    assert_eq!(" allow ".parse::<Action>().unwrap(), Action::Allow);
    assert_eq!(
        "block".parse::<Action>().unwrap_err().to_string(),
        "bad default action \"block\": expected allow or deny"
    );
    assert_eq!(
        "non-local".parse::<policy::Preset>().unwrap(),
        policy::Preset::NonLocal
    );
    assert!("local"
        .parse::<policy::Preset>()
        .unwrap_err()
        .to_string()
        .contains("expected public-only, none, allow-all or non-local"));
}

#[test]
fn icmp_rules_are_egress_only() {
    let e = parse_rule("allow@ingress:*:icmpv4").unwrap_err();
    assert!(matches!(e, PolicyError::IcmpNotEgress { .. }));
    assert!(e.to_string().contains("ICMP rules are egress-only"), "{e}");
    let e = err("allow@any:public:tcp,icmpv6");
    assert!(e.contains("icmpv6 with direction any"), "{e}");
    assert!(parse_rule("allow@egress:*:icmpv4,icmpv6").is_ok());
    assert!(
        parse_rule("allow@ingress:*").is_ok(),
        "all-protocol ingress rules are fine"
    );
    let e = err("allow@*:icmpv4:80");
    assert!(
        e.contains("only ICMP protocols, which have no ports"),
        "{e}"
    );
}

#[test]
fn display_round_trips() {
    for text in [
        "allow@egress:public:tcp:443",
        "deny@any:2001:db8::/32:udp:1-1024,4000",
        "allow@ingress:192.168.0.0/16:tcp",
        "deny@egress:.example.com",
        "allow@egress:*:*:53",
        "allow@egress:fe80::1:icmpv6",
    ] {
        let r = parse_rule(text).unwrap();
        assert_eq!(r.to_string(), text);
        assert_eq!(parse_rule(&r.to_string()).unwrap(), r);
    }
}

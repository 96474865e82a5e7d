//! Differential property test: the compiled evaluator must give exactly the linear reference's
//! decision (action, rule index, cause) for random policies and random flows, DNS queries and
//! DNS answers. Addresses, names and ports are drawn from small pools near each other and near
//! range edges so that rules and queries actually collide.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::{
    Action, Destination, DomainName, FlowQuery, Group, IpCidr, LinearPolicy, Policy, PolicyContext,
    PortRange, Protocol, ProtocolSet, Rule, RuleDirection, ALL_GROUPS, ALL_PROTOCOLS,
};
use proptest::prelude::*;

const V4_BASES: [[u8; 4]; 8] = [
    [10, 0, 0, 0],
    [10, 1, 2, 3],
    [192, 0, 2, 0],
    [198, 51, 100, 200],
    [169, 254, 169, 254],
    [172, 16, 0, 1],
    [127, 0, 0, 1],
    [224, 0, 0, 5],
];
const V6_BASES: [u128; 5] = [
    0x2001_0db8_0000_0000_0000_0000_0000_0001,
    0x2001_0db8_0001_0000_0000_0000_0000_0000,
    0xfd42_0000_0000_0000_0000_0000_0000_0001,
    0xfe80_0000_0000_0000_0000_0000_0000_0001,
    0x0000_0000_0000_0000_0000_0000_0000_0001,
];
const LABELS: [&str; 5] = ["a", "b", "api", "example", "com"];
const PORT_EDGES: [u16; 10] = [1, 2, 52, 53, 54, 443, 8000, 9000, 65534, 65535];

fn ctx() -> PolicyContext {
    PolicyContext {
        host_addrs: vec![
            IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1)),
            IpAddr::V6(Ipv6Addr::from(
                0xfd42_0000_0000_0000_0000_0000_0000_0001u128,
            )),
        ],
    }
}

fn v4_addr() -> impl Strategy<Value = Ipv4Addr> {
    (0..V4_BASES.len(), any::<u32>(), 0u32..33).prop_map(|(b, noise, keep)| {
        // Keep the top `keep` bits of a base, randomise the rest.
        let base = u32::from_be_bytes(V4_BASES[b]);
        let mask = if keep == 0 {
            0
        } else {
            u32::MAX << (32 - keep)
        };
        Ipv4Addr::from((base & mask) | (noise & !mask))
    })
}

fn v6_addr() -> impl Strategy<Value = Ipv6Addr> {
    (0..V6_BASES.len(), any::<u128>(), 0u32..129).prop_map(|(b, noise, keep)| {
        let base = V6_BASES[b];
        let mask = if keep == 0 {
            0
        } else {
            u128::MAX << (128 - keep)
        };
        Ipv6Addr::from((base & mask) | (noise & !mask))
    })
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        4 => v4_addr().prop_map(IpAddr::V4),
        3 => v6_addr().prop_map(IpAddr::V6),
        2 => v4_addr().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(0..LABELS.len(), 1..4).prop_map(|ix| {
        ix.into_iter()
            .map(|i| LABELS[i])
            .collect::<Vec<_>>()
            .join(".")
    })
}

fn query_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => name(),
        1 => name().prop_map(|n| n.to_uppercase() + "."),
        1 => name().prop_map(|n| format!("{n}..x")),
    ]
}

fn destination() -> impl Strategy<Value = Destination> {
    prop_oneof![
        1 => Just(Destination::Any),
        3 => (0..ALL_GROUPS.len()).prop_map(|g| Destination::Group(ALL_GROUPS[g])),
        4 => (address(), 0u8..129).prop_map(|(a, len)| {
            let max = if a.is_ipv4() { 32 } else { 128 };
            Destination::Cidr(IpCidr::new(a, len % (max + 1)).unwrap())
        }),
        2 => name().prop_filter_map("single-label", |n| {
            let d = DomainName::parse(&n).ok()?;
            (!d.is_single_label()).then_some(Destination::Domain(d))
        }),
        2 => name().prop_map(|n| Destination::Suffix(DomainName::parse(&n).unwrap())),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => (0..PORT_EDGES.len()).prop_map(|i| PORT_EDGES[i]),
        1 => any::<u16>(),
    ]
}

fn ports() -> impl Strategy<Value = Vec<PortRange>> {
    prop_oneof![
        3 => Just(Vec::new()),
        2 => prop::collection::vec((port(), port()), 1..3).prop_map(|v| {
            v.into_iter()
                .filter_map(|(a, b)| PortRange::new(a.min(b).max(1), a.max(b).max(1)))
                .collect()
        }),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        any::<bool>(),
        0..3usize,
        destination(),
        prop::collection::vec(0..4usize, 0..3),
        ports(),
    )
        .prop_filter_map("invalid rule", |(allow, dir, dest, protos, ports)| {
            let action = if allow { Action::Allow } else { Action::Deny };
            let direction = [
                RuleDirection::Egress,
                RuleDirection::Ingress,
                RuleDirection::Any,
            ][dir];
            let protos: Vec<Protocol> = protos.into_iter().map(|p| ALL_PROTOCOLS[p]).collect();
            Rule::new(action, direction, dest, ProtocolSet::of(&protos), ports).ok()
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(rule(), 0..40),
    )
        .prop_map(|(e, i, rules)| {
            let a = |b| if b { Action::Allow } else { Action::Deny };
            Policy::new(a(e), a(i), rules)
        })
}

/// Policies large enough, and broad enough, that many destinations are covered by more rules
/// than a sparse candidate list holds (exercises the bitset path).
fn broad_policy() -> impl Strategy<Value = Policy> {
    let broad_rule = (
        any::<bool>(),
        0..3usize,
        prop_oneof![
            2 => Just(Destination::Any),
            3 => (0..ALL_GROUPS.len()).prop_map(|g| Destination::Group(ALL_GROUPS[g])),
            2 => (address(), 0u8..9).prop_map(|(a, len)| Destination::Cidr(IpCidr::new(a, len).unwrap())),
            1 => name().prop_map(|n| Destination::Suffix(DomainName::parse(&n).unwrap())),
        ],
        prop::collection::vec(0..4usize, 0..3),
        ports(),
    )
        .prop_filter_map("invalid rule", |(allow, dir, dest, protos, ports)| {
            let action = if allow { Action::Allow } else { Action::Deny };
            let direction = [RuleDirection::Egress, RuleDirection::Ingress, RuleDirection::Any][dir];
            let protos: Vec<Protocol> = protos.into_iter().map(|p| ALL_PROTOCOLS[p]).collect();
            Rule::new(action, direction, dest, ProtocolSet::of(&protos), ports).ok()
        });
    (
        any::<bool>(),
        prop::collection::vec(prop_oneof![3 => broad_rule, 1 => rule()], 60..200),
    )
        .prop_map(|(e, rules)| {
            Policy::new(
                if e { Action::Allow } else { Action::Deny },
                Action::Deny,
                rules,
            )
        })
}

fn flow() -> impl Strategy<Value = (bool, IpAddr, Option<String>, usize, u16)> {
    (
        any::<bool>(),
        address(),
        prop::option::of(query_name()),
        0..4usize,
        port(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn compiled_matches_linear(
        p in policy(),
        flows in prop::collection::vec(flow(), 1..40),
        answers in prop::collection::vec((query_name(), address()), 1..10),
    ) {
        let compiled = p.compile(&ctx()).unwrap();
        let linear = LinearPolicy::new(&p, &ctx());
        for (egress, dst, domain, proto, port) in &flows {
            let q = FlowQuery {
                direction: if *egress { policy::Direction::Egress } else { policy::Direction::Ingress },
                dst: *dst,
                domain: domain.as_deref(),
                protocol: ALL_PROTOCOLS[*proto],
                port: *port,
            };
            prop_assert_eq!(compiled.decide(&q), linear.decide(&q), "flow {:?}", q);
            if let Some(name) = domain {
                prop_assert_eq!(
                    compiled.decide_server_name(name, q.protocol, q.port),
                    linear.decide_server_name(name, q.protocol, q.port),
                    "server name {} {:?}", name, q
                );
            }
        }
        for (name, addr) in &answers {
            prop_assert_eq!(compiled.decide_dns_query(name), linear.decide_dns_query(name), "query {}", name);
            prop_assert_eq!(
                compiled.check_dns_answer(name, *addr),
                linear.check_dns_answer(name, *addr),
                "answer {} {}", name, addr
            );
            prop_assert_eq!(compiled.groups_of(*addr), policy::groups_of(*addr, &ctx().host_addrs));
        }
    }

    #[test]
    fn compiled_matches_linear_on_broad_policies(
        p in broad_policy(),
        flows in prop::collection::vec(flow(), 1..40),
        answers in prop::collection::vec((query_name(), address()), 1..10),
    ) {
        let compiled = p.compile(&ctx()).unwrap();
        let linear = LinearPolicy::new(&p, &ctx());
        for (egress, dst, domain, proto, port) in &flows {
            let q = FlowQuery {
                direction: if *egress { policy::Direction::Egress } else { policy::Direction::Ingress },
                dst: *dst,
                domain: domain.as_deref(),
                protocol: ALL_PROTOCOLS[*proto],
                port: *port,
            };
            prop_assert_eq!(compiled.decide(&q), linear.decide(&q), "flow {:?}", q);
            if let Some(name) = domain {
                prop_assert_eq!(
                    compiled.decide_server_name(name, q.protocol, q.port),
                    linear.decide_server_name(name, q.protocol, q.port),
                    "server name {} {:?}", name, q
                );
            }
        }
        for (name, addr) in &answers {
            prop_assert_eq!(compiled.decide_dns_query(name), linear.decide_dns_query(name), "query {}", name);
            prop_assert_eq!(
                compiled.check_dns_answer(name, *addr),
                linear.check_dns_answer(name, *addr),
                "answer {} {}", name, addr
            );
        }
    }

    #[test]
    fn many_port_ranges_stay_exact(
        ranges in prop::collection::vec((1u16..=65535, 0u16..300), 300..600),
        probes in prop::collection::vec(any::<u16>(), 50),
    ) {
        // More range ends than port classes: classes merge and the evaluator must confirm
        // candidates against the exact ranges.
        let rules: Vec<Rule> = ranges
            .iter()
            .map(|(s, w)| {
                let end = s.saturating_add(*w);
                Rule::new(
                    Action::Allow,
                    RuleDirection::Egress,
                    Destination::Any,
                    ProtocolSet::of(&[Protocol::Tcp]),
                    vec![PortRange::new(*s, end).unwrap()],
                )
                .unwrap()
            })
            .collect();
        let p = Policy::new(Action::Deny, Action::Deny, rules);
        let compiled = p.compile(&ctx()).unwrap();
        let linear = LinearPolicy::new(&p, &ctx());
        for port in probes {
            let q = FlowQuery {
                direction: policy::Direction::Egress,
                dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                domain: None,
                protocol: Protocol::Tcp,
                port,
            };
            prop_assert_eq!(compiled.decide(&q), linear.decide(&q));
        }
    }

    #[test]
    fn cli_text_round_trips(r in rule()) {
        let text = r.to_string();
        prop_assert_eq!(policy::parse_rule(&text).unwrap(), r);
    }

    #[test]
    fn documents_round_trip(p in policy()) {
        prop_assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p.clone());
        prop_assert_eq!(Policy::from_toml(&p.to_toml().unwrap()).unwrap(), p);
    }
}

#[test]
fn group_enum_covers_all_names() {
    assert_eq!(ALL_GROUPS.len(), 7);
    assert!(ALL_GROUPS.contains(&Group::Metadata));
}

#[test]
fn generators_make_rules_and_queries_collide() {
    // Guards the property test against vacuity: a useful share of random decisions must come
    // from rules (not defaults), from deep rules, and from name rules.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut total, mut by_rule, mut deep, mut by_name) = (0, 0, 0, 0);
    for _ in 0..200 {
        let p = policy().new_tree(&mut runner).unwrap().current();
        let compiled = p.compile(&ctx()).unwrap();
        for _ in 0..20 {
            let (egress, dst, domain, proto, port) =
                flow().new_tree(&mut runner).unwrap().current();
            let d = compiled.decide(&FlowQuery {
                direction: if egress {
                    policy::Direction::Egress
                } else {
                    policy::Direction::Ingress
                },
                dst,
                domain: domain.as_deref(),
                protocol: ALL_PROTOCOLS[proto],
                port,
            });
            total += 1;
            if let Some(r) = d.rule {
                by_rule += 1;
                deep += usize::from(r >= 5);
                by_name += usize::from(p.rules[r].destination().is_name());
            }
        }
    }
    assert!(
        by_rule * 4 > total,
        "only {by_rule}/{total} decisions came from rules"
    );
    assert!(
        deep * 20 > total,
        "only {deep}/{total} decisions came from rule 5 or later"
    );
    assert!(
        by_name * 100 > total,
        "only {by_name}/{total} decisions came from name rules"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Parsers take user input: they must return errors, never panic, on any text.
    #[test]
    fn parsers_never_panic(
        text in "[a-z@:,.*/\\[\\]0-9 -]{0,40}",
        raw in any::<String>(),
        name in "[A-Za-z0-9._-]{0,70}",
    ) {
        for t in [&text, &raw] {
            let _ = policy::parse_rule(t);
            let _ = policy::parse_rules(t);
            let _ = policy::parse_host_pattern(t);
            let _ = Policy::from_json(t);
            let _ = Policy::from_toml(t);
        }
        let p = policy::Preset::PublicOnly.policy();
        let c = p.compile(&ctx()).unwrap();
        let l = LinearPolicy::new(&p, &ctx());
        prop_assert_eq!(c.decide_dns_query(&name), l.decide_dns_query(&name));
        prop_assert_eq!(c.decide_dns_query(&raw), l.decide_dns_query(&raw));
    }
}

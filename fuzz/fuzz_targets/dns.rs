//! DNS messages as the interception path sees them: the query parser (names with
//! compression pointers and loops, truncation), the local answers built from a query (host
//! alias, REFUSED, SERVFAIL), and upstream answers: A/AAAA extraction and the rebind filter
//! (every address judged by a compiled policy: private and loopback answers pass only for
//! names an allow rule covers).
//!
//! Properties checked: a local answer to a parsed query parses back as an answer for the same
//! name with exactly the addresses put in; parsing never reads past the message.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netstack::fuzz_entry::{
    dns_answer_addresses, dns_judge_answer, dns_local_answer, dns_parse_query, DNS_TYPE_A,
    DNS_TYPE_AAAA,
};
use policy::{parse_rules, Action, CompiledPolicy, Policy, PolicyContext};

fn policy() -> &'static CompiledPolicy {
    static P: OnceLock<CompiledPolicy> = OnceLock::new();
    P.get_or_init(|| {
        let rules = parse_rules("deny@.blocked.test,allow@public,allow@.fuzz.test")
            .expect("fuzz policy rules");
        let ctx = PolicyContext {
            host_addrs: vec![IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1))],
        };
        Policy::new(Action::Deny, Action::Deny, rules)
            .compile(&ctx)
            .expect("fuzz policy compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    // As a query from the guest.
    if let Some(q) = dns_parse_query(data) {
        assert!(q.question_end <= data.len());
        assert!(!q.name.bytes().any(|b| b.is_ascii_uppercase()));
        let answers: Vec<IpAddr> = match q.qtype {
            DNS_TYPE_A => vec![IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1))],
            DNS_TYPE_AAAA => vec![IpAddr::V6(Ipv6Addr::new(
                0xfd42, 0x6d73, 0x62, 0, 0, 0, 0, 1,
            ))],
            _ => vec![],
        };
        for rcode in [0u8, 2, 5] {
            let reply = dns_local_answer(data, rcode, &answers).expect("a parsed query");
            let (name, addrs) = dns_answer_addresses(&reply).expect("our answer parses");
            assert_eq!(name, q.name);
            assert_eq!(addrs, answers);
        }
    }
    // As an answer from the upstream resolver.
    let plain = dns_answer_addresses(data);
    let judged = dns_judge_answer(data, policy());
    match (&plain, &judged) {
        (Some((n1, a1)), Some((n2, a2, allowed))) => {
            assert_eq!((n1, a1), (n2, a2));
            // Rebind protection: a loopback answer passes only for a name an allow rule
            // covers (here `.fuzz.test`).
            let covered = n1 == "fuzz.test" || n1.ends_with(".fuzz.test");
            if a1.iter().any(|a| a.is_loopback()) && !covered {
                assert!(
                    !allowed,
                    "a loopback answer for {n1:?} passed the rebind filter"
                );
            }
        }
        (None, None) => {}
        _ => panic!("answer_addresses and judge_answer disagree"),
    }
});

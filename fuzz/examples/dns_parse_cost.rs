//! The measurement behind the "DNS parsing stays hand-written" decision (docs/decisions.md):
//! parse cost of netstack's DNS parser against `hickory-proto` on the messages the
//! interception path sees, and, given a directory of DNS messages (a fuzz corpus), how often
//! the two accept the same messages and extract the same question and A/AAAA addresses.
//!
//! `cd fuzz && cargo +nightly run --release --example dns_parse_cost [-- CORPUS_DIR]`
//! (a normal optimised build: no sanitizer, no fuzzing instrumentation).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use netstack::fuzz_entry::{dns_answer_addresses, dns_parse_query};

/// A query for `name` (type `qtype`, RD set, one question).
fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// A typical resolver answer: the question, a CNAME and two A records, names compressed.
fn answer() -> Vec<u8> {
    let mut m = query("www.example.com", 1);
    m[2] = 0x81;
    m[3] = 0x80;
    m[7] = 3;
    // www.example.com CNAME cdn.example.com (pointer to "example.com" at 16)
    m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 1, 0x2c, 0, 6]);
    let cname_at = m.len();
    m.extend_from_slice(&[3, b'c', b'd', b'n', 0xc0, 16]);
    for last in [34u8, 35] {
        m.extend_from_slice(&[0xc0, cname_at as u8, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&[93, 184, 216, last]);
    }
    m
}

/// Median nanoseconds per call of `f` over 7 rounds of `n` calls.
fn ns_per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

/// hickory's view of a query: first question's name (lower case, no trailing dot) and type.
fn hickory_query(msg: &[u8]) -> Option<(String, u16)> {
    let m = Message::from_vec(msg).ok()?;
    if m.metadata.message_type != MessageType::Query {
        return None;
    }
    let q = m.queries.first()?;
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    Some((name, u16::from(q.query_type())))
}

/// hickory's view of an answer: the question name and every A/AAAA address in the answers.
fn hickory_answer(msg: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    let m = Message::from_vec(msg).ok()?;
    if m.metadata.message_type != MessageType::Response || m.queries.len() != 1 {
        return None;
    }
    let name = m.queries[0]
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let addrs = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Some((name, addrs))
}

fn main() {
    let q = query("www.example.com", 1);
    let a = answer();
    assert!(dns_parse_query(&q).is_some() && hickory_query(&q).is_some());
    assert_eq!(
        dns_answer_addresses(&a).map(|(n, v)| (n, v.len())),
        Some(("www.example.com".to_string(), 2))
    );
    assert_eq!(hickory_answer(&a).map(|(_, v)| v.len()), Some(2));

    let n = 200_000;
    println!("parse cost, median of 7 rounds of {n} calls (ns per message):");
    println!(
        "  query  {:>3} B: netstack {:>7.1}   hickory-proto Message::from_vec {:>7.1}",
        q.len(),
        ns_per_call(n, || {
            black_box(dns_parse_query(black_box(&q)));
        }),
        ns_per_call(n, || {
            black_box(hickory_query(black_box(&q)));
        })
    );
    println!(
        "  answer {:>3} B: netstack {:>7.1}   hickory-proto Message::from_vec {:>7.1}",
        a.len(),
        ns_per_call(n, || {
            black_box(dns_answer_addresses(black_box(&a)));
        }),
        ns_per_call(n, || {
            black_box(hickory_answer(black_box(&a)));
        })
    );

    let Some(dir) = std::env::args().nth(1) else {
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut q_counts = [0u32; 5];
    let mut a_counts = [0u32; 5];
    for f in &files {
        let Ok(msg) = std::fs::read(f) else { continue };
        let verbose = std::env::var_os("DNS_DIFF_VERBOSE").is_some();
        let ours = dns_parse_query(&msg).map(|q| (q.name, q.qtype));
        let theirs = hickory_query(&msg);
        let c = classify(&ours, &theirs);
        if verbose && (1..=3).contains(&c) {
            println!(
                "query {} (class {c}): netstack {ours:?} hickory {theirs:?}",
                f.display()
            );
        }
        q_counts[c] += 1;
        let ours = dns_answer_addresses(&msg);
        let theirs = hickory_answer(&msg);
        let c = classify(&ours, &theirs);
        if verbose && (1..=3).contains(&c) {
            println!(
                "answer {} (class {c}): netstack {ours:?} hickory {theirs:?}",
                f.display()
            );
        }
        a_counts[c] += 1;
    }
    println!("{} messages from {dir}:", files.len());
    for (what, c) in [("as a query", q_counts), ("as an answer", a_counts)] {
        println!(
            "  {what}: both accept, same result {}; both accept, different result {}; only netstack accepts {}; only hickory accepts {}; both reject {}",
            c[0], c[1], c[2], c[3], c[4]
        );
    }
}

/// 0 same, 1 different, 2 only ours, 3 only hickory, 4 neither.
fn classify<T: PartialEq>(ours: &Option<T>, theirs: &Option<T>) -> usize {
    match (ours, theirs) {
        (Some(a), Some(b)) if a == b => 0,
        (Some(_), Some(_)) => 1,
        (Some(_), None) => 2,
        (None, Some(_)) => 3,
        (None, None) => 4,
    }
}

//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).
//!
//! The DNS code and the TLS ClientHello parser are crate-private; these thin wrappers and
//! re-exports let `fuzz/fuzz_targets/dns.rs` and `tls_client_hello.rs` drive exactly the
//! functions the datapath calls, over hostile bytes. Everything else the fuzzer
//! needs (whole-frame handling) is the public [`crate::Netstack`] API. Nothing here opens a
//! socket or keeps state.

use std::net::IpAddr;

use crate::dns;
use crate::gate::FlowGate;

pub use crate::tls::{parse_client_hello, ClientHello, HelloError, MAX_CLIENT_HELLO};

/// The first question of a DNS query, as the interception path sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct DnsQuestion {
    /// Query id.
    pub id: u16,
    /// Lower-case name, dot-separated, no trailing dot.
    pub name: String,
    /// Query type.
    pub qtype: u16,
    /// Offset just past the question.
    pub question_end: usize,
}

/// Record type A.
pub const DNS_TYPE_A: u16 = dns::TYPE_A;
/// Record type AAAA.
pub const DNS_TYPE_AAAA: u16 = dns::TYPE_AAAA;

/// Parses the first question of a query (what `intercept_dns` and DNS over TCP do).
pub fn dns_parse_query(msg: &[u8]) -> Option<DnsQuestion> {
    dns::parse_query(msg).map(|q| DnsQuestion {
        id: q.id,
        name: q.name,
        qtype: q.qtype,
        question_end: q.question_end,
    })
}

/// Builds a local answer to `msg` (which [`dns_parse_query`] accepted) with `rcode` and
/// `answers`: what the guest gets for the host alias, a denied name or no upstream.
/// `None` if `msg` is not a query.
pub fn dns_local_answer(msg: &[u8], rcode: u8, answers: &[IpAddr]) -> Option<Vec<u8>> {
    let q = dns::parse_query(msg)?;
    Some(dns::local_answer(msg, &q, rcode, answers))
}

/// The asked name and A/AAAA addresses of an upstream answer.
pub fn dns_answer_addresses(msg: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    dns::answer_addresses(msg)
}

/// Rebind-protection filtering of an upstream answer against `gate`: name, addresses and
/// whether the answer may reach the guest.
pub fn dns_judge_answer(msg: &[u8], gate: &dyn FlowGate) -> Option<(String, Vec<IpAddr>, bool)> {
    dns::judge_answer(msg, gate)
}

//! DNS interception for queries to the gateway (RFC 1035 message format).
//!
//! Owns the minimal parsing we need: the first question of a query (to answer the host
//! alias locally and to ask the flow gate), local answers (alias, REFUSED, SERVFAIL),
//! and reading A/AAAA records out of upstream answers so later connections can be
//! attributed to the domain they were resolved from. Never follows compression loops (a
//! pointer must jump back to before where the name it continues began, past the header),
//! refuses labels containing `.` (the dotted name must mean the same labels the resolver
//! sees) and never reads past the message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// DNS header length.
const HDR: usize = 12;
/// Record type A.
pub(crate) const TYPE_A: u16 = 1;
/// Record type AAAA.
pub(crate) const TYPE_AAAA: u16 = 28;
/// RCODE SERVFAIL.
pub(crate) const RCODE_SERVFAIL: u8 = 2;
/// RCODE REFUSED.
pub(crate) const RCODE_REFUSED: u8 = 5;
/// TTL of local answers.
const LOCAL_TTL: u32 = 60;

/// The first question of a query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Query {
    pub id: u16,
    /// Lower-case, dot-separated, no trailing dot.
    pub name: String,
    pub qtype: u16,
    /// Offset just past the question (QTYPE and QCLASS included).
    pub question_end: usize,
}

/// Reads a (possibly compressed) name at `off`; returns it and the offset after it in
/// the original position.
///
/// A compression pointer refers to a prior occurrence of a name (RFC 1035 §4.1.4), so it is
/// followed only if it lands past the header and before the start of the labels it
/// continues: every jump goes strictly backwards, which rules out loops, and a question copied
/// into a local answer (same offsets) still means the same name.
fn read_name(msg: &[u8], mut off: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    let mut hops = 0;
    let mut before = off;
    loop {
        let len = *msg.get(off)? as usize;
        if len & 0xc0 == 0xc0 {
            let lo = *msg.get(off + 1)? as usize;
            end.get_or_insert(off + 2);
            hops += 1;
            let target = ((len & 0x3f) << 8) | lo;
            if hops > 16 || target < HDR || target >= before {
                return None;
            }
            before = target;
            off = target;
            continue;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        if len == 0 {
            end.get_or_insert(off + 1);
            break;
        }
        let label = msg.get(off + 1..off + 1 + len)?;
        // A `.` inside a label would make the dotted name we judge differ from the name the
        // upstream resolves (`a.b` as one label is not `a` under `b`); no resolver sends one.
        if label.contains(&b'.') {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            name.push(char::from(b.to_ascii_lowercase()));
        }
        if name.len() > 255 {
            return None;
        }
        off += 1 + len;
    }
    Some((name, end?))
}

/// Parses the first question of a standard query.
pub(crate) fn parse_query(msg: &[u8]) -> Option<Query> {
    if msg.len() < HDR {
        return None;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if flags & 0x8000 != 0 || qdcount == 0 {
        return None;
    }
    let (name, off) = read_name(msg, HDR)?;
    let q = msg.get(off..off + 4)?;
    Some(Query {
        id,
        name,
        qtype: u16::from_be_bytes([q[0], q[1]]),
        question_end: off + 4,
    })
}

/// Builds a response to `query` (the original message) with `rcode` and the given
/// addresses as answers of the query's type.
pub(crate) fn local_answer(query: &[u8], q: &Query, rcode: u8, answers: &[IpAddr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + 28 * answers.len());
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR=1, opcode 0, AA=1, RD copied, RA=1.
    let rd = query.get(2).map_or(0, |f| f & 0x01);
    out.push(0x84 | rd);
    out.push(0x80 | (rcode & 0x0f));
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[HDR..q.question_end]);
    for a in answers {
        out.extend_from_slice(&[0xc0, HDR as u8]);
        let (ty, data): (u16, Vec<u8>) = match a {
            IpAddr::V4(v) => (TYPE_A, v.octets().to_vec()),
            IpAddr::V6(v) => (TYPE_AAAA, v.octets().to_vec()),
        };
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&LOCAL_TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// A/AAAA addresses in an answer, with the name that was asked for. Every answer record is
/// read (a record takes at least 11 bytes, so the message length bounds the loop): an
/// address the filter did not see must not reach the guest. `None` if any of them cannot be
/// read.
pub(crate) fn answer_addresses(msg: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    if msg.len() < HDR || msg[2] & 0x80 == 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    if qdcount != 1 {
        return None;
    }
    let (qname, mut off) = read_name(msg, HDR)?;
    off += 4;
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        let (_, o) = read_name(msg, off)?;
        let rr = msg.get(o..o + 10)?;
        let ty = u16::from_be_bytes([rr[0], rr[1]]);
        let rdlen = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
        let data = msg.get(o + 10..o + 10 + rdlen)?;
        match (ty, rdlen) {
            (TYPE_A, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                addrs.push(IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {}
        }
        off = o + 10 + rdlen;
    }
    Some((qname, addrs))
}

/// An upstream answer judged for rebind protection: the name asked for, its A/AAAA
/// addresses and whether `gate` allows every one of them (a deny drops the whole answer).
/// `None` if the message is not a readable answer; the caller drops it (fails closed).
pub(crate) fn judge_answer(
    msg: &[u8],
    gate: &dyn crate::gate::FlowGate,
) -> Option<(String, Vec<IpAddr>, bool)> {
    let (name, addrs) = answer_addresses(msg)?;
    let allowed = addrs.iter().all(|a| gate.check_dns_answer(&name, *a).allow);
    Some((name, addrs, allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` with type `qtype`.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0u8; 12];
        m[0..2].copy_from_slice(&id.to_be_bytes());
        m[2] = 0x01;
        m[5] = 1;
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn query_roundtrip_through_local_answer() {
        let m = query(0x1234, "Host.RingFence.Internal", TYPE_A);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.name, "host.ringfence.internal");
        assert_eq!(q.qtype, TYPE_A);
        let ip: IpAddr = "172.16.0.1".parse().unwrap();
        let a = local_answer(&m, &q, 0, &[ip]);
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        let (name, addrs) = answer_addresses(&a).unwrap();
        assert_eq!(name, "host.ringfence.internal");
        assert_eq!(addrs, vec![ip]);
    }

    /// Found by the `dns` fuzz target: a question whose name is a pointer into the header
    /// parsed, and the local answer (new header, question copied) then named something else.
    #[test]
    fn pointers_into_the_header_are_rejected() {
        let m = [
            0x00, 0x01, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x0c, 0xc0, 0x01,
            0x00, 0x00, 0x00, 0x01,
        ];
        assert!(parse_query(&m).is_none());
    }

    /// Found by comparing the `dns` fuzz corpus with hickory-proto: a label holding a `.`
    /// (`x` + `u.zz` + `test`) was read as `x.u.zz.test`, a name of four labels, so the
    /// policy judged another name than the one the upstream would resolve.
    #[test]
    fn dots_inside_labels_are_rejected() {
        let mut m = query(1, "x", TYPE_A);
        m.truncate(12);
        m.extend_from_slice(&[
            1, b'x', 4, b'u', b'.', b'z', b'z', 4, b't', b'e', b's', b't', 0,
        ]);
        m.extend_from_slice(&[0, 1, 0, 1]);
        assert!(parse_query(&m).is_none());
        let mut a = m.clone();
        a[2] |= 0x80;
        assert!(answer_addresses(&a).is_none());
        assert!(parse_query(&query(1, "x.u.zz.test", TYPE_A)).is_some());
    }

    #[test]
    fn pointers_must_jump_backwards() {
        // Pointer into its own name (loop through a label).
        let mut m = query(1, "a", TYPE_A);
        m.truncate(12);
        m.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
        assert!(parse_query(&m).is_none());
        // Forward pointer.
        let mut m = query(1, "a", TYPE_A);
        m.truncate(12);
        m.extend_from_slice(&[0xc0, 20, 0, 1, 0, 1, 0, 0, 1, b'b', 0]);
        assert!(parse_query(&m).is_none());
        // An answer whose names point back at the question, as resolvers write them.
        let mut a = query(2, "x.example", TYPE_A);
        a[2] |= 0x80;
        a[7] = 2;
        a.extend_from_slice(&[0xc0, 14, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        a.extend_from_slice(&[
            1, b'w', 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 2,
        ]);
        let (name, addrs) = answer_addresses(&a).unwrap();
        assert_eq!(name, "x.example");
        assert_eq!(addrs.len(), 2);
    }

    #[test]
    fn compression_loops_and_truncation_are_rejected() {
        let mut m = query(1, "a.b", TYPE_A);
        // Replace the name with a pointer to itself.
        m.truncate(12);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(parse_query(&m).is_none());
        assert!(parse_query(&[0u8; 5]).is_none());
        let m = query(1, "example.com", TYPE_A);
        assert!(parse_query(&m[..m.len() - 2]).is_none());
    }
}

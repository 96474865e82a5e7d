//! A tiny static DNS responder for tests: answers A/AAAA queries from a fixed name → address
//! map and NXDOMAIN otherwise. UDP only, one question per query (RFC 1035 §4.1).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

/// Query types we answer.
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// Reads the question name at `pos`, returning it (lower case, dotted) and the offset after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression is not used in questions
        }
        let label = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    Some((labels.join("."), pos))
}

/// Builds the response to `query` from `zone`, or `None` for something that is not a query.
pub fn answer(query: &[u8], zone: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let (name, end) = read_name(query, 12)?;
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let question = query.get(12..end + 4)?;
    let addrs: Vec<&IpAddr> = zone
        .get(&name)
        .map(|v| {
            v.iter()
                .filter(|a| match a {
                    IpAddr::V4(_) => qtype == TYPE_A,
                    IpAddr::V6(_) => qtype == TYPE_AAAA,
                })
                .collect()
        })
        .unwrap_or_default();
    let known = zone.contains_key(&name);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode 0, AA, RD copied; RA; RCODE 0 or 3 (NXDOMAIN).
    out.push(0x84 | (query[2] & 0x01));
    out.push(if known { 0x80 } else { 0x83 });
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for a in addrs {
        out.extend_from_slice(&[0xc0, 12]);
        let (t, data): (u16, Vec<u8>) = match a {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// Parses `name=ip[,ip]` entries into a zone.
pub fn parse_zone(entries: &[String]) -> Result<HashMap<String, Vec<IpAddr>>, String> {
    let mut zone = HashMap::new();
    for e in entries {
        let (name, ips) = e
            .split_once('=')
            .ok_or_else(|| format!("bad zone entry {e:?}: expected name=ip[,ip]"))?;
        let list = ips
            .split(',')
            .map(|ip| {
                ip.parse::<IpAddr>()
                    .map_err(|_| format!("bad address in {e:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        zone.insert(name.to_ascii_lowercase(), list);
    }
    Ok(zone)
}

/// Serves `zone` on `sock` until `idle` passes without a query; returns how many it answered.
pub fn serve(
    sock: &UdpSocket,
    zone: &HashMap<String, Vec<IpAddr>>,
    idle: Duration,
) -> io::Result<u64> {
    sock.set_read_timeout(Some(idle))?;
    let mut buf = [0u8; 1500];
    let mut n = 0;
    loop {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                if let Some(resp) = answer(&buf[..len], zone) {
                    sock.send_to(&resp, from)?;
                    n += 1;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(n)
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn answers_known_names_and_nxdomain_otherwise() {
        let zone = parse_zone(&["api.test=203.0.113.10".into()]).unwrap();
        let r = answer(&query("API.test", TYPE_A), &zone).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[203, 0, 113, 10]);
        let r = answer(&query("evil.test", TYPE_A), &zone).unwrap();
        assert_eq!(r[3] & 0x0f, 3, "NXDOMAIN");
        assert!(
            answer(&[0u8; 5], &zone).is_none(),
            "short packets are ignored"
        );
    }
}

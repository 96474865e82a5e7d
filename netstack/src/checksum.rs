//! Internet checksum (RFC 1071) over scattered buffers.
//!
//! Owns the one's-complement arithmetic for L4 checksums whose payload lies in
//! guest RX buffers that we never gather into one slice. Never allocates.

use std::net::IpAddr;

/// Running one's-complement sum that accepts byte runs of any length and alignment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Checksum {
    sum: u64,
    /// Whether an odd number of bytes has been added so far.
    odd: bool,
}

impl Checksum {
    /// Starts an empty sum.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `data`, continuing at whatever byte parity the previous runs left.
    pub(crate) fn add(&mut self, data: &[u8]) {
        let mut part: u64 = 0;
        let chunks = data.chunks_exact(2);
        let rest = chunks.remainder();
        for c in chunks {
            part += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let Some(&b) = rest.first() {
            part += u64::from(b) << 8;
        }
        let folded = fold(part);
        // RFC 1071 §2(B): a run that starts at an odd offset contributes byte-swapped.
        self.sum += if self.odd {
            u64::from(folded.swap_bytes())
        } else {
            u64::from(folded)
        };
        if data.len() % 2 == 1 {
            self.odd = !self.odd;
        }
    }

    /// Adds the TCP/UDP pseudo-header (RFC 793 §3.1, RFC 8200 §8.1).
    pub(crate) fn add_pseudo(&mut self, src: &IpAddr, dst: &IpAddr, proto: u8, len: u32) {
        debug_assert!(!self.odd);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.add(&s.octets());
                self.add(&d.octets());
                self.add(&[0, proto]);
                self.add(&(len as u16).to_be_bytes());
            }
            _ => {
                self.add(&ip_octets16(src));
                self.add(&ip_octets16(dst));
                self.add(&len.to_be_bytes());
                self.add(&[0, 0, 0, proto]);
            }
        }
    }

    /// The final checksum field value (complemented; 0 is sent as 0xffff for UDP by callers).
    pub(crate) fn finish(self) -> u16 {
        !fold(self.sum)
    }
}

fn ip_octets16(ip: &IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            s += u64::from(w);
        }
        !fold(s)
    }

    #[test]
    fn split_runs_match_contiguous_sum() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 2, 3, 500, 999, 1000, 1001] {
            for split2 in [split, (split + 1).min(1001), 1001] {
                let mut c = Checksum::new();
                c.add(&data[..split]);
                c.add(&data[split..split2]);
                c.add(&data[split2..]);
                assert_eq!(c.finish(), reference(&data), "split {split}/{split2}");
            }
        }
    }
}

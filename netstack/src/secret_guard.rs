//! Placeholders of secrets on plaintext flows (issue 17 item 3): with TLS interception, the
//! guest holds a placeholder for each secret and only the proxy may swap in the value. A
//! placeholder leaving the guest on any flow the proxy does not see (plain TCP, UDP) is a
//! violation: the flow is reset or the datagram dropped, counted and logged.
//!
//! Scanning reads the guest's payload where it lies (guest memory, in the iovecs the send
//! uses): no copy but of the last [`PlaceholderGuard::token_len`] - 1 bytes of a flow, kept to
//! find a placeholder split between two segments. What this cannot promise: a guest racing
//! its own buffers between the scan and the kernel's copy, or splitting a placeholder across
//! an out-of-order boundary, gets a placeholder out; it never gets a value out (the guest never
//! has one), and the proxy still refuses that placeholder on every intercepted flow.

use std::fmt;

use memchr::memmem;

/// The placeholders of one VM's secrets.
pub struct PlaceholderGuard {
    prefix: Vec<u8>,
    tokens: Vec<Box<[u8]>>,
    len: usize,
}

impl fmt::Debug for PlaceholderGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaceholderGuard")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for PlaceholderGuard {
    fn eq(&self, other: &Self) -> bool {
        self.tokens == other.tokens
    }
}

impl Eq for PlaceholderGuard {}

impl PlaceholderGuard {
    /// A guard for `tokens`, which all start with `prefix` and have one length. `None` when
    /// there are no tokens or they break that rule.
    pub fn new(prefix: &[u8], tokens: Vec<Vec<u8>>) -> Option<Self> {
        let len = tokens.first()?.len();
        if prefix.is_empty()
            || tokens
                .iter()
                .any(|t| t.len() != len || !t.starts_with(prefix))
        {
            return None;
        }
        Some(PlaceholderGuard {
            prefix: prefix.to_vec(),
            tokens: tokens.into_iter().map(Vec::into_boxed_slice).collect(),
            len,
        })
    }

    /// The length of every placeholder.
    pub fn token_len(&self) -> usize {
        self.len
    }

    /// Whether `data` holds a whole placeholder.
    fn contains(&self, data: &[u8]) -> bool {
        memmem::find_iter(data, &self.prefix).any(|at| {
            data.get(at..at + self.len)
                .is_some_and(|t| self.tokens.iter().any(|k| **k == *t))
        })
    }

    /// Whether the stream `tail` (the flow's bytes just before) followed by `pieces` holds a
    /// placeholder.
    pub fn finds(&self, tail: &[u8], pieces: &[&[u8]]) -> bool {
        let keep = self.len - 1;
        let mut before: Vec<u8> = tail[tail.len().saturating_sub(keep)..].to_vec();
        for piece in pieces {
            if self.contains(piece) {
                return true;
            }
            // A placeholder across the boundary starts in the last `keep` bytes before it
            // and ends in the first `keep` after it.
            let mut junction = before.clone();
            junction.extend_from_slice(&piece[..piece.len().min(keep)]);
            if self.contains(&junction) {
                return true;
            }
            before.extend_from_slice(&piece[piece.len().saturating_sub(keep)..]);
            let excess = before.len().saturating_sub(keep);
            before.drain(..excess);
        }
        false
    }

    /// Moves `tail` on past the first `sent` bytes of `pieces` (what the host took).
    pub fn advance(&self, tail: &mut Vec<u8>, pieces: &[&[u8]], mut sent: usize) {
        let keep = self.len - 1;
        for piece in pieces {
            if sent == 0 {
                break;
            }
            let take = sent.min(piece.len());
            tail.extend_from_slice(&piece[take.saturating_sub(keep)..take]);
            sent -= take;
            let excess = tail.len().saturating_sub(keep);
            tail.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> PlaceholderGuard {
        PlaceholderGuard::new(b"rf_secret_", vec![b"rf_secret_0123456789abcdef".to_vec()]).unwrap()
    }

    #[test]
    fn a_placeholder_is_found_whole_and_across_any_split() {
        let g = guard();
        let token = b"rf_secret_0123456789abcdef";
        let mut stream = b"GET /?k=".to_vec();
        stream.extend_from_slice(token);
        stream.extend_from_slice(b" HTTP/1.1\r\n");
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let pieces = [&stream[..a], &stream[a..b], &stream[b..]];
                assert!(g.finds(&[], &pieces), "split {a} {b}");
            }
            // Across segments: the first part already sent, kept in the tail.
            let mut tail = Vec::new();
            g.advance(&mut tail, &[&stream[..a]], a);
            let found_before = g.finds(&[], &[&stream[..a]]);
            assert!(
                found_before || g.finds(&tail, &[&stream[a..]]),
                "segment split {a}"
            );
        }
        assert!(!g.finds(b"rf_secret_0123", &[b"456789abcdeX"]));
        assert!(!g.finds(&[], &[b"rf_secret_ffffffffffffffff"]));
    }

    #[test]
    fn the_tail_follows_only_what_was_sent() {
        let g = guard();
        let mut tail = Vec::new();
        g.advance(&mut tail, &[b"abc", b"rf_secret_01234"], 8);
        assert_eq!(tail, b"abcrf_se");
        g.advance(&mut tail, &[&[b'x'; 40][..]], 40);
        assert_eq!(tail.len(), g.token_len() - 1);
        assert!(PlaceholderGuard::new(b"p", vec![b"p1".to_vec(), b"p22".to_vec()]).is_none());
        assert!(PlaceholderGuard::new(b"p", vec![]).is_none());
    }
}

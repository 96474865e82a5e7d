//! A reversed-label trie (`com` → `example` → `api`) from domain names to rule-set ids.
//!
//! Each node carries two precomputed sets: `suffix`, the suffix rules of the node and all its
//! ancestors (what a name *below* this node matches), and `exact`, that plus the exact-domain
//! rules of the node itself (what a name ending *at* this node matches). A lookup walks the
//! labels right to left and returns one of them, so it never merges sets and never allocates.
//! Children are found through a hash map with a small multiplicative hasher; its keys come
//! from the policy, so a guest can only probe it, not fill it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::candidates::{CandidateRef, NO_CANDIDATES};

/// A fast hasher for short byte strings (labels).
#[derive(Default, Clone, Copy)]
pub(crate) struct LabelHasher(u64);

impl Hasher for LabelHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Children = HashMap<Box<[u8]>, u32, BuildHasherDefault<LabelHasher>>;

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    suffix: CandidateRef,
    exact: CandidateRef,
}

/// One edge of the trie in the open-addressing table.
#[derive(Debug, Clone, Copy)]
struct Edge {
    hash: u64,
    parent: u32,
    /// `EMPTY_EDGE` for a free slot.
    child: u32,
    label_start: u32,
    label_len: u32,
}

const EMPTY_EDGE: u32 = u32::MAX;
const MIX: u64 = 0x517c_c1b7_2722_0a95;

/// Hash of a label that ignores ASCII case (valid labels only: letters, digits, `-`, `_`;
/// setting bit 5 of each byte maps `A-Z` onto `a-z` and changes no other valid byte into
/// another valid byte), combined with the parent node.
#[inline]
fn edge_hash(parent: u32, label: &[u8]) -> u64 {
    let mut h = u64::from(parent).wrapping_mul(MIX) ^ label.len() as u64;
    for chunk in label.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        let v = u64::from_le_bytes(w) | 0x2020_2020_2020_2020;
        h = (h.rotate_left(5) ^ v).wrapping_mul(MIX);
    }
    h ^ (h >> 29)
}

/// The compiled name trie.
#[derive(Debug, Clone)]
pub(crate) struct DomainTrie {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    mask: usize,
    labels: Vec<u8>,
}

/// Collects rules per name before the sets are interned.
#[derive(Default)]
pub(crate) struct DomainTrieBuilder {
    nodes: Vec<(Children, Vec<u32>, Vec<u32>)>,
}

impl DomainTrieBuilder {
    /// An empty builder (just the root).
    pub(crate) fn new() -> Self {
        Self {
            nodes: vec![Default::default()],
        }
    }

    fn node_for(&mut self, name: &str) -> usize {
        let mut node = 0usize;
        for label in name.rsplit('.') {
            let next = self.nodes.len() as u32;
            let child = *self.nodes[node]
                .0
                .entry(label.as_bytes().into())
                .or_insert(next);
            if child == next {
                self.nodes.push(Default::default());
            }
            node = child as usize;
        }
        node
    }

    /// Records that rule `rule` matches exactly `name` (normalised).
    pub(crate) fn add_exact(&mut self, name: &str, rule: u32) {
        let n = self.node_for(name);
        self.nodes[n].2.push(rule);
    }

    /// Records that rule `rule` matches `name` and all names below it.
    pub(crate) fn add_suffix(&mut self, name: &str, rule: u32) {
        let n = self.node_for(name);
        self.nodes[n].1.push(rule);
    }

    /// Interns each node's sets (inherited suffix rules, plus exact rules for `exact`) through
    /// `intern`.
    pub(crate) fn finish(self, intern: &mut dyn FnMut(Vec<u32>) -> CandidateRef) -> DomainTrie {
        let mut nodes: Vec<Node> = vec![Node::default(); self.nodes.len()];
        let mut children = Vec::with_capacity(self.nodes.len());
        let mut parts = Vec::with_capacity(self.nodes.len());
        for (c, suffix, exact) in self.nodes {
            children.push(c);
            parts.push((suffix, exact));
        }
        // Depth-first from the root, carrying the ancestors' suffix rules.
        let mut stack: Vec<(usize, Vec<u32>)> = vec![(0, Vec::new())];
        while let Some((n, mut inherited)) = stack.pop() {
            inherited.extend_from_slice(&parts[n].0);
            let (suffix, exact) = if n == 0 {
                (NO_CANDIDATES, NO_CANDIDATES)
            } else {
                let exact: Vec<u32> = inherited.iter().chain(&parts[n].1).copied().collect();
                (intern(inherited.clone()), intern(exact))
            };
            nodes[n].suffix = suffix;
            nodes[n].exact = exact;
            for child in children[n].values() {
                stack.push((*child as usize, inherited.clone()));
            }
        }
        let edge_count: usize = children.iter().map(|c| c.len()).sum();
        let size = (edge_count * 2).next_power_of_two().max(8);
        let free = Edge {
            hash: 0,
            parent: 0,
            child: EMPTY_EDGE,
            label_start: 0,
            label_len: 0,
        };
        let mut trie = DomainTrie {
            nodes,
            edges: vec![free; size],
            mask: size - 1,
            labels: Vec::new(),
        };
        for (parent, c) in children.iter().enumerate() {
            for (label, child) in c {
                let hash = edge_hash(parent as u32, label);
                let mut slot = hash as usize & trie.mask;
                while trie.edges[slot].child != EMPTY_EDGE {
                    slot = (slot + 1) & trie.mask;
                }
                trie.edges[slot] = Edge {
                    hash,
                    parent: parent as u32,
                    child: *child,
                    label_start: trie.labels.len() as u32,
                    label_len: label.len() as u32,
                };
                trie.labels.extend_from_slice(label);
            }
        }
        trie
    }
}

impl DomainTrie {
    /// The child of `parent` for `label` (any ASCII case).
    #[inline]
    fn child(&self, parent: u32, label: &[u8]) -> Option<u32> {
        let hash = edge_hash(parent, label);
        let mut slot = hash as usize & self.mask;
        loop {
            let e = &self.edges[slot];
            if e.child == EMPTY_EDGE {
                return None;
            }
            if e.hash == hash && e.parent == parent {
                let start = e.label_start as usize;
                let stored = &self.labels[start..start + e.label_len as usize];
                if stored.eq_ignore_ascii_case(label) {
                    return Some(e.child);
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// The candidate rules a valid name (any ASCII case, no trailing dot) matches.
    #[inline]
    pub(crate) fn lookup(&self, name: &[u8]) -> CandidateRef {
        let mut node = 0u32;
        for label in name.rsplit(|b| *b == b'.') {
            match self.child(node, label) {
                Some(child) => node = child,
                None => return self.nodes[node as usize].suffix,
            }
        }
        self.nodes[node as usize].exact
    }

    /// Number of nodes.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Bytes of nodes, edge table and labels.
    pub(crate) fn bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<Node>()
            + self.edges.len() * std::mem::size_of::<Edge>()
            + self.labels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_suffix_sets() {
        let mut lists: Vec<Vec<u32>> = Vec::new();
        let mut b = DomainTrieBuilder::new();
        b.add_suffix("example.com", 0);
        b.add_exact("api.example.com", 1);
        b.add_suffix("api.example.com", 2);
        b.add_exact("example.com", 3);
        let trie = b.finish(&mut |mut rules| {
            rules.sort_unstable();
            lists.push(rules);
            lists.len() as u32
        });
        let all = |name: &str| match trie.lookup(name.as_bytes()) {
            NO_CANDIDATES => Vec::new(),
            id => lists[id as usize - 1].clone(),
        };
        assert_eq!(all("example.com"), vec![0, 3]);
        assert_eq!(all("EXAMPLE.Com"), vec![0, 3]);
        assert_eq!(all("Www.example.com"), vec![0]);
        assert_eq!(all("www.example.com"), vec![0]);
        assert_eq!(all("api.example.com"), vec![0, 1, 2]);
        assert_eq!(all("v1.api.example.com"), vec![0, 2]);
        assert_eq!(all("com"), Vec::<u32>::new());
        assert_eq!(all("example.org"), Vec::<u32>::new());
    }
}

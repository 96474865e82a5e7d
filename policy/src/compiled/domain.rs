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

#[derive(Debug, Clone, Default)]
struct Node {
    children: Children,
    suffix: CandidateRef,
    exact: CandidateRef,
}

/// The compiled name trie.
#[derive(Debug, Clone)]
pub(crate) struct DomainTrie {
    nodes: Vec<Node>,
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
        let mut nodes: Vec<Node> = Vec::with_capacity(self.nodes.len());
        let mut parts = Vec::with_capacity(self.nodes.len());
        for (children, suffix, exact) in self.nodes {
            nodes.push(Node {
                children,
                suffix: NO_CANDIDATES,
                exact: NO_CANDIDATES,
            });
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
            for child in nodes[n].children.values() {
                stack.push((*child as usize, inherited.clone()));
            }
        }
        DomainTrie { nodes }
    }
}

impl DomainTrie {
    /// The candidate rules a normalised name matches.
    #[inline]
    pub(crate) fn lookup(&self, name: &[u8]) -> CandidateRef {
        let mut node = &self.nodes[0];
        for label in name.rsplit(|b| *b == b'.') {
            match node.children.get(label) {
                Some(child) => node = &self.nodes[*child as usize],
                None => return node.suffix,
            }
        }
        node.exact
    }

    /// Number of nodes.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
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
        assert_eq!(all("www.example.com"), vec![0]);
        assert_eq!(all("api.example.com"), vec![0, 1, 2]);
        assert_eq!(all("v1.api.example.com"), vec![0, 2]);
        assert_eq!(all("com"), Vec::<u32>::new());
        assert_eq!(all("example.org"), Vec::<u32>::new());
    }
}

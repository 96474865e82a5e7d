//! A multibit prefix trie (stride 8, leaf-pushed) from IP prefixes to rule-set ids, used once
//! for IPv4 and once for IPv6. Keys are left-aligned in a `u128` (IPv4 in the top 32 bits), so
//! one implementation serves both families.
//!
//! Every node has 256 entries; an entry is either a leaf (the candidate set of rules whose
//! destination covers every address under it, including group and `*` rules) or a child node.
//! Prefixes whose length is not a multiple of 8 are expanded over the entries they cover
//! (controlled prefix expansion). After building, each node with at most [`MAX_RUNS`] runs of
//! equal entries is run-length compressed to `[runs, start_0..start_n, entry_0..entry_n]` in
//! one flat `u32` array, and a lookup counts the run starts at or below its slot (a short,
//! branch-free scan); busier nodes stay a direct `[0, entry_0..entry_255]` table. Most nodes
//! have 1 to 5 runs, so a 10 000-rule trie takes a few hundred kilobytes instead of megabytes
//! and lookups stay in cache.
//! A lookup visits at most 4 (IPv4) or 16 (IPv6) nodes and never allocates.

use std::collections::HashMap;

use super::candidates::{CandidateRef, NO_CANDIDATES};

const LEAF: u32 = 1 << 31;
/// Nodes with more runs than this are stored as direct tables.
const MAX_RUNS: usize = 16;
const STRIDE: u32 = 8;

/// What a prefix stands for: a rule index or a group (bit of a `GroupSet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Rule `n` names this prefix.
    Rule(u32),
    /// The prefix belongs to the group with this bit.
    Group(u8),
}

/// The tags covering an address range: rule indices (sorted, unique) and raw group bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct TagSet {
    /// Rules whose CIDR covers the range.
    pub rules: Vec<u32>,
    /// Groups (raw, before membership rules) whose ranges cover the range.
    pub groups: u8,
}

impl TagSet {
    fn with(&self, tags: impl Iterator<Item = Tag>) -> TagSet {
        let mut out = self.clone();
        for t in tags {
            match t {
                Tag::Rule(r) => out.rules.push(r),
                Tag::Group(g) => out.groups |= g,
            }
        }
        out.rules.sort_unstable();
        out.rules.dedup();
        out
    }
}

/// A prefix to insert: left-aligned key (host bits clear), length, tag.
pub(crate) type Prefix = (u128, u8, Tag);

/// The trie, run-length compressed (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct PrefixTrie {
    /// Node blocks; child entries hold the offset of the child's block.
    blob: Vec<u32>,
    nodes: usize,
}

/// Compresses expanded nodes into blocks; node 0 stays at offset 0.
fn compress(nodes: &[[u32; 256]]) -> Vec<u32> {
    let runs = |n: &[u32; 256]| {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for (slot, e) in n.iter().enumerate() {
            if out.last().map(|r| r.1) != Some(*e) {
                out.push((slot as u32, *e));
            }
        }
        out
    };
    let all: Vec<Vec<(u32, u32)>> = nodes.iter().map(runs).collect();
    let mut offsets = Vec::with_capacity(all.len());
    let mut next = 0u32;
    for r in &all {
        offsets.push(next);
        next += 1 + if r.len() > MAX_RUNS {
            256
        } else {
            2 * r.len() as u32
        };
    }
    let target = |e: u32| {
        if e & LEAF != 0 {
            e
        } else {
            offsets[e as usize]
        }
    };
    let mut blob = Vec::with_capacity(next as usize);
    for (node, r) in nodes.iter().zip(&all) {
        if r.len() > MAX_RUNS {
            blob.push(0);
            blob.extend(node.iter().map(|e| target(*e)));
        } else {
            blob.push(r.len() as u32);
            blob.extend(r.iter().map(|(start, _)| *start));
            blob.extend(r.iter().map(|(_, e)| target(*e)));
        }
    }
    blob
}

fn slot(key: u128, depth: u32) -> usize {
    ((key << depth) >> (128 - STRIDE)) as usize
}

struct Builder<'f> {
    nodes: Vec<[u32; 256]>,
    leaf_of: &'f mut dyn FnMut(&TagSet) -> CandidateRef,
    cache: HashMap<TagSet, CandidateRef>,
}

impl Builder<'_> {
    fn leaf(&mut self, tags: &TagSet) -> u32 {
        if let Some(id) = self.cache.get(tags) {
            return LEAF | id;
        }
        let id = (self.leaf_of)(tags);
        self.cache.insert(tags.clone(), id);
        LEAF | id
    }

    /// Builds the node at `depth` for `prefixes` (all longer than `depth`, sorted by key, all
    /// sharing the path above `depth`), under the tags inherited from shorter prefixes.
    fn node(&mut self, prefixes: &[Prefix], depth: u32, inherited: &TagSet) -> u32 {
        let index = self.nodes.len();
        self.nodes.push([0; 256]);
        let limit = depth + STRIDE;
        let mut covering: Vec<Vec<Tag>> = vec![Vec::new(); 256];
        let mut deep: Vec<Prefix> = Vec::new();
        for p in prefixes {
            let len = u32::from(p.1);
            if len <= limit {
                let base = slot(p.0, depth);
                let count = 1usize << (limit - len);
                for tags in &mut covering[base..base + count] {
                    tags.push(p.2);
                }
            } else {
                deep.push(*p);
            }
        }
        let plain = self.leaf(inherited);
        let mut start = 0;
        for (s, tags) in covering.iter().enumerate() {
            let end = start + deep[start..].partition_point(|p| slot(p.0, depth) == s);
            let below = &deep[start..end];
            start = end;
            let entry = match (tags.is_empty(), below.is_empty()) {
                (true, true) => plain,
                (false, true) => {
                    let t = inherited.with(tags.iter().copied());
                    self.leaf(&t)
                }
                (true, false) => self.node(below, limit, inherited),
                (false, false) => {
                    let t = inherited.with(tags.iter().copied());
                    self.node(below, limit, &t)
                }
            };
            self.nodes[index][s] = entry;
        }
        index as u32
    }
}

impl PrefixTrie {
    /// Builds a trie from `prefixes`; `leaf_of` turns the tags covering a leaf into a set id
    /// (it is called once per distinct tag set).
    pub(crate) fn build(
        mut prefixes: Vec<Prefix>,
        leaf_of: &mut dyn FnMut(&TagSet) -> CandidateRef,
    ) -> Self {
        prefixes.sort_by_key(|p| (p.0, p.1));
        // Zero-length prefixes cover everything: they are inherited by the root.
        let root_tags = TagSet::default().with(prefixes.iter().filter(|p| p.1 == 0).map(|p| p.2));
        prefixes.retain(|p| p.1 > 0);
        let mut b = Builder {
            nodes: Vec::new(),
            leaf_of,
            cache: HashMap::new(),
        };
        b.node(&prefixes, 0, &root_tags);
        Self {
            blob: compress(&b.nodes),
            nodes: b.nodes.len(),
        }
    }

    /// The set id of the leaf covering `key`.
    #[inline]
    pub(crate) fn lookup(&self, key: u128) -> CandidateRef {
        let mut node = 0usize;
        let mut depth = 0u32;
        while depth < 128 {
            let s = slot(key, depth);
            let runs = self.blob[node] as usize;
            let entry = if runs == 0 {
                self.blob[node + 1 + s]
            } else {
                let starts = &self.blob[node + 1..node + 1 + runs];
                // starts[0] == 0, so at least one start is <= s; counting (rather than a
                // binary search) keeps this short scan free of branches.
                let run = starts.iter().filter(|start| **start as usize <= s).count() - 1;
                self.blob[node + 1 + runs + run]
            };
            if entry & LEAF != 0 {
                return entry & !LEAF;
            }
            node = entry as usize;
            depth += STRIDE;
        }
        NO_CANDIDATES
    }

    /// Number of nodes.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes
    }

    /// Bytes of the compressed node blocks.
    pub(crate) fn bytes(&self) -> usize {
        self.blob.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> u128 {
        u128::from(u32::from_be_bytes([a, b, c, d])) << 96
    }

    #[test]
    fn longest_and_shorter_prefixes_are_all_collected() {
        let prefixes = vec![
            (v4(10, 0, 0, 0), 8, Tag::Rule(0)),
            (v4(10, 1, 0, 0), 16, Tag::Rule(1)),
            (v4(10, 1, 2, 0), 23, Tag::Rule(2)),
            (v4(10, 1, 2, 3), 32, Tag::Rule(3)),
            (0, 0, Tag::Rule(4)),
            (v4(192, 168, 0, 0), 16, Tag::Group(2)),
        ];
        let mut seen: Vec<TagSet> = Vec::new();
        let mut leaf_of = |t: &TagSet| {
            seen.push(t.clone());
            (seen.len() - 1) as CandidateRef
        };
        let trie = PrefixTrie::build(prefixes, &mut leaf_of);
        let at = |k| seen[trie.lookup(k) as usize].clone();
        assert_eq!(at(v4(10, 1, 2, 3)).rules, vec![0, 1, 2, 3, 4]);
        assert_eq!(at(v4(10, 1, 3, 9)).rules, vec![0, 1, 2, 4]);
        assert_eq!(at(v4(10, 1, 4, 0)).rules, vec![0, 1, 4]);
        assert_eq!(at(v4(10, 2, 0, 0)).rules, vec![0, 4]);
        assert_eq!(at(v4(11, 0, 0, 0)).rules, vec![4]);
        assert_eq!(at(v4(192, 168, 7, 7)).groups, 2);
        assert_eq!(at(v4(192, 169, 0, 0)).groups, 0);
    }
}

//! Candidate sets: the rules a destination (an address leaf or a name) can match, stored
//! sparse or dense depending on their size.
//!
//! Most destinations are covered by few rules (their own CIDRs and names, the groups they are
//! in, `*`): those keep a short sorted list, scanned in order with an early exit on the first
//! rule whose direction, protocol and ports admit the flow. Large sets (more than
//! [`SPARSE_MAX`] rules) are interned as bitsets (`bitset`) and scanned by ANDing them with the
//! protocol/direction and port-class sets, so a decision never walks a long list. Keeping the
//! common case sparse keeps the working set small enough to stay in cache at 10 000 rules.

use std::collections::HashMap;

use super::bitset::{SetArena, SetArenaBuilder, SetId};

/// Longest candidate list kept sparse; longer ones become bitsets.
pub(crate) const SPARSE_MAX: usize = 24;

/// Marks a candidate reference as dense (a [`SetId`] in the low bits).
const DENSE: u32 = 1 << 30;

/// A reference to a candidate set: a sparse list index, or [`DENSE`] | bitset id.
pub(crate) type CandidateRef = u32;

/// The empty candidate set.
pub(crate) const NO_CANDIDATES: CandidateRef = 0;

/// Sparse lists in one flat array.
#[derive(Debug, Clone)]
pub(crate) struct CandidateStore {
    lists: Vec<u32>,
    spans: Vec<(u32, u32)>,
    /// How many interned candidate sets were stored dense.
    dense: usize,
}

/// Builds a [`CandidateStore`], deduplicating lists.
pub(crate) struct CandidateStoreBuilder {
    store: CandidateStore,
    index: HashMap<Vec<u32>, CandidateRef>,
}

impl CandidateStoreBuilder {
    /// A store holding only the empty list ([`NO_CANDIDATES`]).
    pub(crate) fn new() -> Self {
        let mut index = HashMap::new();
        index.insert(Vec::new(), NO_CANDIDATES);
        Self {
            store: CandidateStore {
                lists: Vec::new(),
                spans: vec![(0, 0)],
                dense: 0,
            },
            index,
        }
    }

    /// Interns the candidate set of `rules` (any order, duplicates allowed): sparse when short,
    /// a bitset in `arena` otherwise.
    pub(crate) fn intern(
        &mut self,
        mut rules: Vec<u32>,
        arena: &mut SetArenaBuilder,
    ) -> CandidateRef {
        rules.sort_unstable();
        rules.dedup();
        if rules.len() > SPARSE_MAX {
            self.store.dense += 1;
            return DENSE | arena.intern_rules(rules);
        }
        if let Some(r) = self.index.get(&rules) {
            return *r;
        }
        let s = &mut self.store;
        let id = s.spans.len() as CandidateRef;
        s.spans.push((s.lists.len() as u32, rules.len() as u32));
        s.lists.extend_from_slice(&rules);
        self.index.insert(rules, id);
        id
    }

    /// Finishes building.
    pub(crate) fn finish(self) -> CandidateStore {
        self.store
    }
}

impl CandidateStore {
    /// The lowest rule in candidate set `c` that `accept` admits. Dense sets are first ANDed
    /// with the filter sets `f1` and `f2`, which must contain every rule `accept` admits.
    #[inline]
    pub(crate) fn first(
        &self,
        arena: &SetArena,
        c: CandidateRef,
        f1: SetId,
        f2: SetId,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        if c & DENSE != 0 {
            return arena.first_match(c & !DENSE, super::bitset::EMPTY, f1, f2, accept);
        }
        let (start, len) = self.spans[c as usize];
        self.lists[start as usize..(start + len) as usize]
            .iter()
            .map(|r| *r as usize)
            .find(|r| accept(*r))
    }

    /// Number of sparse lists and their total length.
    pub(crate) fn size(&self) -> (usize, usize) {
        (self.spans.len(), self.lists.len())
    }

    /// How many candidate sets were stored as bitsets.
    pub(crate) fn dense(&self) -> usize {
        self.dense
    }
}

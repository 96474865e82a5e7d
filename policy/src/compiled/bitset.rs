//! Rule-index bitsets, interned in one flat arena, and the first-match scan that ANDs them.
//!
//! Each set is stored as `S` summary words followed by `W` data words (`W = ceil(rules/64)`,
//! `S = ceil(W/64)`); summary bit `k` is set when data word `k` is non-zero. A decision ANDs
//! the summaries first and only touches data words whose summary bits survive, so a query
//! costs `S` word operations plus one per candidate word, not `W` (157 words at 10 000 rules).
//! Sets are deduplicated at build time; lookups never allocate.

use std::collections::HashMap;

/// Index of a set in the arena.
pub(crate) type SetId = u32;

/// The set with no rules.
pub(crate) const EMPTY: SetId = 0;
/// The set with every rule.
pub(crate) const FULL: SetId = 1;

/// Interned bitsets over rule indices `0..rules`.
#[derive(Debug, Clone)]
pub(crate) struct SetArena {
    words: usize,
    summary: usize,
    data: Vec<u64>,
}

/// Builds a [`SetArena`], deduplicating identical sets.
pub(crate) struct SetArenaBuilder {
    arena: SetArena,
    index: HashMap<Vec<u64>, SetId>,
}

impl SetArenaBuilder {
    /// An arena for `rules` rules, holding [`EMPTY`] and [`FULL`].
    pub(crate) fn new(rules: usize) -> Self {
        let words = rules.div_ceil(64).max(1);
        let summary = words.div_ceil(64);
        let mut b = Self {
            arena: SetArena {
                words,
                summary,
                data: Vec::new(),
            },
            index: HashMap::new(),
        };
        let mut full = vec![u64::MAX; words];
        let tail = rules % 64;
        if tail != 0 {
            full[words - 1] = (1u64 << tail) - 1;
        }
        if rules == 0 {
            full[0] = 0;
        }
        // Pushed without deduplication so that EMPTY and FULL keep their ids even when the
        // policy has no rules (and the two sets are equal).
        b.push(vec![0; words]);
        b.push(full);
        b
    }

    fn push(&mut self, words: Vec<u64>) -> SetId {
        let id = (self.arena.data.len() / (self.arena.summary + self.arena.words)) as SetId;
        let a = &mut self.arena;
        let mut summary = vec![0u64; a.summary];
        for (k, w) in words.iter().enumerate() {
            if *w != 0 {
                summary[k / 64] |= 1 << (k % 64);
            }
        }
        a.data.extend_from_slice(&summary);
        a.data.extend_from_slice(&words);
        self.index.entry(words).or_insert(id);
        id
    }

    /// Number of data words per set.
    pub(crate) fn words(&self) -> usize {
        self.arena.words
    }

    /// Interns the set of the given rule indices (any order, duplicates allowed).
    pub(crate) fn intern_rules(&mut self, rules: impl IntoIterator<Item = u32>) -> SetId {
        let mut words = vec![0u64; self.arena.words];
        for r in rules {
            let r = r as usize;
            words[r / 64] |= 1 << (r % 64);
        }
        self.intern_words(words)
    }

    /// Interns a set given as data words (length must be [`SetArenaBuilder::words`]).
    pub(crate) fn intern_words(&mut self, words: Vec<u64>) -> SetId {
        match self.index.get(&words) {
            Some(id) => *id,
            None => self.push(words),
        }
    }

    /// Finishes building.
    pub(crate) fn finish(self) -> SetArena {
        self.arena
    }
}

impl SetArena {
    fn slices(&self, id: SetId) -> (&[u64], &[u64]) {
        let stride = self.summary + self.words;
        let start = id as usize * stride;
        self.data[start..start + stride].split_at(self.summary)
    }

    /// Number of distinct sets.
    pub(crate) fn len(&self) -> usize {
        self.data.len() / (self.summary + self.words)
    }

    /// Bytes used by the set data.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len() * 8
    }

    /// The lowest rule index in `(a | b) & c & d` for which `accept` holds, scanning upwards.
    /// `a`/`b` are destination sets (address and name), `c`/`d` filters (protocol+direction,
    /// port class); pass [`EMPTY`] or [`FULL`] for an unused operand.
    #[inline]
    pub(crate) fn first_match(
        &self,
        a: SetId,
        b: SetId,
        c: SetId,
        d: SetId,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let (sa, wa) = self.slices(a);
        let (sb, wb) = self.slices(b);
        let (sc, wc) = self.slices(c);
        let (sd, wd) = self.slices(d);
        for s in 0..self.summary {
            let mut live = (sa[s] | sb[s]) & sc[s] & sd[s];
            while live != 0 {
                let w = s * 64 + live.trailing_zeros() as usize;
                live &= live - 1;
                let mut word = (wa[w] | wb[w]) & wc[w] & wd[w];
                while word != 0 {
                    let rule = w * 64 + word.trailing_zeros() as usize;
                    word &= word - 1;
                    if accept(rule) {
                        return Some(rule);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_match_finds_lowest_common_rule() {
        let mut b = SetArenaBuilder::new(300);
        let x = b.intern_rules([5, 70, 200, 299]);
        let y = b.intern_rules([70, 200, 299]);
        let z = b.intern_rules([1, 299]);
        assert_eq!(b.intern_rules([299, 70, 5, 200]), x);
        let a = b.finish();
        assert_eq!(a.first_match(x, EMPTY, y, FULL, |_| true), Some(70));
        assert_eq!(a.first_match(x, EMPTY, y, FULL, |r| r != 70), Some(200));
        assert_eq!(a.first_match(x, z, FULL, FULL, |_| true), Some(1));
        assert_eq!(a.first_match(x, EMPTY, z, FULL, |_| true), Some(299));
        assert_eq!(a.first_match(y, EMPTY, z, x, |r| r < 299), None);
        assert_eq!(a.first_match(FULL, EMPTY, FULL, FULL, |_| true), Some(0));
        assert_eq!(
            a.first_match(FULL, EMPTY, FULL, FULL, |r| r > 298),
            Some(299)
        );
        assert_eq!(a.first_match(FULL, EMPTY, FULL, FULL, |r| r > 299), None);
    }

    #[test]
    fn empty_policy_has_empty_full_set() {
        let a = SetArenaBuilder::new(0).finish();
        assert_eq!(a.first_match(FULL, FULL, FULL, FULL, |_| true), None);
    }
}

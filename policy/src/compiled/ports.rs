//! Port classes: the port space cut at every rule's range ends into at most
//! [`MAX_PORT_CLASSES`] intervals, each with the set of rules whose ports intersect it (plus all
//! rules without ports). When there are more cut points than classes, neighbouring intervals
//! are merged and the set becomes a superset; the evaluator then confirms a candidate rule's
//! exact ranges, so the answer stays exact either way.

use crate::model::Rule;

use super::bitset::{SetArenaBuilder, SetId};

/// Upper bound on the number of port classes (bounds memory at one bitset per class).
pub(crate) const MAX_PORT_CLASSES: usize = 256;

/// The compiled port dimension.
#[derive(Debug, Clone)]
pub(crate) struct PortClasses {
    /// First port of each class; `starts[0] == 0`, strictly increasing.
    starts: Vec<u16>,
    /// Rule set of each class.
    sets: Vec<SetId>,
    /// Rules without ports (the only ones a portless ICMP flow can match).
    portless: SetId,
}

impl PortClasses {
    /// Builds the classes for `rules`.
    pub(crate) fn build(rules: &[Rule], arena: &mut SetArenaBuilder) -> Self {
        let mut cuts: Vec<u32> = vec![0];
        for r in rules {
            for range in r.ports() {
                cuts.push(u32::from(range.start));
                cuts.push(u32::from(range.end) + 1);
            }
        }
        cuts.retain(|c| *c <= u32::from(u16::MAX));
        cuts.sort_unstable();
        cuts.dedup();
        let step = cuts.len().div_ceil(MAX_PORT_CLASSES);
        let starts: Vec<u16> = cuts.iter().step_by(step).map(|c| *c as u16).collect();
        let class_of = |port: u16| starts.partition_point(|s| *s <= port) - 1;

        let words = arena.words();
        let mut bits = vec![vec![0u64; words]; starts.len()];
        let mut portless = vec![0u64; words];
        for (i, r) in rules.iter().enumerate() {
            let (w, b) = (i / 64, 1u64 << (i % 64));
            if r.ports().is_empty() {
                portless[w] |= b;
                for class in &mut bits {
                    class[w] |= b;
                }
                continue;
            }
            for range in r.ports() {
                for class in &mut bits[class_of(range.start)..=class_of(range.end)] {
                    class[w] |= b;
                }
            }
        }
        let sets = bits.into_iter().map(|b| arena.intern_words(b)).collect();
        let portless = arena.intern_words(portless);
        Self {
            starts,
            sets,
            portless,
        }
    }

    /// The set for a TCP/UDP flow to `port`.
    #[inline]
    pub(crate) fn set_for(&self, port: u16) -> SetId {
        let class = self.starts.partition_point(|s| *s <= port);
        // starts[0] == 0, so class >= 1 for every port.
        self.sets[class - 1]
    }

    /// The set for a portless (ICMP) flow.
    pub(crate) fn portless(&self) -> SetId {
        self.portless
    }

    /// Number of classes.
    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }
}

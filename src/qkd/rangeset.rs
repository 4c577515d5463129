//! A set of `u64` kept as disjoint half-open runs: sequential use stays one
//! run, so tracking millions of delivered chunks costs a few words.

use std::collections::BTreeMap;

/// Set of `u64` values stored as merged runs `start..end`.
#[derive(Debug, Default, Clone)]
pub(crate) struct RangeSet {
    runs: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// True when `x` is in the set.
    pub(crate) fn contains(&self, x: u64) -> bool {
        self.runs
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x < end)
    }

    /// True when every value of `lo..=hi` is in the set.
    pub(crate) fn covers(&self, lo: u64, hi: u64) -> bool {
        self.runs
            .range(..=lo)
            .next_back()
            .is_some_and(|(_, &end)| hi < end)
    }

    /// Adds `x`, merging with neighbouring runs. Appending right after a
    /// run (sequential use) costs one lookup.
    pub(crate) fn insert(&mut self, x: u64) {
        let next = x.saturating_add(1);
        let start = match self.runs.range_mut(..=x).next_back() {
            Some((_, end)) if x < *end => return,
            Some((&start, end)) if *end == x => {
                *end = next;
                start
            }
            _ => {
                self.runs.insert(x, next);
                x
            }
        };
        // Merge with a run starting right after `x`.
        if let Some(right_end) = self.runs.remove(&next) {
            self.runs.insert(start, right_end);
        }
    }

    /// Number of separate runs (for tests and stats).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_answers() {
        let mut s = RangeSet::default();
        for x in [5, 7, 6, 1, 2, 0, 10] {
            s.insert(x);
        }
        assert_eq!(s.runs(), 3, "{s:?}");
        assert!(s.covers(0, 2) && s.covers(5, 7) && s.covers(10, 10));
        assert!(
            !s.covers(0, 3)
                && !s.contains(3)
                && !s.contains(4)
                && !s.contains(8)
                && !s.contains(11)
        );
        s.insert(3);
        s.insert(4);
        assert_eq!(s.runs(), 2);
        assert!(s.covers(0, 7));
        s.insert(u64::MAX - 1);
        assert!(s.contains(u64::MAX - 1) && !s.contains(u64::MAX));
    }
}

//! A set of `u64` kept as disjoint half-open runs: sequential use stays one
//! run, so tracking millions of delivered chunks costs a few words.
//!
//! Serialized as a list of `[start, end)` pairs.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Set of `u64` values stored as merged runs `start..end`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    runs: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// True when `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.runs
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x < end)
    }

    /// True when every value of `lo..=hi` is in the set.
    pub fn covers(&self, lo: u64, hi: u64) -> bool {
        self.runs
            .range(..=lo)
            .next_back()
            .is_some_and(|(_, &end)| hi < end)
    }

    /// Adds `x`, merging with neighbouring runs. Appending right after a
    /// run (sequential use) costs one lookup.
    pub fn insert(&mut self, x: u64) {
        self.insert_range(x, x.saturating_add(1));
    }

    /// Adds every value of `lo..hi`.
    pub fn insert_range(&mut self, lo: u64, hi: u64) {
        if lo >= hi {
            return;
        }
        // A run starting at or before `lo` that reaches it is extended in
        // place (the common case: values added in order).
        let (start, mut end) = match self.runs.range(..=lo).next_back() {
            Some((&s, &e)) if e >= lo => {
                if e >= hi {
                    return;
                }
                (s, hi)
            }
            _ => (lo, hi),
        };
        // Runs starting after `start`, up to `end`, are swallowed (no run
        // starts at `start` itself unless it is the one being extended).
        while let Some((&s, &e)) = self.runs.range(start + 1..=end).next() {
            end = end.max(e);
            self.runs.remove(&s);
        }
        match self.runs.get_mut(&start) {
            Some(e) => *e = end,
            None => {
                self.runs.insert(start, end);
            }
        }
    }

    /// Adds every value of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for (s, e) in other.iter() {
            self.insert_range(s, e);
        }
    }

    /// The runs, in order, as `(start, end)` (end excluded).
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(&s, &e)| (s, e))
    }

    /// True when nothing is in the set.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The largest value plus one (0 when empty).
    pub fn end(&self) -> u64 {
        self.runs.values().next_back().copied().unwrap_or(0)
    }

    /// Number of separate runs.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Number of values in the set (saturating).
    pub fn len(&self) -> u64 {
        self.runs
            .iter()
            .fold(0u64, |n, (s, e)| n.saturating_add(e - s))
    }

    /// Number of values of `lo..hi` in the set.
    pub fn count_within(&self, lo: u64, hi: u64) -> u64 {
        let mut n = 0;
        let first = self.runs.range(..=lo).next_back().map_or(lo, |(&s, _)| s);
        for (&s, &e) in self.runs.range(first..hi) {
            let (a, b) = (s.max(lo), e.min(hi));
            if a < b {
                n += b - a;
            }
        }
        n
    }

    /// Keeps at most `max` runs by filling the smallest gaps (the filled
    /// values join the set). Used where joining is the safe direction: a
    /// chunk counted as delivered is never delivered again.
    pub fn cap_runs(&mut self, max: usize) {
        while self.runs.len() > max.max(1) {
            let mut best: Option<(u64, u64, u64)> = None; // gap, left start, right start
            let mut prev: Option<(u64, u64)> = None;
            for (&s, &e) in &self.runs {
                if let Some((ps, pe)) = prev
                    && best.is_none_or(|(g, _, _)| s - pe < g)
                {
                    best = Some((s - pe, ps, s));
                }
                prev = Some((s, e));
            }
            let Some((_, left, right)) = best else { return };
            let right_end = self.runs.remove(&right).expect("present");
            self.runs.insert(left, right_end);
        }
    }
}

impl Serialize for RangeSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.runs.iter().map(|(&a, &b)| [a, b]))
    }
}

impl<'de> Deserialize<'de> for RangeSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<[u64; 2]>::deserialize(d)?;
        let mut set = RangeSet::default();
        for [a, b] in pairs {
            if a >= b {
                return Err(serde::de::Error::custom("empty or inverted range"));
            }
            set.insert_range(a, b);
        }
        Ok(set)
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
        assert_eq!(s.len(), 10);
    }

    #[test]
    fn ranges_merge_swallow_and_cap() {
        let mut s = RangeSet::default();
        s.insert_range(10, 20);
        s.insert_range(30, 40);
        s.insert_range(50, 60);
        s.insert_range(15, 35);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 40), (50, 60)]);
        s.insert_range(0, 100);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, 100)]);
        let mut t = RangeSet::default();
        for x in [0, 2, 10, 11, 20] {
            t.insert(x);
        }
        t.cap_runs(2);
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(0, 12), (20, 21)]);
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, "[[0,12],[20,21]]");
        assert_eq!(serde_json::from_str::<RangeSet>(&text).unwrap(), t);
        assert!(serde_json::from_str::<RangeSet>("[[5,5]]").is_err());
        assert_eq!(t.end(), 21);
    }

    proptest::proptest! {
        /// Against a plain set: same members, runs disjoint, sorted and
        /// never touching (so each run is as long as it can be).
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((0u64..200, 1u64..20), 1..60)) {
            let mut s = RangeSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (lo, n) in ops {
                s.insert_range(lo, lo + n);
                model.extend(lo..lo + n);
                let runs: Vec<_> = s.iter().collect();
                for w in runs.windows(2) {
                    proptest::prop_assert!(w[0].1 < w[1].0, "runs touch or overlap: {runs:?}");
                }
                for x in 0..230 {
                    proptest::prop_assert_eq!(s.contains(x), model.contains(&x), "{} in {:?}", x, runs);
                }
                proptest::prop_assert_eq!(s.len(), model.len() as u64);
            }
        }
    }

    /// The set against a `BTreeSet` model, over small values so runs
    /// touch, merge and swallow each other.
    mod model {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::RangeSet;

        #[derive(Debug, Clone)]
        enum Op {
            Insert(u64),
            InsertRange(u64, u64),
            Union(Vec<(u64, u64)>),
            Cap(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..200u64).prop_map(Op::Insert),
                4 => (0..200u64, 0..20u64).prop_map(|(a, n)| Op::InsertRange(a, a + n)),
                1 => proptest::collection::vec((0..200u64, 1..10u64), 0..5)
                    .prop_map(|v| Op::Union(v.into_iter().map(|(a, n)| (a, a + n)).collect())),
                1 => (1..6usize).prop_map(Op::Cap),
            ]
        }

        proptest! {
            /// Membership, coverage, counts and runs agree with the model;
            /// capping only ever adds values (the safe direction) and keeps
            /// the runs bounded; the serialized form reads back the same.
            #[test]
            fn agrees_with_a_btreeset(ops in proptest::collection::vec(op(), 1..60),
                                      probes in proptest::collection::vec((0..230u64, 0..30u64), 20)) {
                let mut set = RangeSet::default();
                let mut model = BTreeSet::new();
                for op in ops {
                    match op {
                        Op::Insert(x) => {
                            set.insert(x);
                            model.insert(x);
                        }
                        Op::InsertRange(a, b) => {
                            set.insert_range(a, b);
                            model.extend(a..b);
                        }
                        Op::Union(ranges) => {
                            let mut other = RangeSet::default();
                            for (a, b) in ranges {
                                other.insert_range(a, b);
                                model.extend(a..b);
                            }
                            set.union_with(&other);
                        }
                        Op::Cap(max) => {
                            let before: Vec<u64> = model.iter().copied().collect();
                            set.cap_runs(max);
                            prop_assert!(set.runs() <= max);
                            for x in before {
                                prop_assert!(set.contains(x), "capping dropped {x}");
                            }
                            // The model takes what capping added.
                            for (a, b) in set.iter() {
                                model.extend(a..b);
                            }
                        }
                    }
                    // Runs are disjoint, not touching, and in order.
                    let runs: Vec<(u64, u64)> = set.iter().collect();
                    for w in runs.windows(2) {
                        prop_assert!(w[0].0 < w[0].1 && w[0].1 < w[1].0, "{runs:?}");
                    }
                    prop_assert_eq!(set.len(), model.len() as u64);
                    prop_assert_eq!(set.end(), model.last().map_or(0, |x| x + 1));
                }
                for (lo, n) in probes {
                    let hi = lo + n;
                    prop_assert_eq!(set.contains(lo), model.contains(&lo));
                    prop_assert_eq!(set.covers(lo, hi), (lo..=hi).all(|x| model.contains(&x)));
                    prop_assert_eq!(set.count_within(lo, hi), model.range(lo..hi).count() as u64);
                }
                let text = serde_json::to_string(&set).unwrap();
                let back: RangeSet = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(back, set);
            }
        }
    }
}

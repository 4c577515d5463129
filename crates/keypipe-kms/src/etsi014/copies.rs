//! Multicast on the slaves' node: the engine hands a run of key out once,
//! so the first slave to redeem a multicast key leaves a copy here for the
//! other slaves named with it; each takes it once, and the copy is
//! zeroized when the last has it or its time is up.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;
use zeroize::Zeroizing;

struct Copy {
    key: Zeroizing<Vec<u8>>,
    waiting: Vec<String>,
    expires: Instant,
}

/// Keys redeemed by one slave and owed to others.
pub struct Copies {
    by_id: HashMap<Uuid, Copy>,
    order: VecDeque<(Instant, Uuid)>,
    ttl: Duration,
    max: usize,
}

impl std::fmt::Debug for Copies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copies")
            .field("held", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

/// Where a key of a `dec_keys` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A copy left by another slave.
    Copy,
    /// The engine (this caller is the first slave to ask).
    Engine,
    /// Neither: this caller had it already.
    Gone,
}

impl Copies {
    /// Copies kept at most `ttl`, at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Copies {
        Copies {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            max: max.max(1),
        }
    }

    /// Where key `id` comes from for `caller`.
    pub fn source(&self, id: &Uuid, caller: &str, now: Instant) -> Source {
        match self.by_id.get(id) {
            None => Source::Engine,
            Some(c) if c.expires > now && c.waiting.iter().any(|w| w == caller) => Source::Copy,
            Some(_) => Source::Gone,
        }
    }

    /// Takes `caller`'s copy of `id` (checked with [`Copies::source`]).
    pub fn take(&mut self, id: &Uuid, caller: &str) -> Option<Zeroizing<Vec<u8>>> {
        let copy = self.by_id.get_mut(id)?;
        let at = copy.waiting.iter().position(|w| w == caller)?;
        copy.waiting.swap_remove(at);
        if copy.waiting.is_empty() {
            return self.by_id.remove(id).map(|c| c.key);
        }
        Some(Zeroizing::new(copy.key.to_vec()))
    }

    /// Keeps `key` (of id `id`) for `waiting`, until each took it or the
    /// copy's time is up (the oldest go first beyond `max`).
    pub fn put(&mut self, id: Uuid, key: &[u8], waiting: Vec<String>, now: Instant) {
        self.purge(now);
        while self.by_id.len() >= self.max {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            self.by_id.remove(&old);
        }
        if self.order.len() > 2 * self.max {
            // Entries of copies taken since: forget them.
            let by_id = &self.by_id;
            self.order.retain(|(_, id)| by_id.contains_key(id));
        }
        let expires = now + self.ttl;
        self.order.push_back((expires, id));
        self.by_id.insert(
            id,
            Copy {
                key: Zeroizing::new(key.to_vec()),
                waiting,
                expires,
            },
        );
    }

    /// Zeroizes copies whose time is up.
    pub fn purge(&mut self, now: Instant) {
        while let Some(&(expires, id)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            if self.by_id.get(&id).is_some_and(|c| c.expires <= now) {
                self.by_id.remove(&id);
            }
        }
    }

    /// Copies held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slave_takes_its_copy_once_and_time_ends_them() {
        let mut c = Copies::new(Duration::from_secs(10), 2);
        let now = Instant::now();
        let id = Uuid::new_v4();
        c.put(id, b"key", vec!["b".into(), "c".into()], now);
        assert_eq!(c.source(&id, "a", now), Source::Gone, "a redeemed it first");
        assert_eq!(c.source(&id, "b", now), Source::Copy);
        assert_eq!(c.take(&id, "b").unwrap().as_slice(), b"key");
        assert_eq!(c.source(&id, "b", now), Source::Gone);
        assert_eq!(c.take(&id, "c").unwrap().as_slice(), b"key");
        assert!(c.is_empty(), "the last copy is gone with its last slave");
        c.put(id, b"key", vec!["b".into()], now);
        let later = now + Duration::from_secs(11);
        assert_eq!(c.source(&id, "b", later), Source::Gone);
        c.purge(later);
        assert!(c.is_empty());
        for _ in 0..3 {
            c.put(Uuid::new_v4(), b"k", vec!["b".into()], now);
        }
        assert_eq!(c.len(), 2, "at most max");
        assert_eq!(c.source(&Uuid::new_v4(), "b", now), Source::Engine);
    }
}

//! The KMS services' view of the store: master keys and access keys,
//! cached in memory (zeroizing) so a request costs no database read.
//!
//! The cache is dropped whenever the store's write counter moves, checked
//! at most every [`RECHECK`]: a change made by the CLI in another process
//! (rotate, disable, revoke) takes effect within that time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::ncp::{KeySource, NcpError};
use crate::store::{AccessKey, KeyStore, MasterKey, StoreError};

/// Longest time a cached entry is used without checking the store's write
/// counter.
pub const RECHECK: Duration = Duration::from_millis(100);
/// Cached entries at most (beyond: the cache starts over).
const MAX_ENTRIES: usize = 100_000;

struct Cache {
    generation: u64,
    checked: Instant,
    keys: HashMap<String, Arc<MasterKey>>,
    access: HashMap<String, Arc<AccessKey>>,
}

/// Store-backed, cached master keys and access keys.
pub struct StoreKeys {
    store: Arc<dyn KeyStore>,
    cache: RwLock<Cache>,
}

impl std::fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKeys").finish_non_exhaustive()
    }
}

impl StoreKeys {
    /// A cache over `store`.
    pub fn new(store: Arc<dyn KeyStore>) -> Result<Self, StoreError> {
        let generation = store.generation()?;
        Ok(Self {
            store,
            cache: RwLock::new(Cache {
                generation,
                checked: Instant::now(),
                keys: HashMap::new(),
                access: HashMap::new(),
            }),
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Drops the cache if the store changed since the last check.
    fn refresh(&self) -> Result<(), StoreError> {
        let stale = {
            let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
            c.checked.elapsed() >= RECHECK
        };
        if stale {
            let generation = self.store.generation()?;
            let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
            if generation != c.generation {
                c.keys.clear();
                c.access.clear();
                c.generation = generation;
            }
            c.checked = Instant::now();
        }
        Ok(())
    }

    fn cached<T>(
        &self,
        pick: impl Fn(&Cache) -> Option<Arc<T>>,
        load: impl FnOnce() -> Result<Option<T>, StoreError>,
        keep: impl FnOnce(&mut Cache, Arc<T>),
    ) -> Result<Option<Arc<T>>, StoreError> {
        self.refresh()?;
        let generation = {
            let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(hit) = pick(&c) {
                return Ok(Some(hit));
            }
            c.generation
        };
        // Misses (unknown names included) are not cached: a flood of random
        // names cannot grow the cache.
        let Some(value) = load()?.map(Arc::new) else {
            return Ok(None);
        };
        let mut c = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if c.generation != generation {
            // The store changed while we read it: what we read may be what
            // the change revoked. Use it once, do not cache it.
            return Ok(Some(value));
        }
        if c.keys.len() + c.access.len() >= MAX_ENTRIES {
            c.keys.clear();
            c.access.clear();
        }
        keep(&mut c, Arc::clone(&value));
        Ok(Some(value))
    }

    /// The access key `name` (enabled or not), cached.
    pub fn access_key(&self, name: &str) -> Result<Option<Arc<AccessKey>>, StoreError> {
        self.cached(
            |c| c.access.get(name).cloned(),
            || self.store.access_key(name),
            |c, v| {
                c.access.insert(name.to_owned(), v);
            },
        )
    }
}

impl KeySource for StoreKeys {
    fn key(&self, tag: &str) -> Result<Option<Arc<MasterKey>>, NcpError> {
        self.cached(
            |c| c.keys.get(tag).cloned(),
            || self.store.key(tag),
            |c, v| {
                c.keys.insert(tag.to_owned(), v);
            },
        )
        .map_err(|e| NcpError::Internal(e.to_string()))
    }
}

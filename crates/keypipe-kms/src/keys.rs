//! The KMS services' view of the store: master keys and access keys,
//! cached in memory (zeroizing) so a request costs no database read.
//!
//! - **Known names** are cached (at most [`MAX_ENTRIES`]; beyond, the
//!   cache starts over).
//! - **Unknown names** are cached too (security review F19), so a flood of
//!   requests naming random access keys costs one store read per distinct
//!   name, and a repeated one none. They are kept as SHA-256 digests (a
//!   long name costs no more memory than a short one), at most
//!   [`MAX_UNKNOWN`] per kind; beyond, the unknown names start over.
//! - **Changes.** The whole cache, unknown names included, is dropped
//!   whenever the store's write counter moves, checked at most every
//!   [`RECHECK`]: a change made by the CLI in another process (create,
//!   rotate, disable, revoke) takes effect within that time; an access key
//!   created after its name was looked up (and found unknown) included.
//! - **Event loops** never read the store: they ask
//!   [`StoreKeys::peek_access_key`] and [`StoreKeys::peek_key`], which
//!   answer from the cache alone while it is fresh (checked within
//!   [`RECHECK`]), and otherwise say the store must be asked; the caller
//!   then moves the request to the pool, where [`StoreKeys::access_key`]
//!   and [`KeySource::key`] read the store (and the write counter) and fill
//!   the cache. [`StoreKeys::pinned`] runs a service call on the loop with
//!   the peeked master key fixed, so the service's own lookup reads
//!   nothing either.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::ncp::{KeySource, NcpError};
use crate::store::{AccessKey, KeyStore, MasterKey, StoreError};

/// Longest time a cached entry is used without checking the store's write
/// counter.
pub const RECHECK: Duration = Duration::from_millis(100);
/// Cached known entries at most (beyond: they start over).
pub const MAX_ENTRIES: usize = 100_000;
/// Cached unknown names at most, per kind (beyond: they start over). About
/// 100 bytes each.
pub const MAX_UNKNOWN: usize = 65_536;

/// SHA-256 of a name the store has no row for.
type Digest = [u8; 32];

fn digest(name: &str) -> Digest {
    Sha256::digest(name.as_bytes()).into()
}

struct Cache {
    generation: u64,
    checked: Instant,
    keys: HashMap<String, Arc<MasterKey>>,
    access: HashMap<String, Arc<AccessKey>>,
    unknown_keys: HashSet<Digest>,
    unknown_access: HashSet<Digest>,
}

impl Cache {
    fn clear(&mut self) {
        self.keys.clear();
        self.access.clear();
        self.unknown_keys.clear();
        self.unknown_access.clear();
    }
}

/// What the cache holds of one kind (master keys, access keys).
trait Kind: Sized {
    fn known(c: &Cache) -> &HashMap<String, Arc<Self>>;
    fn known_mut(c: &mut Cache) -> &mut HashMap<String, Arc<Self>>;
    fn unknown(c: &Cache) -> &HashSet<Digest>;
    fn unknown_mut(c: &mut Cache) -> &mut HashSet<Digest>;
}

impl Kind for MasterKey {
    fn known(c: &Cache) -> &HashMap<String, Arc<Self>> {
        &c.keys
    }
    fn known_mut(c: &mut Cache) -> &mut HashMap<String, Arc<Self>> {
        &mut c.keys
    }
    fn unknown(c: &Cache) -> &HashSet<Digest> {
        &c.unknown_keys
    }
    fn unknown_mut(c: &mut Cache) -> &mut HashSet<Digest> {
        &mut c.unknown_keys
    }
}

impl Kind for AccessKey {
    fn known(c: &Cache) -> &HashMap<String, Arc<Self>> {
        &c.access
    }
    fn known_mut(c: &mut Cache) -> &mut HashMap<String, Arc<Self>> {
        &mut c.access
    }
    fn unknown(c: &Cache) -> &HashSet<Digest> {
        &c.unknown_access
    }
    fn unknown_mut(c: &mut Cache) -> &mut HashSet<Digest> {
        &mut c.unknown_access
    }
}

/// A master key fixed for this thread's lookups through one cache (see
/// [`StoreKeys::pinned`]).
struct Pin {
    /// The cache's address (a pin applies to that cache only).
    owner: usize,
    tag: String,
    key: Option<Arc<MasterKey>>,
}

thread_local! {
    static PINNED: RefCell<Option<Pin>> = const { RefCell::new(None) };
}

/// Store-backed, cached master keys and access keys.
pub struct StoreKeys {
    store: Arc<dyn KeyStore>,
    cache: RwLock<Cache>,
    max_unknown: usize,
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
                unknown_keys: HashSet::new(),
                unknown_access: HashSet::new(),
            }),
            max_unknown: MAX_UNKNOWN,
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the cache if the store changed since the last check.
    fn refresh(&self) -> Result<(), StoreError> {
        let stale = self.read().checked.elapsed() >= RECHECK;
        if stale {
            let generation = self.store.generation()?;
            let mut c = self.write();
            if generation != c.generation {
                c.clear();
                c.generation = generation;
            }
            c.checked = Instant::now();
        }
        Ok(())
    }

    /// What the cache alone says of `name`, while it is fresh.
    fn peek<T: Kind>(&self, name: &str) -> Option<Option<Arc<T>>> {
        let c = self.read();
        if c.checked.elapsed() >= RECHECK {
            return None;
        }
        if let Some(hit) = T::known(&c).get(name) {
            return Some(Some(Arc::clone(hit)));
        }
        T::unknown(&c).contains(&digest(name)).then_some(None)
    }

    /// `name` from the cache, else from the store (`load`), caching what
    /// was found, or that nothing was.
    fn cached<T: Kind>(
        &self,
        name: &str,
        load: impl Fn() -> Result<Option<T>, StoreError>,
    ) -> Result<Option<Arc<T>>, StoreError> {
        self.refresh()?;
        let generation = {
            let c = self.read();
            if let Some(hit) = T::known(&c).get(name) {
                return Ok(Some(Arc::clone(hit)));
            }
            if T::unknown(&c).contains(&digest(name)) {
                return Ok(None);
            }
            c.generation
        };
        let value = match load() {
            // The locked heap is full of cached keys: start the cache over
            // (its keys go back to the heap once no request holds them).
            Err(StoreError::SecretMemory(_)) => {
                let mut c = self.write();
                c.keys.clear();
                c.access.clear();
                drop(c);
                load()?
            }
            other => other?,
        }
        .map(Arc::new);
        let mut c = self.write();
        if c.generation != generation {
            // The store changed while we read it: what we read may be what
            // the change revoked (or created). Use it once, do not cache it.
            return Ok(value);
        }
        match &value {
            Some(v) => {
                if c.keys.len() + c.access.len() >= MAX_ENTRIES {
                    c.keys.clear();
                    c.access.clear();
                }
                T::known_mut(&mut c).insert(name.to_owned(), Arc::clone(v));
            }
            None => {
                let max = self.max_unknown;
                let unknown = T::unknown_mut(&mut c);
                if unknown.len() >= max {
                    unknown.clear();
                }
                unknown.insert(digest(name));
            }
        }
        Ok(value)
    }

    /// The access key `name` (enabled or not), cached; may read the store
    /// (not on an event loop: see [`StoreKeys::peek_access_key`]).
    pub fn access_key(&self, name: &str) -> Result<Option<Arc<AccessKey>>, StoreError> {
        self.cached(name, || self.store.access_key(name))
    }

    /// The access key `name` from the cache alone, never the store: `None`
    /// when the cache cannot tell (a miss, or not checked against the
    /// store within [`RECHECK`]), then ask [`StoreKeys::access_key`] off
    /// the event loop; `Some(None)` when it is known not to exist.
    pub fn peek_access_key(&self, name: &str) -> Option<Option<Arc<AccessKey>>> {
        self.peek(name)
    }

    /// The master key `tag` from the cache alone, as
    /// [`StoreKeys::peek_access_key`]; else ask [`KeySource::key`] off the
    /// event loop.
    pub fn peek_key(&self, tag: &str) -> Option<Option<Arc<MasterKey>>> {
        self.peek(tag)
    }

    /// Runs `f` with the master key `tag` fixed to `key` (what
    /// [`StoreKeys::peek_key`] gave) for this thread's [`KeySource::key`]
    /// calls on this cache: a service called in `f` gets it without a
    /// freshness check or a store read. Other tags are looked up as usual.
    pub fn pinned<R>(&self, tag: &str, key: Option<Arc<MasterKey>>, f: impl FnOnce() -> R) -> R {
        /// Puts the previous pin back, even if `f` panics.
        struct Restore(Option<Pin>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                PINNED.with(|p| *p.borrow_mut() = previous);
            }
        }
        let pin = Pin {
            owner: self.owner(),
            tag: tag.to_owned(),
            key,
        };
        let _restore = Restore(PINNED.with(|p| p.borrow_mut().replace(pin)));
        f()
    }

    fn owner(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// The key pinned for `tag` on this thread, if any.
    fn pinned_key(&self, tag: &str) -> Option<Option<Arc<MasterKey>>> {
        PINNED.with(|p| {
            p.borrow()
                .as_ref()
                .filter(|pin| pin.owner == self.owner() && pin.tag == tag)
                .map(|pin| pin.key.clone())
        })
    }
}

impl KeySource for StoreKeys {
    fn key(&self, tag: &str) -> Result<Option<Arc<MasterKey>>, NcpError> {
        if let Some(pinned) = self.pinned_key(tag) {
            return Ok(pinned);
        }
        Ok(self.cached(tag, || self.store.key(tag))?)
    }

    fn reserve_encryptions(
        &self,
        tag: &str,
        version: u32,
        n: u64,
        limit: u64,
    ) -> Result<(u64, u64), NcpError> {
        Ok(self.store.reserve_encryptions(tag, version, n, limit)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::{Grant, KeySummary, KeyType, Store, StoreOptions};

    /// The real SQLite store, counting the reads of keys and access keys.
    struct Counting {
        inner: Store,
        access_reads: AtomicUsize,
        key_reads: AtomicUsize,
    }

    impl Counting {
        fn open(dir: &std::path::Path) -> Arc<Counting> {
            Arc::new(Counting {
                inner: Store::open(&StoreOptions::new(dir)).unwrap(),
                access_reads: AtomicUsize::new(0),
                key_reads: AtomicUsize::new(0),
            })
        }
        fn access_reads(&self) -> usize {
            self.access_reads.load(Ordering::SeqCst)
        }
        fn key_reads(&self) -> usize {
            self.key_reads.load(Ordering::SeqCst)
        }
    }

    impl KeyStore for Counting {
        fn create_key(
            &self,
            name: &str,
            key_type: KeyType,
            convergent: bool,
            material: &[u8],
        ) -> Result<String, StoreError> {
            self.inner.create_key(name, key_type, convergent, material)
        }
        fn add_version(&self, tag: &str, material: &[u8]) -> Result<u32, StoreError> {
            self.inner.add_version(tag, material)
        }
        fn set_key_enabled(&self, tag: &str, enabled: bool) -> Result<(), StoreError> {
            self.inner.set_key_enabled(tag, enabled)
        }
        fn set_version_enabled(
            &self,
            tag: &str,
            version: u32,
            enabled: bool,
        ) -> Result<(), StoreError> {
            self.inner.set_version_enabled(tag, version, enabled)
        }
        fn reserve_encryptions(
            &self,
            tag: &str,
            version: u32,
            n: u64,
            limit: u64,
        ) -> Result<(u64, u64), StoreError> {
            self.inner.reserve_encryptions(tag, version, n, limit)
        }
        fn key(&self, tag: &str) -> Result<Option<MasterKey>, StoreError> {
            self.key_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.key(tag)
        }
        fn list_keys(&self) -> Result<Vec<KeySummary>, StoreError> {
            self.inner.list_keys()
        }
        fn create_access_key(&self) -> Result<AccessKey, StoreError> {
            self.inner.create_access_key()
        }
        fn access_key(&self, access_key: &str) -> Result<Option<AccessKey>, StoreError> {
            self.access_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.access_key(access_key)
        }
        fn revoke_access_key(&self, access_key: &str) -> Result<bool, StoreError> {
            self.inner.revoke_access_key(access_key)
        }
        fn set_grant(&self, access_key: &str, grant: &Grant) -> Result<(), StoreError> {
            self.inner.set_grant(access_key, grant)
        }
        fn remove_grant(&self, access_key: &str, key_tag: &str) -> Result<bool, StoreError> {
            self.inner.remove_grant(access_key, key_tag)
        }
        fn list_access_keys(&self) -> Result<Vec<(String, bool, Vec<Grant>)>, StoreError> {
            self.inner.list_access_keys()
        }
        fn generation(&self) -> Result<u64, StoreError> {
            self.inner.generation()
        }
    }

    fn unknown_access(keys: &StoreKeys) -> usize {
        keys.read().unknown_access.len()
    }

    /// Security review F19: unknown access keys cost one store read per
    /// distinct name, the names kept are bounded, and a key created later
    /// is found once the generation moved.
    #[test]
    fn unknown_access_keys_are_cached_bounded_and_forgotten_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path());
        let mut keys = StoreKeys::new(Arc::clone(&store) as _).unwrap();
        keys.max_unknown = 100;

        // 1000 requests naming the same unknown access key: one read.
        for _ in 0..1000 {
            assert!(keys.access_key("NO-SUCH-KEY").unwrap().is_none());
        }
        assert_eq!(store.access_reads(), 1);
        assert!(matches!(keys.peek_access_key("NO-SUCH-KEY"), Some(None)));

        // 1000 distinct unknown names: one read each, never more than the
        // bound kept.
        for i in 0..1000 {
            assert!(keys.access_key(&format!("RANDOM-{i}")).unwrap().is_none());
            assert!(unknown_access(&keys) <= 100);
        }
        assert_eq!(store.access_reads(), 1001);
        // A name 100 kB long costs a digest, not its length.
        let long = "L".repeat(100_000);
        assert!(keys.access_key(&long).unwrap().is_none());
        assert!(matches!(keys.peek_access_key(&long), Some(None)));

        // Another process (the CLI) creates an access key: the generation
        // moves, every unknown name is forgotten within RECHECK, and the
        // new key is found.
        let cli = Store::open(&StoreOptions::new(dir.path())).unwrap();
        let created = cli.create_access_key().unwrap();
        std::thread::sleep(RECHECK);
        let found = keys.access_key(&created.access_key).unwrap().unwrap();
        assert_eq!(found.access_key, created.access_key);
        assert_eq!(unknown_access(&keys), 0, "the unknown names were dropped");
        let reads = store.access_reads();
        assert!(keys.access_key("NO-SUCH-KEY").unwrap().is_none());
        assert_eq!(store.access_reads(), reads + 1, "asked the store again");
        // Known keys are served from the cache.
        for _ in 0..100 {
            assert!(keys.access_key(&created.access_key).unwrap().is_some());
        }
        assert_eq!(store.access_reads(), reads + 1);
    }

    #[test]
    fn an_access_key_looked_up_before_it_exists_is_found_within_recheck() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path());
        let keys = StoreKeys::new(Arc::clone(&store) as _).unwrap();
        let cli = Store::open(&StoreOptions::new(dir.path())).unwrap();
        let made = cli.create_access_key().unwrap();
        // Ids are random, so the lookup just before the CLI's write is
        // simulated: the name is cached as unknown, and the cache is fresh
        // (the write not seen yet) ...
        {
            let mut c = keys.write();
            c.checked = Instant::now();
            c.unknown_access.insert(digest(&made.access_key));
        }
        assert!(keys.access_key(&made.access_key).unwrap().is_none());
        // ... and found at the next check.
        std::thread::sleep(RECHECK);
        assert!(keys.access_key(&made.access_key).unwrap().is_some());
    }

    #[test]
    fn peeks_never_read_the_store_and_need_a_fresh_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = Counting::open(dir.path());
        let tag = store
            .create_key("k", KeyType::Aes256, false, &[7u8; 32])
            .unwrap();
        let keys = StoreKeys::new(Arc::clone(&store) as _).unwrap();
        assert!(keys.peek_key(&tag).is_none(), "a miss");
        assert_eq!(store.key_reads(), 0);
        assert!(keys.key(&tag).unwrap().is_some());
        assert!(keys.key("nope").unwrap().is_none());
        assert_eq!(store.key_reads(), 2);
        assert!(matches!(keys.peek_key(&tag), Some(Some(_))));
        assert!(matches!(keys.peek_key("nope"), Some(None)));
        // Stale: the store's write counter must be read first (off the loop).
        std::thread::sleep(RECHECK);
        assert!(keys.peek_key(&tag).is_none());
        assert!(keys.peek_key("nope").is_none());
        assert_eq!(store.key_reads(), 2);
        // A pinned key is what the service gets, with no check at all.
        let pinned = keys.pinned(&tag, None, || keys.key(&tag).unwrap());
        assert!(pinned.is_none());
        assert_eq!(store.key_reads(), 2);
        assert!(keys.key(&tag).unwrap().is_some(), "the pin is gone");
    }
}

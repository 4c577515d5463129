//! The store's behaviour suite, run against both backends.
//!
//! Each behaviour is a plain function taking a [`Backend`]: one test's
//! database (a SQLite file in a temporary directory, or a new database on
//! the throwaway PostgreSQL cluster of `scripts/pg.sh`) and the KEK file
//! every handle of the test shares. [`Backend::open`] gives another
//! handle on the same database, as another process would have, so the
//! behaviours check what one handle sees of another's writes and what
//! several handles racing on one row leave behind.
//!
//! [`backend_tests!`] turns each behaviour into one `#[test]` per backend,
//! in the modules `sqlite` and `postgres`; a few behaviours are
//! PostgreSQL's only (what `pg_dump` shows, an unreachable server).

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use zeroize::Zeroizing;

use super::kek::Kek;
use super::master_keys::now_ms;
use super::testing::fresh_pg_database;
use super::{
    CaKeyRecord, CaStore, DonauKey, DonauKind, DonauStore, Enrolment, EphemeralChange,
    EphemeralStore, Grant, IssuedRecord, KeyStore, KeyTalkStore, KeyType, SecretStore, Store,
    StoreError, StoreOptions, UserStore,
};

// ---------------------------------------------------------------------
// The backends
// ---------------------------------------------------------------------

/// A database on the test cluster, dropped with the test (unless the test
/// failed: then it stays for a look).
struct PgDatabase {
    /// Its connection string (the cluster's, with `dbname=` this one).
    url: String,
    /// The cluster's connection string (its `postgres` database).
    admin: String,
    /// The database's name.
    name: String,
}

impl Drop for PgDatabase {
    /// Drops the database (best effort), disconnecting what is left of
    /// the test's pools.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping PostgreSQL database {} of a failed test", self.name);
            return;
        }
        if let Ok(mut admin) = ::postgres::Client::connect(&self.admin, ::postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// One test's database and KEK: every handle [`Backend::open`] gives is on
/// the same database and uses the same KEK file (`dir/kek.key`).
struct Backend {
    /// The data directory: the SQLite file and the KEK files.
    dir: TempDir,
    /// The PostgreSQL database, when the test runs on PostgreSQL.
    pg: Option<PgDatabase>,
}

impl Backend {
    /// A new SQLite database in a new temporary directory (`_label`, for
    /// [`Backend::postgres`]'s database name, is not needed here).
    fn sqlite(_label: &str) -> Backend {
        Backend {
            dir: tempfile::tempdir().expect("a temporary directory"),
            pg: None,
        }
    }

    /// A new, empty PostgreSQL database named after `label`, and a new
    /// temporary directory for the KEK.
    fn postgres(label: &str) -> Backend {
        let url = fresh_pg_database(label);
        let (admin, name) = url
            .rsplit_once(" dbname=")
            .expect("fresh_pg_database ends its connection string with dbname=");
        let pg = PgDatabase {
            admin: admin.to_owned(),
            name: name.to_owned(),
            url: url.clone(),
        };
        Backend {
            dir: tempfile::tempdir().expect("a temporary directory"),
            pg: Some(pg),
        }
    }

    /// True on PostgreSQL.
    fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// The KEK file every handle uses unless told otherwise.
    fn kek_path(&self) -> PathBuf {
        self.dir.path().join("kek.key")
    }

    /// Another path in the data directory (for other KEK files).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The store options of this test's database with the KEK file `kek`.
    fn options_with_kek(&self, kek: &Path) -> StoreOptions {
        let mut options = StoreOptions::new(self.dir.path());
        options.kek_file = Some(kek.to_owned());
        options.url = self.pg.as_ref().map(|pg| pg.url.clone());
        options
    }

    /// A new handle with the test's KEK file, or why it did not open.
    fn try_open(&self) -> Result<Store, StoreError> {
        self.open_with_kek(&self.kek_path())
    }

    /// A new handle with the KEK file `kek`, or why it did not open.
    fn open_with_kek(&self, kek: &Path) -> Result<Store, StoreError> {
        Store::open_with_env(&self.options_with_kek(kek), &|_| None)
    }

    /// A new handle with the test's KEK file (panics when it does not open).
    fn open(&self) -> Store {
        self.try_open()
            .unwrap_or_else(|e| panic!("opening a store handle failed: {e}"))
    }

    /// The schema version the database records (PostgreSQL:
    /// `keypipe_schema`; SQLite: `PRAGMA user_version`).
    fn schema_version(&self, store: &Store) -> i64 {
        let sql = if self.is_postgres() {
            "SELECT version FROM keypipe_schema"
        } else {
            "PRAGMA user_version"
        };
        store
            .read(|tx| {
                let rows = tx.query(sql, &[])?;
                assert_eq!(rows.len(), 1, "one schema version row");
                rows.into_iter().next().expect("one row").get(0)
            })
            .expect("read the schema version")
    }
}

/// One `#[test]` per behaviour per backend: `both` behaviours in the
/// modules `sqlite` and `postgres`, `postgres_only` ones in `postgres`.
macro_rules! backend_tests {
    (both: [$($both:ident),* $(,)?], postgres_only: [$($pg:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $both() {
                    let backend = super::Backend::sqlite(stringify!($both));
                    super::$both(&backend);
                }
            )*
        }

        mod postgres {
            $(
                #[test]
                fn $both() {
                    let backend = super::Backend::postgres(stringify!($both));
                    super::$both(&backend);
                }
            )*
            $(
                #[test]
                fn $pg() {
                    let backend = super::Backend::postgres(stringify!($pg));
                    super::$pg(&backend);
                }
            )*
        }
    };
}

backend_tests! {
    both: [
        master_keys_round_trip,
        reservations_stop_at_the_limit,
        concurrent_reservations_never_over_grant,
        access_keys_and_grants,
        generation_is_seen_by_another_handle,
        users_and_sessions,
        ca_round_trip,
        donau_round_trip,
        keytalk_round_trip,
        generated_secrets_are_shared,
        ephemeral_round_trip,
        ephemeral_rows_are_taken_once_across_handles,
        rewrap_moves_everything_to_the_new_kek,
        a_wrong_or_missing_kek_is_refused,
        handles_opening_a_new_database_together_all_succeed,
        keys_and_access_keys_list_in_creation_order,
    ],
    postgres_only: [
        pg_dump_shows_no_secret_in_clear,
        an_unreachable_database_is_unavailable_quickly,
        a_missing_database_is_a_clear_fault_not_retry,
    ],
}

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

/// Key material of 32 distinctive bytes.
const MATERIAL: &[u8; 32] = b"backend-suite-material-012345678";

/// Asserts `result` is [`StoreError::NotFound`] naming `what`.
#[track_caller]
fn assert_not_found<T: Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::NotFound { what: got }) => assert_eq!(got, what),
        other => panic!("expected NotFound {{ {what} }}, got {other:?}"),
    }
}

/// Asserts `result` is [`StoreError::Kek`]; its message.
#[track_caller]
fn expect_kek_error<T: Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Kek(message)) => message,
        other => panic!("expected StoreError::Kek, got {other:?}"),
    }
}

/// True when `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// `bytes` as lowercase hex (how `pg_dump` shows a `bytea`).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A moment later than now in ms (so rows made one after the other do not
/// share their creation millisecond and "oldest first" is their order).
fn next_ms() {
    std::thread::sleep(Duration::from_millis(2));
}

/// An expiry a minute from now, ms since the epoch.
fn in_a_minute() -> u64 {
    u64::try_from(now_ms()).expect("after the epoch") + 60_000
}

/// Stores `value` in the ephemeral row `(kind, id)`, for a minute.
fn put_ephemeral(store: &Store, kind: &str, id: &[u8], value: &[u8]) {
    store
        .ephemeral_update(kind, id, &mut |_| {
            Ok(EphemeralChange::Put {
                value: Zeroizing::new(value.to_vec()),
                forget_ms: in_a_minute(),
            })
        })
        .expect("store an ephemeral row");
}

/// The value of the ephemeral row `(kind, id)`, leaving it in place.
fn get_ephemeral(store: &Store, kind: &str, id: &[u8]) -> Option<Vec<u8>> {
    let mut seen = None;
    store
        .ephemeral_update(kind, id, &mut |row| {
            seen = row.map(|r| r.value.to_vec());
            Ok(EphemeralChange::Keep)
        })
        .expect("read an ephemeral row");
    seen
}

/// A grant of `actions` on `tag`.
fn grant(tag: &str, actions: &[&str]) -> Grant {
    Grant {
        key_tag: tag.into(),
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
    }
}

/// `(version, enabled, material)` of every version of the key `tag`.
fn versions(store: &Store, tag: &str) -> Vec<(u32, bool, Vec<u8>)> {
    store
        .key(tag)
        .expect("read the key")
        .expect("the key exists")
        .versions
        .iter()
        .map(|v| (v.version, v.enabled, v.material.to_vec()))
        .collect()
}

// ---------------------------------------------------------------------
// Behaviours on both backends
// ---------------------------------------------------------------------

/// Master keys of every type: creation, rotation, material per version,
/// listing (oldest first), enabling and disabling, and NotFound, written
/// through one handle and read through another.
fn master_keys_round_trip(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    assert!(a.list_keys().unwrap().is_empty());

    let aes = a
        .create_key("aes", KeyType::Aes256, true, MATERIAL)
        .unwrap();
    next_ms();
    let rsa = a
        .create_key("rsa", KeyType::Rsa2048, false, b"rsa pkcs8 der")
        .unwrap();
    next_ms();
    let ec = b
        .create_key("ec", KeyType::Ecdsa, false, b"ec pkcs8 der")
        .unwrap();
    for tag in [&aes, &rsa, &ec] {
        assert_eq!(tag.len(), 32, "{tag}");
        assert!(
            tag.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{tag}"
        );
    }
    assert!(aes != rsa && rsa != ec && aes != ec);

    assert_eq!(b.add_version(&aes, b"aes v2").unwrap(), 2);
    assert_eq!(a.add_version(&aes, b"aes v3").unwrap(), 3);
    assert_eq!(a.add_version(&ec, b"ec v2").unwrap(), 2);

    let key = b.key(&aes).unwrap().expect("the AES key");
    assert_eq!(key.tag, aes);
    assert_eq!(key.name, "aes");
    assert_eq!(key.key_type, KeyType::Aes256);
    assert!(key.convergent && key.enabled);
    assert!(key.created_ms > 1_600_000_000_000, "{}", key.created_ms);
    assert_eq!(
        versions(&b, &aes),
        vec![
            (1, true, MATERIAL.to_vec()),
            (2, true, b"aes v2".to_vec()),
            (3, true, b"aes v3".to_vec()),
        ]
    );
    let key = a.key(&rsa).unwrap().expect("the RSA key");
    assert_eq!((key.key_type, key.convergent), (KeyType::Rsa2048, false));
    assert_eq!(
        versions(&a, &rsa),
        vec![(1, true, b"rsa pkcs8 der".to_vec())]
    );
    let key = a.key(&ec).unwrap().expect("the ECDSA key");
    assert_eq!(key.key_type, KeyType::Ecdsa);
    assert_eq!(
        versions(&a, &ec),
        vec![
            (1, true, b"ec pkcs8 der".to_vec()),
            (2, true, b"ec v2".to_vec())
        ]
    );

    // Disabling, seen by the other handle.
    a.set_version_enabled(&aes, 2, false).unwrap();
    b.set_key_enabled(&rsa, false).unwrap();
    assert_eq!(
        versions(&b, &aes)
            .iter()
            .map(|v| (v.0, v.1))
            .collect::<Vec<_>>(),
        [(1, true), (2, false), (3, true)]
    );
    assert!(!a.key(&rsa).unwrap().unwrap().enabled);

    let list = b.list_keys().unwrap();
    let summary: Vec<_> = list
        .iter()
        .map(|k| {
            (
                k.tag.as_str(),
                k.name.as_str(),
                k.key_type,
                k.convergent,
                k.enabled,
                k.versions.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                aes.as_str(),
                "aes",
                KeyType::Aes256,
                true,
                true,
                vec![(1, true), (2, false), (3, true)]
            ),
            (
                rsa.as_str(),
                "rsa",
                KeyType::Rsa2048,
                false,
                false,
                vec![(1, true)]
            ),
            (
                ec.as_str(),
                "ec",
                KeyType::Ecdsa,
                false,
                true,
                vec![(1, true), (2, true)]
            ),
        ],
        "every key, oldest first"
    );

    // Enabling again.
    b.set_version_enabled(&aes, 2, true).unwrap();
    a.set_key_enabled(&rsa, true).unwrap();
    assert!(b.key(&aes).unwrap().unwrap().versions[1].enabled);
    assert!(b.key(&rsa).unwrap().unwrap().enabled);

    // Missing keys and versions.
    let missing = "0".repeat(32);
    assert!(a.key(&missing).unwrap().is_none());
    let missing_key = format!("key {missing}");
    assert_not_found(a.add_version(&missing, b"x"), &missing_key);
    assert_not_found(a.set_key_enabled(&missing, false), &missing_key);
    assert_not_found(a.set_version_enabled(&missing, 1, false), &missing_key);
    assert_not_found(
        a.set_version_enabled(&aes, 9, false),
        &format!("version 9 of key {aes}"),
    );
    assert_not_found(
        a.reserve_encryptions(&aes, 9, 1, 10),
        &format!("version 9 of key {aes}"),
    );
    assert_eq!(versions(&a, &aes).len(), 3, "failed writes add nothing");
}

/// `reserve_encryptions` grants up to the limit, partly at its edge, then
/// nothing; counts are per version and durable across handles.
fn reservations_stop_at_the_limit(backend: &Backend) {
    let a = backend.open();
    let tag = a.create_key("k", KeyType::Aes256, false, MATERIAL).unwrap();
    a.add_version(&tag, b"two").unwrap();
    assert_eq!(a.reserve_encryptions(&tag, 1, 4, 10).unwrap(), (4, 4));
    assert_eq!(a.reserve_encryptions(&tag, 1, 4, 10).unwrap(), (4, 8));
    let b = backend.open();
    assert_eq!(
        b.reserve_encryptions(&tag, 1, 4, 10).unwrap(),
        (2, 10),
        "only what is left below the limit"
    );
    assert_eq!(b.reserve_encryptions(&tag, 1, 4, 10).unwrap(), (0, 10));
    assert_eq!(a.reserve_encryptions(&tag, 1, 1, 10).unwrap(), (0, 10));
    assert_eq!(a.reserve_encryptions(&tag, 1, 0, 10).unwrap(), (0, 10));
    // Version 2 counts on its own.
    assert_eq!(a.reserve_encryptions(&tag, 2, 3, 10).unwrap(), (3, 3));
    // A higher limit grants again.
    assert_eq!(b.reserve_encryptions(&tag, 1, 5, 12).unwrap(), (2, 12));
    assert_eq!(
        backend.open().reserve_encryptions(&tag, 1, 0, 0).unwrap(),
        (0, 12)
    );
}

/// Four handles reserving against one limit at once: together they are
/// granted exactly the limit, never more, and nothing is lost.
fn concurrent_reservations_never_over_grant(backend: &Backend) {
    const THREADS: usize = 4;
    const LIMIT: u64 = 200;
    const STEP: u64 = 3;
    let tag = backend
        .open()
        .create_key("k", KeyType::Aes256, false, MATERIAL)
        .unwrap();
    let handles: Vec<Store> = (0..THREADS).map(|_| backend.open()).collect();
    let granted = AtomicU64::new(0);
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for store in &handles {
            let (tag, granted, barrier) = (&tag, &granted, &barrier);
            s.spawn(move || {
                barrier.wait();
                loop {
                    let (got, after) = store
                        .reserve_encryptions(tag, 1, STEP, LIMIT)
                        .unwrap_or_else(|e| panic!("a concurrent reservation failed: {e}"));
                    assert!(
                        got <= STEP && after <= LIMIT,
                        "granted {got}, count {after}"
                    );
                    if got == 0 {
                        assert_eq!(after, LIMIT, "nothing granted below the limit");
                        break;
                    }
                    granted.fetch_add(got, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(
        granted.into_inner(),
        LIMIT,
        "the grants add up to the limit"
    );
    assert_eq!(
        backend
            .open()
            .reserve_encryptions(&tag, 1, 0, LIMIT)
            .unwrap(),
        (0, LIMIT),
        "the stored count is the limit"
    );
}

/// Access keys: creation, the secret read back by another handle, grants
/// set, replaced and removed, revocation keeping the row disabled, and the
/// listing.
fn access_keys_and_grants(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    let first = a.create_access_key().unwrap();
    next_ms();
    let second = b.create_access_key().unwrap();
    assert_ne!(first.access_key, second.access_key);
    assert_eq!(first.access_key.len(), 20);
    assert_eq!(first.secret_key.len(), 40);
    assert_eq!(first.api_key.len(), 40);
    assert!(first.enabled && first.grants.is_empty());

    let got = b.access_key(&first.access_key).unwrap().expect("the key");
    assert_eq!(got.access_key, first.access_key);
    assert_eq!(*got.secret_key, *first.secret_key, "the secret round-trips");
    assert_eq!(got.api_key, first.api_key);
    assert!(got.enabled && got.grants.is_empty());
    assert!(a.access_key("AKNONE").unwrap().is_none());

    a.set_grant(&first.access_key, &grant("t1", &["encrypt"]))
        .unwrap();
    b.set_grant(&first.access_key, &grant("t1", &["encrypt", "decrypt"]))
        .unwrap();
    a.set_grant(&first.access_key, &grant("*", &["verify"]))
        .unwrap();
    let got = b.access_key(&first.access_key).unwrap().unwrap();
    assert_eq!(
        got.grants,
        vec![
            grant("*", &["verify"]),
            grant("t1", &["encrypt", "decrypt"])
        ],
        "the second grant on t1 replaced the first"
    );
    assert!(got.allows("t1", "decrypt") && got.allows("t9", "verify"));
    assert!(!got.allows("t9", "decrypt"));
    assert!(b.remove_grant(&first.access_key, "t1").unwrap());
    assert!(!a.remove_grant(&first.access_key, "t1").unwrap());
    assert_not_found(
        a.set_grant("AKNONE", &grant("t1", &["*"])),
        "access key AKNONE",
    );

    assert!(a.revoke_access_key(&first.access_key).unwrap());
    assert!(
        b.revoke_access_key(&first.access_key).unwrap(),
        "still there"
    );
    assert!(!b.revoke_access_key("AKNONE").unwrap());
    let revoked = b.access_key(&first.access_key).unwrap().expect("kept");
    assert!(!revoked.enabled, "kept, disabled");
    assert_eq!(*revoked.secret_key, *first.secret_key);
    assert!(a.access_key(&second.access_key).unwrap().unwrap().enabled);

    assert_eq!(
        a.list_access_keys().unwrap(),
        vec![
            (
                first.access_key.clone(),
                false,
                vec![grant("*", &["verify"])]
            ),
            (second.access_key.clone(), true, vec![]),
        ],
        "oldest first, with state and grants"
    );
}

/// A write through one handle moves the generation another handle reads;
/// counting and user writes (never cached) do not.
fn generation_is_seen_by_another_handle(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    let start = b.generation().unwrap();
    assert_eq!(a.generation().unwrap(), start);
    let tag = a.create_key("k", KeyType::Aes256, false, MATERIAL).unwrap();
    let after_create = b.generation().unwrap();
    assert!(after_create > start, "{after_create} > {start}");
    b.set_key_enabled(&tag, false).unwrap();
    let after_disable = a.generation().unwrap();
    assert!(after_disable > after_create);
    assert_eq!(b.generation().unwrap(), after_disable);
    let ak = b.create_access_key().unwrap();
    let after_access_key = a.generation().unwrap();
    assert!(after_access_key > after_disable);

    // Not changes the key caches must see.
    a.reserve_encryptions(&tag, 1, 1, 10).unwrap();
    a.add_user("corp", "alice", "$argon2id$x").unwrap();
    assert_eq!(b.generation().unwrap(), after_access_key);
    // A failed write changes nothing either.
    assert!(!a.revoke_access_key("AKNONE").unwrap());
    assert_eq!(b.generation().unwrap(), after_access_key);
    assert!(a.revoke_access_key(&ak.access_key).unwrap());
    assert!(b.generation().unwrap() > after_access_key);
}

/// Users and sessions: a duplicate user is refused, sessions and access
/// tokens work across handles, and removing a user removes its sessions.
fn users_and_sessions(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    a.add_user("corp", "alice", "$argon2id$x").unwrap();
    match b.add_user("corp", "alice", "$argon2id$y") {
        Err(StoreError::Exists { what }) => assert!(what.contains("alice"), "{what}"),
        other => panic!("expected Exists, got {other:?}"),
    }
    b.add_user("corp", "bob", "$argon2id$b").unwrap();
    let alice = b.user("corp", "alice").unwrap().expect("alice");
    assert_eq!(alice.password_hash, "$argon2id$x", "the first one stays");
    assert_eq!(
        a.list_users()
            .unwrap()
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );

    let (refresh, access1, access2) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    assert!(
        a.create_session(
            "corp",
            "alice",
            (&refresh, in_a_minute()),
            (&access1, in_a_minute())
        )
        .unwrap()
    );
    assert!(
        !a.create_session(
            "corp",
            "nobody",
            (&[9; 32], in_a_minute()),
            (&[8; 32], in_a_minute())
        )
        .unwrap(),
        "no session for a missing user"
    );
    let alice_id = Some(("corp".to_owned(), "alice".to_owned()));
    assert_eq!(b.access_token_user(&access1).unwrap(), alice_id);
    assert!(
        b.add_access_token(&refresh, (&access2, in_a_minute()))
            .unwrap()
    );
    assert_eq!(a.access_token_user(&access2).unwrap(), alice_id);
    assert_eq!(a.access_token_user(&[7; 32]).unwrap(), None);
    assert!(
        !b.add_access_token(&[9; 32], (&[10; 32], in_a_minute()))
            .unwrap()
    );

    assert!(a.end_session(&refresh).unwrap());
    assert!(!b.end_session(&refresh).unwrap());
    assert_eq!(b.access_token_user(&access1).unwrap(), None);
    assert_eq!(b.access_token_user(&access2).unwrap(), None);
    assert!(
        !a.add_access_token(&refresh, (&[11; 32], in_a_minute()))
            .unwrap()
    );

    // Removing a user removes its sessions and their tokens.
    let (refresh2, access3) = ([4u8; 32], [5u8; 32]);
    assert!(
        b.create_session(
            "corp",
            "alice",
            (&refresh2, in_a_minute()),
            (&access3, in_a_minute())
        )
        .unwrap()
    );
    assert_eq!(a.access_token_user(&access3).unwrap(), alice_id);
    assert!(a.remove_user("corp", "alice").unwrap());
    assert!(!b.remove_user("corp", "alice").unwrap());
    assert!(b.user("corp", "alice").unwrap().is_none());
    assert_eq!(b.access_token_user(&access3).unwrap(), None);
    assert!(!b.end_session(&refresh2).unwrap(), "gone with the user");
    assert!(b.user("corp", "bob").unwrap().is_some(), "others stay");
}

/// The CA: created once, its private keys read back by another handle,
/// certificates recorded and revoked, changes visible.
fn ca_round_trip(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    let key = |name: &str| CaKeyRecord {
        name: name.into(),
        cert_der: vec![0x30, 0x03, name.len() as u8],
        key_pkcs8: Zeroizing::new(format!("PRIVATE-CA-KEY-{name}").into_bytes()),
    };
    assert!(b.ca_keys().unwrap().is_empty());
    assert!(
        a.create_ca(&[key("primary"), key("signing"), key("server")])
            .unwrap()
    );
    assert!(!b.create_ca(&[key("primary")]).unwrap(), "never replaced");
    let keys = b.ca_keys().unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| (k.name.as_str(), k.cert_der.clone(), k.key_pkcs8.to_vec()))
            .collect::<Vec<_>>(),
        ["primary", "server", "signing"]
            .iter()
            .map(|n| (*n, key(n).cert_der, key(n).key_pkcs8.to_vec()))
            .collect::<Vec<_>>()
    );

    let before = b.ca_changes().unwrap();
    let cert = IssuedRecord {
        serial: "0a1b".into(),
        issuer: "signing".into(),
        subject: "kms-a".into(),
        role: "kms".into(),
        not_after_ms: 1_900_000_000_000,
        cert_der: vec![0x30, 0x01, 0x00],
        enrolment: Some(Enrolment {
            service: "DEMO".into(),
            holder: "alice".into(),
            device: Some("CS-AA".into()),
        }),
        revoked_ms: None,
    };
    let plain = IssuedRecord {
        serial: "0c".into(),
        enrolment: None,
        ..cert.clone()
    };
    a.record_issued(&cert).unwrap();
    next_ms();
    a.record_issued(&plain).unwrap();
    assert_eq!(b.issued().unwrap(), vec![cert.clone(), plain.clone()]);
    assert_eq!(b.issued_one("0a1b").unwrap(), Some(cert));
    assert_eq!(b.issued_one("ffff").unwrap(), None);
    assert!(b.revoke("0a1b").unwrap());
    assert!(!a.revoke("0a1b").unwrap(), "already revoked");
    assert_not_found(a.revoke("ffff"), "certificate ffff");
    assert_eq!(a.revoked_serials().unwrap(), ["0a1b"]);
    assert!(a.issued_one("0a1b").unwrap().unwrap().revoked_ms.is_some());
    assert!(a.ca_changes().unwrap() > before, "a revocation is a change");
}

/// Donau keys: stored, read back with their private part by another
/// handle, never replaced, marked lost.
fn donau_round_trip(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    let cs = DonauKey {
        kind: DonauKind::Cs,
        value: "KUDOS:1".into(),
        year: 2026,
        public: vec![1; 32],
        private: Some(Zeroizing::new(b"PRIVATE-SCALAR-0123456789abcdef!".to_vec())),
    };
    let sign = DonauKey {
        kind: DonauKind::Sign,
        value: String::new(),
        year: 2026,
        public: vec![2; 32],
        private: Some(Zeroizing::new(vec![3; 32])),
    };
    assert!(a.add_donau_key(&cs).unwrap());
    assert!(b.add_donau_key(&sign).unwrap());
    let other = DonauKey {
        public: vec![9; 32],
        ..cs.clone()
    };
    assert!(!b.add_donau_key(&other).unwrap(), "never replaced");

    let keys = b.donau_keys().unwrap();
    let got: Vec<_> = keys
        .iter()
        .map(|k| {
            (
                k.kind,
                k.value.as_str(),
                k.year,
                k.public.clone(),
                k.private.as_ref().map(|p| p.to_vec()),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                DonauKind::Cs,
                "KUDOS:1",
                2026,
                vec![1; 32],
                Some(b"PRIVATE-SCALAR-0123456789abcdef!".to_vec())
            ),
            (DonauKind::Sign, "", 2026, vec![2; 32], Some(vec![3; 32])),
        ]
    );
    let before = b.generation().unwrap();
    assert!(a.mark_donau_lost(DonauKind::Cs, "KUDOS:1", 2026).unwrap());
    assert!(!a.mark_donau_lost(DonauKind::Rsa, "KUDOS:1", 2026).unwrap());
    assert!(b.generation().unwrap() > before);
    let public = b.donau_public_keys().unwrap();
    assert_eq!(
        public
            .iter()
            .map(|k| (k.kind, k.public.clone(), k.lost))
            .collect::<Vec<_>>(),
        [
            (DonauKind::Cs, vec![1; 32], true),
            (DonauKind::Sign, vec![2; 32], false)
        ]
    );
    assert!(b.donau_keys().unwrap()[0].private.is_none());
}

/// KeyTalk: memberships, password expiry, the first device registered
/// stays, and everything goes with the user.
fn keytalk_round_trip(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    assert!(!a.add_membership("kt", "alice", "DEMO").unwrap(), "no user");
    a.add_user("kt", "alice", "$argon2id$x").unwrap();
    assert!(b.add_membership("kt", "alice", "DEMO").unwrap());
    assert!(
        a.add_membership("kt", "alice", "DEMO").unwrap(),
        "idempotent"
    );
    assert!(a.add_membership("kt", "alice", "ALPHA").unwrap());
    assert!(b.is_member("kt", "alice", "DEMO").unwrap());
    assert!(!b.is_member("kt", "alice", "OTHER").unwrap());
    assert_eq!(b.memberships("kt", "alice").unwrap(), ["ALPHA", "DEMO"]);

    assert_eq!(b.password_expiry("kt", "alice").unwrap(), None);
    assert!(a.set_password_expiry("kt", "alice", Some(5)).unwrap());
    assert_eq!(b.password_expiry("kt", "alice").unwrap(), Some(5));
    assert!(b.set_password("kt", "alice", "$argon2id$y", None).unwrap());
    assert_eq!(a.password_expiry("kt", "alice").unwrap(), None);
    assert_eq!(
        a.user("kt", "alice").unwrap().unwrap().password_hash,
        "$argon2id$y"
    );
    assert!(!a.set_password_expiry("kt", "bob", Some(1)).unwrap());
    assert_not_found(
        a.password_expiry("kt", "bob"),
        "user \"bob\" in domain \"kt\"",
    );

    assert_eq!(
        a.register_device("kt", "alice", "DEMO", "CS-AA").unwrap(),
        "CS-AA"
    );
    assert_eq!(
        b.register_device("kt", "alice", "DEMO", "CS-BB").unwrap(),
        "CS-AA",
        "the first registration stays"
    );
    let devices = b.devices().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (
            devices[0].domain.as_str(),
            devices[0].name.as_str(),
            devices[0].service.as_str(),
            devices[0].hwsig.as_str()
        ),
        ("kt", "alice", "DEMO", "CS-AA")
    );
    assert_eq!(b.reset_devices("kt", "alice", Some("OTHER")).unwrap(), 0);
    assert_eq!(b.reset_devices("kt", "alice", Some("DEMO")).unwrap(), 1);
    a.register_device("kt", "alice", "DEMO", "CS-CC").unwrap();
    a.register_device("kt", "alice", "ALPHA", "CS-DD").unwrap();
    assert_eq!(b.reset_devices("kt", "alice", None).unwrap(), 2);
    a.register_device("kt", "alice", "DEMO", "CS-EE").unwrap();
    assert!(b.remove_user("kt", "alice").unwrap());
    assert!(a.devices().unwrap().is_empty(), "gone with the user");
    assert!(!a.is_member("kt", "alice", "DEMO").unwrap());
}

/// A generated secret is made once: two handles (and four racing on a
/// new name) get the same bytes; names differ.
fn generated_secrets_are_shared(backend: &Backend) {
    let a = backend.open();
    let b = backend.open();
    let device = a.generated_secret("device").unwrap();
    assert_eq!(*b.generated_secret("device").unwrap(), *device);
    assert_eq!(*a.generated_secret("device").unwrap(), *device);
    let link = b.generated_secret("link").unwrap();
    assert_ne!(*link, *device);
    assert_eq!(*a.generated_secret("link").unwrap(), *link);
    assert_ne!(*device, [0u8; 32]);

    const THREADS: usize = 4;
    let handles: Vec<Store> = (0..THREADS).map(|_| backend.open()).collect();
    let barrier = Barrier::new(THREADS);
    let got: Vec<[u8; 32]> = std::thread::scope(|s| {
        let threads: Vec<_> = handles
            .iter()
            .map(|store| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    *store.generated_secret("raced").unwrap()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(got.iter().all(|g| *g == got[0]), "one secret for everyone");
    assert_eq!(*a.generated_secret("raced").unwrap(), got[0]);
}

/// The ephemeral table's own round trip (put, read, expiry, remove, a
/// failing decision) on this backend.
fn ephemeral_round_trip(backend: &Backend) {
    super::ephemeral::tests::round_trip(&backend.open());
}

/// Eight handles race to take one single-use row: exactly one takes it,
/// and it is gone afterwards.
fn ephemeral_rows_are_taken_once_across_handles(backend: &Backend) {
    const THREADS: usize = 8;
    const KIND: &str = "single-use";
    let setup = backend.open();
    put_ephemeral(&setup, KIND, b"ref", b"the reference");
    assert_eq!(setup.ephemeral_count(KIND).unwrap(), 1);
    let handles: Vec<Store> = (0..THREADS).map(|_| backend.open()).collect();
    let winners = AtomicUsize::new(0);
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for store in &handles {
            let (winners, barrier) = (&winners, &barrier);
            s.spawn(move || {
                barrier.wait();
                // The decision may run more than once (PostgreSQL retries):
                // only the last run's verdict counts.
                let mut won = false;
                store
                    .ephemeral_update(KIND, b"ref", &mut |row| {
                        won = row.is_some();
                        if let Some(row) = row {
                            assert_eq!(&row.value[..], b"the reference");
                            Ok(EphemeralChange::Remove)
                        } else {
                            Ok(EphemeralChange::Keep)
                        }
                    })
                    .unwrap_or_else(|e| panic!("taking the row failed: {e}"));
                if won {
                    winners.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(winners.into_inner(), 1, "exactly one handle took the row");
    assert_eq!(get_ephemeral(&setup, KIND, b"ref"), None);
    assert_eq!(setup.ephemeral_count(KIND).unwrap(), 0);
}

/// `rewrap` moves keys, access keys, generated secrets and ephemeral rows
/// to a new KEK: they read back under it, and the old KEK no longer opens
/// the database.
fn rewrap_moves_everything_to_the_new_kek(backend: &Backend) {
    let store = backend.open();
    let tag = store
        .create_key("k", KeyType::Aes256, false, MATERIAL)
        .unwrap();
    store.add_version(&tag, b"second material").unwrap();
    let access = store.create_access_key().unwrap();
    let generated = store.generated_secret("device").unwrap();
    put_ephemeral(&store, "session", &[0xde, 0xad], b"EPHEMERAL-SECRET");
    let new_kek = backend.path("new-kek.key");

    let done = store.rewrap(&new_kek).unwrap();
    assert_ne!(done.old_kek, done.new_kek);
    // The KEK check, two key versions, the access key, the generated
    // secret, the ephemeral row.
    assert_eq!(done.blobs, 6, "{done:?}");

    let store = backend.open_with_kek(&new_kek).unwrap();
    assert_eq!(
        versions(&store, &tag),
        vec![
            (1, true, MATERIAL.to_vec()),
            (2, true, b"second material".to_vec())
        ]
    );
    let again = store.access_key(&access.access_key).unwrap().unwrap();
    assert_eq!(*again.secret_key, *access.secret_key);
    assert_eq!(*store.generated_secret("device").unwrap(), *generated);
    assert_eq!(
        get_ephemeral(&store, "session", &[0xde, 0xad]).as_deref(),
        Some(&b"EPHEMERAL-SECRET"[..])
    );
    drop(store);

    let message = expect_kek_error(backend.try_open());
    assert!(message.contains(&done.old_kek.to_string()), "{message}");
    // The new KEK still opens it after the refusal.
    assert!(
        backend
            .open_with_kek(&new_kek)
            .unwrap()
            .key(&tag)
            .unwrap()
            .is_some()
    );
}

/// A handle with another KEK, or with a missing KEK file, is refused on a
/// database that holds secrets; handles with the right KEK still work.
fn a_wrong_or_missing_kek_is_refused(backend: &Backend) {
    let a = backend.open();
    let tag = a.create_key("k", KeyType::Aes256, false, MATERIAL).unwrap();
    let other = backend.path("other-kek.key");
    Kek::create_file(&other).expect("another KEK file");
    let message = expect_kek_error(backend.open_with_kek(&other));
    assert!(message.contains("not the KEK"), "{message}");

    let missing = backend.path("missing-kek.key");
    let message = expect_kek_error(backend.open_with_kek(&missing));
    assert!(message.contains("does not exist"), "{message}");
    assert!(
        !missing.exists(),
        "no new KEK made for a database with secrets"
    );

    assert_eq!(versions(&a, &tag)[0].2, MATERIAL, "the first handle works");
    assert_eq!(versions(&backend.open(), &tag)[0].2, MATERIAL);
}

/// Four handles opening the same new database at once all succeed: the
/// migrations are applied once, one KEK is made and shared.
fn handles_opening_a_new_database_together_all_succeed(backend: &Backend) {
    const THREADS: usize = 4;
    let barrier = Barrier::new(THREADS);
    let handles: Vec<Store> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    backend.try_open()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("a concurrent first open failed: {e}"))
            })
            .collect()
    });
    let known = i64::try_from(super::migrations::MIGRATIONS.len()).unwrap();
    for store in &handles {
        assert_eq!(backend.schema_version(store), known);
        assert_eq!(store.is_shared(), backend.is_postgres());
        assert_eq!(store.path().is_some(), !backend.is_postgres());
        assert_eq!(store.generation().unwrap(), 0, "the schema is made once");
    }
    // They share one KEK: what one wraps the others unwrap.
    let tag = handles[0]
        .create_key("k", KeyType::Aes256, false, MATERIAL)
        .unwrap();
    for store in &handles[1..] {
        assert_eq!(versions(store, &tag)[0].2, MATERIAL);
    }
    // And a later open finds everything in place.
    let late = backend.open();
    assert_eq!(backend.schema_version(&late), known);
    assert_eq!(late.list_keys().unwrap().len(), 1);
}

// ---------------------------------------------------------------------
// PostgreSQL only
// ---------------------------------------------------------------------

/// The `pg_dump` of the test cluster's server version: the newest
/// `/usr/lib/postgresql/*/bin/pg_dump` (the server `scripts/pg.sh` runs),
/// else `pg_dump` on the `PATH`.
fn pg_dump_binary() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin/pg_dump");
            bin.is_file().then_some((version, bin))
        })
        .max();
    newest.map_or_else(|| PathBuf::from("pg_dump"), |(_, bin)| bin)
}

/// What `pg_dump` shows of this test's database holds no secret in clear
/// (neither as text nor as `bytea` hex), yet shows the public values.
fn pg_dump_shows_no_secret_in_clear(backend: &Backend) {
    let store = backend.open();
    let material: &[u8] = b"PG-DUMP-MATERIAL-must-not-leak-1";
    let material2: &[u8] = b"PG-DUMP-SECOND-VERSION-must-not-leak";
    let tag = store
        .create_key("dump-test-key", KeyType::Aes256, false, material)
        .unwrap();
    store.add_version(&tag, material2).unwrap();
    let access = store.create_access_key().unwrap();
    let generated = store.generated_secret("device").unwrap();
    let ephemeral: &[u8] = b"PG-DUMP-EPHEMERAL-VALUE-must-not-leak";
    put_ephemeral(&store, "session", b"dump-id", ephemeral);
    let ca_private: &[u8] = b"PG-DUMP-CA-PRIVATE-KEY-must-not-leak";
    assert!(
        store
            .create_ca(&[CaKeyRecord {
                name: "primary".into(),
                cert_der: vec![0x30, 0x00],
                key_pkcs8: Zeroizing::new(ca_private.to_vec()),
            }])
            .unwrap()
    );
    let donau_private: &[u8] = b"PG-DUMP-DONAU-PRIVATE-must-not-leak";
    assert!(
        store
            .add_donau_key(&DonauKey {
                kind: DonauKind::Sign,
                value: String::new(),
                year: 2026,
                public: vec![7; 32],
                private: Some(Zeroizing::new(donau_private.to_vec())),
            })
            .unwrap()
    );
    // A token hash is stored as it is: a control that the scan sees bytea.
    let refresh = *b"PG-DUMP-REFRESH-HASH-is-stored!!";
    store.add_user("corp", "alice", "$argon2id$x").unwrap();
    assert!(
        store
            .create_session(
                "corp",
                "alice",
                (&refresh, in_a_minute()),
                (&[1; 32], in_a_minute())
            )
            .unwrap()
    );
    drop(store);

    let url = &backend.pg.as_ref().expect("a PostgreSQL backend").url;
    let bin = pg_dump_binary();
    let out = Command::new(&bin)
        .arg("-d")
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = out.stdout;
    let lower = dump.to_ascii_lowercase();

    // The scan sees the data: public values are there, in clear.
    assert!(
        contains(&dump, tag.as_bytes()),
        "the key's tag is in the dump"
    );
    assert!(contains(&dump, b"dump-test-key"));
    assert!(contains(&dump, access.access_key.as_bytes()));
    assert!(
        contains(&lower, hex(&refresh).as_bytes()),
        "a token hash shows as bytea hex"
    );

    let secrets: [(&str, &[u8]); 7] = [
        ("key material", material),
        ("second version's material", material2),
        ("access key secret", access.secret_key.as_bytes()),
        ("generated secret", &generated[..]),
        ("ephemeral value", ephemeral),
        ("CA private key", ca_private),
        ("Donau private key", donau_private),
    ];
    for (what, secret) in secrets {
        assert!(!contains(&dump, secret), "the {what} is in the dump");
        assert!(
            !contains(&lower, hex(secret).as_bytes()),
            "the {what} is in the dump as hex"
        );
    }
}

/// A database that cannot be reached gives [`StoreError::Unavailable`]
/// within seconds (no hang, no other error).
fn an_unreachable_database_is_unavailable_quickly(backend: &Backend) {
    let mut options = StoreOptions::new(backend.path("unreachable"));
    options.url = Some("host=/nonexistent-dir user=postgres dbname=x".into());
    let start = Instant::now();
    let result = Store::open_with_env(&options, &|_| None);
    let took = start.elapsed();
    match result {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("/nonexistent-dir"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// A database that does not exist is a configuration fault: a
/// [`StoreError::Database`] naming it and the server's reason (SQLSTATE
/// 3D000), at once, not an "unavailable, retry" after a timeout.
fn a_missing_database_is_a_clear_fault_not_retry(backend: &Backend) {
    let mut options = StoreOptions::new(backend.path("missing"));
    let cluster = crate::store::testing::pg_cluster();
    options.url = Some(format!("{cluster} dbname=no_such_keypipe_db"));
    let start = Instant::now();
    match Store::open_with_env(&options, &|_| None) {
        Err(StoreError::Database(message)) => {
            assert!(
                message.contains("3D000") && message.contains("no_such_keypipe_db"),
                "{message}"
            );
        }
        other => panic!("expected Database, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// Keys and access keys made within the same millisecond, through two
/// handles, list in the order they were made (not by clock or by id).
fn keys_and_access_keys_list_in_creation_order(backend: &Backend) {
    let (a, b) = (backend.open(), backend.open());
    let mut tags = Vec::new();
    let mut access = Vec::new();
    for i in 0..24u8 {
        let store = if i % 2 == 0 { &a } else { &b };
        tags.push(
            store
                .create_key(&format!("k{i}"), KeyType::Aes256, false, &[i; 32])
                .unwrap(),
        );
        access.push(store.create_access_key().unwrap().access_key);
    }
    let listed: Vec<String> = a.list_keys().unwrap().into_iter().map(|k| k.tag).collect();
    assert_eq!(listed, tags);
    let listed: Vec<String> = b
        .list_access_keys()
        .unwrap()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(listed, access);
}

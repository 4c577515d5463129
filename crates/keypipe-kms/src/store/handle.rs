//! [`Store`]: the one store handle every service gets, over either
//! backend, with the KEK; opening it (data directory, database, KEK
//! resolution and check) and the transactions store code runs in.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use super::backend::postgres::PgDb;
use super::backend::sqlite::SqliteDb;
use super::backend::{Db, Mode};
use super::kek::{Kek, UnwrapFailed};
use super::sql::{Tx, args};
use super::{StoreError, StoreOptions};

/// Associated data of the KEK check value.
pub(super) const KEK_CHECK_AAD: &str = "kek_check";
/// The KEK check value's plaintext (not secret).
const KEK_CHECK_PLAINTEXT: &[u8] = b"keypipe-store-kek-check-v1";
/// Increments the generation counter (in every write transaction that
/// changes what the services cache).
const BUMP_GENERATION: &str = "UPDATE meta SET value = value + 1 WHERE name = 'generation'";

/// The durable store: a database (SQLite or PostgreSQL) and the KEK.
/// `Send + Sync`; share it behind an `Arc`.
pub struct Store {
    db: Db,
    pub(super) kek: Kek,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.db.describe())
            .field("kek", &self.kek.source())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating when needed) the store of `options`: the data
    /// directory, the database (PostgreSQL when `options.url` is set, else
    /// the SQLite file) with its migrations, the KEK (environment
    /// variable, else file, else a new file when the database holds no
    /// secret yet), checked against the database.
    pub fn open(options: &StoreOptions) -> Result<Store, StoreError> {
        Self::open_with_env(options, &|name| std::env::var_os(name))
    }

    /// [`Store::open`] reading environment variables through `lookup`
    /// (the server passes the KEK variable it has already taken out of its
    /// environment, so children never inherit it).
    pub fn open_with_env(
        options: &StoreOptions,
        lookup: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Store, StoreError> {
        prepare_data_dir(&options.data_dir)?;
        let db = match &options.url {
            Some(url) => Db::Postgres(PgDb::open(url)?),
            None => Db::Sqlite(SqliteDb::open(&options.db_path())?),
        };
        let kek = resolve_kek(options, &db, lookup)?;
        bind_kek(&db, &kek)?;
        tracing::debug!(db = %db.describe(), kek = %kek.source(), "store opened");
        Ok(Store { db, kek })
    }

    /// The SQLite database file; `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.db {
            Db::Sqlite(db) => Some(db.path()),
            Db::Postgres(_) => None,
        }
    }

    /// Where the database is, for messages (never a password).
    pub fn describe(&self) -> &str {
        self.db.describe()
    }

    /// True when several keypipe processes may share this store
    /// (PostgreSQL): state every process must see lives in it.
    pub fn is_shared(&self) -> bool {
        self.db.is_shared()
    }

    /// Runs `f` in a write transaction that also bumps the generation;
    /// commits when `f` succeeds, rolls back otherwise.
    pub(crate) fn write<T>(
        &self,
        f: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(true, f)
    }

    /// A write transaction, bumping the generation only when `bump` (users,
    /// sessions and counters are never cached, so their writes do not make
    /// the key caches start over). On PostgreSQL `f` may run more than once
    /// (a conflicting writer): it must not act outside the transaction.
    pub(crate) fn transact<T>(
        &self,
        bump: bool,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.run(Mode::Write, &mut |tx| {
            let out = f(tx)?;
            if bump {
                tx.execute(BUMP_GENERATION, &[])?;
            }
            Ok(out)
        })
    }

    /// Moves committed changes out of the SQLite write-ahead log into the
    /// database file (where `secure_delete` has zeroed what they replaced)
    /// and empties the log, unless a reader holds it; best effort, so a
    /// deleted secret's blob does not linger in the log. Nothing on
    /// PostgreSQL (its log is the server's).
    pub(crate) fn checkpoint(&self) {
        if let Db::Sqlite(db) = &self.db {
            db.checkpoint();
        }
    }

    /// Runs `f` in a read-only transaction (one snapshot).
    pub(crate) fn read<T>(
        &self,
        mut f: impl FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.run(Mode::Read, &mut f)
    }
}

/// Creates the data directory (mode 0700) or warns when an existing one is
/// open to group or others.
fn prepare_data_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "data directory is accessible to group or others; it should be mode 0700"
                );
            }
            Ok(())
        }
        Ok(_) => Err(StoreError::io(
            dir,
            std::io::Error::other("not a directory"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::io(dir, e)),
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

/// The database's KEK check value, if it has one (and so may hold secrets
/// wrapped under some KEK).
fn kek_check(db: &Db) -> Result<Option<Vec<u8>>, StoreError> {
    db.run(Mode::Read, &mut |tx| {
        tx.query_opt("SELECT wrapped FROM kek_check WHERE id = 1", &[])?
            .map(|mut r| r.get(0))
            .transpose()
    })
}

/// The KEK: the variable when present, else the file, else a new file
/// (only for a database that holds no secret yet).
fn resolve_kek(
    options: &StoreOptions,
    db: &Db,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Kek, StoreError> {
    if let Some(name) = &options.kek_env
        && let Some(kek) = Kek::from_env(name, lookup)?
    {
        return Ok(kek);
    }
    let path = options.kek_path();
    if let Some(kek) = Kek::load_file(&path)? {
        return Ok(kek);
    }
    if kek_check(db)?.is_some() {
        let env_hint = match &options.kek_env {
            Some(name) => format!(" or set {name}"),
            None => String::new(),
        };
        return Err(StoreError::Kek(format!(
            "KEK file {} does not exist but database {} already holds secrets wrapped \
             under a KEK; restore that file{env_hint} (a new KEK could not open them)",
            path.display(),
            db.describe()
        )));
    }
    Kek::create_file(&path)
}

/// Stores the KEK check value when the database has none, and checks that
/// `kek` unwraps it.
fn bind_kek(db: &Db, kek: &Kek) -> Result<(), StoreError> {
    let blob = match kek_check(db)? {
        Some(blob) => blob,
        None => {
            let wrapped = kek.wrap(KEK_CHECK_AAD, KEK_CHECK_PLAINTEXT)?;
            // Another process may insert first: then its value is checked.
            db.run(Mode::Write, &mut |tx| {
                tx.execute(
                    "INSERT INTO kek_check (id, wrapped) VALUES (1, ?1) ON CONFLICT DO NOTHING",
                    args![&wrapped],
                )
            })?;
            kek_check(db)?.ok_or_else(|| {
                StoreError::Corrupt("the KEK check value vanished while opening".into())
            })?
        }
    };
    match kek.unwrap(KEK_CHECK_AAD, &blob) {
        Ok(plain) if plain.as_slice() == KEK_CHECK_PLAINTEXT => Ok(()),
        Err(e @ UnwrapFailed::OtherKek { .. }) => Err(StoreError::Kek(format!(
            "the KEK from {} is not the KEK of database {}: its check value {e}",
            kek.source(),
            db.describe()
        ))),
        _ => Err(StoreError::Kek(format!(
            "the KEK from {} is not the KEK of database {} (its check value does not \
             unwrap): wrong KEK",
            kek.source(),
            db.describe()
        ))),
    }
}

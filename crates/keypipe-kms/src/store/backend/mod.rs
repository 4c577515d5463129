//! The two database engines the store runs on: the embedded SQLite file
//! (one process, or a CLI beside it) and PostgreSQL (several keypipe
//! processes of one site). Store code never sees which: it gets a
//! [`Tx`] and writes the SQL both share.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use super::StoreError;
use super::sql::Tx;

/// What a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Reads only, from one consistent snapshot.
    Read,
    /// Reads and writes, serialized with every other writer (SQLite:
    /// `BEGIN IMMEDIATE`; PostgreSQL: `SERIALIZABLE`, retried on a
    /// serialization failure, so the closure may run more than once).
    Write,
}

/// The database behind a store.
pub(crate) enum Db {
    /// An embedded SQLite file.
    Sqlite(sqlite::SqliteDb),
    /// A PostgreSQL server, through a connection pool.
    Postgres(postgres::PgDb),
}

impl Db {
    /// Runs `f` in a transaction of `mode`; commits when it returns `Ok`,
    /// rolls back otherwise.
    pub(crate) fn run<T>(
        &self,
        mode: Mode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self {
            Db::Sqlite(db) => db.run(mode, f),
            Db::Postgres(db) => db.run(mode, f),
        }
    }

    /// Where the database is, for messages: the file, or the server
    /// address and database name (never a password).
    pub(crate) fn describe(&self) -> &str {
        match self {
            Db::Sqlite(db) => db.describe(),
            Db::Postgres(db) => db.describe(),
        }
    }

    /// True when several keypipe processes may share this database (so
    /// state that must be seen by all of them lives in it).
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }
}

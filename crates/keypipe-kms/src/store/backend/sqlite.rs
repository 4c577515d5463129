//! The embedded SQLite backend: one connection behind a mutex.
//!
//! `PRAGMA journal_mode=WAL`, `secure_delete=ON` (deleted content is
//! zeroed), `synchronous=FULL` (a committed write survives a power cut),
//! `foreign_keys=ON`, and a 5 s busy timeout. Writes are `BEGIN IMMEDIATE`
//! transactions, so a second process (the CLI) waits for the other's write
//! instead of failing.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params_from_iter};

use super::Mode;
use crate::store::StoreError;
use crate::store::migrations;
use crate::store::sql::{Row, Tx, Value};

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA journal_mode=WAL`, retried every 5 ms for up to
/// [`BUSY_TIMEOUT`] while another connection holds the lock: SQLite can
/// answer a journal-mode switch busy without waiting in its busy handler,
/// so handles opening a new database together would otherwise fail. (An
/// attempt may itself wait up to `BUSY_TIMEOUT`: at worst about twice it
/// in all.)
fn enter_wal(conn: &Connection) -> Result<String, StoreError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

/// An open SQLite database.
pub(crate) struct SqliteDb {
    conn: Mutex<Connection>,
    path: PathBuf,
    shown: String,
}

impl SqliteDb {
    /// Opens (creating, mode `0600`) the database file `path`, sets its
    /// pragmas and applies the missing migrations.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        // Create the database file ourselves so it is 0600 (SQLite gives
        // the WAL and shm files the database's mode).
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        // No URI interpretation of the path.
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode = enter_wal(&conn)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::io(
                path,
                std::io::Error::other(format!(
                    "SQLite refused WAL journal mode (got `{mode}`); \
                     the filesystem may not support it"
                )),
            ));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Deleted or overwritten content is zeroed, not left in free pages.
        conn.pragma_update(None, "secure_delete", true)?;
        migrations::migrate(&mut conn)?;
        Ok(SqliteDb {
            conn: Mutex::new(conn),
            path: path.to_owned(),
            shown: path.display().to_string(),
        })
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)`, its outcome ignored (a reader
    /// holding the log makes it a partial checkpoint).
    pub(crate) fn checkpoint(&self) {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    pub(crate) fn describe(&self) -> &str {
        &self.shown
    }

    pub(crate) fn run<T>(
        &self,
        mode: Mode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic never leaves a transaction open (it rolls back on drop).
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let behavior = match mode {
            Mode::Read => TransactionBehavior::Deferred,
            Mode::Write => TransactionBehavior::Immediate,
        };
        let tx = conn.transaction_with_behavior(behavior)?;
        let out = f(&mut SqliteTx(&tx))?;
        tx.commit()?;
        Ok(out)
    }
}

/// A transaction on the SQLite connection.
struct SqliteTx<'a>(&'a rusqlite::Transaction<'a>);

impl Tx for SqliteTx<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let n = self
            .0
            .prepare_cached(sql)?
            .execute(params_from_iter(args.iter()))?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Text(t) => Value::Text(
                        std::str::from_utf8(t)
                            .map_err(|_| StoreError::Corrupt(format!("column {i}: not UTF-8")))?
                            .to_owned(),
                    ),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    ValueRef::Real(_) => {
                        return Err(StoreError::Corrupt(format!(
                            "column {i}: a floating-point value"
                        )));
                    }
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(format!("SQLite: {e}"))
            }
            _ => StoreError::Database(format!("SQLite: {e}")),
        }
    }
}

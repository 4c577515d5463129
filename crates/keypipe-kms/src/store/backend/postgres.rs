//! The PostgreSQL backend: a pool of connections (`r2d2`) over the
//! synchronous `postgres` client, for several keypipe processes of one
//! site sharing one database.
//!
//! - **Writes** run `SERIALIZABLE`: two processes doing the same
//!   read-modify-write (a rotation, an encryption reservation, a one-time
//!   reference) cannot both succeed on the same read. A serialization
//!   failure or deadlock is retried ([`WRITE_ATTEMPTS`] in all, with a
//!   short random back-off), so store code may run more than once: it must
//!   not have effects outside the transaction.
//! - **Reads** run `REPEATABLE READ, READ ONLY`: one snapshot.
//! - **Faults.** A connection that cannot be made, or is lost (the server
//!   restarted), gives [`StoreError::Unavailable`]; the services answer
//!   503 with `Retry-After`. A lost connection is dropped from the pool,
//!   so the next request gets a new one. A transaction whose `BEGIN` failed
//!   on a connection lost while idle is started again on another: nothing
//!   ran yet. One whose connection was lost later is not retried: its
//!   commit may or may not have happened.
//! - **Statements** are prepared once per connection and cached.
//! - **Migrations** are the SQLite steps in PostgreSQL's types (see
//!   `migrations::postgres_dialect`), applied under a row lock on
//!   `keypipe_schema`, so processes starting together apply them once.
//!
//! The connection is plain TCP or a Unix socket: run the database on the
//! same host or a private network. Only wrapped blobs, hashes and public
//! values reach it (see `store`).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::str::FromStr;
use std::time::Duration;

use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, IsolationLevel, NoTls, Statement};

use super::Mode;
use crate::store::StoreError;
use crate::store::migrations;
use crate::store::sql::{Row, Tx, Value, dollar_placeholders};

/// Connections per process at most.
pub(crate) const POOL_SIZE: u32 = 16;
/// How long a request waits for a connection (then: unavailable).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection whose sent data stays unacknowledged this long is dead.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-session settings unless the URL sets `options`: no statement runs
/// longer than 10 s, no transaction idles longer than 30 s.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=10000 -c idle_in_transaction_session_timeout=30000";
/// Tries of a write transaction that keeps meeting concurrent writers.
pub(crate) const WRITE_ATTEMPTS: u32 = 12;

/// One pooled connection with its prepared statements.
pub(crate) struct PgConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Makes the pool's connections.
struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConn, postgres::Error> {
        Ok(PgConn {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// A PostgreSQL database.
pub(crate) struct PgDb {
    pool: r2d2::Pool<Manager>,
    shown: String,
}

impl PgDb {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db`, or
    /// libpq's `key=value` form) and applies the missing migrations.
    pub(crate) fn open(url: &str) -> Result<Self, StoreError> {
        let config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Database(format!("store URL is not a PostgreSQL URL: {e}")))?;
        let shown = describe(&config);
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that stops answering (a cut network, a hung server)
        // fails the call within seconds, so callers get their 503, never a
        // thread stuck until TCP gives up.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .tcp_user_timeout(SOCKET_TIMEOUT);
        if config.get_options().is_none() {
            config.options(SESSION_OPTIONS);
        }
        // One connection first, for a clear error (the pool only says it
        // timed out): a wrong database, role or password is not "retry".
        config
            .connect(NoTls)
            .map_err(|e| match StoreError::from(e) {
                StoreError::Unavailable(m) => {
                    StoreError::Unavailable(format!("PostgreSQL {shown}: cannot connect: {m}"))
                }
                StoreError::Database(m) => {
                    StoreError::Database(format!("PostgreSQL {shown}: cannot connect: {m}"))
                }
                other => other,
            })?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .test_on_check_out(false)
            .error_handler(Box::new(LogErrors))
            .build(Manager { config })
            .map_err(|e| {
                StoreError::Unavailable(format!("PostgreSQL {shown}: cannot connect: {e}"))
            })?;
        let db = PgDb { pool, shown };
        let mut conn = db.conn()?;
        migrate(&mut conn.client, migrations::MIGRATIONS).map_err(|e| db.context(e))?;
        Ok(db)
    }

    pub(crate) fn describe(&self) -> &str {
        &self.shown
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        self.pool.get().map_err(|e| {
            StoreError::Unavailable(format!("PostgreSQL {}: no connection: {e}", self.shown))
        })
    }

    fn context(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("PostgreSQL {}: {m}", self.shown))
            }
            other => other,
        }
    }

    pub(crate) fn run<T>(
        &self,
        mode: Mode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (mut conflicts, mut lost) = (0, 0);
        loop {
            let (out, begun) = self.once(mode, f);
            match out {
                Err(StoreError::Conflict) => {
                    conflicts += 1;
                    if conflicts == WRITE_ATTEMPTS {
                        return Err(StoreError::Unavailable(format!(
                            "PostgreSQL {}: {WRITE_ATTEMPTS} tries met concurrent writes",
                            self.shown
                        )));
                    }
                    backoff(conflicts);
                }
                // A connection lost while idle (the server restarted)
                // fails at BEGIN, before anything ran: take another one
                // (the broken one leaves the pool when it is returned).
                Err(StoreError::Unavailable(_)) if !begun && lost < POOL_SIZE => lost += 1,
                other => return other.map_err(|e| self.context(e)),
            }
        }
    }

    /// One try: its outcome, and whether `BEGIN` succeeded.
    fn once<T>(
        &self,
        mode: Mode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, bool) {
        let mut conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return (Err(e), true),
        };
        let PgConn { client, statements } = &mut *conn;
        let builder = match mode {
            Mode::Read => client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true),
            Mode::Write => client
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable),
        };
        let mut tx = match builder.start() {
            Ok(tx) => tx,
            Err(e) => return (Err(e.into()), false),
        };
        let out = f(&mut PgTx {
            tx: &mut tx,
            statements,
        })
        .and_then(|out| {
            tx.commit()?;
            Ok(out)
        });
        (out, true)
    }
}

/// Sleeps 1–2^n ms (capped), so retrying writers spread out.
fn backoff(attempt: u32) {
    let mut b = [0u8; 2];
    let jitter = getrandom::fill(&mut b).map_or(0, |()| u64::from(u16::from_le_bytes(b)));
    let cap = 1u64 << attempt.min(7);
    std::thread::sleep(Duration::from_millis(1 + jitter % cap));
}

/// `host[:port]/dbname as user`, never the password.
fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "{}:{}/{} as {}",
        hosts.join(","),
        if ports.is_empty() {
            "5432".to_owned()
        } else {
            ports.join(",")
        },
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)")
    )
}

/// Logs the pool's connection errors (warn), without the URL.
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, e: postgres::Error) {
        tracing::warn!("PostgreSQL connection failed: {}", explain(&e));
    }
}

/// A transaction on one pooled connection.
struct PgTx<'a, 'c> {
    tx: &'a mut postgres::Transaction<'c>,
    statements: &'a mut HashMap<String, Statement>,
}

impl PgTx<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(&dollar_placeholders(sql))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Tx for PgTx<'_, '_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        Ok(self.tx.execute(&s, &params(args))?)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        self.tx
            .query(&s, &params(args))?
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, Value>(i).map_err(StoreError::from))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }
}

/// Applies the missing steps of `steps` (in PostgreSQL's dialect) and
/// records the version, in one transaction under a row lock.
pub(crate) fn migrate(client: &mut Client, steps: &[&str]) -> Result<(), StoreError> {
    let known = steps.len() as u32;
    let setup = "CREATE TABLE IF NOT EXISTS keypipe_schema (\
                     id BIGINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL); \
                 INSERT INTO keypipe_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING";
    // Two first starts at once may race on CREATE TABLE: the loser tries
    // again and finds the table.
    if client.batch_execute(setup).is_err() {
        client.batch_execute(setup)?;
    }
    let mut tx = client.transaction()?;
    let found: i64 = tx
        .query_one(
            "SELECT version FROM keypipe_schema WHERE id = 1 FOR UPDATE",
            &[],
        )?
        .get(0);
    let found = migrations::check_version(found, known)?;
    for (i, step) in steps.iter().enumerate().skip(found as usize) {
        tx.batch_execute(&migrations::postgres_dialect(step))?;
        tracing::info!(
            version = i + 1,
            "applied store schema migration (PostgreSQL)"
        );
    }
    tx.execute(
        "UPDATE keypipe_schema SET version = $1 WHERE id = 1",
        &[&i64::from(known)],
    )?;
    tx.commit()?;
    Ok(())
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to a {ty} parameter").into()),
            },
            Value::Text(t) => t.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Int(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Int(bool::from_sql(ty, raw)?.into()),
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ if <String as FromSql>::accepts(ty) => Value::Text(String::from_sql(ty, raw)?),
            _ => return Err(format!("a column of type {ty} is not read by keypipe").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// What a PostgreSQL error says, for logs and messages: the server's
/// severity, SQLSTATE and message, never its `DETAIL` (which may echo the
/// values of a row).
fn explain(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if let Some(code) = e.code() {
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
            {
                return StoreError::Conflict;
            }
            // 08: connection exception; 53: insufficient resources;
            // 57: operator intervention (shutdown, restart), but 57014
            // (a statement timeout) is a slow database, also retry later.
            // Everything else (28: bad role or password, 3D: no such
            // database, 42: schema) is a fault to fix, not to retry.
            if matches!(&code.code()[..2], "08" | "53" | "57") {
                return StoreError::Unavailable(explain(&e));
            }
            return StoreError::Database(format!("PostgreSQL: {}", explain(&e)));
        }
        let io = e
            .source()
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        if e.is_closed() || io {
            StoreError::Unavailable(format!("connection lost: {e}"))
        } else {
            StoreError::Database(format!("PostgreSQL: {e}"))
        }
    }
}

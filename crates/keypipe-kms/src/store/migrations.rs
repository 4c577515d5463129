//! Versioned schema migrations of the store, one list for both backends.
//!
//! The steps are written in SQLite's dialect; [`postgres_dialect`] gives a
//! step in PostgreSQL's (`STRICT` and `WITHOUT ROWID` dropped, `INTEGER`
//! as `BIGINT`, `BLOB` as `BYTEA`): nothing else in them is specific to
//! one engine. The PostgreSQL backend keeps the version in the
//! `keypipe_schema` table and applies steps under its row lock.
//!
//! On SQLite the schema version is `PRAGMA user_version` (0 for a new database; it is
//! part of the database header and so transactional). [`MIGRATIONS`] is the
//! ordered list of steps: step `i` takes the schema from version `i` to
//! `i + 1`. At open, the missing steps and the new version are applied in
//! one `BEGIN IMMEDIATE` transaction: two processes opening at once apply
//! them once, and a failing step leaves the database as it was. A database
//! whose version is above `MIGRATIONS.len()` is refused.
//!
//! Never edit a published step: append a new one.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// The migration steps, in order.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: meta (generation), KEK check, master keys, versions, access keys.
    r#"
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    INSERT INTO meta (name, value) VALUES ('generation', 0);

    CREATE TABLE kek_check (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        wrapped BLOB NOT NULL
    ) STRICT;

    CREATE TABLE master_keys (
        tag        TEXT PRIMARY KEY NOT NULL,
        name       TEXT NOT NULL,
        key_type   TEXT NOT NULL CHECK (key_type IN ('AES256', 'RSA2048', 'ECDSA')),
        convergent INTEGER NOT NULL CHECK (convergent IN (0, 1)),
        enabled    INTEGER NOT NULL CHECK (enabled IN (0, 1)),
        created_ms INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE key_versions (
        tag        TEXT NOT NULL REFERENCES master_keys (tag) ON DELETE CASCADE,
        version    INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
        enabled    INTEGER NOT NULL CHECK (enabled IN (0, 1)),
        created_ms INTEGER NOT NULL,
        wrapped    BLOB NOT NULL,
        PRIMARY KEY (tag, version)
    ) STRICT;

    CREATE TABLE access_keys (
        access_key     TEXT PRIMARY KEY NOT NULL,
        api_key        TEXT NOT NULL UNIQUE,
        enabled        INTEGER NOT NULL CHECK (enabled IN (0, 1)),
        created_ms     INTEGER NOT NULL,
        revoked_ms     INTEGER,
        secret_wrapped BLOB NOT NULL
    ) STRICT;
    "#,
    // 2: users (password hashes) and their login sessions (token hashes).
    r#"
    CREATE TABLE users (
        domain        TEXT NOT NULL,
        name          TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_ms    INTEGER NOT NULL,
        PRIMARY KEY (domain, name)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE sessions (
        refresh_hash BLOB PRIMARY KEY NOT NULL,
        domain       TEXT NOT NULL,
        name         TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        expires_ms   INTEGER NOT NULL,
        FOREIGN KEY (domain, name) REFERENCES users (domain, name) ON DELETE CASCADE
    ) STRICT;
    CREATE INDEX sessions_user ON sessions (domain, name, created_ms);
    CREATE INDEX sessions_expiry ON sessions (expires_ms);

    CREATE TABLE access_tokens (
        token_hash   BLOB PRIMARY KEY NOT NULL,
        refresh_hash BLOB NOT NULL REFERENCES sessions (refresh_hash) ON DELETE CASCADE,
        expires_ms   INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX access_tokens_session ON access_tokens (refresh_hash, expires_ms);
    CREATE INDEX access_tokens_expiry ON access_tokens (expires_ms);
    "#,
    // 3: Taler Donau keys (public parts in clear, private parts wrapped).
    r#"
    CREATE TABLE donau_keys (
        kind            TEXT NOT NULL CHECK (kind IN ('RSA', 'CS', 'SIGN')),
        value           TEXT NOT NULL,
        year            INTEGER NOT NULL CHECK (year BETWEEN 1 AND 9999),
        public          BLOB NOT NULL,
        private_wrapped BLOB,
        created_ms      INTEGER NOT NULL,
        PRIMARY KEY (kind, value, year)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 4: secrets generated on first start (wrapped), e.g. the simulated
    // device's and the link's.
    r#"
    CREATE TABLE generated_secrets (
        name       TEXT PRIMARY KEY NOT NULL,
        wrapped    BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    "#,
    // 5: keypipe's CA: its keys (certificate in clear, private key
    // wrapped) and every certificate it issued, with its revocation.
    r#"
    CREATE TABLE ca_keys (
        name        TEXT PRIMARY KEY NOT NULL CHECK (name IN ('primary', 'signing', 'server')),
        cert_der    BLOB NOT NULL,
        key_wrapped BLOB NOT NULL,
        created_ms  INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE issued_certs (
        serial     TEXT PRIMARY KEY NOT NULL,
        issuer     TEXT NOT NULL REFERENCES ca_keys (name),
        subject    TEXT NOT NULL,
        role       TEXT NOT NULL,
        not_after  INTEGER NOT NULL,
        cert_der   BLOB NOT NULL,
        issued_ms  INTEGER NOT NULL,
        revoked_ms INTEGER
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX issued_certs_revoked ON issued_certs (revoked_ms) WHERE revoked_ms IS NOT NULL;
    "#,
    // 6: what each access key may do (keyTag or '*', actions or '*').
    // Access keys made before could use every key: they keep a '*' grant.
    r#"
    CREATE TABLE access_key_grants (
        access_key TEXT NOT NULL REFERENCES access_keys (access_key) ON DELETE CASCADE,
        key_tag    TEXT NOT NULL,
        actions    TEXT NOT NULL,
        PRIMARY KEY (access_key, key_tag)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO access_key_grants (access_key, key_tag, actions)
        SELECT access_key, '*', '*' FROM access_keys;
    "#,
    // 7: KeyTalk: password expiry, service membership, registered devices
    // (HWSIG), and what each certificate was issued for.
    r#"
    ALTER TABLE users ADD COLUMN password_expires_ms INTEGER;

    CREATE TABLE keytalk_members (
        domain  TEXT NOT NULL,
        name    TEXT NOT NULL,
        service TEXT NOT NULL,
        PRIMARY KEY (domain, name, service),
        FOREIGN KEY (domain, name) REFERENCES users (domain, name) ON DELETE CASCADE
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE keytalk_devices (
        domain        TEXT NOT NULL,
        name          TEXT NOT NULL,
        service       TEXT NOT NULL,
        hwsig         TEXT NOT NULL,
        registered_ms INTEGER NOT NULL,
        PRIMARY KEY (domain, name, service),
        FOREIGN KEY (domain, name) REFERENCES users (domain, name) ON DELETE CASCADE
    ) STRICT, WITHOUT ROWID;

    ALTER TABLE issued_certs ADD COLUMN service TEXT;
    ALTER TABLE issued_certs ADD COLUMN holder TEXT;
    ALTER TABLE issued_certs ADD COLUMN device TEXT;
    "#,
    // 8: AES-GCM encryptions reserved per key version (ncp::budget).
    r#"
    ALTER TABLE key_versions ADD COLUMN encryptions INTEGER NOT NULL DEFAULT 0;
    "#,
    // 9: short-lived state shared by the processes of a site (ephemeral):
    // values wrapped under the KEK, forgotten at forget_ms.
    r#"
    CREATE TABLE ephemeral (
        kind      TEXT NOT NULL,
        id        BLOB NOT NULL,
        wrapped   BLOB NOT NULL,
        forget_ms INTEGER NOT NULL,
        PRIMARY KEY (kind, id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX ephemeral_forget ON ephemeral (kind, forget_ms);
    "#,
    // 10: creation order of keys and access keys that does not depend on
    // the clock or on SQLite's rowid (the generation counter of the
    // creating transaction; NULL for older rows).
    r#"
    ALTER TABLE master_keys ADD COLUMN seq INTEGER;
    ALTER TABLE access_keys ADD COLUMN seq INTEGER;
    "#,
];

/// The schema version this code writes.
#[cfg(test)]
pub(crate) fn known_version() -> u32 {
    MIGRATIONS.len() as u32
}

/// Brings the database to the newest schema.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_with(conn, MIGRATIONS)
}

/// Brings the database to version `steps.len()` with `steps`.
pub(crate) fn migrate_with(conn: &mut Connection, steps: &[&str]) -> Result<(), StoreError> {
    let known = steps.len() as u32;
    // A cheap check first, so an up-to-date database takes no write lock.
    if check_version(user_version(conn)?, known)? == known {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Re-read under the write lock: another process may have migrated.
    let found = check_version(user_version(&tx)?, known)?;
    for (i, step) in steps.iter().enumerate().skip(found as usize) {
        tx.execute_batch(step)?;
        tracing::info!(version = i + 1, "applied store schema migration");
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// `step` in PostgreSQL's dialect.
pub(crate) fn postgres_dialect(step: &str) -> String {
    step.replace(") STRICT, WITHOUT ROWID;", ");")
        .replace(") STRICT;", ");")
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
}

/// `found` as a version not above `known`.
pub(crate) fn check_version(found: i64, known: u32) -> Result<u32, StoreError> {
    match u32::try_from(found) {
        Ok(v) if v <= known => Ok(v),
        Ok(v) => Err(StoreError::Newer { found: v, known }),
        Err(_) if found > 0 => Err(StoreError::Newer {
            found: u32::MAX,
            known,
        }),
        Err(_) => Err(StoreError::Corrupt(format!(
            "database schema version {found} is negative"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> i64 {
        user_version(conn).unwrap()
    }

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn), i64::from(known_version()));
        let generation: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'generation'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(generation, 0);
        // Again: nothing to do, nothing fails (the CREATE TABLEs would).
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn), i64::from(known_version()));
    }

    #[test]
    fn later_steps_are_applied_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        let steps = ["CREATE TABLE a (x INTEGER);", "INSERT INTO a VALUES (1);"];
        migrate_with(&mut conn, &steps[..1]).unwrap();
        assert_eq!(version(&conn), 1);
        migrate_with(&mut conn, &steps).unwrap();
        assert_eq!(version(&conn), 2);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_failing_step_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        let steps = ["CREATE TABLE a (x INTEGER);", "THIS IS NOT SQL;"];
        assert!(matches!(
            migrate_with(&mut conn, &steps),
            Err(StoreError::Database(_))
        ));
        assert_eq!(version(&conn), 0);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the first step was rolled back too");
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        conn.pragma_update(None, "user_version", known_version() + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(
            matches!(err, StoreError::Newer { found, known } if found == known_version() + 1 && known == known_version()),
            "{err}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(version(&conn), i64::from(known_version() + 1));
    }
}

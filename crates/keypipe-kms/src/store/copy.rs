//! `keypipe store migrate-to URL`: copies an SQLite store into an empty
//! PostgreSQL database, wrapped blobs as they are (the KEK does not
//! change, and no secret is unwrapped to be copied), in one transaction,
//! then checks it: the row count of every table, and a sample of
//! decryptions through a store opened on the target with the same KEK,
//! compared with the same values read from the source.

use std::collections::HashSet;

use super::backend::postgres::PgDb;
use super::backend::{Db, Mode};
use super::sql::{Row, Tx};
use super::{CaStore, KeyStore, SecretStore, Store, StoreError, StoreOptions};

/// Every table of the schema, parents before children (foreign keys).
pub(crate) const TABLES: &[&str] = &[
    "meta",
    "kek_check",
    "master_keys",
    "key_versions",
    "access_keys",
    "access_key_grants",
    "users",
    "sessions",
    "access_tokens",
    "donau_keys",
    "generated_secrets",
    "ca_keys",
    "issued_certs",
    "keytalk_members",
    "keytalk_devices",
    "ephemeral",
];

/// Keys, access keys and generated secrets decrypted through the target
/// and compared with the source, at most (each kind).
const SAMPLE: usize = 100;

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// `(table, rows)` in copy order.
    pub tables: Vec<(&'static str, u64)>,
    /// Secrets decrypted through the target and found equal.
    pub checked: usize,
}

fn count(tx: &mut dyn Tx, table: &str) -> Result<u64, StoreError> {
    tx.query_opt(&format!("SELECT count(*) FROM {table}"), &[])?
        .ok_or_else(|| StoreError::Corrupt(format!("count of {table}")))?
        .get(0)
}

/// The columns of `table` in the source (SQLite).
fn columns(tx: &mut dyn Tx, table: &str) -> Result<Vec<String>, StoreError> {
    tx.query(
        &format!("SELECT name FROM pragma_table_info('{table}')"),
        &[],
    )?
    .into_iter()
    .map(|mut r| r.get(0))
    .collect()
}

impl Store {
    /// Copies this (SQLite) store into the empty PostgreSQL database at
    /// `url` and checks the copy (see the module docs). `options` are this
    /// store's options (the target is opened with the same KEK). Refuses a
    /// target that holds anything, naming the table.
    pub fn migrate_to(&self, options: &StoreOptions, url: &str) -> Result<Copied, StoreError> {
        if self.is_shared() {
            return Err(StoreError::Database(
                "migrate-to copies an SQLite store; this store is already on PostgreSQL".into(),
            ));
        }
        let target = Db::Postgres(PgDb::open(url)?);
        // The source's write lock is held for the whole copy (SQLite
        // `BEGIN IMMEDIATE`): a server or CLI still writing waits, then
        // fails, rather than have its write left behind.
        let tables = self.transact(false, |source| {
            let mut snapshot = Vec::new();
            for &table in TABLES {
                let cols = columns(source, table)?;
                let rows =
                    source.query(&format!("SELECT {} FROM {table}", cols.join(", ")), &[])?;
                snapshot.push((table, cols, rows));
            }
            target.run(Mode::Write, &mut |tx| fill(tx, &snapshot))
        })?;
        // Counts, as the target sees them after the commit.
        let counts = target.run(Mode::Read, &mut |tx| {
            TABLES
                .iter()
                .map(|t| Ok((*t, count(tx, t)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })?;
        if counts != tables {
            return Err(StoreError::Corrupt(format!(
                "row counts differ after the copy: source {tables:?}, target {counts:?}"
            )));
        }
        drop(target);
        let mut target_options = options.clone();
        target_options.url = Some(url.to_owned());
        let copy = Store::open(&target_options)?;
        let checked = compare(self, &copy)?;
        tracing::info!(target = %copy.describe(), checked, "store copied to PostgreSQL");
        Ok(Copied { tables, checked })
    }
}

/// Constant-time equality of two secrets.
fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

/// Checks that the target is empty, then writes `snapshot` (rows by
/// table, in [`TABLES`] order) into it; rows per table.
fn fill(
    tx: &mut dyn Tx,
    snapshot: &[(&'static str, Vec<String>, Vec<Row>)],
) -> Result<Vec<(&'static str, u64)>, StoreError> {
    for &table in TABLES {
        // `meta` holds the generation counter from the migrations.
        let present = if table == "meta" {
            count(tx, "meta")?.saturating_sub(1)
        } else {
            count(tx, table)?
        };
        if present > 0 {
            return Err(StoreError::Exists {
                what: format!(
                    "data in the target database ({table} has {present} rows); \
                     migrate-to only fills an empty database"
                ),
            });
        }
    }
    tx.execute("DELETE FROM meta", &[])?;
    let mut copied = Vec::new();
    for (table, cols, rows) in snapshot {
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            cols.join(", "),
            marks.join(", ")
        );
        for row in rows {
            tx.execute(&insert, &row.0)?;
        }
        copied.push((*table, rows.len() as u64));
    }
    Ok(copied)
}

/// Decrypts a sample of secrets through both stores and compares them;
/// how many were compared.
fn compare(source: &Store, copy: &Store) -> Result<usize, StoreError> {
    let differ = |what: String| StoreError::Corrupt(format!("{what} differs after the copy"));
    let mut checked = 0;
    for summary in source.list_keys()?.into_iter().take(SAMPLE) {
        let (a, b) = (source.key(&summary.tag)?, copy.key(&summary.tag)?);
        let (Some(a), Some(b)) = (a, b) else {
            return Err(differ(format!("key {}", summary.tag)));
        };
        if a.versions.len() != b.versions.len()
            || a.versions
                .iter()
                .zip(&b.versions)
                .any(|(x, y)| x.version != y.version || !same(&x.material, &y.material))
        {
            return Err(differ(format!("key {}", summary.tag)));
        }
        checked += a.versions.len();
    }
    for (id, _, _) in source.list_access_keys()?.into_iter().take(SAMPLE) {
        let (a, b) = (source.access_key(&id)?, copy.access_key(&id)?);
        let same = match (a, b) {
            (Some(a), Some(b)) => same(a.secret_key.as_bytes(), b.secret_key.as_bytes()),
            _ => false,
        };
        if !same {
            return Err(differ(format!("access key {id}")));
        }
        checked += 1;
    }
    let names: HashSet<String> = source.read(|tx| {
        tx.query("SELECT name FROM generated_secrets", &[])?
            .into_iter()
            .map(|mut r| r.get(0))
            .collect()
    })?;
    for name in names.iter().take(SAMPLE) {
        let (a, b) = (source.generated_secret(name)?, copy.generated_secret(name)?);
        if !same(&a[..], &b[..]) {
            return Err(differ(format!("generated secret {name}")));
        }
        checked += 1;
    }
    let (a, b) = (source.ca_keys()?, copy.ca_keys()?);
    if a.len() != b.len()
        || a.iter().zip(&b).any(|(x, y)| {
            x.name != y.name || x.cert_der != y.cert_der || !same(&x.key_pkcs8, &y.key_pkcs8)
        })
    {
        return Err(differ("the CA keys".into()));
    }
    checked += a.len();
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::fresh_pg_database;
    use crate::store::{KeyType, UserStore};

    fn sqlite_store(dir: &std::path::Path) -> (Store, StoreOptions) {
        let options = StoreOptions::new(dir);
        (Store::open(&options).unwrap(), options)
    }

    #[test]
    fn the_table_list_is_the_whole_schema() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = sqlite_store(dir.path());
        let schema: HashSet<String> = store
            .read(|tx| {
                tx.query(
                    "SELECT name FROM sqlite_schema WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%'",
                    &[],
                )?
                .into_iter()
                .map(|mut r| r.get(0))
                .collect()
            })
            .unwrap();
        let listed: HashSet<String> = TABLES.iter().map(|t| t.to_string()).collect();
        assert_eq!(schema, listed, "a new table must be added to TABLES");
    }

    #[test]
    fn a_copy_decrypts_everything_and_a_second_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (source, options) = sqlite_store(dir.path());
        let mut tags = Vec::new();
        for i in 0..5u8 {
            let tag = source
                .create_key(&format!("k{i}"), KeyType::Aes256, false, &[i; 32])
                .unwrap();
            source.add_version(&tag, &[i + 100; 32]).unwrap();
            tags.push(tag);
        }
        let access = source.create_access_key().unwrap();
        source.add_user("corp", "alice", "$argon2id$x").unwrap();
        let secret = source.generated_secret("device").unwrap();
        let url = fresh_pg_database("copy");

        let copied = source.migrate_to(&options, &url).unwrap();
        let rows = |t: &str| copied.tables.iter().find(|(n, _)| *n == t).unwrap().1;
        assert_eq!(rows("key_versions"), 10);
        assert_eq!(rows("users"), 1);
        // 10 versions, 1 access key, 1 generated secret.
        assert_eq!(copied.checked, 12);

        let mut target_options = options.clone();
        target_options.url = Some(url.clone());
        let target = Store::open(&target_options).unwrap();
        for (i, tag) in tags.iter().enumerate() {
            let key = target.key(tag).unwrap().unwrap();
            assert_eq!(&key.versions[0].material[..], &[i as u8; 32]);
            assert_eq!(&key.versions[1].material[..], &[i as u8 + 100; 32]);
        }
        let again = target.access_key(&access.access_key).unwrap().unwrap();
        assert_eq!(*again.secret_key, *access.secret_key);
        assert_eq!(*target.generated_secret("device").unwrap(), *secret);
        assert!(target.user("corp", "alice").unwrap().is_some());
        // The generation counter came along (caches keyed by it stay right).
        assert_eq!(target.generation().unwrap(), source.generation().unwrap());

        // A non-empty target is refused, and left as it was.
        let err = source.migrate_to(&options, &url).unwrap_err().to_string();
        assert!(err.contains("only fills an empty database"), "{err}");
        assert_eq!(target.list_keys().unwrap().len(), 5);
    }

    #[test]
    fn a_target_opened_with_another_kek_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (source, options) = sqlite_store(dir.path());
        source
            .create_key("k", KeyType::Aes256, false, &[1; 32])
            .unwrap();
        // Another site's store already lives in the target.
        let other = tempfile::tempdir().unwrap();
        let url = fresh_pg_database("copyother");
        let mut other_options = StoreOptions::new(other.path());
        other_options.url = Some(url.clone());
        drop(Store::open(&other_options).unwrap());
        let err = source.migrate_to(&options, &url).unwrap_err().to_string();
        assert!(err.contains("kek_check has 1 rows"), "{err}");
    }
}

//! The key ledger: what one node has durably spent, and its streams, in a
//! small embedded database (redb: pure Rust, checksummed pages, atomic
//! commits; every write here is committed with fsync before it returns).
//!
//! Tables:
//! - `meta`: format version, the node's name and role;
//! - `devices`: device id (16 bytes, one-way from the device's identity) ->
//!   (position, block size): every block id below `position` may have been
//!   handed out, so the device resumes there after a restart;
//! - `streams`: KSID -> `StreamRecord` (JSON): the stream's definition,
//!   how far it went, and on the leader the stream blocks reserved for it.
//!
//! The ledger is the engine's, not the KMS store's: the C library has it
//! without SQLite.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Qos;
use super::link::Role;
use super::rangeset::RangeSet;
use super::stream::Side;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DEVICES: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("devices");
const STREAMS: TableDefinition<u128, &[u8]> = TableDefinition::new("streams");

/// On-disk format of this ledger.
const FORMAT: &[u8] = b"keypipe-ledger-1";

/// Why the ledger could not be read or written. Never holds key bytes.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database could not be opened, read or written.
    #[error("key ledger {path}: {message}")]
    Io {
        /// The ledger file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The ledger contradicts the configuration.
    #[error("key ledger {path}: {message}")]
    Mismatch {
        /// The ledger file.
        path: String,
        /// What differs, and what to do.
        message: String,
    },
}

/// A stream as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamRecord {
    pub(crate) ksid: Uuid,
    pub(crate) qos: Qos,
    pub(crate) source: String,
    pub(crate) destination: String,
    /// This node created the KSID (it pushes to `source`).
    pub(crate) created_here: bool,
    pub(crate) local: Side,
    pub(crate) peer: Side,
    /// Leader: stream blocks below this are reserved (may have been
    /// assigned); a restarted leader never assigns below it.
    pub(crate) reserved: u64,
    /// Absolute number of the last chunk asked for.
    pub(crate) cursor: u64,
    /// Chunks confirmed delivered to this node's consumer.
    pub(crate) delivered: RangeSet,
    /// The consumer is pushed to (`get-key` was called).
    pub(crate) pushing: bool,
    /// Key confirmation failed: the stream is stopped for good.
    pub(crate) failed: bool,
    /// A directed stream: the role of the node that issues its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) issuer: Option<Role>,
}

/// Where a device stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePosition {
    /// The device resumes at this block id.
    pub position: u64,
    /// The ledger had no record of this device (first start, lost data
    /// directory, or a device it never saw).
    pub is_new: bool,
}

/// One node's ledger. Thread-safe (redb serializes writers).
pub struct Ledger {
    db: Database,
    path: String,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    /// Opens (or creates, with a `0700` parent directory) the ledger file
    /// at `path`.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let shown = path.display().to_string();
        let io = |e: &dyn std::fmt::Display| LedgerError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io(&e))?;
        }
        let db = Database::create(path).map_err(|e| io(&e))?;
        Ledger::init(db, shown)
    }

    /// A ledger that lives in memory only: for engines whose device can
    /// never repeat key (a simulated link with a random secret).
    pub fn temporary() -> Ledger {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database always opens");
        Ledger::init(db, "(in memory)".into()).expect("an in-memory database is writable")
    }

    fn init(db: Database, path: String) -> Result<Ledger, LedgerError> {
        let ledger = Ledger { db, path };
        let txn = ledger.db.begin_write().map_err(|e| ledger.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| ledger.io(e))?;
            let format = meta
                .get("format")
                .map_err(|e| ledger.io(e))?
                .map(|v| v.value().to_vec());
            match format {
                None => {
                    meta.insert("format", FORMAT).map_err(|e| ledger.io(e))?;
                }
                Some(f) if f == FORMAT => {}
                Some(_) => return Err(ledger.mismatch("written by another keypipe version".into())),
            }
            txn.open_table(DEVICES).map_err(|e| ledger.io(e))?;
            txn.open_table(STREAMS).map_err(|e| ledger.io(e))?;
        }
        txn.commit().map_err(|e| ledger.io(e))?;
        Ok(ledger)
    }

    fn io(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn mismatch(&self, message: String) -> LedgerError {
        LedgerError::Mismatch {
            path: self.path.clone(),
            message,
        }
    }

    /// The ledger file (for messages).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Checks (or records, on first use) which node owns this ledger: a
    /// ledger written by a leader must not run a follower, nor the reverse
    /// (the leader's stream reservations would mean nothing).
    pub fn claim(&self, name: &str, role: Role) -> Result<(), LedgerError> {
        let role_text = match role {
            Role::Leader => "leader",
            Role::Follower => "follower",
        };
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            let stored = meta
                .get("role")
                .map_err(|e| self.io(e))?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            match stored {
                Some(r) if r != role_text => {
                    return Err(self.mismatch(format!(
                        "it was written by the {r} of a link, but node {name} is configured as \
                         {role_text}: roles can only be swapped with fresh ledgers"
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert("role", role_text.as_bytes())
                        .map_err(|e| self.io(e))?;
                    meta.insert("name", name.as_bytes())
                        .map_err(|e| self.io(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Where device `id` stands (position 0 and `is_new` when the ledger
    /// has never seen it). A block size other than the recorded one is
    /// refused: the same bytes would get other ids.
    pub fn device(&self, id: &[u8; 16], block_size: usize) -> Result<DevicePosition, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(DEVICES).map_err(|e| self.io(e))?;
        let Some(entry) = table.get(&id[..]).map_err(|e| self.io(e))? else {
            return Ok(DevicePosition {
                position: 0,
                is_new: true,
            });
        };
        let (position, recorded) = entry.value();
        if recorded != block_size as u64 {
            return Err(self.mismatch(format!(
                "its device was used with block_size = {recorded}, now block_size = {block_size}: \
                 the same key would get other block ids. Keep block_size, or start with a fresh \
                 ledger (--reset-ledger) on both nodes"
            )));
        }
        Ok(DevicePosition {
            position,
            is_new: false,
        })
    }

    /// Durably records that device `id` resumes at `below` or later
    /// (positions only grow).
    pub fn reserve_device(
        &self,
        id: &[u8; 16],
        block_size: usize,
        below: u64,
    ) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut table = txn.open_table(DEVICES).map_err(|e| self.io(e))?;
            let old = table
                .get(&id[..])
                .map_err(|e| self.io(e))?
                .map_or(0, |v| v.value().0);
            table
                .insert(&id[..], (old.max(below), block_size as u64))
                .map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// True once this node completed a session with its peer (a fresh
    /// ledger facing a peer that did is suspect: see the pairing check).
    pub fn paired(&self) -> Result<bool, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = txn.open_table(META).map_err(|e| self.io(e))?;
        Ok(meta.get("paired").map_err(|e| self.io(e))?.is_some())
    }

    /// Records that this node completed a session with its peer.
    pub fn mark_paired(&self) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.insert("paired", &b"1"[..]).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Forgets everything: devices and streams (`--reset-ledger`).
    pub fn reset(&self) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut devices = txn.open_table(DEVICES).map_err(|e| self.io(e))?;
            devices.retain(|_, _| false).map_err(|e| self.io(e))?;
            let mut streams = txn.open_table(STREAMS).map_err(|e| self.io(e))?;
            streams.retain(|_, _| false).map_err(|e| self.io(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            for key in ["role", "name", "paired"] {
                meta.remove(key).map_err(|e| self.io(e))?;
            }
            meta.insert("reset", &b"1"[..]).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// The first sync after a reset is durable: the reset mark goes.
    pub fn clear_reset(&self) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            meta.remove("reset").map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// True from a reset (`--reset-ledger`) until the first sync after it
    /// is durable: the streams that sync lists are ones this node forgot.
    pub fn was_reset(&self) -> Result<bool, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let meta = txn.open_table(META).map_err(|e| self.io(e))?;
        Ok(meta.get("reset").map_err(|e| self.io(e))?.is_some())
    }

    /// Every stream recorded.
    pub(crate) fn streams(&self) -> Result<Vec<StreamRecord>, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let table = txn.open_table(STREAMS).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.io(e))? {
            let (key, value) = entry.map_err(|e| self.io(e))?;
            let record: StreamRecord = serde_json::from_slice(value.value()).map_err(|e| {
                self.mismatch(format!(
                    "stream {} is unreadable ({e})",
                    Uuid::from_u128(key.value())
                ))
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Writes `puts` and deletes `removes` in one durable commit.
    pub(crate) fn write_streams(
        &self,
        puts: &[StreamRecord],
        removes: &[Uuid],
    ) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut table = txn.open_table(STREAMS).map_err(|e| self.io(e))?;
            for record in puts {
                let bytes = serde_json::to_vec(record).expect("records serialize");
                table
                    .insert(record.ksid.as_u128(), bytes.as_slice())
                    .map_err(|e| self.io(e))?;
            }
            for ksid in removes {
                table.remove(ksid.as_u128()).map_err(|e| self.io(e))?;
            }
        }
        txn.commit().map_err(|e| self.io(e))
    }
}

/// The poller's view of one device in the ledger.
#[derive(Debug)]
pub(crate) struct DeviceLedger {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) id: [u8; 16],
    pub(crate) block_size: usize,
}

impl crate::device::Reserve for DeviceLedger {
    fn reserve(&mut self, below: u64) -> std::io::Result<()> {
        self.ledger
            .reserve_device(&self.id, self.block_size, below)
            .map_err(std::io::Error::other)
    }
}

/// The ledger file of node `name` in `data_dir`.
pub fn ledger_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("ledger").join(format!("{name}.redb"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ksid: Uuid) -> StreamRecord {
        let mut delivered = RangeSet::default();
        delivered.insert_range(0, 10);
        StreamRecord {
            ksid,
            qos: Qos::default(),
            source: "http://a".into(),
            destination: "http://b".into(),
            created_here: true,
            local: Side::Open,
            peer: Side::Open,
            reserved: 64,
            cursor: 9,
            delivered,
            pushing: true,
            failed: false,
            issuer: None,
        }
    }

    #[test]
    fn devices_resume_streams_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger_path(dir.path(), "node-a");
        let id = [7u8; 16];
        let k = Uuid::new_v4();
        {
            let ledger = Ledger::open(&path).unwrap();
            ledger.claim("node-a", Role::Leader).unwrap();
            assert_eq!(
                ledger.device(&id, 64).unwrap(),
                DevicePosition {
                    position: 0,
                    is_new: true
                }
            );
            ledger.reserve_device(&id, 64, 100).unwrap();
            ledger.reserve_device(&id, 64, 50).unwrap(); // never moves back
            ledger
                .write_streams(&[record(k), record(Uuid::new_v4())], &[])
                .unwrap();
        }
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.device(&id, 64).unwrap().position, 100);
        assert!(!ledger.device(&id, 64).unwrap().is_new);
        let err = ledger.device(&id, 32).unwrap_err().to_string();
        assert!(err.contains("block_size = 64"), "{err}");
        assert_eq!(ledger.streams().unwrap().len(), 2);
        let others: Vec<Uuid> = ledger
            .streams()
            .unwrap()
            .into_iter()
            .map(|r| r.ksid)
            .filter(|x| *x != k)
            .collect();
        ledger.write_streams(&[], &others).unwrap();
        assert_eq!(ledger.streams().unwrap(), vec![record(k)]);
        let err = ledger
            .claim("node-a", Role::Follower)
            .unwrap_err()
            .to_string();
        assert!(err.contains("written by the leader"), "{err}");
        ledger.reset().unwrap();
        assert!(ledger.device(&id, 32).unwrap().is_new);
        assert!(ledger.streams().unwrap().is_empty());
        ledger.claim("node-a", Role::Follower).unwrap();
    }

    #[test]
    fn a_damaged_ledger_is_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.redb");
        fs::write(&path, b"this is not a ledger, but it is not empty either").unwrap();
        let err = Ledger::open(&path).unwrap_err().to_string();
        assert!(err.contains("l.redb"), "{err}");
    }
}

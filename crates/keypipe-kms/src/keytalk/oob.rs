//! Out-of-band certificate downloads: a package parked under a random
//! one-time token (32 hex digits) for `ttl` (5 minutes by default), handed
//! out by the first download and then gone (a second download, or one
//! after the deadline, finds nothing).
//!
//! Packages are encrypted under their session's passphrase and zeroized
//! when taken or dropped. At most `capacity` wait at once (the oldest go
//! first).
//!
//! The packages wait in this process ([`Downloads::new`]) or, when
//! several processes share the store, in its `ephemeral` table
//! ([`Downloads::shared`]), so the download may reach any of them. There
//! a row's id is a hash of the token (never the token), its value the
//! deadline, the content type and the package, wrapped by the store under
//! the KEK, forgotten at the deadline; a download deletes the row in the
//! transaction that reads it, so two processes never both hand it out. A
//! full shared table refuses new packages ([`TableError::Full`]) instead
//! of dropping the oldest (that would read every process's rows).
//!
//! Room is taken before the package exists ([`Downloads::try_reserve`]:
//! its token drawn and, shared, the table found below its capacity), so
//! a refusal comes before its certificate is issued, never after; a
//! [`Slot`] so taken is then always parked (only a store error fails
//! it): processes reserving at the same moment may overshoot `capacity`
//! by as many.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::shared::{Shared, Stamp, TableError, logged};
use crate::store::{EphemeralChange, EphemeralStore, StoreError};
use crate::store::{row_id, wall_ms};

/// The store's rows of parked packages.
const KIND: &str = "keytalk-download";

/// The content types packages are served with (a stored one is read back
/// as one of these).
const CONTENT_TYPES: [&str; 2] = ["application/x-pkcs12", "application/x-pem-file"];

/// A package waiting for its download.
pub struct Download {
    /// `Content-Type` to serve it with.
    pub content_type: &'static str,
    /// The bytes (P12 DER or PEM text).
    pub body: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_type", &self.content_type)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// A package and its deadline (an `Instant` in memory, ms since the epoch
/// in the store).
struct Parked<T> {
    download: Download,
    deadline: T,
}

impl<T: Stamp> Parked<T> {
    /// Still to be handed out at `now`.
    fn in_time(&self, now: T) -> bool {
        self.deadline > now
    }
}

impl Parked<u64> {
    /// The row's value: deadline (8 bytes, big-endian), content type
    /// (length byte, text), package; in a buffer of exactly that size.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let ct = self.download.content_type.as_bytes();
        let ct = &ct[..ct.len().min(255)];
        let mut out = Zeroizing::new(Vec::with_capacity(9 + ct.len() + self.download.body.len()));
        out.extend_from_slice(&self.deadline.to_be_bytes());
        out.push(u8::try_from(ct.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(ct);
        out.extend_from_slice(&self.download.body);
        out
    }

    fn decode(value: &[u8]) -> Result<Parked<u64>, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("{KIND} row: truncated"));
        let (deadline, rest) = value.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let (&len, rest) = rest.split_first().ok_or_else(corrupt)?;
        let (ct, body) = rest
            .split_at_checked(usize::from(len))
            .ok_or_else(corrupt)?;
        let content_type = CONTENT_TYPES
            .into_iter()
            .find(|known| known.as_bytes() == ct)
            .unwrap_or("application/octet-stream");
        Ok(Parked {
            download: Download {
                content_type,
                body: Zeroizing::new(body.to_vec()),
            },
            deadline: u64::from_be_bytes(*deadline),
        })
    }
}

/// Room for one package ([`Downloads::try_reserve`]): park it with
/// [`Slot::park`]; dropped, it takes nothing (no row was written).
pub struct Slot<'d> {
    downloads: &'d Downloads,
    token: String,
}

impl std::fmt::Debug for Slot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret.
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Slot<'_> {
    /// Parks `body` for `ttl` from `now`: its token. Never refuses for a
    /// full table (room was found when the slot was taken); fails only
    /// when the store does.
    pub fn park(
        self,
        content_type: &'static str,
        body: Zeroizing<Vec<u8>>,
        now: Instant,
    ) -> Result<String, StoreError> {
        let download = Download { content_type, body };
        self.downloads.put(&self.token, download, now)?;
        Ok(self.token)
    }
}

enum Table {
    Memory(Mutex<HashMap<String, Parked<Instant>>>),
    Shared(Shared),
}

/// The waiting downloads.
pub struct Downloads {
    table: Table,
    ttl: Duration,
    capacity: usize,
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("ttl", &self.ttl)
            .field("shared", &matches!(self.table, Table::Shared(_)))
            .finish_non_exhaustive()
    }
}

impl Downloads {
    /// An empty table in this process.
    pub fn new(ttl: Duration, capacity: usize) -> Downloads {
        Downloads {
            table: Table::Memory(Mutex::new(HashMap::new())),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The table in `store`, shared by every process using it.
    pub fn shared(ttl: Duration, capacity: usize, store: Arc<dyn EphemeralStore>) -> Downloads {
        Downloads {
            table: Table::Shared(Shared::new(store)),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn lock(
        map: &Mutex<HashMap<String, Parked<Instant>>>,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Parked<Instant>>> {
        map.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks `body`: its token, `None` when the OS random source fails
    /// (or, shared, the table is full or the store failed: logged).
    pub fn park(
        &self,
        content_type: &'static str,
        body: Zeroizing<Vec<u8>>,
        now: Instant,
    ) -> Option<String> {
        self.try_park(content_type, body, now)
            .map_err(|e| {
                if let TableError::Store(e) = e {
                    tracing::error!("keytalk: download store: {e}");
                }
            })
            .ok()
    }

    /// Parks `body`: its token ([`Downloads::try_reserve`], then
    /// [`Slot::park`]).
    pub fn try_park(
        &self,
        content_type: &'static str,
        body: Zeroizing<Vec<u8>>,
        now: Instant,
    ) -> Result<String, TableError> {
        Ok(self.try_reserve()?.park(content_type, body, now)?)
    }

    /// Room for one package, before it is made: its token, drawn now.
    /// Fails with [`TableError::NoRandomness`] or, shared, with
    /// [`TableError::Full`] when the table holds `capacity` packages
    /// ([`TableError::Store`] when the store fails). In memory there is
    /// always room (parking drops the oldest package when full).
    pub fn try_reserve(&self) -> Result<Slot<'_>, TableError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|_| TableError::NoRandomness)?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        if let Table::Shared(sh) = &self.table {
            let capacity = u64::try_from(self.capacity).unwrap_or(u64::MAX);
            if sh.count(KIND)? >= capacity {
                return Err(TableError::Full);
            }
        }
        Ok(Slot {
            downloads: self,
            token,
        })
    }

    /// Parks `download` under `token`.
    fn put(&self, token: &str, download: Download, now: Instant) -> Result<(), StoreError> {
        match &self.table {
            Table::Memory(map) => {
                let mut map = Self::lock(map);
                map.retain(|_, d| d.in_time(now));
                if map.len() >= self.capacity
                    && let Some(oldest) = map
                        .iter()
                        .min_by_key(|(_, d)| d.deadline)
                        .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
                let deadline = now.plus(self.ttl);
                map.insert(token.to_owned(), Parked { download, deadline });
            }
            Table::Shared(sh) => {
                let deadline = wall_ms(now).plus(self.ttl);
                let value = Parked { download, deadline }.encode();
                sh.update(KIND, &row_id(&[token.as_bytes()]), |_| {
                    let change = EphemeralChange::Put {
                        value: value.clone(),
                        forget_ms: deadline,
                    };
                    Ok((change, ()))
                })?;
            }
        }
        Ok(())
    }

    /// Takes the package of `token` if it is still there and in time (a
    /// store error reads as none, logged).
    pub fn take(&self, token: &str, now: Instant) -> Option<Download> {
        logged("download", self.try_take(token, now), None)
    }

    /// [`Downloads::take`], with the store's errors.
    pub fn try_take(&self, token: &str, now: Instant) -> Result<Option<Download>, StoreError> {
        match &self.table {
            Table::Memory(map) => {
                let parked = Self::lock(map).remove(token);
                Ok(parked.filter(|d| d.in_time(now)).map(|d| d.download))
            }
            Table::Shared(sh) => {
                let now = wall_ms(now);
                sh.update(KIND, &row_id(&[token.as_bytes()]), |row| {
                    let Some(row) = row else {
                        return Ok((EphemeralChange::Keep, None));
                    };
                    let parked = Parked::decode(&row.value)?;
                    let found = parked.in_time(now).then_some(parked.download);
                    Ok((EphemeralChange::Remove, found))
                })
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_and_in_time() {
        let t = Instant::now();
        let d = Downloads::new(Duration::from_secs(300), 2);
        let a = d.park("x", Zeroizing::new(vec![1]), t).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(*d.take(&a, t).unwrap().body, vec![1]);
        assert!(d.take(&a, t).is_none(), "single use");
        let b = d.park("x", Zeroizing::new(vec![2]), t).unwrap();
        assert!(
            d.take(&b, t + Duration::from_secs(300)).is_none(),
            "expired"
        );
        assert!(d.take(&b, t).is_none(), "an expired one is gone");
        let c = d.park("x", Zeroizing::new(vec![3]), t).unwrap();
        d.park("x", Zeroizing::new(vec![4]), t + Duration::from_secs(1));
        d.park("x", Zeroizing::new(vec![5]), t + Duration::from_secs(2));
        assert!(d.take(&c, t).is_none(), "the oldest went");
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;
    use crate::keytalk::shared::testing::Db;

    /// Parked through one process, taken once through the other; the
    /// token and the package never reach the database in clear.
    fn once_across_processes(db: &Db) {
        let t = Instant::now();
        let ttl = Duration::from_secs(300);
        let (a, b) = (
            Downloads::shared(ttl, 2, db.open()),
            Downloads::shared(ttl, 2, db.open()),
        );
        let package = b"PKCS12-PACKAGE-BYTES-0123456789".to_vec();
        let token = a
            .try_park("application/x-pkcs12", Zeroizing::new(package.clone()), t)
            .unwrap();
        assert_eq!(token.len(), 32);
        assert!(db.lacks(token.as_bytes()) && db.lacks(&package));
        let d = b.try_take(&token, t).unwrap().unwrap();
        assert_eq!(
            (d.content_type, &d.body[..]),
            ("application/x-pkcs12", &package[..])
        );
        assert!(b.try_take(&token, t).unwrap().is_none(), "single use");
        assert!(a.try_take(&token, t).unwrap().is_none(), "on every process");
        // Late, then gone; a full table refuses, before the package
        // exists; room found before it filled is kept.
        let pem = a
            .try_park("application/x-pem-file", Zeroizing::new(vec![2]), t)
            .unwrap();
        let slot = b.try_reserve().unwrap();
        a.try_park("application/x-pem-file", Zeroizing::new(vec![3]), t)
            .unwrap();
        assert!(matches!(b.try_reserve(), Err(TableError::Full)));
        assert!(matches!(
            b.try_park("application/x-pem-file", Zeroizing::new(vec![4]), t),
            Err(TableError::Full)
        ));
        let late = slot
            .park("application/x-pem-file", Zeroizing::new(vec![6]), t)
            .unwrap();
        assert_eq!(*a.try_take(&late, t).unwrap().unwrap().body, vec![6]);
        assert!(b.try_take(&pem, t + ttl).unwrap().is_none(), "expired");
        assert!(
            a.try_take(&pem, t).unwrap().is_none(),
            "an expired one is gone"
        );
        assert!(
            b.park("x", Zeroizing::new(vec![5]), t).is_some(),
            "room again"
        );
    }

    #[test]
    fn once_across_processes_on_sqlite() {
        once_across_processes(&Db::sqlite());
    }

    #[test]
    fn once_across_processes_on_postgres() {
        once_across_processes(&Db::postgres("kt_oob"));
    }
}

//! Out-of-band certificate downloads: a package parked under a random
//! one-time token (32 hex digits) for `ttl` (5 minutes by default), handed
//! out by the first download and then gone (a second download, or one
//! after the deadline, finds nothing). Packages are encrypted under their
//! session's passphrase and zeroized when taken or dropped. At most
//! `capacity` wait at once (the oldest go first).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// A package waiting for its download.
pub struct Download {
    /// `Content-Type` to serve it with.
    pub content_type: &'static str,
    /// The bytes (P12 DER or PEM text).
    pub body: Zeroizing<Vec<u8>>,
    deadline: Instant,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_type", &self.content_type)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// The waiting downloads.
pub struct Downloads {
    map: Mutex<HashMap<String, Download>>,
    ttl: Duration,
    capacity: usize,
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Downloads {
    /// An empty table.
    pub fn new(ttl: Duration, capacity: usize) -> Downloads {
        Downloads {
            map: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Download>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks `body`: its token, `None` when the OS random source fails.
    pub fn park(
        &self,
        content_type: &'static str,
        body: Zeroizing<Vec<u8>>,
        now: Instant,
    ) -> Option<String> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).ok()?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut map = self.lock();
        map.retain(|_, d| d.deadline > now);
        if map.len() >= self.capacity
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, d)| d.deadline)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            token.clone(),
            Download {
                content_type,
                body,
                deadline: now + self.ttl,
            },
        );
        Some(token)
    }

    /// Takes the package of `token` if it is still there and in time.
    pub fn take(&self, token: &str, now: Instant) -> Option<Download> {
        let d = self.lock().remove(token)?;
        (d.deadline > now).then_some(d)
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

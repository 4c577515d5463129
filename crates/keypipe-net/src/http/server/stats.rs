//! A server's counters (open, accepted, refused connections) and the
//! per-address connection cap they enforce: IPv6 callers counted by /64,
//! loopback never capped.

use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Counters of one server, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub open_connections: AtomicUsize,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections refused by the caps.
    pub refused: AtomicU64,
    /// Open connections by source address (not loopback).
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// The address a per-address cap counts: an IPv6 address by its /64 (one
/// host usually holds a whole /64).
fn cap_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl ServerStats {
    /// Counts a connection from `ip` in, unless `ip` has `cap` open.
    pub(super) fn admit_ip(&self, ip: std::net::IpAddr, cap: usize) -> bool {
        if ip.is_loopback() {
            return true;
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(cap_key(ip)).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts a connection from `ip` out.
    pub(super) fn release_ip(&self, ip: std::net::IpAddr) {
        if ip.is_loopback() {
            return;
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let key = cap_key(ip);
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }
}

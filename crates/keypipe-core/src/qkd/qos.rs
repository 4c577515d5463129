//! Quality of service of a key stream, and its negotiation.

use serde::{Deserialize, Serialize};

/// The only metadata format this node produces.
pub const METADATA_MIMETYPE: &str = "application/json";

/// QoS of a key stream, as in ETSI GS QKD 004.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    /// Bytes per key chunk (one `index`).
    pub key_chunk_size: u32,
    /// Highest rate the application wants, bit/s (0: no limit).
    pub max_bps: u32,
    /// Lowest rate the application needs, bit/s.
    pub min_bps: u32,
    /// Acceptable jitter, bit/s (informative).
    pub jitter: u32,
    /// Priority (informative; meaning up to the implementation).
    pub priority: u32,
    /// Longest wait of a call, ms (0: never wait).
    pub timeout: u32,
    /// Seconds undelivered key of the stream is kept (0: the node default).
    pub ttl: u32,
    /// MIME type of GET_KEY metadata (empty: `application/json`).
    pub metadata_mimetype: String,
}

impl Default for Qos {
    fn default() -> Self {
        Self {
            key_chunk_size: 32,
            max_bps: 0,
            min_bps: 0,
            jitter: 0,
            priority: 0,
            timeout: 1000,
            ttl: 0,
            metadata_mimetype: METADATA_MIMETYPE.into(),
        }
    }
}

/// What a node can give, against which requests are negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosLimits {
    /// Largest key chunk, bytes.
    pub max_key_chunk_size: u32,
    /// Secret-key rate of the link, bit/s (0: unlimited).
    pub link_rate_bps: u64,
    /// Longest call timeout, ms.
    pub max_timeout_ms: u32,
    /// TTL given when the request says 0, s.
    pub default_ttl_s: u32,
    /// Longest TTL, s.
    pub max_ttl_s: u32,
}

/// Negotiates `req` against `limits`.
///
/// `Ok(qos)`: the request can be served, with `timeout` and `ttl` clamped
/// to what the node gives (and `ttl` 0 replaced by the default).
/// `Err(counter)`: it cannot (chunk size 0 or above the maximum, `min_bps`
/// above the link's rate, metadata other than JSON); `counter` is the
/// closest QoS the node offers (status 7).
pub fn negotiate(req: &Qos, limits: &QosLimits) -> Result<Qos, Qos> {
    let mut qos = req.clone();
    qos.timeout = qos.timeout.min(limits.max_timeout_ms);
    qos.ttl = match qos.ttl {
        0 => limits.default_ttl_s,
        t => t.min(limits.max_ttl_s),
    };
    let mut met = true;
    if qos.key_chunk_size == 0 || qos.key_chunk_size > limits.max_key_chunk_size {
        qos.key_chunk_size = qos.key_chunk_size.clamp(1, limits.max_key_chunk_size);
        met = false;
    }
    if limits.link_rate_bps > 0 && u64::from(qos.min_bps) > limits.link_rate_bps {
        qos.min_bps = limits.link_rate_bps.min(u64::from(u32::MAX)) as u32;
        met = false;
    }
    if limits.link_rate_bps > 0 && u64::from(qos.max_bps) > limits.link_rate_bps {
        qos.max_bps = limits.link_rate_bps.min(u64::from(u32::MAX)) as u32;
    }
    if qos.metadata_mimetype.is_empty() {
        qos.metadata_mimetype = METADATA_MIMETYPE.into();
    } else if !qos
        .metadata_mimetype
        .eq_ignore_ascii_case(METADATA_MIMETYPE)
    {
        qos.metadata_mimetype = METADATA_MIMETYPE.into();
        met = false;
    }
    if met { Ok(qos) } else { Err(qos) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QosLimits = QosLimits {
        max_key_chunk_size: 1024,
        link_rate_bps: 1_000_000,
        max_timeout_ms: 5000,
        default_ttl_s: 60,
        max_ttl_s: 3600,
    };

    #[test]
    fn clamps_what_it_can_and_counter_proposes_the_rest() {
        let ok = negotiate(
            &Qos {
                timeout: 9999,
                ttl: 0,
                ..Qos::default()
            },
            &LIMITS,
        )
        .unwrap();
        assert_eq!((ok.timeout, ok.ttl), (5000, 60));
        let c = negotiate(
            &Qos {
                key_chunk_size: 0,
                ..Qos::default()
            },
            &LIMITS,
        )
        .unwrap_err();
        assert_eq!(c.key_chunk_size, 1);
        let c = negotiate(
            &Qos {
                key_chunk_size: 4096,
                ..Qos::default()
            },
            &LIMITS,
        )
        .unwrap_err();
        assert_eq!(c.key_chunk_size, 1024);
        let c = negotiate(
            &Qos {
                min_bps: 2_000_000,
                ..Qos::default()
            },
            &LIMITS,
        )
        .unwrap_err();
        assert_eq!(c.min_bps, 1_000_000);
        assert!(
            negotiate(&c, &LIMITS).is_ok(),
            "the counter-proposal is acceptable"
        );
        let c = negotiate(
            &Qos {
                metadata_mimetype: "text/xml".into(),
                ..Qos::default()
            },
            &LIMITS,
        )
        .unwrap_err();
        assert_eq!(c.metadata_mimetype, METADATA_MIMETYPE);
    }
}

//! The QKD engine as the ETSI 014 service's key supply: directed streams
//! of the node's link (see `docs/etsi014.md`).

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::kms::etsi014::supply::{KeySupply, Span, SupplyError};
use crate::qkd::{DirectedError, Engine};

/// One node's engine, serving 014 streams.
pub struct EngineSupply {
    engine: Arc<Engine>,
    ttl_s: u32,
    capacity: u64,
}

impl std::fmt::Debug for EngineSupply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSupply")
            .field("node", &self.engine.name())
            .finish_non_exhaustive()
    }
}

impl EngineSupply {
    /// Streams of `engine` whose key lives `ttl_s` seconds at most; one
    /// stream holds at most `capacity` bytes ready (its flow-control
    /// window).
    pub fn new(engine: Arc<Engine>, ttl_s: u32, capacity: u64) -> EngineSupply {
        EngineSupply {
            engine,
            ttl_s,
            capacity,
        }
    }
}

fn supply_error(e: DirectedError) -> SupplyError {
    match e {
        DirectedError::NotFound => SupplyError::NotFound,
        DirectedError::InsufficientKey => SupplyError::Short,
        DirectedError::NoLink => SupplyError::NoLink,
        DirectedError::UnknownStream => SupplyError::Unusable(
            "this pair's key stream is not open on this node yet; try again shortly",
        ),
        DirectedError::WrongSide | DirectedError::Conflict => SupplyError::Unusable(
            "this pair's key stream conflicts with another stream of the link",
        ),
        DirectedError::TooManyStreams => {
            SupplyError::Unusable("this node has max_streams key streams open")
        }
        DirectedError::Failed => SupplyError::Unusable(
            "this pair's key stream was stopped: key confirmation failed between the nodes",
        ),
    }
}

impl KeySupply for EngineSupply {
    fn open(
        &self,
        ksid: Uuid,
        source: &str,
        destination: &str,
        issuing: bool,
    ) -> Result<(), SupplyError> {
        let role = self.engine.role();
        let issuer = if issuing { role } else { role.peer() };
        self.engine
            .open_directed(ksid, source, destination, issuer, self.ttl_s)
            .map_err(supply_error)
    }

    fn issue(&self, ksid: &Uuid, out: &mut [u8], wait: Duration) -> Result<u64, SupplyError> {
        self.engine.issue(ksid, out, wait).map_err(supply_error)
    }

    fn redeem(&self, spans: &[Span], out: &mut [u8]) -> Result<(), SupplyError> {
        if spans.is_empty() {
            return Ok(());
        }
        let spans: Vec<(Uuid, u64, u64)> = spans.iter().map(|s| (s.ksid, s.first, s.len)).collect();
        self.engine.redeem(&spans, out).map_err(supply_error)
    }

    fn issuable(&self, ksid: &Uuid) -> u64 {
        self.engine.issuable(ksid).unwrap_or(0)
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn streams(&self) -> Vec<(Uuid, String, String)> {
        self.engine.directed_streams()
    }

    fn stream_count(&self) -> usize {
        self.engine.directed_count()
    }

    fn tag(&self, span: &Span) -> u64 {
        self.engine.key_id_tag(&span.ksid, span.first, span.len)
    }

    fn stream_id(&self, name: &[u8]) -> Uuid {
        self.engine.directed_ksid(name)
    }
}

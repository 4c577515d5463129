//! What the 014 service needs of the key engine: directed streams (one
//! node issues, the other redeems), implemented over the QKD engine by the
//! server and the tests' fakes alike.

use std::time::Duration;

use uuid::Uuid;

/// Why the engine handed out no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupplyError {
    /// Not enough key within the time allowed (or the stream is still
    /// being set up with the peer node).
    Short,
    /// The device or the peer node is down.
    NoLink,
    /// The key is not here: never issued, expired, or handed out already.
    NotFound,
    /// The stream cannot be used (stopped for good, or a conflicting
    /// stream holds its KSID); the message says why.
    Unusable(&'static str),
}

/// One run of key to redeem: `len` bytes of stream `ksid` at `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The stream.
    pub ksid: Uuid,
    /// Offset of its first byte in the stream.
    pub first: u64,
    /// Bytes.
    pub len: u64,
}

/// Directed key streams on the link between this node and its peer.
pub trait KeySupply: Send + Sync {
    /// Opens stream `ksid` (idempotent), issued by this node when `issuing`
    /// (else by the peer; this node only redeems). `source` and
    /// `destination` describe it to the peer.
    fn open(
        &self,
        ksid: Uuid,
        source: &str,
        destination: &str,
        issuing: bool,
    ) -> Result<(), SupplyError>;

    /// Issues the next `out.len()` bytes of `ksid` into `out`, all or
    /// nothing, waiting at most `wait`; the stream offset of the first.
    fn issue(&self, ksid: &Uuid, out: &mut [u8], wait: Duration) -> Result<u64, SupplyError>;

    /// Redeems every span into `out` (their bytes one after the other),
    /// all or nothing.
    fn redeem(&self, spans: &[Span], out: &mut [u8]) -> Result<(), SupplyError>;

    /// Bytes of `ksid` this node could issue now.
    fn issuable(&self, ksid: &Uuid) -> u64;

    /// Most bytes one stream holds ready on this node.
    fn capacity(&self) -> u64;

    /// The directed streams this node knows: KSID, source, destination.
    fn streams(&self) -> Vec<(Uuid, String, String)>;

    /// How many directed streams this node knows (cheap: tells when
    /// [`KeySupply::streams`] has news).
    fn stream_count(&self) -> usize;

    /// A keyed tag of a span, the same on both nodes (never of key bytes).
    fn tag(&self, span: &Span) -> u64;

    /// The KSID of the stream `name` describes, the same on both nodes and
    /// not guessable without the link's secret (so no other client of the
    /// link can take it first).
    fn stream_id(&self, name: &[u8]) -> Uuid;
}

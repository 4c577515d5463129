//! ETSI GS QKD 004 push mode, QKD side, as calls: OPEN_CONNECT that
//! registers the KMS to push to, GET_KEY that starts pushing, CLOSE that
//! stops it.
//!
//! The HTTP routes (the server's `api::etsi004`) and the C ABI
//! (`kp_push_*`) are both thin adapters over this.

use std::sync::Arc;
use std::time::Duration;

use keypipe_core::qkd::{Engine, GetKeyError, OpenReply, Qos, Status, StreamError};
use uuid::Uuid;

use crate::http::Origin;
use crate::push::{PushError, Pushes};

/// Why pushing could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// No stream with this KSID on this node.
    #[error("unknown key_stream_id")]
    UnknownStream,
    /// Both sides opened the KSID with different chunk sizes.
    #[error("{}", GetKeyError::QosConflict)]
    QosConflict,
    /// The stream was stopped for good (key confirmation, lost ledger).
    #[error("{}", GetKeyError::StreamFailed)]
    StreamFailed,
    /// The index asked for was already pushed.
    #[error("{0}")]
    Delivered(PushError),
}

/// Why an OPEN_CONNECT in push mode was refused before anything opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefused {
    /// The caller may not have this node push to that KMS URI.
    #[error("{0}")]
    NotAllowed(String),
    /// A KMS joining a stream named another destination than the one the
    /// creating KMS gave (and the peer node announced).
    #[error(
        "destination {given:?} differs from the one the creating KMS gave for this stream: {announced:?}"
    )]
    DestinationMismatch {
        /// What the caller named.
        given: String,
        /// What the creating node announced.
        announced: String,
    },
}

/// Push mode over one engine and its push table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PushMode {
    engine: Arc<Engine>,
    push: Arc<Pushes>,
    /// Serializes authorization and open (see [`PushMode::open`]).
    opening: Arc<std::sync::Mutex<()>>,
}

impl PushMode {
    /// Push mode over `engine`, pushing through `push`.
    pub fn new(engine: Arc<Engine>, push: Arc<Pushes>) -> Self {
        Self {
            engine,
            push,
            opening: Arc::default(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// OPEN_CONNECT; on status 0 or 1 the stream is pushed, once pushing
    /// starts, to the KMS of this node's side: `source` on the node that
    /// creates the stream, `destination` on the other. A KMS joining a
    /// stream the peer announced must name the announced destination (the
    /// node pushes only where the creating KMS said). `authorize` sees the
    /// URI this node would push to (and its parsed, resolved origin)
    /// before anything is opened.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
        origins: (Origin, Origin),
        authorize: impl FnOnce(&str, &Origin) -> Result<(), String>,
    ) -> Result<OpenReply, OpenRefused> {
        let ksid = ksid.filter(|k| !k.is_nil());
        let announced = ksid
            .and_then(|k| self.engine.announced(&k, qos.timeout))
            .filter(|u| !u.created_here);
        if let Some(u) = &announced
            && !same_uri(&u.destination, destination)
        {
            return Err(OpenRefused::DestinationMismatch {
                given: destination.to_owned(),
                announced: u.destination.clone(),
            });
        }
        let (source_origin, destination_origin) = origins;
        let (target_uri, target) = match announced {
            Some(_) => (destination, destination_origin),
            None => (source, source_origin),
        };
        // One authorization and open at a time: per-KMS caps count the
        // streams open, which this open adds to.
        let _serial = self.opening.lock().unwrap_or_else(|e| e.into_inner());
        authorize(target_uri, &target).map_err(OpenRefused::NotAllowed)?;
        let reply = self
            .engine
            .open_connect_as(source, destination, qos, ksid, announced.is_some())
            .map_err(|e| OpenRefused::NotAllowed(e.to_string()))?;
        if let (Status::Successful | Status::PeerNotConnected, Some(k)) = (reply.status, reply.ksid)
        {
            self.push.register(k, target, &reply.qos, 0);
        }
        Ok(reply)
    }

    /// The URI this node pushes stream `ksid` to, when it is open here.
    pub fn target_of(&self, ksid: &Uuid) -> Option<String> {
        self.engine
            .stream_uris(ksid)
            .filter(|u| u.open_here)
            .map(|u| u.target().to_owned())
    }

    /// GET_KEY in push mode: pushing of `ksid` starts (at `index`, or where
    /// it stands).
    pub fn start(&self, ksid: &Uuid, index: Option<u32>) -> Result<(), StartError> {
        match self.engine.stream_qos(ksid) {
            Ok(_) => {}
            Err(GetKeyError::QosConflict) => return Err(StartError::QosConflict),
            Err(GetKeyError::StreamFailed) => return Err(StartError::StreamFailed),
            Err(_) => return Err(StartError::UnknownStream),
        }
        match self.push.start(ksid, index) {
            Ok(()) => Ok(()),
            Err(PushError::UnknownStream) => Err(StartError::UnknownStream),
            Err(e @ PushError::Delivered(_)) => Err(StartError::Delivered(e)),
        }
    }

    /// Whether [`close`](Self::close) of `ksid` returns at once (nothing of
    /// it on the wire).
    pub fn close_is_quick(&self, ksid: &Uuid) -> bool {
        self.push.close_is_quick(ksid)
    }

    /// CLOSE: stops taking key for `ksid` and waits (at most `wait`) for its
    /// pushes on the wire to be answered, so nothing is pushed after this
    /// returns; then the engine zeroizes what it holds and tells the peer.
    pub fn close(&self, ksid: &Uuid, wait: Duration) -> Result<Status, StreamError> {
        if matches!(
            self.engine.stream_qos(ksid),
            Err(GetKeyError::UnknownStream)
        ) {
            return Err(StreamError::UnknownStream);
        }
        self.push.close(ksid, wait);
        self.engine.close(ksid)
    }
}

/// True when `a` and `b` name the same base URI ([`Origin::canonical`]).
fn same_uri(a: &str, b: &str) -> bool {
    match (Origin::parse(a), Origin::parse(b)) {
        (Ok(x), Ok(y)) => x.canonical() == y.canonical(),
        _ => a == b,
    }
}

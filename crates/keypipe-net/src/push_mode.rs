//! ETSI GS QKD 004 push mode, QKD side, as calls: OPEN_CONNECT that
//! registers the KMS to push to, GET_KEY that starts pushing, CLOSE that
//! stops it. The HTTP routes (the server's `api::etsi004`) and the C ABI
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

/// Push mode over one engine and its push table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PushMode {
    engine: Arc<Engine>,
    push: Arc<Pushes>,
}

impl PushMode {
    /// Push mode over `engine`, pushing through `push`.
    pub fn new(engine: Arc<Engine>, push: Arc<Pushes>) -> Self {
        Self { engine, push }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Which KMS a node pushes to: the node that creates the KSID (none
    /// given) is the source side and pushes to `source`; the other side
    /// pushes to `destination`.
    pub fn target(ksid: Option<Uuid>, source: Origin, destination: Origin) -> Origin {
        if ksid.is_some() { destination } else { source }
    }

    /// OPEN_CONNECT; on status 0 or 1 the stream is pushed to `target`
    /// (resolved) once pushing starts.
    pub fn open(
        &self,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
        target: Origin,
    ) -> OpenReply {
        let reply = self.engine.open_connect(source, destination, qos, ksid);
        if let (Status::Successful | Status::PeerNotConnected, Some(k)) = (reply.status, reply.ksid)
        {
            self.push.register(k, target, &reply.qos, 0);
        }
        reply
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

//! ETSI GS QKD 004 GET_KEY on one node, in named steps: find the chunk an
//! index names, locate its stream blocks (held, on their way, gone or
//! never assigned), obtain the missing ones (the leader assigns them, the
//! follower asks the leader), and deliver the chunk with its metadata.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Node;
use crate::key::Stamp;
use crate::qkd::link::Role;
use crate::qkd::stream::{Side, Stream};
use crate::qkd::{GetKeyError, GetKeyReply, Metadata, Status};

/// Result of one non-blocking `get_key` attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// A final answer.
    Reply(GetKeyReply),
    /// The key is not here yet (ring empty, the leader's lease pending,
    /// flow control, or the ledger's reservation being written).
    NeedKey,
    /// The peer side has not opened the stream yet.
    NeedPeer,
}

/// One GET_KEY as the node sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRequest<'a> {
    /// The stream.
    pub(crate) ksid: &'a Uuid,
    /// The wire index asked for.
    pub(crate) index: u32,
    /// The caller's metadata buffer size (`None`: no metadata wanted).
    pub(crate) metadata_capacity: Option<usize>,
    /// The caller has the chunk once the call returns (a pusher confirms
    /// later, see [`Node::confirm`]).
    pub(crate) confirmed: bool,
}

/// Where the stream blocks of one chunk stand on this node.
enum Located {
    /// All held: the chunk can be delivered.
    Here,
    /// Some are on their way (leased, or asked of the leader).
    Awaited,
    /// Some were assigned once and are gone (released, expired, lost, or
    /// below the leader's restart floor): the chunk never comes.
    Gone,
    /// Some were never assigned: they are in `Node::scratch`.
    Missing,
}

impl Node {
    /// One non-blocking GET_KEY attempt of `request`, writing the chunk
    /// into `out`. `link_ok`: false pauses delivery (a node cut off from
    /// its peer cannot tell whether the peer still delivers the same key).
    pub(crate) fn get_key(
        &mut self,
        now: Instant,
        request: KeyRequest<'_>,
        out: &mut [MaybeUninit<u8>],
        link_ok: bool,
    ) -> Result<Attempt, GetKeyError> {
        if self.role == Role::Follower {
            self.pump_leases(now);
        }
        let Some(c) = self.chunk_asked(now, &request, out.len())? else {
            return Ok(Attempt::NeedPeer);
        };
        let located = self.locate(now, request.ksid, c);
        if let Located::Gone = located {
            let block_size = self.block_size;
            let stream = self.streams.get_mut(request.ksid).expect("present");
            let (lost, released) = lose(stream, c, block_size);
            self.note_lost(lost, released);
            self.reservations.touch(*request.ksid);
            return Err(GetKeyError::Consumed);
        }
        if !link_ok {
            return Ok(Attempt::Reply(GetKeyReply::Status(Status::NoQkdConnection)));
        }
        match located {
            Located::Missing => {
                if !self.streams[request.ksid].allocating() {
                    let status = Status::PeerNotConnectedGetKey;
                    return Ok(Attempt::Reply(GetKeyReply::Status(status)));
                }
                if !self.obtain(now, request.ksid) {
                    return Ok(Attempt::NeedKey);
                }
            }
            Located::Awaited => return Ok(Attempt::NeedKey),
            Located::Here | Located::Gone => {}
        }
        Ok(self.deliver(now, &request, c, out))
    }

    /// The absolute chunk `request` asks for, once the stream is open on
    /// both sides (`None` while the peer's side is not) and the chunk is
    /// neither handed out nor lost; `room` is the caller's buffer size.
    fn chunk_asked(
        &mut self,
        now: Instant,
        request: &KeyRequest<'_>,
        room: usize,
    ) -> Result<Option<u64>, GetKeyError> {
        let stream = self
            .streams
            .get_mut(request.ksid)
            .ok_or(GetKeyError::UnknownStream)?;
        if stream.local != Side::Open || stream.issuer.is_some() {
            return Err(GetKeyError::UnknownStream);
        }
        if stream.conflict {
            return Err(GetKeyError::QosConflict);
        }
        if stream.failed {
            return Err(GetKeyError::StreamFailed);
        }
        let chunk = stream.chunk_size() as usize;
        if room < chunk {
            return Err(GetKeyError::BufferTooSmall { needed: chunk });
        }
        if stream.peer == Side::Absent {
            return Ok(None);
        }
        stream.last_active = now;
        let c = stream.absolute(request.index);
        if stream.done.contains(c) {
            return Err(GetKeyError::Consumed);
        }
        Ok(Some(c))
    }

    /// Where the stream blocks of chunk `c` of `ksid` stand; those never
    /// assigned are left in `scratch`.
    fn locate(&mut self, now: Instant, ksid: &Uuid, c: u64) -> Located {
        let (block_size, role) = (self.block_size, self.role);
        let stream = &self.streams[ksid];
        let missing = &mut self.scratch;
        missing.clear();
        let mut awaited = false;
        let mut gone = false;
        for sb in stream.blocks_of(c, block_size) {
            if let Some(held) = stream.held.get(&sb) {
                gone |= held.expires <= now;
            } else if role == Role::Follower
                && (stream.pending.contains(&sb) || stream.requested.contains(&sb))
            {
                awaited = true;
            } else if stream.assigned.contains(sb)
                || (role == Role::Follower && sb < stream.floor && !stream.peer_held.contains(sb))
            {
                // Assigned once and since released, expired or lost; or
                // below the leader's restart floor: never again.
                gone = true;
            } else {
                missing.push(sb);
            }
        }
        if gone {
            Located::Gone
        } else if !missing.is_empty() {
            Located::Missing
        } else if awaited {
            Located::Awaited
        } else {
            Located::Here
        }
    }

    /// Obtains the stream blocks of `ksid` in `scratch`: the leader assigns
    /// them (true when it could, all of them), the follower asks the leader
    /// (false: they come later).
    fn obtain(&mut self, now: Instant, ksid: &Uuid) -> bool {
        let missing = std::mem::take(&mut self.scratch);
        let ready = match self.role {
            Role::Leader => self.assign(ksid, &missing, now),
            Role::Follower => {
                self.request(ksid, &missing);
                false
            }
        };
        self.scratch = missing;
        ready
    }

    /// Hands out chunk `c` (every block of it held) into `out`, with its
    /// metadata when asked for (nothing is consumed when the caller's
    /// metadata buffer is too small).
    fn deliver(
        &mut self,
        now: Instant,
        request: &KeyRequest<'_>,
        c: u64,
        out: &mut [MaybeUninit<u8>],
    ) -> Attempt {
        let block_size = self.block_size;
        let stream = self.streams.get_mut(request.ksid).expect("present");
        let chunk = stream.chunk_size() as usize;
        let metadata = match request.metadata_capacity {
            None => None,
            Some(capacity) => {
                let oldest = stream
                    .blocks_of(c, block_size)
                    .filter_map(|sb| stream.held.get(&sb))
                    .map(|h| h.born)
                    .min();
                let metadata =
                    Metadata::new(oldest.map_or(Duration::ZERO, |b| b.until(Stamp::at(now))));
                if capacity < metadata.len() {
                    return Attempt::Reply(GetKeyReply::MetadataTooSmall {
                        needed: metadata.len(),
                    });
                }
                Some(metadata)
            }
        };
        let released = stream.take_chunk(c, block_size, &mut out[..chunk]);
        if request.confirmed {
            stream.delivered.insert(c);
        }
        self.held_total -= released;
        self.reservations.touch(*request.ksid);
        if self.role == Role::Follower && released > 0 {
            self.grant_credit(*request.ksid, 0);
        }
        Attempt::Reply(GetKeyReply::Key {
            index: request.index,
            metadata,
        })
    }
}

/// Marks chunk `c` lost; (chunks lost, blocks released).
fn lose(stream: &mut Stream, c: u64, block_size: u64) -> (u64, u64) {
    match stream.lose_chunk(c, block_size) {
        Some(released) => (1, released),
        None => (0, 0),
    }
}

impl Metadata {
    /// `{"age_ms":N,"hops":0}` for key of that age.
    pub(crate) fn new(age: Duration) -> Self {
        let mut m = Metadata {
            buf: [0; 48],
            len: 0,
        };
        let mut w = &mut m.buf[..];
        let _ = std::io::Write::write_fmt(
            &mut w,
            format_args!(
                "{{\"age_ms\":{},\"hops\":0}}",
                age.as_millis().min(u128::from(u64::MAX))
            ),
        );
        m.len = (48 - w.len()) as u8;
        m
    }
}

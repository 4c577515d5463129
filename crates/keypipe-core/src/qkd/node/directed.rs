//! Directed streams: key one node *issues* (hands out in order, under ids
//! it makes up alone) and the other node *redeems* (hands out by id, once).
//! This is what ETSI GS QKD 014 needs: `enc_keys` on the master SAE's node
//! issues, `dec_keys` on the slave's node redeems, and neither waits for
//! the other node per request.
//!
//! A directed stream is an ordinary stream (same leases, key confirmation,
//! ledger, TTL) whose chunks are single bytes, so a key is any run of
//! chunks, plus these rules:
//!
//! - **Only the issuer allocates.** It takes the next run of chunks, all
//!   or nothing; the redeemer never asks for a block, it only hands out
//!   chunks it holds.
//! - **The redeemer holds every issued byte first.** A leader issues only
//!   from blocks the follower said it holds (`Held`, sent once the block's
//!   check value matched); a follower issues only from blocks it was
//!   leased, which the leader holds from the moment it assigned them. So a
//!   key id handed to a master always resolves on the slave's node, with
//!   no round trip per request.
//! - **The redeemer keeps what it holds** whatever the issuer's state: it
//!   cannot tell which of its chunks the issuer handed out just before a
//!   crash (after the ledger's last write), so a sync never drops them;
//!   only the TTL, a redemption or a stopped stream does. The issuer
//!   follows the usual rules (it drops what the redeemer cannot deliver).
//! - **The redeemer may hand out while the link is down**: its chunks are
//!   confirmed, and the issuer can never give them another value (it
//!   resumes above its ledger reservation, or its device position).
//! - The redeemer's side opens by itself when the issuer announces the
//!   stream; neither side closes it for idleness; ETSI 004 calls refuse it.
//!
//! Each issued run is recorded as delivered (the ledger keeps it); a
//! redeemed run is not (after a restart the redeemer's key is gone anyway:
//! key lives in memory only).
//!
//! This file is long because it is one concept: issuing, redeeming and
//! the `Held` acknowledgements all keep the same invariant (the redeemer
//! holds every issued byte first), so they stay where it can be checked
//! together.

use std::time::Instant;

use uuid::Uuid;

use super::Node;
use crate::qkd::link::{LinkMsg, Role};
use crate::qkd::qos::Qos;
use crate::qkd::rangeset::RangeSet;
use crate::qkd::stream::{MIN_AHEAD, Side, Stream};

/// Blocks an issuer keeps assigned (or asked for) ahead of what it
/// issued, so the next requests find key ready while the redeemer's
/// acknowledgements are on their way: it adapts to the stream's rate, up
/// to half the stream's window.
fn lookahead(stream: &Stream, window: u64) -> u64 {
    stream.ahead.min(stream.window(window) / 2).max(1)
}

/// An issuing stream idle this long supplies less ahead (halving per tick
/// down to the minimum): idle pairs hold little of the node's budget.
const SLOWING: std::time::Duration = std::time::Duration::from_secs(1);
/// A stream that issued within this long is kept supplied ahead of need;
/// an idle one takes no more key until it is used again.
const ACTIVE: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a directed-stream call did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirectedError {
    /// No directed stream with this KSID is open on this node.
    #[error("no directed key stream with this KSID is open on this node")]
    UnknownStream,
    /// The call is for the other node: this one redeems (or issues).
    #[error("this node does not issue (or redeem) this stream's key")]
    WrongSide,
    /// The stream exists with other parameters (another issuer, or an
    /// ETSI 004 stream with this KSID).
    #[error("a key stream with this KSID exists with other parameters")]
    Conflict,
    /// This node has `max_streams` streams open.
    #[error("this node has max_streams key streams open")]
    TooManyStreams,
    /// Some of the requested key is not here: never issued, expired,
    /// handed out already, or lost.
    #[error("the key is not on this node (never issued, expired or handed out already)")]
    NotFound,
    /// The stream was stopped for good (key confirmation failed).
    #[error("this key stream was stopped for good: key confirmation failed")]
    Failed,
    /// The device or the peer node is down: nothing is issued.
    #[error("no QKD connection: the device or the peer node is down")]
    NoLink,
    /// Not enough key within the time allowed.
    #[error("not enough key is available now")]
    InsufficientKey,
}

/// One non-blocking issue attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Issue {
    /// Issued from this chunk on.
    Issued(u64),
    /// Not enough key is ready yet (leases, acknowledgements, the ring).
    NeedKey,
    /// The redeeming side has not opened the stream yet.
    NeedPeer,
}

/// Where one stream block of an issue stands.
enum Place {
    Ready,
    Awaited,
    Gone,
    Missing,
}

impl Node {
    /// Opens directed stream `ksid` on this node (idempotent). `issuer` is
    /// the role of the node that issues; the other node's side opens when
    /// the announcement reaches it. Key not handed out within `ttl_s`
    /// seconds is zeroized.
    pub fn open_directed(
        &mut self,
        now: Instant,
        ksid: Uuid,
        source: &str,
        destination: &str,
        issuer: Role,
        ttl_s: u32,
    ) -> Result<(), DirectedError> {
        if let Some(stream) = self.streams.get_mut(&ksid) {
            if stream.issuer != Some(issuer) || stream.chunk_size() != 1 {
                return Err(DirectedError::Conflict);
            }
            if stream.failed {
                return Err(DirectedError::Failed);
            }
            match stream.local {
                Side::Open => return Ok(()),
                Side::Closed => return Err(DirectedError::Conflict),
                Side::Absent => {}
            }
            stream.last_active = now;
            self.open_here(ksid);
            return Ok(());
        }
        let opened_here = self.streams.values().filter(|s| s.created_here).count();
        if opened_here >= self.tuning.max_streams {
            return Err(DirectedError::TooManyStreams);
        }
        let qos = Qos {
            key_chunk_size: 1,
            ttl: ttl_s.clamp(1, self.limits.max_ttl_s.max(1)),
            ..Qos::default()
        };
        let mut stream = Stream::new(qos, source, destination, true, now);
        stream.issuer = Some(issuer);
        self.streams.insert(ksid, stream);
        self.open_here(ksid);
        Ok(())
    }

    /// This node's side of directed stream `ksid` opens: the peer hears
    /// of it, the ledger records it, a follower grants credit.
    fn open_here(&mut self, ksid: Uuid) {
        let Some(stream) = self.streams.get_mut(&ksid) else {
            return;
        };
        stream.local = Side::Open;
        let msg = super::lifecycle::open_msg(ksid, stream);
        self.outbox.push(msg);
        self.reservations.touch(ksid);
        if self.role == Role::Follower {
            self.grant_credit(ksid, 0);
        }
    }

    /// The peer announced `ksid`: a directed stream this node redeems
    /// opens here at once.
    pub(super) fn join_directed(&mut self, ksid: Uuid) {
        let role = self.role;
        let Some(stream) = self.streams.get_mut(&ksid) else {
            return;
        };
        if stream.issuer != Some(role.peer()) || stream.local != Side::Absent || stream.failed {
            return;
        }
        if stream.chunk_size() != 1 {
            stream.conflict = true;
            return;
        }
        self.open_here(ksid);
    }

    /// The directed stream `ksid` open on this node, for `issuing` (else
    /// redeeming).
    fn directed(&mut self, ksid: &Uuid, issuing: bool) -> Result<&mut Stream, DirectedError> {
        let role = self.role;
        let stream = self
            .streams
            .get_mut(ksid)
            .filter(|s| s.issuer.is_some() && s.local == Side::Open)
            .ok_or(DirectedError::UnknownStream)?;
        if (stream.issuer == Some(role)) != issuing {
            return Err(DirectedError::WrongSide);
        }
        if stream.conflict {
            return Err(DirectedError::Conflict);
        }
        if stream.failed {
            return Err(DirectedError::Failed);
        }
        Ok(stream)
    }

    /// Issues `out.len()` bytes of `ksid`'s key (the next ones), all or
    /// nothing, recording them as delivered. `link_ok`: false issues
    /// nothing (the redeemer could not be told of new leases).
    pub(crate) fn issue(
        &mut self,
        now: Instant,
        ksid: &Uuid,
        out: &mut [u8],
        link_ok: bool,
    ) -> Result<Issue, DirectedError> {
        if self.role == Role::Follower {
            self.pump_leases(now);
        }
        let (block_size, role, window) = (self.block_size, self.role, self.tuning.window_blocks);
        if self.was_reset {
            // A leader whose ledger was reset issues nothing before the
            // follower's sync told it how far the stream went.
            return Ok(Issue::NeedKey);
        }
        let len = out.len() as u64;
        let stream = self.directed(ksid, true)?;
        // Below the floor, everything may have been issued already.
        stream.next_issue = stream.next_issue.max(stream.floor * block_size);
        if len == 0 {
            return Ok(Issue::Issued(stream.next_issue));
        }
        if stream.peer != Side::Open {
            return Ok(Issue::NeedPeer);
        }
        if !link_ok {
            return Err(DirectedError::NoLink);
        }
        stream.last_active = now;
        let (mut lost, mut released) = (0, 0);
        let mut missing = std::mem::take(&mut self.scratch);
        missing.clear();
        let mut waiting = false;
        let stream = self.streams.get_mut(ksid).expect("present");
        let first = 'find: loop {
            let first = stream.next_issue;
            let last_block = (first + len - 1) / block_size;
            for sb in first / block_size..=last_block {
                match place(stream, sb, role, now) {
                    Place::Ready => {}
                    Place::Awaited => waiting = true,
                    Place::Missing => missing.push(sb),
                    Place::Gone => {
                        // Skip the block: its key never goes out here.
                        let (l, r) = stream.lose_block(sb, block_size);
                        lost += l;
                        released += r;
                        stream.next_issue = (sb + 1) * block_size;
                        missing.clear();
                        waiting = false;
                        continue 'find;
                    }
                }
            }
            break first;
        };
        // Keep blocks coming ahead of need.
        let last_block = (first + len - 1) / block_size;
        if role == Role::Follower {
            // The ledger records, ahead, how far this stream is leased.
            let need = last_block + 1 + lookahead(stream, window);
            if stream.reserved < need {
                let end = need + stream.window(window);
                self.reservations.reserve(*ksid, stream, end);
            }
        }
        for sb in last_block + 1..=last_block + lookahead(stream, window) {
            if matches!(place(stream, sb, role, now), Place::Missing) {
                missing.push(sb);
            }
        }
        self.note_lost(lost, released);
        if lost + released > 0 {
            self.reservations.touch(*ksid);
        }
        self.provide(ksid, &missing, now);
        self.scratch = missing;
        let stream = self.streams.get_mut(ksid).expect("present");
        let ready = (first / block_size..=last_block)
            .all(|sb| matches!(place(stream, sb, role, now), Place::Ready));
        if waiting || !ready {
            // Requests outran the supply: keep more ahead.
            stream.ahead = (stream.ahead * 2)
                .min(stream.window(window) / 2)
                .max(MIN_AHEAD);
            return Ok(Issue::NeedKey);
        }
        let released = stream.take_span(first, block_size, out, true);
        stream.next_issue = first + len;
        self.held_total -= released;
        self.reservations.touch(*ksid);
        if self.role == Role::Follower && released > 0 {
            self.grant_credit(*ksid, 0);
        }
        Ok(Issue::Issued(first))
    }

    /// Keeps every stream this node issues supplied ahead of its next key
    /// (background work: the first request after a quiet spell finds key
    /// ready).
    pub(super) fn top_up(&mut self, now: Instant) {
        let (role, block_size, window) = (self.role, self.block_size, self.tuning.window_blocks);
        for s in self.streams.values_mut() {
            if s.issuer == Some(role) && now.duration_since(s.last_active) > SLOWING {
                s.ahead = (s.ahead / 2).max(MIN_AHEAD);
            }
        }
        let issuing: Vec<Uuid> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.issuer == Some(role)
                    && s.local == Side::Open
                    && s.peer == Side::Open
                    && s.allocating()
                    && now.duration_since(s.last_active) < ACTIVE
            })
            .map(|(k, _)| *k)
            .collect();
        let mut missing = std::mem::take(&mut self.scratch);
        for ksid in issuing {
            missing.clear();
            let stream = &self.streams[&ksid];
            let next = stream.next_issue / block_size;
            for sb in next..next + lookahead(stream, window) {
                if matches!(place(stream, sb, role, now), Place::Missing) {
                    missing.push(sb);
                }
            }
            if !missing.is_empty() {
                self.provide(&ksid, &missing, now);
            }
        }
        self.scratch = missing;
    }

    /// Assigns (leader) or asks for (follower) stream blocks `sbs` of
    /// `ksid`, in order, as far as each can be now.
    fn provide(&mut self, ksid: &Uuid, sbs: &[u64], now: Instant) {
        match self.role {
            Role::Leader => {
                for &sb in sbs {
                    if !self.assign(ksid, &[sb], now) {
                        break;
                    }
                }
            }
            Role::Follower => self.request(ksid, sbs),
        }
    }

    /// Redeems every span (KSID, first byte, length) into `out`, one after
    /// the other, all or nothing: every byte must be held here and never
    /// handed out, and no two spans may overlap. Works while the link is
    /// down.
    pub fn redeem(
        &mut self,
        now: Instant,
        spans: &[(Uuid, u64, u64)],
        out: &mut [u8],
    ) -> Result<(), DirectedError> {
        if self.role == Role::Follower {
            self.pump_leases(now);
        }
        let block_size = self.block_size;
        let total: u64 = spans.iter().map(|s| s.2).sum();
        if total != out.len() as u64 {
            return Err(DirectedError::NotFound);
        }
        for (i, &(ksid, first, len)) in spans.iter().enumerate() {
            let end = first.checked_add(len).ok_or(DirectedError::NotFound)?;
            let overlaps = spans[..i]
                .iter()
                .any(|&(k, f, l)| k == ksid && f < end && first < f + l);
            let stream = self.directed(&ksid, false)?;
            if len == 0
                || overlaps
                || end > super::MAX_STREAM_BYTES
                || stream.done.count_within(first, end) > 0
                || !(first / block_size..=(end - 1) / block_size)
                    .all(|sb| stream.held.get(&sb).is_some_and(|h| h.expires > now))
            {
                return Err(DirectedError::NotFound);
            }
        }
        let mut at = 0usize;
        for &(ksid, first, len) in spans {
            let stream = self.streams.get_mut(&ksid).expect("checked");
            stream.last_active = now;
            let released =
                stream.take_span(first, block_size, &mut out[at..at + len as usize], false);
            at += len as usize;
            self.held_total -= released;
            self.reservations.touch(ksid);
            if self.role == Role::Follower && released > 0 {
                self.grant_credit(ksid, 0);
            }
        }
        Ok(())
    }

    /// Bytes of directed stream `ksid` this node could issue at once (held,
    /// acknowledged, not handed out), or `None` when it does not issue it.
    pub fn issuable(&self, ksid: &Uuid, now: Instant) -> Option<u64> {
        let stream = self
            .streams
            .get(ksid)
            .filter(|s| s.issuer == Some(self.role) && s.local == Side::Open)?;
        let bs = self.block_size;
        Some(
            stream
                .held
                .iter()
                .filter(|(sb, h)| {
                    h.expires > now
                        && (self.role == Role::Follower || stream.mirrored.contains(**sb))
                })
                .map(|(sb, _)| bs - stream.done.count_within(sb * bs, (sb + 1) * bs))
                .sum(),
        )
    }

    /// How many directed streams this node knows.
    pub fn directed_count(&self) -> usize {
        self.streams.values().filter(|s| s.issuer.is_some()).count()
    }

    /// The directed streams this node knows: KSID, source, destination.
    pub fn directed_streams(&self) -> Vec<(Uuid, String, String)> {
        self.streams
            .iter()
            .filter(|(_, s)| s.issuer.is_some())
            .map(|(k, s)| (*k, s.source.clone(), s.destination.clone()))
            .collect()
    }

    /// Follower: block `sb` of `ksid` is now held here; a leader issuing
    /// the stream hears of it once this node's ledger records that the
    /// stream was leased that far (so a leader whose ledger is later reset
    /// learns it at the sync, even after this node restarted). The
    /// ledger reserves ahead, a window at a time: one write covers many
    /// blocks.
    pub(super) fn held_now(&mut self, ksid: Uuid, sb: u64) {
        let window = self.tuning.window_blocks;
        let Some(stream) = self.streams.get_mut(&ksid) else {
            return;
        };
        if stream.issuer != Some(Role::Leader) {
            return;
        }
        if sb < stream.durable {
            self.outbox.push(LinkMsg::Held {
                ksid,
                stream_block: sb,
            });
            return;
        }
        stream.unacked.insert(sb);
        let end = sb + 1 + stream.window(window);
        self.reservations.reserve(ksid, stream, end);
    }

    /// Follower, once the ledger recorded `ksid` leased below its
    /// `durable` mark: the `Held` that waited for it go out.
    pub(super) fn ack_recorded(&mut self, ksid: &Uuid) {
        let Some(stream) = self.streams.get_mut(ksid) else {
            return;
        };
        while let Some(&sb) = stream.unacked.first() {
            if sb >= stream.durable {
                break;
            }
            stream.unacked.remove(&sb);
            if stream.held.contains_key(&sb) {
                self.outbox.push(LinkMsg::Held {
                    ksid: *ksid,
                    stream_block: sb,
                });
            }
        }
    }

    /// Leader: the follower holds block `sb` of `ksid`.
    pub(super) fn peer_holds(&mut self, ksid: Uuid, sb: u64) {
        if let Some(stream) = self.streams.get_mut(&ksid)
            && stream.issuer == Some(Role::Leader)
            && stream.held.contains_key(&sb)
        {
            stream.mirrored.insert(sb);
        }
    }

    /// Leader issuing `ksid`, at a sync: the follower holds `confirmed`
    /// (check values verified) and awaits the rest of `held`. Blocks it
    /// neither holds nor awaits (their lease was lost with a session, or
    /// it restarted) are dropped here: none of their key was issued, and
    /// the follower will never ask for them.
    pub(super) fn peer_holds_only(&mut self, ksid: &Uuid, held: &RangeSet, confirmed: &RangeSet) {
        let block_size = self.block_size;
        let Some(stream) = self.streams.get_mut(ksid) else {
            return;
        };
        if stream.issuer != Some(Role::Leader) {
            return;
        }
        let mut mirrored = RangeSet::default();
        let mut unknown = Vec::new();
        for sb in stream.held.keys() {
            if confirmed.contains(*sb) {
                mirrored.insert(*sb);
            } else if !held.contains(*sb) {
                unknown.push(*sb);
            }
        }
        stream.mirrored = mirrored;
        let (mut lost, mut released) = (0, 0);
        for sb in unknown {
            let (l, r) = stream.lose_block(sb, block_size);
            lost += l;
            released += r;
        }
        // Nothing below the floor is issued (a follower that was leased
        // more than this node remembers raised it).
        stream.next_issue = stream.next_issue.max(stream.floor * block_size);
        self.note_lost(lost, released);
        self.reservations.touch(*ksid);
    }
}

/// True when this node redeems `stream` (a directed stream issued by the
/// other node): it keeps what it holds whatever the peer says.
pub(super) fn redeems(stream: &Stream, role: Role) -> bool {
    stream.issuer == Some(role.peer())
}

/// Where stream block `sb` of an issuing `stream` stands on a node of
/// `role`.
fn place(stream: &Stream, sb: u64, role: Role, now: Instant) -> Place {
    if let Some(held) = stream.held.get(&sb) {
        // Nothing is issued that expires soon after: the redeemer must
        // still hold it when the slave asks.
        let margin = std::time::Duration::from_secs(u64::from(stream.qos.ttl / 4));
        if held.expires <= now + margin {
            return Place::Gone;
        }
        return match role {
            // A leader issues what the follower said it holds; a follower
            // what its ledger records as leased (so neither a restart of
            // its own nor a reset of the leader's ledger gives it again).
            Role::Leader if !stream.mirrored.contains(sb) => Place::Awaited,
            Role::Follower if sb >= stream.durable => Place::Awaited,
            _ => Place::Ready,
        };
    }
    if role == Role::Follower && (stream.pending.contains(&sb) || stream.requested.contains(&sb)) {
        return Place::Awaited;
    }
    if stream.assigned.contains(sb)
        || (role == Role::Follower && sb < stream.floor && !stream.peer_held.contains(sb))
    {
        return Place::Gone;
    }
    Place::Missing
}

//! An engine's counters and health for C ([`kp_stats`], filled by
//! `kp_engine_stats`): what a product polls to monitor it without the HTTP
//! server.

use super::{EngineParts, kp_engine};
use crate::handle::Handle;
use crate::{errors::*, guard, required};

/// Fills `*out` with the engine's counters and health: what a product
/// polls to monitor the engine (ring fill, device and link up, streams,
/// pushes) without the HTTP server. Cheap (one short lock). Also answers
/// on a shut-down engine (its last counters, `shut_down` 1).
///
/// # Safety
/// `e` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kp_engine_stats(e: *mut kp_engine, out: *mut kp_stats) -> kp_result {
    guard(|| {
        required(out, "out")?;
        // SAFETY: NULL or live by contract.
        let handle = unsafe { e.as_ref() }.map(|e| &e.handle);
        // A shut-down engine still reports its last counters.
        let (call, shut_down) = Handle::enter_even_closed(handle)
            .ok_or_else(|| fail(KP_ERR_NULL_ARGUMENT, "engine is NULL".into()))?;
        let stats = stats_of(&call, shut_down);
        // SAFETY: non-NULL, writable by contract.
        unsafe { out.write(stats) };
        Ok(KP_OK)
    })
}

fn stats_of(parts: &EngineParts, shut_down: bool) -> kp_stats {
    let s = parts.engine().stats();
    let p = |f: &std::sync::atomic::AtomicU64| f.load(std::sync::atomic::Ordering::Relaxed);
    let (taken, acked, refused, expired, discarded, rejected) =
        parts.linked.pushes().with_stats(|ps| {
            (
                p(&ps.taken),
                p(&ps.acked),
                p(&ps.refused),
                p(&ps.expired),
                p(&ps.discarded),
                p(&ps.rejected),
            )
        });
    kp_stats {
        blocks_produced: s.counters.produced,
        blocks_consumed: s.counters.consumed,
        blocks_expired: s.counters.expired,
        ring_full_stalls: s.counters.ring_full_stalls,
        ring_len: s.ring_len as u64,
        ring_capacity: s.ring_capacity as u64,
        arena_free: s.arena_free as u64,
        arena_capacity: s.arena_capacity as u64,
        streams: s.streams as u64,
        device_up: s.device_up.into(),
        link_up: s.link_up.into(),
        memory_locked: s.protection.locked.into(),
        ledger_failed: s.ledger_failed.into(),
        link_refused: parts
            .linked
            .link()
            .is_some_and(|l| l.refusal().is_some())
            .into(),
        shut_down: shut_down.into(),
        held_blocks: s.held_blocks,
        ledger_position: s.position,
        pushes_taken: taken,
        pushes_acked: acked,
        pushes_refused: refused,
        pushes_expired: expired,
        pushes_discarded: discarded,
        pushes_rejected: rejected,
    }
}

/// Counters and health of an engine (`kp_engine_stats`).
#[repr(C)]
#[derive(Default)]
pub struct kp_stats {
    /// Blocks the device produced.
    pub blocks_produced: u64,
    /// Blocks taken from the ring for streams.
    pub blocks_consumed: u64,
    /// Blocks zeroized undelivered (TTL or close).
    pub blocks_expired: u64,
    /// Times the device poller paused on a full ring or arena.
    pub ring_full_stalls: u64,
    /// Blocks waiting in the ring.
    pub ring_len: u64,
    /// Ring capacity, blocks.
    pub ring_capacity: u64,
    /// Arena slots free.
    pub arena_free: u64,
    /// Arena slots.
    pub arena_capacity: u64,
    /// Streams known to the node.
    pub streams: u64,
    /// 1 when the device is producing.
    pub device_up: u8,
    /// 1 when the peer node is reachable.
    pub link_up: u8,
    /// 1 when the arena is locked in memory (mlock).
    pub memory_locked: u8,
    /// 1 when the key ledger cannot be written (no key flows until it can).
    pub ledger_failed: u8,
    /// 1 when the peer refused to pair (device parameters differ; see the
    /// log) or this node refused the peer.
    pub link_refused: u8,
    /// 1 once `kp_engine_shutdown` ran.
    pub shut_down: u8,
    /// Device blocks taken by streams and not yet delivered.
    pub held_blocks: u64,
    /// The device stream position the ledger has reserved up to.
    pub ledger_position: u64,
    /// Chunks taken for pushes to a KMS.
    pub pushes_taken: u64,
    /// Pushed chunks a KMS acknowledged (201).
    pub pushes_acked: u64,
    /// Push answers other than 201 (each is resent).
    pub pushes_refused: u64,
    /// Pushed chunks dropped: their key expired (TTL) or was lost.
    pub pushes_expired: u64,
    /// Chunks taken but not sent when their stream closed (zeroized).
    pub pushes_discarded: u64,
    /// Chunks a KMS refused for good (409), dropped and not resent.
    pub pushes_rejected: u64,
}

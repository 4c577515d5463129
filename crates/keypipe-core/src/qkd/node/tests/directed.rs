//! Directed streams between two simulated nodes: issued on one, redeemed
//! on the other, across crashes.

use super::*;
use crate::qkd::node::{DirectedError, Issue};

/// Opens a directed stream issued by node `issuer` (0 leader, 1 follower).
fn open_directed(sim: &mut Sim, issuer: usize) -> Uuid {
    let ksid = Uuid::new_v4();
    let role = sim.nodes[issuer].role;
    sim.nodes[issuer]
        .node
        .open_directed(Instant::now(), ksid, "m", "s", role, 60)
        .unwrap();
    sim.collect();
    sim.settle();
    ksid
}

/// Issues `len` bytes on node `i`, letting the link run until it can.
fn issue(sim: &mut Sim, i: usize, ksid: Uuid, len: usize) -> (u64, Vec<u8>) {
    for _ in 0..50 {
        let mut out = vec![0u8; len];
        sim.nodes[i].produce();
        let got = sim.nodes[i]
            .node
            .issue(Instant::now(), &ksid, &mut out, true)
            .unwrap();
        sim.collect();
        match got {
            Issue::Issued(first) => return (first, out),
            Issue::NeedKey | Issue::NeedPeer => sim.settle(),
        }
    }
    panic!("node {i} could not issue {len} bytes of {ksid}");
}

fn redeem(
    sim: &mut Sim,
    i: usize,
    ksid: Uuid,
    first: u64,
    len: usize,
) -> Result<Vec<u8>, DirectedError> {
    let mut out = vec![0u8; len];
    let got = sim.nodes[i]
        .node
        .redeem(Instant::now(), &[(ksid, first, len as u64)], &mut out);
    sim.collect();
    got.map(|()| out)
}

/// kill -9 of node `i`, then the link settles.
fn restart_and_sync(sim: &mut Sim, i: usize) {
    sim.crash(i);
    sim.settle();
}

#[test]
fn either_node_issues_and_the_other_redeems_the_same_bytes_once() {
    for issuer in [0, 1] {
        let mut sim = Sim::new(None);
        let k = open_directed(&mut sim, issuer);
        let redeemer = 1 - issuer;
        let mut seen = Vec::new();
        let mut next = 0;
        for len in [32, 8, 60, 40, 1, 30] {
            let (first, bytes) = issue(&mut sim, issuer, k, len);
            assert_eq!(first, next, "issued in order, with no gap");
            next = first + len as u64;
            seen.push((first, bytes));
        }
        // Redeemed in any order, each once.
        for (first, bytes) in seen.iter().rev() {
            let got = redeem(&mut sim, redeemer, k, *first, bytes.len()).unwrap();
            assert_eq!(&got, bytes, "issuer {issuer}: offset {first}");
            assert_eq!(
                redeem(&mut sim, redeemer, k, *first, bytes.len()),
                Err(DirectedError::NotFound),
                "a key is redeemed once"
            );
        }
        assert!(seen.windows(2).all(|w| w[0].1 != w[1].1));
        // The wrong side of each call is refused.
        assert_eq!(
            redeem(&mut sim, issuer, k, 0, 8),
            Err(DirectedError::WrongSide)
        );
        let mut out = [0u8; 8];
        assert_eq!(
            sim.nodes[redeemer]
                .node
                .issue(Instant::now(), &k, &mut out, true),
            Err(DirectedError::WrongSide)
        );
        // Far beyond anything issued: nothing there.
        assert_eq!(
            redeem(&mut sim, redeemer, k, 1 << 30, 8),
            Err(DirectedError::NotFound)
        );
    }
}

#[test]
fn a_leader_issues_only_what_the_follower_said_it_holds() {
    let mut sim = Sim::new(None);
    let k = open_directed(&mut sim, 0);
    let mut out = [0u8; 16];
    sim.nodes[0].produce();
    let first = sim.nodes[0]
        .node
        .issue(Instant::now(), &k, &mut out, true)
        .unwrap();
    assert_eq!(first, Issue::NeedKey, "assigned, not acknowledged yet");
    // Deliver the leases, but not the follower's answers.
    sim.collect();
    for (to, msg) in std::mem::take(&mut sim.wire) {
        sim.nodes[to].node.handle(Instant::now(), msg);
    }
    sim.nodes[1].produce();
    sim.nodes[1].node.tick(Instant::now());
    assert_eq!(
        sim.nodes[0]
            .node
            .issue(Instant::now(), &k, &mut out, true)
            .unwrap(),
        Issue::NeedKey
    );
    sim.collect();
    sim.settle();
    let (first, bytes) = issue(&mut sim, 0, k, 16);
    assert_eq!(redeem(&mut sim, 1, k, first, 16).unwrap(), bytes);
}

#[test]
fn an_issuer_killed_after_issuing_loses_nothing_and_never_issues_again() {
    for issuer in [0, 1] {
        let mut sim = Sim::new(None);
        let k = open_directed(&mut sim, issuer);
        let mut issued = Vec::new();
        for _ in 0..5 {
            issued.push(issue(&mut sim, issuer, k, 48));
        }
        // Issued, and no ledger write since: the crash loses the record.
        let mut out = vec![0u8; 40];
        sim.nodes[issuer].produce();
        if let Ok(Issue::Issued(first)) =
            sim.nodes[issuer]
                .node
                .issue(Instant::now(), &k, &mut out, true)
        {
            issued.push((first, out));
        }
        sim.wire.clear();
        restart_and_sync(&mut sim, issuer);
        let redeemer = 1 - issuer;
        for (first, bytes) in &issued {
            let got = redeem(&mut sim, redeemer, k, *first, bytes.len());
            assert_eq!(got.as_ref(), Ok(bytes), "issuer {issuer}: offset {first}");
        }
        let end = issued
            .iter()
            .map(|(f, b)| f + b.len() as u64)
            .max()
            .unwrap();
        for _ in 0..3 {
            let (first, bytes) = issue(&mut sim, issuer, k, 32);
            assert!(first >= end, "issuer {issuer}: {first} reissued (< {end})");
            assert!(
                issued
                    .iter()
                    .all(|(_, b)| !b.windows(32).any(|w| w == bytes))
            );
            assert_eq!(redeem(&mut sim, redeemer, k, first, 32).unwrap(), bytes);
        }
    }
}

#[test]
fn a_redeemer_killed_loses_only_what_it_held_and_hands_out_nothing_twice() {
    for issuer in [0, 1] {
        let mut sim = Sim::new(None);
        let k = open_directed(&mut sim, issuer);
        let redeemer = 1 - issuer;
        let (f1, b1) = issue(&mut sim, issuer, k, 32);
        assert_eq!(redeem(&mut sim, redeemer, k, f1, 32).unwrap(), b1);
        let (f2, _) = issue(&mut sim, issuer, k, 32);
        restart_and_sync(&mut sim, redeemer);
        assert_eq!(
            redeem(&mut sim, redeemer, k, f1, 32),
            Err(DirectedError::NotFound)
        );
        assert_eq!(
            redeem(&mut sim, redeemer, k, f2, 32),
            Err(DirectedError::NotFound),
            "held in memory only: gone with the process"
        );
        // The stream goes on: new keys resolve on both.
        let (f3, b3) = issue(&mut sim, issuer, k, 32);
        assert!(f3 > f2);
        assert_eq!(redeem(&mut sim, redeemer, k, f3, 32).unwrap(), b3);
    }
}

#[test]
fn a_redemption_of_several_keys_is_all_or_nothing() {
    let mut sim = Sim::new(None);
    let k = open_directed(&mut sim, 0);
    let (f1, b1) = issue(&mut sim, 0, k, 16);
    let (f2, b2) = issue(&mut sim, 0, k, 16);
    let mut out = vec![0u8; 32];
    let now = Instant::now();
    for bad in [
        vec![(k, f1, 16), (k, 1 << 30, 16)],
        vec![(k, f1, 16), (k, f1 + 8, 16)],
        vec![(k, f1, 16), (Uuid::new_v4(), f2, 16)],
    ] {
        assert!(
            sim.nodes[1].node.redeem(now, &bad, &mut out).is_err(),
            "{bad:?}"
        );
    }
    sim.nodes[1]
        .node
        .redeem(now, &[(k, f2, 16), (k, f1, 16)], &mut out)
        .unwrap();
    assert_eq!(
        out,
        [b2, b1].concat(),
        "nothing was taken by the refused calls"
    );
}

#[test]
fn etsi_004_calls_refuse_a_directed_stream() {
    let mut sim = Sim::new(None);
    let k = open_directed(&mut sim, 0);
    for i in 0..2 {
        assert!(matches!(sim.get(i, k, 0), Err(GetKeyError::UnknownStream)));
        assert!(sim.nodes[i].node.close(&k).is_err());
        let r = sim.nodes[i].node.open_connect(
            Instant::now(),
            "s",
            "d",
            &Qos::default(),
            Some(k),
            true,
        );
        assert_eq!(r.status, Status::KsidInUse, "node {i}");
        assert!(sim.nodes[i].node.target_uris().is_empty());
    }
}

/// Tries to issue `len` bytes, settling between tries; `None` when it
/// never can.
fn try_issue(
    sim: &mut Sim,
    i: usize,
    ksid: Uuid,
    len: usize,
    tries: usize,
) -> Option<(u64, Vec<u8>)> {
    for _ in 0..tries {
        let mut out = vec![0u8; len];
        sim.nodes[i].produce();
        let got = sim.nodes[i]
            .node
            .issue(Instant::now(), &ksid, &mut out, true);
        sim.collect();
        match got {
            Ok(Issue::Issued(first)) => return Some((first, out)),
            Ok(_) => sim.settle(),
            Err(e) => panic!("{e:?}"),
        }
    }
    None
}

/// Issues and redeems the first blocks, then lets the leader lease the
/// next ones (after spending device blocks outside the stream, so its
/// device runs ahead of the follower's): the leases are on the wire.
fn leases_in_flight(sim: &mut Sim) -> Uuid {
    let k = open_directed(sim, 0);
    let (f, b) = issue(sim, 0, k, 64 * 3);
    sim.settle();
    assert_eq!(redeem(sim, 1, k, f, b.len()).unwrap(), b);
    let now = Instant::now();
    for (to, msg) in std::mem::take(&mut sim.wire) {
        sim.nodes[to].node.handle(now, msg);
    }
    for _ in 0..40 {
        sim.nodes[0].produce();
        sim.nodes[0].node.take_local_block();
    }
    sim.nodes[0].produce();
    sim.nodes[0].node.tick(now);
    sim.collect();
    let leases = sim
        .wire
        .iter()
        .filter(|(_, m)| matches!(m, LinkMsg::Lease { .. }))
        .count();
    assert!(leases > 0, "the leader leased ahead");
    k
}

#[test]
fn one_unfetched_key_does_not_hold_a_leader_issued_stream_back() {
    let mut sim = Sim::new(None);
    let k = open_directed(&mut sim, 0);
    let _orphan = issue(&mut sim, 0, k, 32); // the slave never asks for it
    let mut issued = 0usize;
    while issued < 10_000 {
        let Some((first, bytes)) = try_issue(&mut sim, 0, k, 64, 30) else {
            break;
        };
        assert_eq!(redeem(&mut sim, 1, k, first, 64).unwrap(), bytes);
        issued += 64;
    }
    assert!(
        issued >= 10_000,
        "stalled after {issued} bytes (window: 256)"
    );
}

#[test]
fn leases_lost_with_a_restarted_follower_do_not_stall_the_leader() {
    let mut sim = Sim::new(None);
    let k = leases_in_flight(&mut sim);
    sim.wire.clear(); // they die with the follower
    restart_and_sync(&mut sim, 1);
    let (first, bytes) = try_issue(&mut sim, 0, k, 32, 200).expect("the leader issues again");
    assert_eq!(redeem(&mut sim, 1, k, first, 32).unwrap(), bytes);
}

#[test]
fn leases_dropped_by_a_session_restart_do_not_stall_the_leader() {
    let mut sim = Sim::new(None);
    let k = leases_in_flight(&mut sim);
    sim.wire.clear(); // the session starts over: its queue is gone
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
    sim.settle();
    for _ in 0..3 {
        let (first, bytes) = try_issue(&mut sim, 0, k, 64, 100).expect("the leader goes on");
        assert_eq!(redeem(&mut sim, 1, k, first, 64).unwrap(), bytes);
    }
}

/// At a sync, a lease whose block the follower has not read yet (check
/// value not verified) is not counted as held: nothing is issued from it
/// before the follower says it holds it.
#[test]
fn a_sync_never_counts_a_lease_awaiting_its_block_as_held() {
    let mut sim = Sim::new(None);
    let k = leases_in_flight(&mut sim);
    let now = Instant::now();
    // The follower gets the leases; its device has not produced those
    // blocks yet.
    for (to, msg) in std::mem::take(&mut sim.wire) {
        sim.nodes[to].node.handle(now, msg);
    }
    sim.collect();
    assert!(!sim.nodes[1].node.streams[&k].pending.is_empty());
    // Everything the follower confirmed holding is issued (and fetched).
    loop {
        let mut key = vec![0u8; 64];
        match sim.nodes[0].node.issue(now, &k, &mut key, true).unwrap() {
            Issue::Issued(first) => assert_eq!(redeem(&mut sim, 1, k, first, 64).unwrap(), key),
            _ => break,
        }
    }
    // A new session: both syncs, without the follower reading its device.
    sim.wire.clear();
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
    for _ in 0..3 {
        for (to, msg) in std::mem::take(&mut sim.wire) {
            sim.nodes[to].node.handle(now, msg);
        }
        sim.collect();
    }
    let mut key = vec![0u8; 64];
    let got = sim.nodes[0].node.issue(now, &k, &mut key, true).unwrap();
    assert_eq!(got, Issue::NeedKey, "nothing the follower only awaits");
    // Its device then skips those blocks: they never arrive there.
    sim.nodes[1].device_next += 200;
    sim.nodes[1].reserved = sim.nodes[1].device_next + 5;
    sim.settle();
    let (first, bytes) = try_issue(&mut sim, 0, k, 64, 200).expect("the leader goes on");
    assert_eq!(redeem(&mut sim, 1, k, first, 64).unwrap(), bytes);
}

/// `--reset-ledger` of the leader, whose 014 streams are opened at start,
/// before the first sync: no offset (so no key id) is issued again, and
/// the stream goes on.
#[test]
fn a_leader_with_a_reset_ledger_never_issues_an_offset_again() {
    let mut sim = Sim::new(None);
    let k = Uuid::new_v4();
    sim.nodes[0]
        .node
        .open_directed(Instant::now(), k, "m", "s", Role::Leader, 60)
        .unwrap();
    sim.collect();
    sim.settle();
    let mut issued = Vec::new();
    for _ in 0..4 {
        let (f, b) = issue(&mut sim, 0, k, 32);
        assert_eq!(redeem(&mut sim, 1, k, f, 32).unwrap(), b);
        issued.push((f, b));
    }
    sim.settle();
    // The follower restarts once (its leases are on record), then the
    // leader's data directory is lost: --reset-ledger.
    restart_and_sync(&mut sim, 1);
    sim.nodes[0].reset();
    let mut out = [0u8; 8];
    sim.nodes[0]
        .node
        .open_directed(Instant::now(), k, "m", "s", Role::Leader, 60)
        .unwrap();
    assert_eq!(
        sim.nodes[0].node.issue(Instant::now(), &k, &mut out, true),
        Ok(Issue::NeedKey),
        "nothing before the first sync"
    );
    sim.wire.clear();
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
    sim.settle();
    let end = issued
        .iter()
        .map(|(f, b)| f + b.len() as u64)
        .max()
        .unwrap();
    let (f, b) = try_issue(&mut sim, 0, k, 32, 50).expect("the stream goes on");
    assert!(f >= end, "offset {f} issued again (< {end})");
    assert_eq!(redeem(&mut sim, 1, k, f, 32).unwrap(), b);
}

/// One step of the hostile world around two directed streams.
#[derive(Debug, Clone)]
enum DStep {
    /// Stream `s` (0: the leader issues, 1: the follower) issues `len`.
    Issue {
        s: usize,
        len: usize,
    },
    /// The redeemer of stream `s` redeems the `pick`-th issued key.
    Redeem {
        s: usize,
        pick: usize,
    },
    /// Deliver, duplicate or drop the `i`-th message in flight.
    Deliver(usize),
    Duplicate(usize),
    Drop(usize),
    /// Let the link settle.
    Settle,
    /// The node's ledger writer runs.
    Commit(usize),
    /// kill -9 of a node, then a new session on both sides.
    Restart(usize),
    /// The leader's data directory is lost (`--reset-ledger`); its 014
    /// service opens its streams again at start.
    ResetLeader,
    /// Time passes (TTL may end).
    Tick,
}

fn dstep() -> impl Strategy<Value = DStep> {
    prop_oneof![
        10 => (0..2usize, 1..100usize).prop_map(|(s, len)| DStep::Issue { s, len }),
        8 => (0..2usize, 0..64usize).prop_map(|(s, pick)| DStep::Redeem { s, pick }),
        8 => (0..64usize).prop_map(DStep::Deliver),
        1 => (0..64usize).prop_map(DStep::Duplicate),
        1 => (0..64usize).prop_map(DStep::Drop),
        5 => Just(DStep::Settle),
        3 => (0..2usize).prop_map(DStep::Commit),
        1 => (0..2usize).prop_map(DStep::Restart),
        1 => Just(DStep::ResetLeader),
        1 => Just(DStep::Tick),
    ]
}

proptest! {
    /// Under message delay, loss, duplication and reordering, restarts of
    /// either node, a leader's ledger reset and TTL ends: no byte of a
    /// directed stream is issued twice, a redeemed key has the bytes it was
    /// issued with, each key is redeemed at most once, and no two keys
    /// carry the same bytes.
    #[test]
    fn directed_streams_never_reissue_and_redeem_only_what_was_issued(
        steps in proptest::collection::vec(dstep(), 1..300)
    ) {
        run_directed(steps);
    }
}

/// Runs the hostile world's `steps` over one stream issued by each node.
fn run_directed(steps: Vec<DStep>) {
    let mut sim = Sim::new(None);
    let ksids = [Uuid::new_v4(), Uuid::new_v4()];
    let open = |sim: &mut Sim, s: usize| {
        let role = sim.nodes[s].role;
        let _ = sim.nodes[s]
            .node
            .open_directed(Instant::now(), ksids[s], "m", "s", role, 60);
        sim.collect();
    };
    open(&mut sim, 0);
    open(&mut sim, 1);
    sim.settle();
    // Everything ever issued, per stream: (first, bytes), and whether it
    // was redeemed.
    let mut issued: [Vec<(u64, Vec<u8>, bool)>; 2] = [Vec::new(), Vec::new()];
    for step in steps {
        match step {
            DStep::Issue { s, len } => {
                let mut out = vec![0u8; len];
                sim.nodes[s].produce();
                let got = sim.nodes[s]
                    .node
                    .issue(Instant::now(), &ksids[s], &mut out, true);
                sim.collect();
                if let Ok(Issue::Issued(first)) = got {
                    let end = first + len as u64;
                    for (f, b, _) in &issued[s] {
                        assert!(
                            end <= *f || f + b.len() as u64 <= first,
                            "stream {s}: {first}..{end} issued again (overlaps {f}+{})",
                            b.len()
                        );
                    }
                    issued[s].push((first, out, false));
                }
            }
            DStep::Redeem { s, pick } => {
                if issued[s].is_empty() {
                    continue;
                }
                let i = pick % issued[s].len();
                let (first, len) = (issued[s][i].0, issued[s][i].1.len());
                let got = redeem(&mut sim, 1 - s, ksids[s], first, len);
                if let Ok(bytes) = got {
                    let (_, want, done) = &mut issued[s][i];
                    assert_eq!(
                        &bytes, want,
                        "stream {s}: offset {first} redeemed other bytes"
                    );
                    assert!(!*done, "stream {s}: offset {first} redeemed twice");
                    *done = true;
                }
            }
            DStep::Deliver(i) => sim.deliver(i),
            DStep::Duplicate(i) => sim.duplicate(i),
            DStep::Drop(i) => sim.lose(i),
            DStep::Settle => sim.settle(),
            DStep::Commit(n) => sim.nodes[n].commit(),
            DStep::Restart(n) => sim.crash(n),
            DStep::ResetLeader => {
                sim.nodes[0].reset();
                sim.wire.clear();
                // The 014 service opens its streams before any sync.
                open(&mut sim, 0);
                let peer = sim.nodes[1].hello_position();
                sim.nodes[0].session_open(peer);
                for node in &mut sim.nodes {
                    node.node.begin_sync();
                }
                sim.collect();
                sim.settle();
            }
            DStep::Tick => sim.later(61),
        }
    }
    // No two keys (of 8 bytes or more) carry the same bytes.
    let mut values = std::collections::HashSet::new();
    for (_, b, _) in issued.iter().flatten().filter(|(_, b, _)| b.len() >= 8) {
        assert!(
            values.insert(b.clone()),
            "the same key bytes were issued twice"
        );
    }
    for n in &sim.nodes {
        let held: usize = n.node.streams.values().map(|s| s.held.len()).sum();
        assert_eq!(held as u64, n.node.held_total);
    }
}

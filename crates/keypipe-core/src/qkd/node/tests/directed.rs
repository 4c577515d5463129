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

fn restart_and_sync(sim: &mut Sim, i: usize) {
    sim.nodes[i].restart();
    sim.wire.clear();
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
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
        for len in [32, 8, 100, 64, 1, 200] {
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

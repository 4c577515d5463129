//! Unit tests of the node: two nodes wired by hand (no threads), with a
//! simulated device pair, ledger and network, and the property test of the
//! two-node model under a hostile network and restarts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::key::{KeyArena, RingProducer, Stamp};
use crate::qkd::{GetKeyError, GetKeyReply, Qos, Status};

const BLOCK: usize = 64;

const LIMITS: QosLimits = QosLimits {
    max_key_chunk_size: 1024,
    link_rate_bps: 0,
    max_timeout_ms: 1000,
    default_ttl_s: 60,
    max_ttl_s: 60,
};

fn tuning() -> Tuning {
    Tuning {
        window_blocks: 8,
        max_streams: 16,
        idle_timeout: Duration::from_secs(3600),
        reserve_blocks: 4,
        budget_blocks: 40,
    }
}

/// The bytes of device block `id` on both devices of the simulated link
/// (`flip` makes a device that disagrees from block `flip` on).
fn block_bytes(id: u64, flip: Option<u64>) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    let mut h = blake3::Hasher::new();
    h.update(b"test device");
    h.update(&id.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    if flip.is_some_and(|f| id >= f) {
        out[0] ^= 1;
    }
    out
}

/// One simulated node: its Node, its device (feeding the ring), its
/// durable ledger (device position, stream records), and what it
/// delivered.
struct SimNode {
    role: Role,
    node: Node,
    tx: RingProducer,
    arena: KeyArena,
    /// Next device block id to produce.
    device_next: u64,
    /// Durable device reservation (the poller's ledger).
    reserved: u64,
    /// Durable stream records.
    records: HashMap<Uuid, StreamRecord>,
    flip: Option<u64>,
    keys: ConfirmKeys,
    /// The ledger records a completed session (false after a reset).
    paired: bool,
    /// The ledger was reset once.
    was_reset: bool,
}

impl SimNode {
    fn start(
        role: Role,
        keys: &ConfirmKeys,
        reserved: u64,
        records: &HashMap<Uuid, StreamRecord>,
        flip: Option<u64>,
    ) -> Self {
        let arena = KeyArena::new(BLOCK, 64).unwrap();
        let (tx, rx) = crate::key::ring(8);
        let records_list: Vec<StreamRecord> = records.values().cloned().collect();
        let config = NodeShape {
            role,
            block_size: BLOCK,
            limits: LIMITS,
            tuning: tuning(),
        };
        let node = Node::new(config, Arc::new(KeyCounters::default()), rx, keys.clone()).resumed(
            reserved,
            &records_list,
            Instant::now(),
        );
        SimNode {
            role,
            node,
            tx,
            arena,
            device_next: reserved,
            reserved,
            records: records.clone(),
            flip,
            keys: keys.clone(),
            paired: true,
            was_reset: false,
        }
    }

    /// The position this node's hello names: its own, or its ledger's
    /// reservation when ahead (the engine's `device_params`).
    fn hello_position(&self) -> u64 {
        self.node.position().max(self.reserved)
    }

    /// This node's outbound session opens (the engine's `SessionOpen`):
    /// a node with a new ledger adopts the peer's position, makes it
    /// durable, then records the pairing.
    fn session_open(&mut self, peer_position: u64) {
        self.node.adopt_position(peer_position);
        if let Some(position) = self.node.take_skip() {
            self.device_next = self.device_next.max(position);
        }
        self.reserved = self.reserved.max(self.node.position());
        self.node.set_adopt(false);
        self.paired = true;
    }

    /// Fills the ring, reserving device positions first (as the poller),
    /// after moving the device forward when the node asks (as the engine).
    fn produce(&mut self) {
        if let Some(position) = self.node.take_skip() {
            self.device_next = self.device_next.max(position);
        }
        while !self.tx.is_full() {
            let Some(mut key) = self.arena.alloc() else {
                return;
            };
            let id = self.device_next;
            if id >= self.reserved {
                self.reserved = id + 5;
            }
            key.bytes_mut().copy_from_slice(&block_bytes(id, self.flip));
            let digest = self.keys.digest(key.bytes());
            self.tx
                .push(DeviceBlock {
                    id,
                    born: Stamp::now(),
                    digest,
                    key,
                })
                .unwrap();
            self.device_next += 1;
        }
    }

    /// The ledger writer's turn.
    fn commit(&mut self) {
        let (records, removed) = self.node.take_records();
        for r in &records {
            self.records.insert(r.ksid, r.clone());
        }
        for k in removed {
            self.records.remove(&k);
        }
        self.node.committed(&records);
        if self.node.reset_committed() {
            self.was_reset = false;
        }
    }

    /// The data directory is lost and the node starts with
    /// `--reset-ledger`: no stream records, its device back at block 0
    /// (the same bytes as before), adopting the peer's position.
    fn reset(&mut self) {
        let keys = self.keys.clone();
        *self = SimNode::start(self.role, &keys, 0, &HashMap::new(), self.flip);
        self.node.set_adopt(true);
        self.node.set_was_reset(true);
        self.paired = false;
        self.was_reset = true;
    }

    /// kill -9: what the ledger writer had not written yet is gone.
    fn restart(&mut self) {
        let keys = self.keys.clone();
        let (paired, was_reset) = (self.paired, self.was_reset);
        *self = SimNode::start(self.role, &keys, self.reserved, &self.records, self.flip);
        self.paired = paired;
        self.was_reset = was_reset;
        self.node.set_adopt(!paired);
        self.node.set_was_reset(was_reset);
    }
}

/// Two nodes and the messages between them.
struct Sim {
    nodes: [SimNode; 2],
    /// In flight: (to node, message).
    wire: Vec<(usize, LinkMsg)>,
    /// Every delivery: (node, ksid, index) -> bytes.
    delivered: HashMap<(usize, Uuid, u32), Vec<u8>>,
}

impl Sim {
    fn new(flip_b: Option<u64>) -> Sim {
        let keys = ConfirmKeys::random();
        let empty = HashMap::new();
        let mut sim = Sim {
            nodes: [
                SimNode::start(Role::Leader, &keys, 0, &empty, None),
                SimNode::start(Role::Follower, &keys, 0, &empty, flip_b),
            ],
            wire: Vec::new(),
            delivered: HashMap::new(),
        };
        for n in &mut sim.nodes {
            n.node.begin_sync();
        }
        sim.collect();
        sim
    }

    fn collect(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            for msg in n.node.take_outbox() {
                self.wire.push((1 - i, msg));
            }
        }
    }

    /// Delivers every message in flight, in order, until quiet.
    fn settle(&mut self) {
        for _ in 0..50 {
            let now = Instant::now();
            for n in &mut self.nodes {
                n.produce();
                n.commit();
                n.node.tick(now);
            }
            self.collect();
            if self.wire.is_empty() {
                return;
            }
            for (to, msg) in std::mem::take(&mut self.wire) {
                self.nodes[to].node.handle(now, msg);
            }
            self.collect();
        }
    }

    fn open(&mut self, chunk: u32) -> Uuid {
        let qos = Qos {
            key_chunk_size: chunk,
            ..Qos::default()
        };
        let now = Instant::now();
        let ksid = self.nodes[0]
            .node
            .open_connect(now, "s", "d", &qos, None, true)
            .ksid
            .unwrap();
        self.collect();
        self.settle();
        let r = self.nodes[1]
            .node
            .open_connect(now, "s", "d", &qos, Some(ksid), true);
        assert_eq!(r.status, Status::Successful);
        self.collect();
        self.settle();
        ksid
    }

    /// One GET_KEY attempt on node `i`; the result and the bytes.
    fn get(&mut self, i: usize, ksid: Uuid, index: u32) -> Result<Attempt, GetKeyError> {
        let mut out = [0u8; 1024];
        let n = &mut self.nodes[i];
        n.produce();
        let request = KeyRequest {
            ksid: &ksid,
            index,
            metadata_capacity: None,
            confirmed: true,
        };
        let got = n.node.get_key(
            Instant::now(),
            request,
            crate::key::as_uninit(&mut out),
            true,
        );
        self.collect();
        if let Ok(Attempt::Reply(GetKeyReply::Key { index, .. })) = &got {
            let chunk = self.nodes[i].node.streams[&ksid].chunk_size() as usize;
            let key = (i, ksid, *index);
            assert!(
                self.delivered.insert(key, out[..chunk].to_vec()).is_none(),
                "node {i} delivered {ksid} index {index} twice"
            );
        }
        got
    }

    /// GET_KEY on node `i`, letting the link run until it is answered.
    fn get_settled(&mut self, i: usize, ksid: Uuid, index: u32) -> Result<Attempt, GetKeyError> {
        for _ in 0..20 {
            match self.get(i, ksid, index) {
                Ok(Attempt::NeedKey) => self.settle(),
                other => return other,
            }
        }
        self.get(i, ksid, index)
    }

    /// Delivers the `i`-th message in flight (modulo; none: nothing).
    fn deliver(&mut self, i: usize) {
        if !self.wire.is_empty() {
            let (to, msg) = self.wire.remove(i % self.wire.len());
            self.nodes[to].node.handle(Instant::now(), msg);
            self.collect();
        }
    }

    /// Delivers the `i`-th message in flight and leaves it in flight.
    fn duplicate(&mut self, i: usize) {
        if !self.wire.is_empty() {
            let (to, msg) = self.wire[i % self.wire.len()].clone();
            self.nodes[to].node.handle(Instant::now(), msg);
            self.collect();
        }
    }

    /// Loses the `i`-th message in flight.
    fn lose(&mut self, i: usize) {
        if !self.wire.is_empty() {
            let n = self.wire.len();
            self.wire.remove(i % n);
        }
    }

    /// kill -9 of node `n`: its unwritten ledger and the messages on their
    /// way to it are gone; both sides start a new session.
    fn crash(&mut self, n: usize) {
        self.nodes[n].restart();
        self.wire.retain(|(to, _)| *to != n);
        for node in &mut self.nodes {
            node.node.begin_sync();
        }
        self.collect();
    }

    /// Both nodes' background work, `secs` from now (TTLs may end).
    fn later(&mut self, secs: u64) {
        for node in &mut self.nodes {
            node.node.tick(Instant::now() + Duration::from_secs(secs));
        }
        self.collect();
    }

    /// Checks the two promises over everything delivered so far: an index
    /// never carries two values, and no key value is delivered twice.
    fn check(&self) {
        let mut by_value: HashMap<&[u8], (Uuid, u32)> = HashMap::new();
        for (&(node, ksid, index), bytes) in &self.delivered {
            if let Some(other) = self.delivered.get(&(1 - node, ksid, index)) {
                assert_eq!(
                    bytes, other,
                    "{ksid} index {index} differs between the nodes"
                );
            }
            if let Some(&(k2, i2)) = by_value.get(bytes.as_slice()) {
                assert_eq!((k2, i2), (ksid, index), "the same key went to two indexes");
            }
            by_value.insert(bytes.as_slice(), (ksid, index));
        }
    }
}

fn key_of(got: &Result<Attempt, GetKeyError>) -> Option<u32> {
    match got {
        Ok(Attempt::Reply(GetKeyReply::Key { index, .. })) => Some(*index),
        _ => None,
    }
}

#[test]
fn both_nodes_deliver_the_same_key_under_each_index() {
    let mut sim = Sim::new(None);
    let k = sim.open(24);
    for i in 0..40 {
        assert_eq!(key_of(&sim.get_settled(0, k, i)), Some(i), "A {i}");
        assert_eq!(key_of(&sim.get_settled(1, k, i)), Some(i), "B {i}");
    }
    sim.check();
    assert_eq!(sim.delivered.len(), 80);
    assert!(
        matches!(sim.get(0, k, 3), Err(GetKeyError::Consumed)),
        "an index is handed out once"
    );
}

#[test]
fn independent_opens_with_different_chunk_sizes_are_a_conflict_on_both_sides() {
    let mut sim = Sim::new(None);
    let ksid = Uuid::new_v4();
    let qos = |c| Qos {
        key_chunk_size: c,
        ..Qos::default()
    };
    let now = Instant::now();
    for (i, c) in [(0, 32), (1, 64)] {
        let r = sim.nodes[i]
            .node
            .open_connect(now, "s", "d", &qos(c), Some(ksid), true);
        assert_eq!(r.status, Status::PeerNotConnected);
    }
    sim.collect();
    sim.settle();
    for i in 0..2 {
        assert!(matches!(sim.get(i, ksid, 0), Err(GetKeyError::QosConflict)));
    }
}

#[test]
fn a_chunk_reserves_all_its_blocks_or_none() {
    let mut sim = Sim::new(None);
    let k = sim.open(256); // 4 blocks of 64
    // The ring holds 8 blocks; take 6 of them for another stream first.
    let other = sim.open(64 * 6);
    assert!(key_of(&sim.get_settled(0, other, 0)).is_some());
    let before = sim.nodes[0].node.held_total;
    let got = sim.get_settled(0, k, 0);
    assert!(key_of(&got).is_some(), "{got:?}");
    assert_eq!(sim.nodes[0].node.held_total, before, "4 held, 4 released");
}

#[test]
fn restart_of_the_leader_never_repeats_key_and_the_follower_drops_what_was_lost() {
    let mut sim = Sim::new(None);
    let k = sim.open(32);
    for i in 0..10 {
        assert!(key_of(&sim.get_settled(0, k, i)).is_some());
    }
    for i in 0..4 {
        assert!(key_of(&sim.get_settled(1, k, i)).is_some());
    }
    // B holds chunks 4..9 (A delivered them) and maybe more.
    sim.nodes[0].restart();
    sim.wire.clear();
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
    sim.settle();
    // What A delivered before the crash and recorded, B still delivers.
    for i in 4..10 {
        let got = sim.get_settled(1, k, i);
        assert!(key_of(&got).is_some(), "B {i}: {got:?}");
    }
    // The stream continues on A past everything it had reserved.
    let mut next = 10;
    let mut fresh = None;
    for _ in 0..2000 {
        match sim.get_settled(0, k, next) {
            Ok(Attempt::Reply(GetKeyReply::Key { index, .. })) => {
                fresh = Some(index);
                break;
            }
            Err(GetKeyError::Consumed) => next += 1,
            other => panic!("{other:?}"),
        }
    }
    let fresh = fresh.expect("the stream continues");
    assert!(fresh >= 10);
    // Indexes A lost in its restart are never delivered by B.
    for i in 10..fresh {
        assert!(
            matches!(sim.get_settled(1, k, i), Err(GetKeyError::Consumed)),
            "B {i}"
        );
    }
    assert_eq!(key_of(&sim.get_settled(1, k, fresh)), Some(fresh));
    sim.check();
    assert!(sim.nodes[0].node.counters.snapshot().lost_chunks > 0);
}

#[test]
fn restart_of_the_follower_loses_only_what_it_held() {
    let mut sim = Sim::new(None);
    let k = sim.open(32);
    for i in 0..6 {
        assert!(key_of(&sim.get_settled(1, k, i)).is_some());
        assert!(key_of(&sim.get_settled(0, k, i)).is_some());
    }
    assert!(key_of(&sim.get_settled(1, k, 6)).is_some()); // B ahead by one
    assert!(key_of(&sim.get_settled(1, k, 7)).is_some());
    sim.nodes[1].commit(); // B's ledger records 0..=7 delivered
    assert!(key_of(&sim.get_settled(1, k, 8)).is_some()); // not recorded
    sim.nodes[1].restart();
    sim.wire.clear();
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
    sim.settle();
    // A keeps chunks 6 and 7 (B delivered them, B's ledger says so) ...
    assert_eq!(key_of(&sim.get_settled(0, k, 6)), Some(6));
    assert_eq!(key_of(&sim.get_settled(0, k, 7)), Some(7));
    // ... but not 8: B's ledger had not recorded it when B died, so A
    // cannot know B delivered it (documented: it reaches one KMS only).
    assert!(matches!(
        sim.get_settled(0, k, 8),
        Err(GetKeyError::Consumed)
    ));
    // And B never delivers an index twice, whatever it asks.
    for i in 0..9 {
        assert!(matches!(
            sim.get_settled(1, k, i),
            Err(GetKeyError::Consumed)
        ));
    }
    let mut found = None;
    for i in 9..3000 {
        let a = sim.get_settled(0, k, i);
        let b = sim.get_settled(1, k, i);
        if key_of(&a).is_some() && key_of(&b).is_some() {
            found = Some(i);
            break;
        }
    }
    assert!(found.is_some(), "the stream continues on both nodes");
    sim.check();
}

#[test]
fn a_device_that_disagrees_never_delivers_and_stops_the_stream_on_both_nodes() {
    let mut sim = Sim::new(Some(0));
    let k = sim.open(32);
    let a = sim.get_settled(0, k, 0);
    assert!(
        key_of(&a).is_some(),
        "the leader hands its first chunk out: {a:?}"
    );
    let b = sim.get_settled(1, k, 0);
    assert!(matches!(b, Err(GetKeyError::StreamFailed)), "{b:?}");
    sim.settle();
    assert!(matches!(sim.get(0, k, 1), Err(GetKeyError::StreamFailed)));
    assert!(
        sim.delivered.keys().all(|(n, _, _)| *n == 0),
        "B delivered nothing"
    );
    assert_eq!(sim.nodes[1].node.counters.snapshot().mismatches, 1);
    assert_eq!(sim.nodes[0].node.counters.snapshot().mismatches, 1);
}

#[test]
fn a_stream_read_on_one_side_only_holds_at_most_a_window_on_the_other() {
    let mut sim = Sim::new(None);
    let k = sim.open(64); // one chunk per block
    let mut taken = 0;
    for i in 0..100 {
        match sim.get_settled(0, k, i) {
            Ok(Attempt::Reply(GetKeyReply::Key { .. })) => taken += 1,
            Ok(Attempt::NeedKey) => break,
            other => panic!("{other:?}"),
        }
    }
    let window = tuning().window_blocks;
    assert!(taken <= window + 1, "A ran {taken} blocks ahead of B");
    assert!(
        sim.nodes[1].node.held_total <= window,
        "B holds {}",
        sim.nodes[1].node.held_total
    );
    // Once B's KMS reads, A goes on.
    for i in 0..taken as u32 {
        assert!(key_of(&sim.get_settled(1, k, i)).is_some());
    }
    assert!(key_of(&sim.get_settled(0, k, taken as u32)).is_some());
}

#[test]
fn a_lease_request_for_an_assigned_block_is_always_answered() {
    let mut sim = Sim::new(None);
    let k = sim.open(64);
    assert!(key_of(&sim.get_settled(0, k, 0)).is_some());
    // The lease for stream block 0 is lost on the way (a session ended).
    sim.settle();
    let now = Instant::now();
    sim.nodes[0].node.handle(
        now,
        LinkMsg::LeaseRequest {
            ksid: k,
            stream_block: 0,
            position: 0,
        },
    );
    let answer = sim.nodes[0].node.take_outbox();
    assert!(
        answer.iter().any(|m| matches!(
            m,
            LinkMsg::Lease {
                stream_block: 0,
                ..
            }
        ) || matches!(
            m,
            LinkMsg::LeaseLost {
                stream_block: 0,
                ..
            }
        )),
        "{answer:?}"
    );
    // A request from past the block's id is answered lost, not re-leased.
    sim.nodes[0].node.handle(
        now,
        LinkMsg::LeaseRequest {
            ksid: k,
            stream_block: 0,
            position: u64::MAX,
        },
    );
    let answer = sim.nodes[0].node.take_outbox();
    assert!(
        matches!(
            answer.as_slice(),
            [LinkMsg::LeaseLost {
                stream_block: 0,
                ..
            }]
        ),
        "{answer:?}"
    );
}

#[test]
fn the_peers_qos_is_checked_against_local_limits() {
    let mut sim = Sim::new(None);
    let now = Instant::now();
    for chunk in [0, 1 << 20] {
        let ksid = Uuid::new_v4();
        sim.nodes[1].node.handle(
            now,
            LinkMsg::Open {
                ksid,
                qos: Qos {
                    key_chunk_size: chunk,
                    ..Qos::default()
                },
                source: "s".into(),
                destination: "d".into(),
                issuer: None,
            },
        );
        let r = sim.nodes[1]
            .node
            .open_connect(now, "s", "d", &Qos::default(), Some(ksid), true);
        assert_eq!(r.status, Status::QosNotMet, "chunk {chunk}");
        assert!(r.qos.key_chunk_size >= 1 && r.qos.key_chunk_size <= LIMITS.max_key_chunk_size);
    }
}

#[test]
fn caps_on_streams_and_uris() {
    let mut sim = Sim::new(None);
    let now = Instant::now();
    for _ in 0..tuning().max_streams {
        let r = sim.nodes[0]
            .node
            .open_connect(now, "s", "d", &Qos::default(), None, true);
        assert_eq!(r.status, Status::PeerNotConnected);
    }
    let r = sim.nodes[0]
        .node
        .open_connect(now, "s", "d", &Qos::default(), None, true);
    assert_eq!(r.status, Status::NoQkdConnection);
    assert!(r.detail.unwrap().contains("max_streams"));
    let long = "x".repeat(MAX_URI_LEN + 1);
    let ksid = Uuid::new_v4();
    sim.nodes[1].node.handle(
        now,
        LinkMsg::Open {
            ksid,
            qos: Qos::default(),
            source: long,
            destination: "d".into(),
            issuer: None,
        },
    );
    assert!(!sim.nodes[1].node.knows(&ksid));
    // A sync from the peer obeys the same caps (review finding: it did
    // not): at most max_streams announced streams, no over-long URI.
    let fresh = Sim::new(None);
    let mut b = fresh.nodes.into_iter().nth(1).unwrap().node;
    let before = b.stream_count();
    b.handle(now, LinkMsg::SyncBegin { position: 0 });
    let mut long_ksid = None;
    for i in 0..tuning().max_streams + 5 {
        let ksid = Uuid::new_v4();
        let source = if i == 0 {
            long_ksid = Some(ksid);
            "x".repeat(MAX_URI_LEN + 1)
        } else {
            "s".into()
        };
        let stream = Stream::new(Qos::default(), &source, "d", true, now);
        let mut state = stream.state(ksid, Role::Leader);
        state.local = Side::Open;
        b.handle(now, LinkMsg::Stream(state));
    }
    b.handle(now, LinkMsg::SyncEnd);
    assert_eq!(b.stream_count() - before, tuning().max_streams);
    assert!(!b.knows(&long_ksid.unwrap()));
}

/// One step of the hostile world.
#[derive(Debug, Clone)]
enum Step {
    /// GET_KEY on a node, for a stream, `jump` indexes past its cursor.
    Get {
        node: usize,
        stream: usize,
        jump: u8,
    },
    /// Deliver the message in flight at this position.
    Deliver(usize),
    /// Deliver it twice.
    Duplicate(usize),
    /// Lose it.
    Drop(usize),
    /// Let the link settle (everything delivered in order).
    Settle,
    /// The node's ledger writer runs.
    Commit(usize),
    /// kill -9 of a node, then a new session on both sides.
    Restart(usize),
    /// The node's data directory is lost and it starts with
    /// `--reset-ledger`; `hello`: its own session opens first (adopting the
    /// peer's position from the welcome), else only the peer's sync tells
    /// it. Its KMS opens the streams again.
    Reset { node: usize, hello: bool },
    /// Time passes (TTL may end).
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        16 => (0..2usize, 0..3usize, prop_oneof![12 => Just(0u8), 1 => 0..40u8])
            .prop_map(|(node, stream, jump)| Step::Get { node, stream, jump }),
        8 => (0..64usize).prop_map(Step::Deliver),
        1 => (0..64usize).prop_map(Step::Duplicate),
        1 => (0..64usize).prop_map(Step::Drop),
        6 => Just(Step::Settle),
        3 => (0..2usize).prop_map(Step::Commit),
        1 => (0..2usize).prop_map(Step::Restart),
        1 => (0..2usize, any::<bool>()).prop_map(|(node, hello)| Step::Reset { node, hello }),
        1 => Just(Step::Tick),
    ]
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer search.

    /// Under message delay, loss, duplication and reordering, restarts of
    /// either node and index jumps: no (KSID, index) gets two values, and
    /// no key value is delivered twice.
    #[test]
    fn two_nodes_never_disagree_and_never_repeat_key(steps in proptest::collection::vec(step(), 1..400)) {
        run_steps(steps);
    }
}

/// Runs the hostile world's `steps` and checks the promises.
fn run_steps(steps: Vec<Step>) {
    let mut sim = Sim::new(None);
    let streams = [sim.open(24), sim.open(64), sim.open(100)];
    let mut cursors: BTreeMap<(usize, usize), u32> = BTreeMap::new();
    for s in steps {
        match s {
            Step::Get { node, stream, jump } => {
                let at = cursors.entry((node, stream)).or_insert(0);
                let index = at.wrapping_add(u32::from(jump));
                if let Ok(Attempt::Reply(GetKeyReply::Key { .. })) | Err(GetKeyError::Consumed) =
                    sim.get(node, streams[stream], index)
                {
                    *at = index.wrapping_add(1);
                }
            }
            Step::Deliver(i) => sim.deliver(i),
            Step::Duplicate(i) => sim.duplicate(i),
            Step::Drop(i) => sim.lose(i),
            Step::Settle => {
                sim.settle();
                // The sessions are open by now: a reset node pairs.
                for i in 0..2 {
                    if !sim.nodes[i].paired {
                        let peer = sim.nodes[1 - i].hello_position();
                        sim.nodes[i].session_open(peer);
                    }
                }
            }
            Step::Commit(n) => sim.nodes[n].commit(),
            Step::Restart(n) => sim.crash(n),
            // Both ledgers lost at once: nothing remembers the spent
            // key (documented); not a case the nodes can handle.
            Step::Reset { node: n, .. } if !sim.nodes[1 - n].paired => {}
            Step::Reset { node: n, hello } => {
                // The operator restarts a node with --reset-ledger
                // after its pairing was refused: the old process's
                // link messages were long applied or lost.
                sim.nodes[n].reset();
                sim.wire.clear();
                if hello {
                    let peer = sim.nodes[1 - n].hello_position();
                    sim.nodes[n].session_open(peer);
                }
                for node in &mut sim.nodes {
                    node.node.begin_sync();
                }
                sim.collect();
                sim.settle();
                for (k, chunk) in streams.iter().zip([24, 64, 100]) {
                    let qos = Qos {
                        key_chunk_size: chunk,
                        ..Qos::default()
                    };
                    sim.nodes[n]
                        .node
                        .open_connect(Instant::now(), "s", "d", &qos, Some(*k), true);
                }
                sim.collect();
            }
            Step::Tick => sim.later(61),
        }
    }
    sim.check();
    // Every block slot is accounted for: nothing leaked from the arena.
    for n in &sim.nodes {
        let held: usize = n.node.streams.values().map(|s| s.held.len()).sum();
        assert_eq!(held as u64, n.node.held_total);
    }
}

/// Opens `k` (again) on node `i`'s side, as its KMS would after a restart
/// that lost the stream.
fn reopen(sim: &mut Sim, i: usize, k: Uuid, chunk: u32) {
    let qos = Qos {
        key_chunk_size: chunk,
        ..Qos::default()
    };
    let r = sim.nodes[i]
        .node
        .open_connect(Instant::now(), "s", "d", &qos, Some(k), true);
    assert!(r.ksid == Some(k), "{:?}", r.status);
    sim.collect();
    sim.settle();
}

#[test]
fn a_leader_with_a_reset_ledger_never_gives_an_index_the_follower_delivered_another_value() {
    // Review finding: the leader, its ledger reset, recreated the stream
    // from the follower's sync with nothing assigned and handed out
    // index 0 again from a new block. It cannot know what it handed out
    // before (a lease may never have reached the follower), so a stream it
    // forgot is stopped for good.
    let mut sim = Sim::new(None);
    let k = sim.open(64);
    for i in 0..3 {
        assert_eq!(key_of(&sim.get_settled(1, k, i)), Some(i));
    }
    // Index 3 goes to the leader's consumer; its lease never arrives.
    assert_eq!(key_of(&sim.get_settled(0, k, 3)), Some(3));
    let follower_position = sim.nodes[1].hello_position();
    sim.nodes[0].reset();
    sim.wire.clear();
    // The leader's outbound session opens: the welcome names the
    // follower's position, which the new ledger adopts.
    sim.nodes[0].session_open(follower_position);
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
    sim.settle();
    reopen(&mut sim, 0, k, 64);
    for i in 0..6 {
        assert!(
            matches!(sim.get_settled(0, k, i), Err(GetKeyError::StreamFailed)),
            "index {i}: the stream is stopped on the leader"
        );
    }
    for i in 3..6 {
        let got = sim.get_settled(1, k, i);
        assert!(key_of(&got).is_none(), "index {i} on the follower: {got:?}");
    }
    sim.check();
    assert!(!sim.nodes[0].was_reset, "the reset is over once synced");
    // A stream opened after the reset is served as usual.
    let fresh = sim.open(64);
    assert_eq!(key_of(&sim.get_settled(0, fresh, 0)), Some(0));
    assert_eq!(key_of(&sim.get_settled(1, fresh, 0)), Some(0));
    sim.check();
}

#[test]
fn a_follower_with_a_reset_ledger_never_delivers_an_index_again() {
    // Review finding: the follower, its ledger reset, stayed at device
    // position 0 and took the leader's held blocks again, so its consumer
    // got indexes it had delivered before the reset.
    let mut sim = Sim::new(None);
    let k = sim.open(16);
    for i in 0..6 {
        assert_eq!(key_of(&sim.get_settled(1, k, i)), Some(i));
    }
    // The leader still holds most of block 0 (its consumer took 0 only).
    assert_eq!(key_of(&sim.get_settled(0, k, 0)), Some(0));
    sim.nodes[1].reset();
    sim.wire.clear();
    // Only the peer's sync tells the new follower where the link is.
    for n in &mut sim.nodes {
        n.node.begin_sync();
    }
    sim.collect();
    sim.settle();
    assert!(sim.nodes[1].node.position() >= sim.nodes[0].node.position());
    // Before the fix the follower's delivered indexes came again; `get`
    // asserts no node delivers an index twice.
    reopen(&mut sim, 1, k, 16);
    let mut fresh = None;
    for i in 0..200 {
        match sim.get_settled(1, k, i) {
            Ok(Attempt::Reply(GetKeyReply::Key { index, .. })) => {
                fresh = Some(index);
                break;
            }
            Err(GetKeyError::Consumed) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(fresh.is_some_and(|i| i >= 6), "{fresh:?}");
    sim.check();
}

mod directed;

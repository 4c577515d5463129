//! The engine: one node's [`Node`] with its device poller, link thread and
//! ledger writer, and GET_KEY that waits (at most the stream's timeout) for
//! key.
//!
//! Threads per engine: the device poller (fills the ring, reserving device
//! positions in the ledger first), the link thread (applies the peer's
//! link-sync messages, serves lease requests, expires key) and the ledger
//! writer (records streams; a leader's stream reservations are written
//! before blocks below them are assigned). API calls run on the caller's
//! thread under one mutex; a waiting GET_KEY sleeps on a condition variable
//! the other threads signal, re-checking the ring at least every
//! millisecond.

use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Select, Sender, TryRecvError, bounded};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::config::{DeviceConfig, EngineConfig, parse_secret};
use super::confirm::{ConfirmKeys, ledger_device_id};
use super::ledger::{DeviceLedger, Ledger, LedgerError, ledger_path};
use super::link::{ChannelTransport, Inbox, LinkTransport, NoPeer, Role};
use super::node::{Attempt, DirectedError, Issue, Node};
use super::{GetKeyError, GetKeyReply, OpenReply, Qos, Status, StreamError, StreamUris};
use crate::device::{
    DeviceState, FileSource, LinkControl, Poller, PollerConfig, QkdDevice, SimulatedDevice,
};
use crate::key::{ArenaError, CounterSnapshot, KeyArena, KeyCounters, Protection};

/// Longest sleep of a waiting GET_KEY before it looks at the ring again.
const WAIT_SLICE: Duration = Duration::from_millis(1);
/// Link thread wake-up period when nothing waits on key.
const IDLE_TICK: Duration = Duration::from_millis(20);
/// The ledger writer records changed streams at least this often.
const LEDGER_PERIOD: Duration = Duration::from_millis(50);

/// The peer announced a stream, or forgot it, between an authorization
/// and the open it was for ([`Engine::open_connect_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer node announced this stream meanwhile; retry the open-connect")]
pub struct SideChanged;

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    /// The key arena could not be allocated.
    #[error("key arena: {0}")]
    Arena(#[from] ArenaError),
    /// The device could not be opened, or a thread not started.
    #[error("device: {0}")]
    Io(#[from] std::io::Error),
    /// The key ledger could not be used.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A snapshot of an engine's counters and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Block counters.
    pub counters: CounterSnapshot,
    /// Blocks waiting in the ring.
    pub ring_len: usize,
    /// Ring capacity.
    pub ring_capacity: usize,
    /// Arena slots not in use.
    pub arena_free: usize,
    /// Arena slots.
    pub arena_capacity: usize,
    /// Streams known to this node.
    pub streams: usize,
    /// Blocks held by streams.
    pub held_blocks: u64,
    /// The lowest device block id this node can still take.
    pub position: u64,
    /// The device is producing (no outage, not exhausted) and the ledger
    /// is writable.
    pub device_up: bool,
    /// The key ledger cannot be written (no key flows until it can).
    pub ledger_failed: bool,
    /// The peer node is reachable.
    pub link_up: bool,
    /// Memory protection the OS granted the arena.
    pub protection: Protection,
}

/// What a node tells its peer about its device at session start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceParams {
    /// Bytes per block.
    pub block_size: usize,
    /// Keyed hash of the device's identity (see `qkd::confirm`).
    pub fingerprint: String,
    /// The lowest block id the node can still take.
    pub position: u64,
    /// The device position the ledger reserved (at least `position`): a
    /// peer with a new ledger adopts it, so it never takes a block this
    /// node's device read, used or not.
    pub reserved: u64,
    /// The ledger had no record of this device at start (and no reset was
    /// asked for).
    pub ledger_new: bool,
}

/// Moves the device forward (the poller's `skip_to`).
type Skipper = Box<dyn Fn(u64) + Send>;

struct Shared {
    node: Mutex<Node>,
    key_arrived: Condvar,
    arena: KeyArena,
    counters: Arc<KeyCounters>,
    device: Arc<DeviceState>,
    transport: Box<dyn LinkTransport>,
    /// The peer's messages. Only ever read with the node locked, so they
    /// are applied in order whichever thread reads them.
    inbox: Option<Inbox>,
    stop: AtomicBool,
    /// [`Engine::shut_down`] was called: calls answer at once.
    closed: AtomicBool,
    ledger: Arc<Ledger>,
    /// Wakes the ledger writer (a reservation is awaited).
    commit_now: Sender<()>,
    ledger_failed: AtomicBool,
    poller_skip: Mutex<Option<Skipper>>,
    /// The ledger records a completed session with the peer.
    paired: AtomicBool,
    /// After a reset: the first sync's outcome is durable.
    reset_synced: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic under the lock is caught at the API boundary; the node's
        // state is updated in steps that each leave it consistent.
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the node's outbox to the peer (non-blocking), wakes the ledger
    /// writer if a reservation is awaited, and moves the device forward if
    /// the peer is far ahead.
    fn flush(&self, node: &mut Node) {
        for msg in node.take_outbox() {
            if self.transport.send(msg).is_err() {
                tracing::debug!("link-sync message not sent: peer node unreachable");
            }
        }
        if node.wants_commit() {
            let _ = self.commit_now.try_send(());
        }
        if let Some(position) = node.take_skip()
            && let Some(skip) = self
                .poller_skip
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
        {
            skip(position);
        }
    }

    /// Applies every message waiting in the inbox; `None` when the peer's
    /// side of the channel is gone, else how many were applied.
    fn drain_inbox(&self, node: &mut Node, now: Instant) -> Option<usize> {
        let inbox = self.inbox.as_ref()?;
        let mut applied = 0;
        loop {
            match inbox.receiver().try_recv() {
                Ok(msg) => {
                    node.handle(now, msg);
                    applied += 1;
                }
                Err(TryRecvError::Empty) => return Some(applied),
                Err(TryRecvError::Disconnected) => return (applied > 0).then_some(applied),
            }
        }
    }

    /// A reset is over once the node paired (its adopted position durable)
    /// and its first sync's outcome is durable: the ledger's mark goes.
    fn finish_reset(&self) {
        if self.paired.load(Ordering::Acquire)
            && self.reset_synced.swap(false, Ordering::AcqRel)
            && let Err(e) = self.ledger.clear_reset()
        {
            tracing::error!(error = %e, "could not clear the key ledger's reset mark");
        }
    }

    fn link_ok(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.device.is_up()
            && self.transport.is_up()
            && !self.ledger_failed.load(Ordering::Acquire)
    }
}

/// One node of a QKD link, running. Thread-safe; dropping it stops its
/// threads, records its streams and zeroizes all its key.
pub struct Engine {
    shared: Arc<Shared>,
    link_thread: Option<JoinHandle<()>>,
    ledger_thread: Option<JoinHandle<()>>,
    poller: Option<Poller>,
    control: Option<LinkControl>,
    params: DeviceParams,
    /// The device's id in the ledger.
    device_id: [u8; 16],
    name: String,
    role: Role,
    /// Keys shared with the peer node (directed key-id tags).
    keys: ConfirmKeys,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A device to open once the ledger says where it resumes.
type DeviceOpener<'a> = Box<dyn FnOnce(u64) -> Result<Box<dyn QkdDevice>, EngineError> + 'a>;

impl Engine {
    /// Both nodes of one link in this process: node A (leader) and node B
    /// (follower) on one simulated link (or both reading the same key
    /// file), linked in-process. `config.role` is ignored. Their ledgers
    /// are `{data_dir}/ledger/{name}-a.redb` and `-b`; with no `data_dir`
    /// (only for a simulated link with a random secret) they live in memory.
    pub fn pair(config: &EngineConfig) -> Result<(Engine, Engine), EngineError> {
        config.validate()?;
        if let DeviceConfig::File { path, .. } = &config.device
            && std::fs::metadata(path)?.file_type().is_fifo()
        {
            // Two readers of one pipe would split its bytes between them.
            return Err(super::ConfigError(format!(
                "device.path {} is a named pipe: the two nodes of a pair cannot share one; \
                 give each node its own pipe (one engine per node)",
                path.display()
            ))
            .into());
        }
        let secret = match configured_secret(config)? {
            Some(secret) => secret,
            None => {
                let mut secret = Zeroizing::new([0u8; 32]);
                getrandom::fill(secret.as_mut())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                secret
            }
        };
        let control = LinkControl::default();
        let keys = ConfirmKeys::random();
        let ((ta, inbox_a), (tb, inbox_b)) = ChannelTransport::pair();
        let mut engines = Vec::with_capacity(2);
        for (suffix, role, transport, inbox) in [
            ("a", Role::Leader, ta, inbox_a),
            ("b", Role::Follower, tb, inbox_b),
        ] {
            let mut node_config = config.clone();
            node_config.name = format!("{}-{suffix}", config.name);
            node_config.role = role;
            let ledger = open_ledger(&node_config)?;
            let identity = device_identity(&node_config, Some(&secret))?;
            let opener: DeviceOpener<'_> =
                Box::new(|start| open_device(&node_config, Some(&secret), &control, start));
            let mut engine = Engine::start(
                &node_config,
                opener,
                &identity,
                Box::new(transport),
                Some(inbox),
                ledger,
                keys.clone(),
            )?;
            if matches!(config.device, DeviceConfig::Simulated { .. }) {
                engine.control = Some(control.clone());
            }
            // In one process the session starts at once, and both
            // in-memory ledgers are new together: nothing to adopt.
            engine.shared.lock().set_adopt(false);
            engine.begin_session();
            engines.push(engine);
        }
        let b = engines.pop().expect("two");
        let a = engines.pop().expect("two");
        Ok((a, b))
    }

    /// One node from its configuration, with no peer node: its streams
    /// answer status 4. A simulated device needs `device.link_secret` here.
    pub fn new(config: &EngineConfig) -> Result<Engine, EngineError> {
        Engine::with_link(config, Box::new(NoPeer), None)
    }

    /// One node from its configuration, linked to its peer through
    /// `transport` (outgoing) and `inbox` (incoming), e.g. over the network.
    /// The transport calls [`Engine::begin_session`] when a session starts.
    pub fn with_link(
        config: &EngineConfig,
        transport: Box<dyn LinkTransport>,
        inbox: Option<Inbox>,
    ) -> Result<Engine, EngineError> {
        config.validate()?;
        let secret = configured_secret(config)?;
        let keys = match config.link.as_ref().map(|l| l.secret.as_ref()) {
            Some(Some(secret)) => {
                ConfirmKeys::from_link_secret(&*parse_secret(secret, "link.secret")?)
            }
            Some(None) => {
                return Err(super::ConfigError("link.secret is required".into()).into());
            }
            None => ConfirmKeys::random(),
        };
        let ledger = open_ledger(config)?;
        let identity = device_identity(config, secret.as_deref())?;
        let control = LinkControl::default();
        let opener: DeviceOpener<'_> =
            Box::new(|start| open_device(config, secret.as_deref(), &control, start));
        Engine::start(config, opener, &identity, transport, inbox, ledger, keys)
    }

    /// An engine over any device and link transport, with an in-memory
    /// ledger; `inbox` receives the peer's link-sync messages. For tests
    /// and benches: nothing it hands out survives it.
    pub fn with_parts(
        config: &EngineConfig,
        role: Role,
        device: Box<dyn QkdDevice>,
        transport: Box<dyn LinkTransport>,
        inbox: Option<Inbox>,
    ) -> Result<Engine, EngineError> {
        let mut config = config.clone();
        config.role = role;
        let identity = device.identity();
        let opener: DeviceOpener<'_> = Box::new(|_| Ok(device));
        Engine::start(
            &config,
            opener,
            &identity,
            transport,
            inbox,
            Arc::new(Ledger::temporary()),
            ConfirmKeys::random(),
        )
    }

    fn start(
        config: &EngineConfig,
        open: DeviceOpener<'_>,
        identity: &[u8],
        transport: Box<dyn LinkTransport>,
        inbox: Option<Inbox>,
        ledger: Arc<Ledger>,
        keys: ConfirmKeys,
    ) -> Result<Engine, EngineError> {
        config.validate()?;
        if config.reset_ledger {
            tracing::warn!(node = %config.name, ledger = ledger.path(), "--reset-ledger: this node's ledger starts afresh and adopts the peer's position");
            ledger.reset()?;
        }
        ledger.claim(&config.name, config.role)?;
        let device_id = ledger_device_id(identity);
        let at = ledger.device(&device_id, config.block_size)?;
        let device = open(at.position)?;
        if device.block_size() != config.block_size {
            return Err(super::ConfigError(format!(
                "device block size {} differs from block_size = {}",
                device.block_size(),
                config.block_size
            ))
            .into());
        }
        let records = ledger.streams()?;
        let paired = ledger.paired()?;
        if at.position > 0 || !records.is_empty() {
            tracing::info!(
                node = %config.name,
                position = at.position,
                streams = records.len(),
                "resuming past the key this node already spent"
            );
        }
        let params = DeviceParams {
            block_size: config.block_size,
            fingerprint: keys.fingerprint(identity, config.block_size),
            position: at.position,
            reserved: at.position,
            ledger_new: at.is_new && !config.reset_ledger,
        };
        let arena = KeyArena::new(config.block_size, config.arena_blocks)?;
        let (ring_in, ring_out) = crate::key::ring(config.ring_blocks);
        let counters = Arc::new(KeyCounters::default());
        let device_state = Arc::new(DeviceState::default());
        let (commit_now, commit_rx) = bounded(1);
        let digester = keys.digester();
        let shared_keys = keys.clone();
        let mut node = Node::new(
            config.role,
            config.block_size,
            config.limits(),
            config.tuning(),
            Arc::clone(&counters),
            ring_out,
            keys,
            at.position,
            &records,
            Instant::now(),
        );
        // A reset ledger takes the peer's position until it pairs.
        let was_reset = ledger.was_reset()?;
        node.set_adopt(was_reset && !paired);
        node.set_was_reset(was_reset);
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            key_arrived: Condvar::new(),
            arena: arena.clone(),
            counters: Arc::clone(&counters),
            device: Arc::clone(&device_state),
            transport,
            inbox,
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ledger: Arc::clone(&ledger),
            commit_now,
            ledger_failed: AtomicBool::new(false),
            poller_skip: Mutex::new(None),
            paired: AtomicBool::new(paired),
            reset_synced: AtomicBool::new(false),
        });
        let device_ledger = DeviceLedger {
            ledger,
            id: device_id,
            block_size: config.block_size,
        };
        let poller = Poller::spawn(
            device,
            arena,
            ring_in,
            counters,
            device_state,
            PollerConfig {
                ledger: Box::new(device_ledger),
                reserved: at.position,
                digest: Some(digester),
            },
        )?;
        *shared
            .poller_skip
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(poller.skipper()));
        let worker = Arc::clone(&shared);
        let link_thread = thread::Builder::new()
            .name("keypipe-link".into())
            .spawn(move || worker.device.run_guarded("link", || link_loop(&worker)))?;
        let writer = Arc::clone(&shared);
        let ledger_thread =
            thread::Builder::new()
                .name("keypipe-ledger".into())
                .spawn(move || {
                    let state = Arc::clone(&writer.device);
                    state.run_guarded("ledger", || ledger_loop(&writer, &commit_rx));
                })?;
        Ok(Engine {
            shared,
            link_thread: Some(link_thread),
            ledger_thread: Some(ledger_thread),
            poller: Some(poller),
            control: None,
            params,
            name: config.name.clone(),
            role: config.role,
            device_id,
            keys: shared_keys,
        })
    }

    /// Ends service without stopping the threads: every call waiting in
    /// GET_KEY or OPEN_CONNECT returns at once, and later calls answer
    /// status 4 (no QKD connection). For embedders that must make their
    /// own threads leave the engine before freeing it. Idempotent.
    pub fn shut_down(&self) {
        self.shared.closed.store(true, Ordering::Release);
        // Taking the lock orders the flag before any waiter's next check.
        drop(self.shared.lock());
        self.shared.key_arrived.notify_all();
    }

    /// The outage switch of a simulated link (`None` for other devices).
    pub fn link_control(&self) -> Option<&LinkControl> {
        self.control.as_ref()
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's role on the link.
    pub fn role(&self) -> Role {
        self.role
    }

    /// What this node tells its peer about its device at session start
    /// (the positions are the current ones).
    pub fn device_params(&self) -> DeviceParams {
        let mut params = self.params.clone();
        params.position = self.shared.lock().position();
        let reserved = self
            .shared
            .ledger
            .device(&self.device_id, params.block_size)
            .map_or(0, |d| d.position);
        params.reserved = params.position.max(reserved);
        // Once paired, this node's ledger is the link's, new or not.
        params.ledger_new &= !self.paired_before();
        params
    }

    /// True once this node's ledger records a completed session with its
    /// peer.
    pub fn paired_before(&self) -> bool {
        self.shared.paired.load(Ordering::Acquire)
    }

    /// Records (once, durably) that this node completed a session with its
    /// peer; first makes the device position it adopted durable (a pairing
    /// on record means the position is too).
    pub fn mark_paired(&self) {
        if self.shared.paired.load(Ordering::Acquire) {
            return;
        }
        let position = {
            let mut node = self.shared.lock();
            node.set_adopt(false);
            node.position()
        };
        let recorded = self
            .shared
            .ledger
            .reserve_device(&self.device_id, self.params.block_size, position)
            .and_then(|()| self.shared.ledger.mark_paired());
        match recorded {
            Ok(()) => {
                self.shared.paired.store(true, Ordering::Release);
                self.shared.finish_reset();
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record the pairing in the key ledger")
            }
        }
    }

    /// The peer's device is at `position` (its welcome): a node whose
    /// ledger never completed a session moves past it before anything else
    /// (see `docs/ledger.md`, "A lost ledger").
    pub fn adopt_position(&self, position: u64) {
        let mut node = self.shared.lock();
        node.adopt_position(position);
        self.shared.flush(&mut node);
    }

    /// A new session with the peer starts (or the peer started one): this
    /// node's whole view goes to the peer first.
    pub fn begin_session(&self) {
        let mut node = self.shared.lock();
        node.begin_sync();
        self.shared.flush(&mut node);
    }

    /// OPEN_CONNECT: opens `ksid` (a new UUIDv4 when `None` or nil) on this
    /// node with `qos` negotiated; see [`OpenReply`].
    pub fn open_connect(
        &self,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
    ) -> OpenReply {
        let link_ok = self.shared.link_ok();
        // A KSID named by the caller is usually the peer side's: wait (at
        // most the requested timeout) for the peer's announcement so this
        // side inherits the source's QoS instead of racing it.
        let mut node = match ksid.filter(|k| link_ok && !k.is_nil()) {
            Some(k) => self.wait_known(&k, qos.timeout),
            None => self.shared.lock(),
        };
        let reply = node.open_connect(Instant::now(), source, destination, qos, ksid, link_ok);
        self.shared.flush(&mut node);
        reply
    }

    /// OPEN_CONNECT of a caller authorized for one side: `joining` says
    /// whether it joins a stream the peer announced (else it creates one).
    /// Checked under the engine's lock, so the side cannot change between
    /// the check and the open: `Err(SideChanged)` (nothing opened) when the
    /// peer's announcement came or went meanwhile. Does not wait for an
    /// announcement (the caller waited with [`Engine::announced`]).
    pub fn open_connect_as(
        &self,
        source: &str,
        destination: &str,
        qos: &Qos,
        ksid: Option<Uuid>,
        joining: bool,
    ) -> Result<OpenReply, SideChanged> {
        let link_ok = self.shared.link_ok();
        let mut node = self.shared.lock();
        let ksid = ksid.filter(|k| !k.is_nil());
        let announced = ksid
            .and_then(|k| node.stream_uris(&k))
            .is_some_and(|u| !u.created_here);
        if announced != joining {
            return Err(SideChanged);
        }
        let reply = node.open_connect(Instant::now(), source, destination, qos, ksid, link_ok);
        self.shared.flush(&mut node);
        Ok(reply)
    }

    /// The node, once it knows `ksid` (the peer announced it) or after at
    /// most `timeout_ms` (capped at the node's `max_timeout_ms`).
    fn wait_known(&self, ksid: &Uuid, timeout_ms: u32) -> MutexGuard<'_, Node> {
        let start = Instant::now();
        let mut node = self.shared.lock();
        let wait = Duration::from_millis(u64::from(timeout_ms.min(node.limits().max_timeout_ms)));
        while !node.knows(ksid)
            && start.elapsed() < wait
            && !self.shared.closed.load(Ordering::Acquire)
        {
            if self
                .shared
                .drain_inbox(&mut node, Instant::now())
                .is_some_and(|n| n > 0)
            {
                continue;
            }
            node = self.wait(node, wait.saturating_sub(start.elapsed()));
        }
        node
    }

    /// The KMS URIs of stream `ksid`, waiting at most `timeout_ms` for the
    /// peer's announcement of it; `None` when this node does not know it.
    pub fn announced(&self, ksid: &Uuid, timeout_ms: u32) -> Option<StreamUris> {
        let node = if self.shared.link_ok() {
            self.wait_known(ksid, timeout_ms)
        } else {
            self.shared.lock()
        };
        node.stream_uris(ksid)
    }

    /// The KMS URIs of stream `ksid`, if this node knows it.
    pub fn stream_uris(&self, ksid: &Uuid) -> Option<StreamUris> {
        self.shared.lock().stream_uris(ksid)
    }

    /// The URI each stream open on this node is pushed to.
    pub fn target_uris(&self) -> Vec<String> {
        self.shared.lock().target_uris()
    }

    /// Sleeps until another thread signals, at most `max` (and at most a
    /// slice, so the ring is looked at again soon).
    fn wait<'a>(&'a self, node: MutexGuard<'a, Node>, max: Duration) -> MutexGuard<'a, Node> {
        self.shared
            .key_arrived
            .wait_timeout(node, max.min(WAIT_SLICE))
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// GET_KEY: writes chunk `index` of stream `ksid` into `out` (at least
    /// `key_chunk_size` bytes), waiting at most the stream's timeout for
    /// key. `metadata_capacity`: the caller's metadata buffer size, or
    /// `None` when no metadata is wanted. The chunk counts as delivered.
    pub fn get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
        metadata_capacity: Option<usize>,
    ) -> Result<GetKeyReply, GetKeyError> {
        let out = crate::key::as_uninit(out);
        self.get_key_within(ksid, index, out, metadata_capacity, true)
    }

    /// [`Engine::get_key`] into possibly uninitialised memory (a C caller's
    /// buffer): only the chunk's bytes are written, and only when the
    /// chunk is delivered; on any other answer `out` is untouched.
    pub fn get_key_uninit(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [std::mem::MaybeUninit<u8>],
        metadata_capacity: Option<usize>,
    ) -> Result<GetKeyReply, GetKeyError> {
        self.get_key_within(ksid, index, out, metadata_capacity, true)
    }

    /// GET_KEY that never waits: status 2 (no key yet) or 3 (peer side not
    /// open) instead of waiting. For pushers that poll many streams: the
    /// chunk counts as delivered once [`Engine::confirm`] says so.
    pub fn try_get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
    ) -> Result<GetKeyReply, GetKeyError> {
        self.get_key_within(ksid, index, crate::key::as_uninit(out), None, false)
    }

    /// The consumer of `ksid` acknowledged these wire indexes (a KMS
    /// answered 201): the ledger records them as delivered.
    pub fn confirm(&self, ksid: &Uuid, indexes: &[u32]) {
        self.shared.lock().confirm(ksid, indexes);
    }

    /// Records whether `ksid` is pushed to its KMS (a restart resumes it).
    pub fn set_pushing(&self, ksid: &Uuid, pushing: bool) {
        self.shared.lock().set_pushing(ksid, pushing);
    }

    /// Streams that were being pushed when the node last stopped: KSID,
    /// URI to push to, QoS, and the wire index to resume at.
    pub fn pushing_streams(&self) -> Vec<(Uuid, String, Qos, u32)> {
        self.shared.lock().pushing_streams()
    }

    /// True when this node knows stream `ksid` (opened here or announced by
    /// the peer); waits for no one.
    pub fn knows(&self, ksid: &Uuid) -> bool {
        let mut node = self.shared.lock();
        // The announcement may be waiting in the inbox.
        self.shared.drain_inbox(&mut node, Instant::now());
        node.knows(ksid)
    }

    /// Leader only: fresh QKD key for this node's own use, never delivered
    /// to a stream (see [`Node::take_local_block`]).
    pub fn take_local_block(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.shared.lock().take_local_block()
    }

    /// The QoS of stream `ksid` when it is open on this node.
    pub fn stream_qos(&self, ksid: &Uuid) -> Result<Qos, GetKeyError> {
        self.shared.lock().open_qos(ksid)
    }

    fn get_key_within(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [std::mem::MaybeUninit<u8>],
        metadata_capacity: Option<usize>,
        may_wait: bool,
    ) -> Result<GetKeyReply, GetKeyError> {
        let start = Instant::now();
        let mut now = start;
        let mut node = self.shared.lock();
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Ok(GetKeyReply::Status(Status::NoQkdConnection));
            }
            let link_ok = self.shared.link_ok();
            let attempt = node.get_key(now, ksid, index, out, metadata_capacity, may_wait, link_ok);
            self.shared.flush(&mut node);
            // What to answer if the wait ends empty-handed.
            let (now_answer, late_answer) = match attempt? {
                Attempt::Reply(reply) => return Ok(reply),
                Attempt::NeedPeer => (
                    Status::PeerNotConnectedGetKey,
                    Status::PeerNotConnectedGetKey,
                ),
                Attempt::NeedKey => (Status::InsufficientKey, Status::Timeout),
            };
            if self
                .shared
                .drain_inbox(&mut node, now)
                .is_some_and(|n| n > 0)
            {
                continue; // the peer's messages may have brought what was missing
            }
            if !self.shared.link_ok() {
                return Ok(GetKeyReply::Status(Status::NoQkdConnection));
            }
            let timeout = match may_wait {
                true => Duration::from_millis(u64::from(node.stream_timeout_ms(ksid).unwrap_or(0))),
                false => Duration::ZERO,
            };
            if timeout.is_zero() {
                return Ok(GetKeyReply::Status(now_answer));
            }
            let elapsed = now - start;
            if elapsed >= timeout {
                return Ok(GetKeyReply::Status(late_answer));
            }
            node = self.wait(node, timeout - elapsed);
            now = Instant::now();
        }
    }

    /// CLOSE: stops allocation for `ksid` on this node.
    pub fn close(&self, ksid: &Uuid) -> Result<Status, StreamError> {
        let mut node = self.shared.lock();
        let status = node.close(ksid);
        self.shared.flush(&mut node);
        status
    }

    /// Opens directed stream `ksid` on this node (idempotent): the node of
    /// role `issuer` issues its key, the other redeems it (see
    /// `docs/etsi014.md`). The other node's side opens when the
    /// announcement reaches it. Key not handed out within `ttl_s` seconds
    /// is zeroized.
    pub fn open_directed(
        &self,
        ksid: Uuid,
        source: &str,
        destination: &str,
        issuer: Role,
        ttl_s: u32,
    ) -> Result<(), DirectedError> {
        let mut node = self.shared.lock();
        self.shared.drain_inbox(&mut node, Instant::now());
        let opened = node.open_directed(Instant::now(), ksid, source, destination, issuer, ttl_s);
        self.shared.flush(&mut node);
        opened
    }

    /// Issues the next `out.len()` bytes of directed stream `ksid` into
    /// `out`, all or nothing, waiting at most `wait` for key; returns the
    /// stream offset of the first byte. Never while the link is down.
    pub fn issue(&self, ksid: &Uuid, out: &mut [u8], wait: Duration) -> Result<u64, DirectedError> {
        let start = Instant::now();
        let mut node = self.shared.lock();
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(DirectedError::NoLink);
            }
            let now = Instant::now();
            let attempt = node.issue(now, ksid, out, self.shared.link_ok());
            self.shared.flush(&mut node);
            let peer_missing = match attempt? {
                Issue::Issued(first) => return Ok(first),
                Issue::NeedKey => false,
                Issue::NeedPeer => true,
            };
            if self
                .shared
                .drain_inbox(&mut node, now)
                .is_some_and(|n| n > 0)
            {
                continue;
            }
            let elapsed = start.elapsed();
            if elapsed >= wait {
                return Err(match peer_missing {
                    true if !self.shared.link_ok() => DirectedError::NoLink,
                    _ => DirectedError::InsufficientKey,
                });
            }
            node = self.wait(node, wait - elapsed);
        }
    }

    /// Redeems every span (KSID, offset of the first byte, length) of
    /// directed streams into `out`, one after the other, all or nothing, at
    /// once (works while the link is down).
    pub fn redeem(&self, spans: &[(Uuid, u64, u64)], out: &mut [u8]) -> Result<(), DirectedError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(DirectedError::NoLink);
        }
        let mut node = self.shared.lock();
        let now = Instant::now();
        self.shared.drain_inbox(&mut node, now);
        let redeemed = node.redeem(now, spans, out);
        self.shared.flush(&mut node);
        redeemed
    }

    /// Bytes of directed stream `ksid` this node could issue at once, or
    /// `None` when it does not issue it.
    pub fn issuable(&self, ksid: &Uuid) -> Option<u64> {
        self.shared.lock().issuable(ksid, Instant::now())
    }

    /// The directed streams this node knows: KSID, source, destination.
    pub fn directed_streams(&self) -> Vec<(Uuid, String, String)> {
        let mut node = self.shared.lock();
        self.shared.drain_inbox(&mut node, Instant::now());
        node.directed_streams()
    }

    /// The KSID of the directed stream `name` describes, the same on both
    /// nodes of the link (see [`ConfirmKeys::directed_ksid`]).
    pub fn directed_ksid(&self, name: &[u8]) -> Uuid {
        self.keys.directed_ksid(name)
    }

    /// How many directed streams this node knows.
    pub fn directed_count(&self) -> usize {
        let mut node = self.shared.lock();
        self.shared.drain_inbox(&mut node, Instant::now());
        node.directed_count()
    }

    /// A keyed tag of the run of `len` bytes at `first` of directed stream
    /// `ksid`, the same on both nodes of the link (see
    /// [`ConfirmKeys::key_id_tag`]).
    pub fn key_id_tag(&self, ksid: &Uuid, first: u64, len: u64) -> u64 {
        self.keys.key_id_tag(ksid, first, len)
    }

    /// Counters and health.
    pub fn stats(&self) -> EngineStats {
        let (streams, (ring_len, ring_capacity), held_blocks, position) = {
            let node = self.shared.lock();
            (
                node.stream_count(),
                node.ring_fill(),
                node.held_blocks(),
                node.position(),
            )
        };
        let ledger_failed =
            self.shared.device.ledger_failed() || self.shared.ledger_failed.load(Ordering::Acquire);
        EngineStats {
            counters: self.shared.counters.snapshot(),
            ring_len,
            ring_capacity,
            arena_free: self.shared.arena.free_slots(),
            arena_capacity: self.shared.arena.capacity(),
            streams,
            held_blocks,
            position,
            device_up: self.shared.device.is_up() && !ledger_failed,
            ledger_failed,
            link_up: self.shared.transport.is_up(),
            protection: self.shared.arena.protection(),
        }
    }

    /// The arena, for tests that check released slots are wiped.
    #[doc(hidden)]
    pub fn arena(&self) -> &KeyArena {
        &self.shared.arena
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        *self
            .shared
            .poller_skip
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.poller.take();
        if let Some(t) = self.link_thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = self.shared.commit_now.try_send(());
        if let Some(t) = self.ledger_thread.take() {
            let _ = t.join();
        }
    }
}

/// The link secret the configuration names, if any.
fn configured_secret(config: &EngineConfig) -> Result<Option<Zeroizing<[u8; 32]>>, EngineError> {
    match &config.device {
        DeviceConfig::Simulated {
            link_secret: Some(hex),
            ..
        } => Ok(Some(parse_secret(hex, "device.link_secret")?)),
        _ => Ok(None),
    }
}

/// The ledger of this configuration's node: its file in `data_dir`, or in
/// memory when the device can never repeat key.
fn open_ledger(config: &EngineConfig) -> Result<Arc<Ledger>, EngineError> {
    match &config.data_dir {
        Some(dir) => Ok(Arc::new(Ledger::open(&ledger_path(dir, &config.name))?)),
        None if !config.repeats_key() => Ok(Arc::new(Ledger::temporary())),
        None => Err(super::ConfigError(
            "data_dir is required: this device can give the same key again after a restart \
             (a key file, or a configured simulated secret), and only the key ledger in data_dir \
             stops that"
                .into(),
        )
        .into()),
    }
}

/// What identifies the configured device's key stream.
fn device_identity(
    config: &EngineConfig,
    secret: Option<&[u8; 32]>,
) -> Result<Zeroizing<Vec<u8>>, EngineError> {
    Ok(match &config.device {
        DeviceConfig::Simulated { .. } => {
            SimulatedDevice::identity_of(secret.ok_or_else(|| {
                super::ConfigError(
                    "device.link_secret is required for a single node: both nodes must share it"
                        .into(),
                )
            })?)
        }
        DeviceConfig::File { path, format } => {
            FileSource::identity_of(path, config.block_size, *format)?
        }
    })
}

/// Opens one node's device at block `start`; a simulated one is keyed by
/// `secret`, which both nodes of the link share.
fn open_device(
    config: &EngineConfig,
    secret: Option<&[u8; 32]>,
    control: &LinkControl,
    start: u64,
) -> Result<Box<dyn QkdDevice>, EngineError> {
    Ok(match &config.device {
        DeviceConfig::Simulated { rate_bps, .. } => {
            let secret = secret.ok_or_else(|| {
                super::ConfigError(
                    "device.link_secret is required for a single node: both nodes must share it"
                        .into(),
                )
            })?;
            Box::new(SimulatedDevice::new(
                secret,
                config.block_size,
                *rate_bps,
                control.clone(),
                start,
            ))
        }
        DeviceConfig::File { path, format } => {
            Box::new(FileSource::open(path, config.block_size, *format, start)?)
        }
    })
}

/// The link thread: applies the peer's messages and does background work.
fn link_loop(shared: &Shared) {
    let mut peer_gone = false;
    while !shared.stop.load(Ordering::Acquire) {
        let wait = if shared.lock().has_pending() {
            WAIT_SLICE
        } else {
            IDLE_TICK
        };
        match &shared.inbox {
            Some(inbox) if !peer_gone => {
                let mut select = Select::new();
                select.recv(inbox.receiver());
                let _ = select.ready_timeout(wait);
            }
            _ => thread::park_timeout(wait),
        }
        let now = Instant::now();
        let mut node = shared.lock();
        peer_gone = shared.inbox.is_some() && shared.drain_inbox(&mut node, now).is_none();
        node.tick(now);
        shared.flush(&mut node);
        drop(node);
        shared.key_arrived.notify_all();
    }
}

/// The ledger writer: records changed streams every period, or at once
/// when a reservation is awaited; a last time when the engine stops.
fn ledger_loop(shared: &Shared, wake: &Receiver<()>) {
    let mut failing = false;
    loop {
        let _ = wake.recv_timeout(LEDGER_PERIOD);
        let stopping = shared.stop.load(Ordering::Acquire);
        let (records, removed) = shared.lock().take_records();
        if !records.is_empty() || !removed.is_empty() {
            match shared.ledger.write_streams(&records, &removed) {
                Ok(()) => {
                    let reset_over = {
                        let mut node = shared.lock();
                        node.committed(&records);
                        // Acknowledgements that waited for this write.
                        shared.flush(&mut node);
                        node.reset_committed()
                    };
                    if reset_over {
                        shared.reset_synced.store(true, Ordering::Release);
                        shared.finish_reset();
                    }
                    shared.key_arrived.notify_all();
                    if failing {
                        failing = false;
                        shared.ledger_failed.store(false, Ordering::Release);
                        tracing::info!("key ledger writable again");
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "key ledger write failed: streams wait until it can be written");
                    }
                    failing = true;
                    shared.ledger_failed.store(true, Ordering::Release);
                    let ksids: Vec<Uuid> = records.iter().map(|r| r.ksid).collect();
                    shared.lock().redirty(&ksids, removed);
                    if stopping {
                        return;
                    }
                    thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        if records.is_empty() && removed.is_empty() && shared.lock().reset_committed() {
            shared.reset_synced.store(true, Ordering::Release);
            shared.finish_reset();
        }
        if stopping {
            return;
        }
    }
}

//! The engine: one node's [`Node`] with its device poller and link thread,
//! and GET_KEY that waits (at most the stream's timeout) for key.
//!
//! Threads per engine: the device poller (fills the ring) and the link
//! thread (applies the peer's link-sync messages, serves lease requests,
//! expires key). API calls run on the caller's thread under one mutex;
//! a waiting GET_KEY sleeps on a condition variable the link thread signals,
//! re-checking the ring at least every millisecond.

use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam::channel::{Select, TryRecvError};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::config::{DeviceConfig, EngineConfig, parse_secret};
use super::link::{ChannelTransport, Inbox, LinkTransport, NoPeer, Role};
use super::node::{Attempt, Node};
use super::{GetKeyError, GetKeyReply, OpenReply, Qos, Status, StreamError};
use crate::device::{DeviceState, FileSource, LinkControl, Poller, QkdDevice, SimulatedDevice};
use crate::key::{ArenaError, CounterSnapshot, KeyArena, KeyCounters, Protection};

/// Longest sleep of a waiting GET_KEY before it looks at the ring again.
const WAIT_SLICE: Duration = Duration::from_millis(1);
/// Link thread wake-up period when nothing waits on key.
const IDLE_TICK: Duration = Duration::from_millis(20);

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
    /// The device is producing (no outage, not exhausted).
    pub device_up: bool,
    /// The peer node is reachable.
    pub link_up: bool,
    /// Memory protection the OS granted the arena.
    pub protection: Protection,
}

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
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic under the lock is caught at the API boundary; the node's
        // state is updated in steps that each leave it consistent.
        self.node.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the node's outbox to the peer (non-blocking).
    fn flush(&self, node: &mut Node) {
        for msg in node.take_outbox() {
            if self.transport.send(msg).is_err() {
                tracing::debug!("link-sync message not sent: peer node unreachable");
            }
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

    fn link_ok(&self) -> bool {
        self.device.is_up() && self.transport.is_up()
    }
}

/// One node of a QKD link, running. Thread-safe; dropping it stops its
/// threads and zeroizes all its key.
pub struct Engine {
    shared: Arc<Shared>,
    link_thread: Option<JoinHandle<()>>,
    poller: Option<Poller>,
    control: Option<LinkControl>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Both nodes of one link in this process: node A (leader) and node B
    /// (follower) on one simulated link (or both reading the same key
    /// file), linked in-process. `config.role` is ignored.
    pub fn pair(config: &EngineConfig) -> Result<(Engine, Engine), EngineError> {
        config.validate()?;
        if let DeviceConfig::File { path } = &config.device
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
        let dev_a = open_device(config, Some(&secret), &control)?;
        let dev_b = open_device(config, Some(&secret), &control)?;
        let ((ta, inbox_a), (tb, inbox_b)) = ChannelTransport::pair();
        let mut a = Engine::with_parts(config, Role::Leader, dev_a, Box::new(ta), Some(inbox_a))?;
        let mut b = Engine::with_parts(config, Role::Follower, dev_b, Box::new(tb), Some(inbox_b))?;
        if matches!(config.device, DeviceConfig::Simulated { .. }) {
            a.control = Some(control.clone());
            b.control = Some(control);
        }
        Ok((a, b))
    }

    /// One node from its configuration, with no peer node: its streams
    /// answer status 4. A simulated device needs `device.link_secret` here.
    pub fn new(config: &EngineConfig) -> Result<Engine, EngineError> {
        Engine::with_link(config, Box::new(NoPeer), None)
    }

    /// One node from its configuration, linked to its peer through
    /// `transport` (outgoing) and `inbox` (incoming), e.g. over the network.
    pub fn with_link(
        config: &EngineConfig,
        transport: Box<dyn LinkTransport>,
        inbox: Option<Inbox>,
    ) -> Result<Engine, EngineError> {
        config.validate()?;
        let secret = configured_secret(config)?;
        let device = open_device(config, secret.as_deref(), &LinkControl::default())?;
        Engine::with_parts(config, config.role, device, transport, inbox)
    }

    /// An engine over any device and link transport; `inbox` receives the
    /// peer's link-sync messages.
    pub fn with_parts(
        config: &EngineConfig,
        role: Role,
        device: Box<dyn QkdDevice>,
        transport: Box<dyn LinkTransport>,
        inbox: Option<Inbox>,
    ) -> Result<Engine, EngineError> {
        config.validate()?;
        if device.block_size() != config.block_size {
            return Err(super::ConfigError(format!(
                "device block size {} differs from block_size = {}",
                device.block_size(),
                config.block_size
            ))
            .into());
        }
        let arena = KeyArena::new(config.block_size, config.arena_blocks)?;
        let (ring_in, ring_out) = crate::key::ring(config.ring_blocks);
        let counters = Arc::new(KeyCounters::default());
        let device_state = Arc::new(DeviceState::default());
        let shared = Arc::new(Shared {
            node: Mutex::new(Node::new(
                role,
                config.block_size,
                config.limits(),
                Arc::clone(&counters),
                ring_out,
            )),
            key_arrived: Condvar::new(),
            arena: arena.clone(),
            counters: Arc::clone(&counters),
            device: Arc::clone(&device_state),
            transport,
            inbox,
            stop: AtomicBool::new(false),
        });
        let poller = Poller::spawn(device, arena, ring_in, counters, device_state)?;
        let worker = Arc::clone(&shared);
        let link_thread = thread::Builder::new()
            .name("keypipe-link".into())
            .spawn(move || link_loop(&worker))?;
        Ok(Engine {
            shared,
            link_thread: Some(link_thread),
            poller: Some(poller),
            control: None,
        })
    }

    /// The outage switch of a simulated link (`None` for other devices).
    pub fn link_control(&self) -> Option<&LinkControl> {
        self.control.as_ref()
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
        let start = Instant::now();
        let link_ok = self.shared.link_ok();
        let mut node = self.shared.lock();
        // A KSID named by the caller is usually the peer side's: wait (at
        // most the requested timeout) for the peer's announcement so this
        // side inherits the source's QoS instead of racing it.
        if let Some(k) = ksid.filter(|k| link_ok && !k.is_nil()) {
            let wait =
                Duration::from_millis(u64::from(qos.timeout.min(node.limits().max_timeout_ms)));
            while !node.knows(&k) && start.elapsed() < wait {
                if self
                    .shared
                    .drain_inbox(&mut node, Instant::now())
                    .is_some_and(|n| n > 0)
                {
                    continue;
                }
                node = self.wait(node, wait.saturating_sub(start.elapsed()));
            }
        }
        let reply = node.open_connect(source, destination, qos, ksid, link_ok);
        self.shared.flush(&mut node);
        reply
    }

    /// Sleeps until the link thread signals, at most `max` (and at most a
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
    /// `None` when no metadata is wanted.
    pub fn get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
        metadata_capacity: Option<usize>,
    ) -> Result<GetKeyReply, GetKeyError> {
        self.get_key_within(ksid, index, out, metadata_capacity, true)
    }

    /// GET_KEY that never waits: status 2 (no key yet) or 3 (peer side not
    /// open) instead of waiting. For pushers that poll many streams.
    pub fn try_get_key(
        &self,
        ksid: &Uuid,
        index: u32,
        out: &mut [u8],
    ) -> Result<GetKeyReply, GetKeyError> {
        self.get_key_within(ksid, index, out, None, false)
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
        out: &mut [u8],
        metadata_capacity: Option<usize>,
        may_wait: bool,
    ) -> Result<GetKeyReply, GetKeyError> {
        let start = Instant::now();
        let mut now = start;
        let mut node = self.shared.lock();
        loop {
            let attempt = node.get_key(now, ksid, index, out, metadata_capacity);
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

    /// Counters and health.
    pub fn stats(&self) -> EngineStats {
        let (streams, (ring_len, ring_capacity)) = {
            let node = self.shared.lock();
            (node.stream_count(), node.ring_fill())
        };
        EngineStats {
            counters: self.shared.counters.snapshot(),
            ring_len,
            ring_capacity,
            arena_free: self.shared.arena.free_slots(),
            arena_capacity: self.shared.arena.capacity(),
            streams,
            device_up: self.shared.device.is_up(),
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
        self.poller.take();
        if let Some(t) = self.link_thread.take() {
            t.thread().unpark();
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

/// Opens one node's device; a simulated one is keyed by `secret`, which
/// both nodes of the link share.
fn open_device(
    config: &EngineConfig,
    secret: Option<&[u8; 32]>,
    control: &LinkControl,
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
            ))
        }
        DeviceConfig::File { path } => Box::new(FileSource::open(path, config.block_size)?),
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

//! How an engine starts: from its configuration (one node, or both nodes
//! of a link in one process) or from given parts, its ledger opened and
//! claimed, its device opened where the ledger says it resumes, its node
//! resumed and its threads spawned.

use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use crossbeam::channel::bounded;
use zeroize::Zeroizing;

use super::shared::Shared;
use super::threads::{ledger_loop, link_loop};
use super::{DeviceParams, Engine, EngineError};
use crate::device::{
    DeviceState, FileSource, LinkControl, Poller, PollerConfig, QkdDevice, SimulatedDevice,
};
use crate::key::{KeyArena, KeyCounters};
use crate::qkd::config::{DeviceConfig, EngineConfig, parse_secret};
use crate::qkd::confirm::{ConfirmKeys, ledger_device_id};
use crate::qkd::ledger::{DeviceLedger, Ledger, ledger_path};
use crate::qkd::link::{ChannelTransport, Inbox, LinkTransport, NoPeer, Role};
use crate::qkd::node::{Node, NodeShape};

/// A device to open once the ledger says where it resumes.
type DeviceOpener<'a> = Box<dyn FnOnce(u64) -> Result<Box<dyn QkdDevice>, EngineError> + 'a>;

/// How a node reaches its peer: link-sync messages go out through
/// `transport` and the peer's arrive in `inbox`.
struct Link {
    transport: Box<dyn LinkTransport>,
    inbox: Option<Inbox>,
}

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
            return Err(crate::qkd::ConfigError(format!(
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
            let link = Link {
                transport: Box::new(transport),
                inbox: Some(inbox),
            };
            let mut engine =
                Engine::start(&node_config, opener, &identity, link, ledger, keys.clone())?;
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
                return Err(crate::qkd::ConfigError("link.secret is required".into()).into());
            }
            None => ConfirmKeys::random(),
        };
        let ledger = open_ledger(config)?;
        let identity = device_identity(config, secret.as_deref())?;
        let control = LinkControl::default();
        let opener: DeviceOpener<'_> =
            Box::new(|start| open_device(config, secret.as_deref(), &control, start));
        let link = Link { transport, inbox };
        Engine::start(config, opener, &identity, link, ledger, keys)
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
            Link { transport, inbox },
            Arc::new(Ledger::temporary()),
            ConfirmKeys::random(),
        )
    }

    fn start(
        config: &EngineConfig,
        open: DeviceOpener<'_>,
        identity: &[u8],
        link: Link,
        ledger: Arc<Ledger>,
        keys: ConfirmKeys,
    ) -> Result<Engine, EngineError> {
        let Link { transport, inbox } = link;
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
            return Err(crate::qkd::ConfigError(format!(
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
        let node_config = NodeShape {
            role: config.role,
            block_size: config.block_size,
            limits: config.limits(),
            tuning: config.tuning(),
        };
        let mut node = Node::new(node_config, Arc::clone(&counters), ring_out, keys).resumed(
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
        None => Err(crate::qkd::ConfigError(
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
                crate::qkd::ConfigError(
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
                crate::qkd::ConfigError(
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

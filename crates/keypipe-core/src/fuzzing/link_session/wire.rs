//! What the link-session harness puts on the wire and checks against: the
//! fixed names, secret and device parameters of the fuzzed pair, the
//! session's MAC and hex recomputed independently, the hello and batch
//! JSON, and fuzzer-chosen link messages.

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::device::{LinkControl, SimulatedDevice};
use crate::fuzzing::Input;
use crate::qkd::link::NoPeer;
use crate::qkd::link::session::LocalParams;
use crate::qkd::{Engine, EngineConfig, LinkMsg, Qos, Role};
use crate::rangeset::RangeSet;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The link secret of the fuzzed pair.
pub(super) const SECRET: [u8; 32] = [7; 32];
/// Name of the fuzzed (receiving) node.
pub(super) const ME: &str = "node-b";
/// Name of its genuine peer.
pub(super) const PEER: &str = "node-a";

/// The session MAC as `qkd/link/session/mac.rs` computes it (domain tag,
/// then each field length-prefixed); checked against the genuine peer's
/// own MACs, so a change of the construction fails loudly here.
pub(super) fn link_mac(key: &[u8; 32], fields: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(&key[..]).expect("HMAC takes any key length");
    mac.update(b"keypipe-link-v2");
    for f in fields {
        mac.update(&(f.len() as u64).to_be_bytes());
        mac.update(f);
    }
    mac.finalize().into_bytes().into()
}

/// The direction key of messages from the node of role `from`.
pub(super) fn direction_key(from: Role) -> [u8; 32] {
    let context = match from {
        Role::Leader => "keypipe link-sync v2 from leader",
        Role::Follower => "keypipe link-sync v2 from follower",
    };
    blake3::derive_key(context, &SECRET)
}

/// Lower-case hex.
pub(super) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex as `qkd/link/session/wire.rs` reads it (pairs through
/// `u8::from_str_radix`).
pub(super) fn lenient_unhex(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// 32 bytes from 64 hex digits, as the session reads them.
pub(super) fn lenient_unhex32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    lenient_unhex(text)?.try_into().ok()
}

/// The device parameters both fuzzed nodes report. `DeviceParams` is only
/// reachable through an engine, so one (tiny, device switched off) is
/// started once and its parameters are then overwritten field by field.
pub(super) fn local_params() -> LocalParams {
    static BASE: std::sync::OnceLock<LocalParams> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let config = EngineConfig {
            name: "fuzz".into(),
            block_size: 64,
            arena_blocks: 64,
            ring_blocks: 16,
            ..EngineConfig::default()
        };
        let control = LinkControl::default();
        control.set_down(true);
        let device = SimulatedDevice::new(&[1; 32], 64, 8, control, 0);
        let engine = Engine::with_parts(
            &config,
            Role::Follower,
            Box::new(device),
            Box::new(NoPeer),
            None,
        )
        .expect("a small engine starts");
        LocalParams {
            device: engine.device_params(),
            paired_before: false,
        }
    });
    let mut local = base.clone();
    local.device.block_size = 64;
    local.device.fingerprint = "fuzz-fingerprint".into();
    local.device.position = 0;
    local.device.reserved = 0;
    local.device.ledger_new = false;
    local.paired_before = false;
    local
}

/// `Params` of a hello, as on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WireParams {
    pub(super) block_size: usize,
    pub(super) fingerprint: String,
    pub(super) position: u64,
    #[serde(default)]
    pub(super) reserved: u64,
    pub(super) ledger_new: bool,
    pub(super) paired_before: bool,
}

/// A hello, as on the wire (same fields and serde attributes as the
/// session's own, so both accept the same bodies).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WireHello {
    pub(super) version: u32,
    pub(super) from: String,
    #[serde(default)]
    pub(super) to: String,
    pub(super) role: Role,
    pub(super) incarnation: String,
    pub(super) nonce: String,
    pub(super) params: WireParams,
}

/// A batch body, as on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireBatch {
    pub(super) msgs: Vec<LinkMsg>,
}

/// A request as it travels: path, the three headers, body.
#[derive(Debug, Clone)]
pub(super) struct Wire {
    pub(super) hello: bool,
    pub(super) session: Option<Vec<u8>>,
    pub(super) seq: Option<Vec<u8>>,
    pub(super) mac: Option<Vec<u8>>,
    pub(super) body: Vec<u8>,
}

/// A link message chosen by the fuzzer (every kind but `Stream`).
pub(super) fn link_msg(input: &mut Input<'_>) -> LinkMsg {
    let ksid = Uuid::from_u128(u128::from(input.byte() % 4));
    let block = u64::from(input.byte());
    match input.byte() % 12 {
        0 => LinkMsg::SyncBegin {
            position: input.u64(),
        },
        1 => LinkMsg::SyncEnd,
        2 => LinkMsg::Open {
            ksid,
            qos: Qos::default(),
            source: String::from_utf8_lossy(input.chunk()).into_owned(),
            destination: "http://127.0.0.1:9".into(),
            issuer: input.bool().then_some(Role::Leader),
        },
        3 => LinkMsg::Close { ksid },
        4 => LinkMsg::Lease {
            ksid,
            stream_block: block,
            block_id: input.u64(),
            check: input.u64(),
        },
        5 => LinkMsg::LeaseRequest {
            ksid,
            stream_block: block,
            position: input.u64(),
        },
        6 => LinkMsg::LeaseRefused {
            ksid,
            stream_block: block,
        },
        7 => {
            let mut delivered = RangeSet::default();
            for _ in 0..input.byte() % 4 {
                let lo = input.u64();
                delivered.insert_range(lo, lo.saturating_add(u64::from(input.byte())));
            }
            LinkMsg::LeaseLost {
                ksid,
                stream_block: block,
                delivered,
            }
        }
        8 => LinkMsg::Credit {
            ksid,
            below: input.u64(),
        },
        9 => LinkMsg::Held {
            ksid,
            stream_block: block,
        },
        _ => LinkMsg::Mismatch {
            ksid,
            stream_block: block,
        },
    }
}

/// Every message of a batch survives a JSON round trip unchanged.
pub(super) fn assert_round_trip(msgs: &[LinkMsg]) {
    for msg in msgs {
        let text = serde_json::to_vec(msg).expect("link messages serialize");
        let back: LinkMsg = serde_json::from_slice(&text).expect("a serialized message parses");
        assert_eq!(&back, msg, "link message JSON round trip");
    }
}

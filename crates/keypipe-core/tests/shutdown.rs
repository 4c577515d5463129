//! An engine that is shut down answers at once, and a panic in one of its
//! background threads marks the device down instead of stalling callers
//! (security review F17, items 2 and 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keypipe_core::device::{DevicePoll, QkdDevice};
use keypipe_core::qkd::{
    Engine, EngineConfig, GetKeyReply, LinkDown, LinkMsg, LinkTransport, Qos, Role, Status,
};
use zeroize::Zeroizing;

fn config(extra: &str) -> EngineConfig {
    let dir = tempfile::tempdir().unwrap().keep();
    EngineConfig::from_toml(&format!(
        "data_dir = {:?}\n{extra}[device]\ndriver = \"simulated\"\n",
        dir.display().to_string()
    ))
    .unwrap()
}

fn qos(timeout_ms: u32) -> Qos {
    Qos {
        key_chunk_size: 32,
        timeout: timeout_ms,
        ..Qos::default()
    }
}

/// Opens one stream on both nodes of `pair`; its KSID.
fn open_both(a: &Engine, b: &Engine, timeout_ms: u32) -> uuid::Uuid {
    let opened = a.open_connect("x", "y", &qos(timeout_ms), None);
    let ksid = opened.ksid.unwrap();
    let joined = b.open_connect("x", "y", &qos(timeout_ms), Some(ksid));
    assert_eq!(joined.status, Status::Successful);
    ksid
}

#[test]
fn shut_down_wakes_a_blocked_get_key_and_later_calls_answer_at_once() {
    // A device too slow to fill a chunk: GET_KEY waits its whole timeout.
    let mut cfg = config("");
    cfg.device = EngineConfig::from_toml("[device]\ndriver = \"simulated\"\nrate_bps = 1\n")
        .unwrap()
        .device;
    let (a, b) = Engine::pair(&cfg).unwrap();
    let ksid = open_both(&a, &b, 30_000);
    let a = Arc::new(a);
    let waiter = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || {
            let mut out = [0u8; 32];
            let t = Instant::now();
            let reply = a.get_key(&ksid, 0, &mut out, None).unwrap();
            (reply.status(), t.elapsed(), out)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    a.shut_down();
    let (status, waited, out) = waiter.join().unwrap();
    assert_eq!(status, Status::NoQkdConnection);
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(out, [0u8; 32], "no key written");
    let mut out = [0u8; 32];
    let t = Instant::now();
    let reply = a.get_key(&ksid, 0, &mut out, None).unwrap();
    assert!(matches!(
        reply,
        GetKeyReply::Status(Status::NoQkdConnection)
    ));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(
        !a.stats().device_up || a.stats().link_up,
        "stats still answer"
    );
}

/// A device whose poll panics after `good` blocks.
struct Panicky {
    good: u64,
    next: u64,
}

impl QkdDevice for Panicky {
    fn block_size(&self) -> usize {
        4096
    }
    fn poll(&mut self, out: &mut [u8]) -> DevicePoll {
        if self.next >= self.good {
            panic!("a driver bug");
        }
        out.fill(7);
        self.next += 1;
        DevicePoll::Ready(self.next)
    }
    fn identity(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(b"panicky".to_vec())
    }
}

struct Up;

impl LinkTransport for Up {
    fn send(&self, _msg: LinkMsg) -> Result<(), LinkDown> {
        Ok(())
    }
    fn is_up(&self) -> bool {
        true
    }
}

#[test]
fn a_panic_in_the_device_poller_marks_the_device_down() {
    let cfg = config("");
    let device = Box::new(Panicky { good: 2, next: 0 });
    let engine = Engine::with_parts(&cfg, Role::Leader, device, Box::new(Up), None).unwrap();
    let t = Instant::now();
    while engine.stats().device_up && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !engine.stats().device_up,
        "a dead poller must show as a down device"
    );
    let opened = engine.open_connect("x", "y", &qos(5_000), None);
    assert_eq!(
        opened.status,
        Status::NoQkdConnection,
        "no stream on a dead device"
    );
}

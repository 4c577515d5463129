//! The C ABI's key path, called from Rust the way a C caller calls it: an
//! in-process pair of engines, OPEN_CONNECT on both nodes, GET_KEY into
//! caller buffers that are uninitialised memory (security review F17),
//! callers on several threads, and a shutdown racing a blocked call.
//!
//! Small enough to run under Miri (`scripts/miri.sh`, which checks that
//! every byte read back was written by the library and that no unsafe
//! code misbehaves) and ThreadSanitizer (`scripts/tsan.sh`), besides
//! `cargo test`.

use std::ffi::{CStr, c_char};
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::Barrier;
use std::thread;

use keypipe::*;

/// A small node: 64-byte blocks, a few dozen slots, fast to build.
#[cfg(not(miri))]
const CONFIG: &CStr = c"block_size = 64\narena_blocks = 48\nring_blocks = 8\n";
/// Under Miri the same, with waits allowed to last long: Miri's clock
/// runs with the instructions it interprets, and a commit of the key
/// ledger (redb) takes it tens of virtual seconds.
#[cfg(miri)]
const CONFIG: &CStr =
    c"block_size = 64\narena_blocks = 48\nring_blocks = 8\nmax_timeout_ms = 3600000\n";
/// The longest GET_KEY or OPEN_CONNECT wait of a test that expects key.
const WAIT_MS: u32 = if cfg!(miri) { 3_600_000 } else { 10_000 };
/// Bytes per key chunk.
const CHUNK: usize = 32;
/// Chunks per test: Miri interprets every instruction, so a few there.
const CHUNKS: u32 = if cfg!(miri) { 3 } else { 200 };
/// Caller threads per node in the concurrent test.
const THREADS: u32 = 2;

/// An engine handle shared between caller threads.
#[derive(Clone, Copy)]
struct Engine(*mut kp_engine);

// SAFETY: engine handles are thread-safe (include/keypipe.h): every call
// may come from any thread while the handle is live.
unsafe impl Send for Engine {}
// SAFETY: as above.
unsafe impl Sync for Engine {}

/// Both nodes of an in-process pair, freed on drop.
struct Pair {
    a: Engine,
    b: Engine,
}

impl Pair {
    fn new(config: &CStr) -> Pair {
        let (mut a, mut b) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: `config` is NUL-terminated; `a` and `b` are writable.
        let r = unsafe { kp_engine_pair_new(config.as_ptr(), &mut a, &mut b) };
        assert_eq!(r, KP_OK, "kp_engine_pair_new: {}", last_error());
        Pair {
            a: Engine(a),
            b: Engine(b),
        }
    }

    /// Opens one stream on node A (KSID assigned there) and on node B.
    fn open(&self, timeout_ms: u32) -> [u8; 16] {
        let mut ksid = [0u8; 16];
        let mut status = 99;
        let mut q = qos(timeout_ms);
        // SAFETY: live engine; valid strings, QoS, KSID and status.
        let r = unsafe {
            kp_open_connect(
                self.a.0,
                c"kms-a".as_ptr(),
                c"kms-b".as_ptr(),
                &mut q,
                ksid.as_mut_ptr(),
                &mut status,
            )
        };
        assert_eq!((r, status), (KP_OK, 1), "open A: {}", last_error());
        assert_ne!(ksid, [0; 16], "node A assigned a KSID");
        let mut q = qos(timeout_ms);
        q.key_chunk_size = 999; // ignored: B inherits A's QoS
        // SAFETY: as above.
        let r = unsafe {
            kp_open_connect(
                self.b.0,
                c"kms-a".as_ptr(),
                c"kms-b".as_ptr(),
                &mut q,
                ksid.as_mut_ptr(),
                &mut status,
            )
        };
        assert_eq!((r, status), (KP_OK, 0), "open B: {}", last_error());
        assert_eq!(q.key_chunk_size as usize, CHUNK);
        ksid
    }

    fn close(&self, ksid: &[u8; 16]) {
        for e in [self.a, self.b] {
            let mut status = 99;
            // SAFETY: live engine, 16-byte KSID, writable status.
            let r = unsafe { kp_close(e.0, ksid.as_ptr(), &mut status) };
            assert_eq!((r, status), (KP_OK, 0), "close: {}", last_error());
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SAFETY: both from `kp_engine_pair_new`, freed once, no call
        // starts on them any more.
        unsafe {
            kp_engine_free(self.a.0);
            kp_engine_free(self.b.0);
        }
    }
}

fn qos(timeout_ms: u32) -> kp_qos {
    kp_qos {
        key_chunk_size: CHUNK as u32,
        max_bps: 0,
        min_bps: 0,
        jitter: 0,
        priority: 0,
        timeout: timeout_ms,
        ttl: 0,
        metadata_mimetype: [0; 256],
    }
}

/// `bytes` as initialised bytes.
///
/// # Safety
/// Every byte of `bytes` has been written.
unsafe fn init(bytes: &[MaybeUninit<u8>]) -> &[u8] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and the caller
    // vouches that every byte is initialised.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u8>(), bytes.len()) }
}

/// `kp_last_error` of this thread, read into an uninitialised buffer.
fn last_error() -> String {
    let mut buf = [MaybeUninit::<u8>::uninit(); 256];
    let mut n = 0usize;
    // SAFETY: `buf` has 256 writable bytes; `n` is writable.
    let r = unsafe { kp_last_error(buf.as_mut_ptr().cast::<c_char>(), buf.len(), &mut n) };
    assert_eq!(r, KP_OK);
    let n = n.min(buf.len() - 1);
    // SAFETY: `kp_last_error` wrote `n` bytes and a NUL.
    let text = unsafe { init(&buf[..=n]) };
    assert_eq!(text[n], 0, "NUL-terminated");
    String::from_utf8_lossy(&text[..n]).into_owned()
}

/// One `kp_get_key` of chunk `index` into `buf`, with no metadata:
/// (result, status, index written back).
fn get(
    e: Engine,
    ksid: &[u8; 16],
    index: u32,
    buf: &mut [MaybeUninit<u8>],
) -> (kp_result, u32, u32) {
    let (mut index, mut status) = (index, 99);
    // SAFETY: live engine; `buf` has `buf.len()` writable bytes; the
    // other pointers are valid for the call.
    let r = unsafe {
        kp_get_key(
            e.0,
            ksid.as_ptr(),
            &mut index,
            buf.as_mut_ptr().cast::<u8>(),
            buf.len(),
            ptr::null_mut(),
            &mut status,
        )
    };
    (r, status, index)
}

/// Chunk `index` from `e` into a fresh, uninitialised heap buffer of
/// exactly one chunk, which the call must fill.
fn chunk(e: Engine, ksid: &[u8; 16], index: u32) -> Box<[u8]> {
    let mut buf = Box::<[u8]>::new_uninit_slice(CHUNK);
    assert_eq!(
        get(e, ksid, index, &mut buf),
        (KP_OK, 0, index),
        "get {index}: {}",
        last_error()
    );
    // SAFETY: status 0: the library wrote the whole chunk (under Miri, a
    // byte it did not write would make this read undefined behaviour and
    // fail the test).
    unsafe { buf.assume_init() }
}

/// Every step on one engine pair and one stream, one after the other:
/// under Miri, building a pair, bringing its first key and freeing it
/// take about two minutes each (commits of its in-memory key ledger,
/// redb, interpreted), and a pair's threads slow down whatever runs
/// beside them; the steps themselves take seconds.
#[test]
fn key_path_on_one_engine_pair() {
    let pair = Pair::new(CONFIG);
    let ksid = pair.open(WAIT_MS);
    let next = identical_key_into_uninitialised_buffers(&pair, &ksid, 0);
    let next = refused_buffers_are_never_written(&pair, &ksid, next);
    concurrent_callers_get_the_same_key_on_both_nodes(&pair, &ksid, next);
    pair.close(&ksid);
    // Last: it shuts node A down.
    shutdown_wakes_a_call_blocked_in_get_key(&pair);
    // Dropping `pair` frees both nodes, A after its shutdown.
}

/// Both nodes write the same chunks into uninitialised caller buffers,
/// only the chunk's bytes, with metadata into an uninitialised buffer.
/// Takes chunks `first..`; returns the next.
fn identical_key_into_uninitialised_buffers(pair: &Pair, ksid: &[u8; 16], first: u32) -> u32 {
    let mut previous: Option<Box<[u8]>> = None;
    for i in first..first + CHUNKS {
        let ka = chunk(pair.a, ksid, i);
        // Node B: a larger buffer whose tail the caller initialised, and
        // a metadata buffer left uninitialised.
        let mut kb = Box::<[u8]>::new_uninit_slice(CHUNK + 16);
        for b in &mut kb[CHUNK..] {
            b.write(0xEE);
        }
        let mut meta = [MaybeUninit::<u8>::uninit(); 128];
        let mut md = kp_metadata {
            size: meta.len() as u32,
            buffer: meta.as_mut_ptr().cast(),
        };
        let (mut index, mut status) = (i, 99);
        // SAFETY: live engine; `kb` and `meta` have the lengths passed.
        let r = unsafe {
            kp_get_key(
                pair.b.0,
                ksid.as_ptr(),
                &mut index,
                kb.as_mut_ptr().cast(),
                kb.len(),
                &mut md,
                &mut status,
            )
        };
        assert_eq!(
            (r, status, index),
            (KP_OK, 0, i),
            "get B {i}: {}",
            last_error()
        );
        // SAFETY: the chunk was written (status 0) and the tail by us.
        let kb = unsafe { kb.assume_init() };
        assert_eq!(&kb[..CHUNK], &ka[..], "chunk {i} differs between nodes");
        assert!(
            kb[CHUNK..].iter().all(|&b| b == 0xEE),
            "wrote past the chunk"
        );
        let n = md.size as usize;
        assert!(n < meta.len());
        // SAFETY: `size` bytes of JSON and a NUL were written.
        let text = unsafe { init(&meta[..=n]) };
        assert!(text.starts_with(b"{\"age_ms\":"), "{text:?}");
        assert_eq!(text[n], 0);
        assert_ne!(previous.as_deref(), Some(&ka[..]), "chunk {i} repeats");
        previous = Some(ka);
    }
    first + CHUNKS
}

/// F17: a buffer too small, NULL, or longer than any object is refused
/// before anything is written, and the chunk (`at`) stays available.
/// Returns the next chunk.
fn refused_buffers_are_never_written(pair: &Pair, ksid: &[u8; 16], at: u32) -> u32 {
    let mut small = [MaybeUninit::new(0x11u8); CHUNK - 1];
    assert_eq!(
        get(pair.a, ksid, at, &mut small).0,
        KP_ERR_KEY_BUFFER_TOO_SMALL
    );
    // SAFETY: initialised above.
    assert!(unsafe { init(&small) }.iter().all(|&b| b == 0x11));

    let (mut index, mut status) = (at, 99u32);
    // A length no object can have, with a pointer that must never be
    // dereferenced: refused before a slice is made of it.
    let dangling = NonNull::<u8>::dangling().as_ptr();
    for (buf, len, want) in [
        (dangling, isize::MAX as usize + 1, KP_ERR_INVALID_ARGUMENT),
        (dangling, usize::MAX, KP_ERR_INVALID_ARGUMENT),
        (ptr::null_mut(), CHUNK, KP_ERR_NULL_ARGUMENT),
    ] {
        // SAFETY: every pointer the call may use is valid; `buf` is
        // refused before use (what this checks).
        let r = unsafe {
            kp_get_key(
                pair.a.0,
                ksid.as_ptr(),
                &mut index,
                buf,
                len,
                ptr::null_mut(),
                &mut status,
            )
        };
        assert_eq!(r, want, "len {len}");
        assert_eq!((index, status), (at, 99), "outputs untouched on an error");
    }
    // The error detail, truncated into a small uninitialised buffer.
    let mut buf = [MaybeUninit::<u8>::uninit(); 8];
    let mut n = 0usize;
    // SAFETY: 8 writable bytes; `n` writable.
    let r = unsafe { kp_last_error(buf.as_mut_ptr().cast(), buf.len(), &mut n) };
    assert_eq!(r, KP_OK);
    assert!(n > 7, "full length reported");
    // SAFETY: 7 bytes and a NUL were written.
    let text = unsafe { init(&buf) };
    assert_eq!((&text[..7], text[7]), (&b"key_buf"[..], 0));

    // Nothing was consumed: both nodes still deliver the chunk.
    assert_eq!(chunk(pair.a, ksid, at), chunk(pair.b, ksid, at));
    at + 1
}

/// Callers on several threads of both nodes: each chunk is delivered to
/// exactly one caller per node, with the same bytes on both.
/// Takes chunks `first..`.
fn concurrent_callers_get_the_same_key_on_both_nodes(pair: &Pair, ksid: &[u8; 16], first: u32) {
    let per_thread = if cfg!(miri) { 2 } else { 100 };
    let start = Barrier::new(2 * THREADS as usize);
    let taken: Vec<Vec<(u32, Box<[u8]>)>> = thread::scope(|s| {
        let workers: Vec<_> = [pair.a, pair.b]
            .into_iter()
            .flat_map(|e| (0..THREADS).map(move |t| (e, t)))
            .map(|(e, t)| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    (0..per_thread)
                        .map(|k| {
                            let index = first + k * THREADS + t;
                            (index, chunk(e, ksid, index))
                        })
                        .collect()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let (on_a, on_b) = taken.split_at(THREADS as usize);
    let mut a: Vec<_> = on_a.iter().flatten().collect();
    let mut b: Vec<_> = on_b.iter().flatten().collect();
    a.sort_by_key(|(i, _)| *i);
    b.sort_by_key(|(i, _)| *i);
    assert_eq!(a.len(), (per_thread * THREADS) as usize);
    assert_eq!(a, b, "the nodes delivered different key");
}

/// A shutdown while another thread waits in `kp_get_key` (here for the
/// peer node's side of a stream, which never opens) wakes it: status 4,
/// or `KP_ERR_SHUT_DOWN` if the call came after the shutdown. Later calls
/// are refused.
fn shutdown_wakes_a_call_blocked_in_get_key(pair: &Pair) {
    let mut ksid = [0u8; 16];
    let mut status = 99;
    let mut q = qos(WAIT_MS);
    // SAFETY: live engine; valid strings, QoS, KSID and status.
    let r = unsafe {
        kp_open_connect(
            pair.a.0,
            c"kms-a".as_ptr(),
            c"kms-b".as_ptr(),
            &mut q,
            ksid.as_mut_ptr(),
            &mut status,
        )
    };
    assert_eq!((r, status), (KP_OK, 1), "open A: {}", last_error());
    let ready = Barrier::new(2);
    let (r, status) = thread::scope(|s| {
        let blocked = s.spawn(|| {
            let mut buf = Box::<[u8]>::new_uninit_slice(CHUNK);
            ready.wait();
            let (r, status, _) = get(pair.a, &ksid, 0, &mut buf);
            (r, status)
        });
        ready.wait();
        thread::sleep(std::time::Duration::from_millis(50));
        // SAFETY: live engine.
        assert_eq!(unsafe { kp_engine_shutdown(pair.a.0) }, KP_OK);
        blocked.join().unwrap()
    });
    assert!(
        (r, status) == (KP_OK, 4) || r == KP_ERR_SHUT_DOWN,
        "blocked kp_get_key: result {r} status {status}"
    );
    let mut buf = [MaybeUninit::uninit(); CHUNK];
    assert_eq!(get(pair.a, &ksid, 0, &mut buf).0, KP_ERR_SHUT_DOWN);
}

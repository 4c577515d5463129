//! A key source for tests: named pipes fed with framed records (an 8-byte
//! id, then the key bytes), the way a QKD device exports labelled key.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// Makes a named pipe.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Feeds each named pipe with the same framed key stream (record `i` is
/// the same bytes on both), each pipe at its own reader's pace; a reader
/// that dies loses what it read, the pipe goes on where it was.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// Record `id` of key source `seed`: its 8-byte id and `block` key bytes.
pub fn framed_block(seed: u64, id: u64, block: usize) -> Vec<u8> {
    let mut out = vec![0u8; 8 + block];
    out[..8].copy_from_slice(&id.to_be_bytes());
    let mut h = blake3::Hasher::new();
    h.update(b"keypipe test key source");
    h.update(&seed.to_le_bytes());
    h.update(&id.to_le_bytes());
    h.finalize_xof().fill(&mut out[8..]);
    out
}

impl Feeder {
    /// Feeds each pipe with the framed stream of its seed (same seed: same
    /// bytes) in records of `block` key bytes.
    pub fn start(pipes: &[(PathBuf, u64)], block: usize) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = pipes
            .iter()
            .map(|(path, seed)| {
                let (path, stop, seed) = (path.clone(), Arc::clone(&stop), *seed);
                thread::spawn(move || {
                    let mut next = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        // Open once a reader is there (non-blocking open
                        // fails with ENXIO until then).
                        let pipe = OpenOptions::new()
                            .write(true)
                            .custom_flags_nonblock()
                            .open(&path);
                        let Ok(mut pipe) = pipe else {
                            thread::sleep(Duration::from_millis(2));
                            continue;
                        };
                        set_blocking(&pipe);
                        while !stop.load(Ordering::SeqCst) {
                            if pipe.write_all(&framed_block(seed, next, block)).is_err() {
                                break; // the reader died: wait for the next
                            }
                            next += 1;
                        }
                    }
                })
            })
            .collect();
        Feeder { stop, threads }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Writers blocked on a full pipe end when their reader goes.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

trait NonBlockingOpen {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlockingOpen for OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

fn set_blocking(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own, with flags it accepts.
    unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
}

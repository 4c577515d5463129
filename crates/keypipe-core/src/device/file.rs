//! `FileSource`: key blocks read from a file or a named pipe, the way many
//! QKD devices export their post-processed key. Both nodes of a link are
//! given the same key stream (the same file, or each its own pipe fed by its
//! own device).
//!
//! Two formats:
//! - **raw**: the bytes are the key; block `n` is bytes
//!   `n*block_size..(n+1)*block_size` of the stream. On a regular file a
//!   node opened at position `p` seeks to byte `p*block_size`, and block 0
//!   is never handed out: it names the file (its identity, hashed into the
//!   device fingerprint and the ledger), so it must not be key. A pipe has no
//!   position of its own: once a process has read from it, nobody can tell
//!   how far it got, so a raw pipe can only start a fresh ledger.
//! - **framed**: a sequence of records, each an 8-byte big-endian block id
//!   followed by `block_size` key bytes (the device's own key ids). Ids must
//!   increase; records below the start position (key spent before a
//!   restart) are read and wiped, never handed out. Works on pipes and
//!   files alike, and survives restarts of either end.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use super::{DevicePoll, QkdDevice};

/// How long to wait before polling an empty pipe again.
const PIPE_BACKOFF: Duration = Duration::from_millis(1);
/// Bytes of a framed record's id.
const ID_LEN: usize = 8;

/// Layout of a key file or pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Key bytes only; block ids are byte offsets / block size.
    #[default]
    Raw,
    /// Records of an 8-byte big-endian id and one block of key.
    Framed,
}

/// A file or named-pipe key source.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    is_pipe: bool,
    format: FileFormat,
    block_size: usize,
    /// Raw: bytes of the block being assembled. Framed: bytes of the
    /// record's key part.
    filled: usize,
    /// Raw: the next block's id. Framed: the lowest id still wanted.
    next_id: u64,
    /// Framed: the record id being read, once its 8 bytes are in.
    header: [u8; ID_LEN],
    header_filled: usize,
    exhausted: bool,
    identity: Zeroizing<Vec<u8>>,
}

fn refuse(message: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidInput, message)
}

impl FileSource {
    /// Opens `path` without blocking, positioned so the first block has an
    /// id of at least `start` (the node's ledger position). For a regular
    /// file the end of the file ends the key (`Exhausted`); a pipe with no
    /// data or no writer is merely `Pending`. Trailing bytes short of a
    /// whole block are never handed out.
    ///
    /// Refused: a raw regular file shorter than `start * block_size`
    /// ("key file already consumed up to byte N"), and a raw pipe with
    /// `start > 0` (its position cannot be known after a restart).
    pub fn open(
        path: &Path,
        block_size: usize,
        format: FileFormat,
        start: u64,
    ) -> std::io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let meta = file.metadata()?;
        let is_pipe = meta.file_type().is_fifo();
        let start = match (format, is_pipe) {
            (FileFormat::Raw, false) => start.max(1), // block 0 is the identity
            _ => start,
        };
        let consumed = start.saturating_mul(block_size as u64);
        match (format, is_pipe) {
            (FileFormat::Raw, false) => {
                if meta.len() < consumed {
                    return Err(refuse(format!(
                        "key file {} already consumed up to byte {consumed}: it holds only {} bytes \
                         (it was replaced by a shorter file, or this ledger belongs to another file)",
                        path.display(),
                        meta.len()
                    )));
                }
                file.seek(SeekFrom::Start(consumed))?;
            }
            (FileFormat::Raw, true) if start > 0 => {
                return Err(refuse(format!(
                    "{} is a raw named pipe and this node's ledger says key was already read \
                     from it (up to block {start}): nobody can tell how far the previous \
                     process read, so resuming could pair different bytes with one id. Feed \
                     the pipe in the framed format (device.format = \"framed\"), or start \
                     with --reset-ledger once both ends are fed from the same point",
                    path.display()
                )));
            }
            _ => {}
        }
        let identity = Self::identity_of(path, block_size, format)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            is_pipe,
            format,
            block_size,
            filled: 0,
            next_id: start,
            header: [0; ID_LEN],
            header_filled: 0,
            exhausted: false,
            identity,
        })
    }

    /// What identifies the key stream at `path`: for a raw regular file its
    /// first block (the same whatever the position; never handed out as
    /// key), for a pipe or a
    /// framed stream only its kind (their bytes are checked lease by lease).
    pub fn identity_of(
        path: &Path,
        block_size: usize,
        format: FileFormat,
    ) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let mut identity = Zeroizing::new(Vec::with_capacity(32 + block_size));
        let is_pipe = std::fs::metadata(path)?.file_type().is_fifo();
        match (format, is_pipe) {
            (FileFormat::Raw, false) => {
                identity.extend_from_slice(b"keypipe raw key file v1\0");
                let file = File::open(path)?;
                let mut first = Zeroizing::new(vec![0u8; block_size]);
                if file.read_exact_at(&mut first, 0).is_ok() {
                    identity.extend_from_slice(&first);
                }
            }
            (FileFormat::Raw, true) => identity.extend_from_slice(b"keypipe raw key pipe v1\0"),
            (FileFormat::Framed, _) => {
                identity.extend_from_slice(b"keypipe framed key stream v1\0")
            }
        }
        Ok(identity)
    }

    /// Reads into `buf` until it is full; `Ok(false)` when no more bytes
    /// are there for now (or ever: `self.exhausted`).
    fn fill(&mut self, buf: &mut [u8], done: &mut usize) -> Result<bool, DevicePoll> {
        while *done < buf.len() {
            match self.file.read(&mut buf[*done..]) {
                Ok(0) if self.is_pipe => return Err(DevicePoll::Pending(PIPE_BACKOFF)),
                Ok(0) => {
                    self.exhausted = true;
                    return Err(DevicePoll::Exhausted);
                }
                Ok(n) => *done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(DevicePoll::Pending(PIPE_BACKOFF));
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "key file read failed");
                    return Err(DevicePoll::Down(Duration::from_millis(100)));
                }
            }
        }
        Ok(true)
    }

    fn poll_raw(&mut self, out: &mut [u8]) -> DevicePoll {
        let mut filled = self.filled;
        let got = self.fill(&mut out[..self.block_size], &mut filled);
        self.filled = filled;
        if let Err(state) = got {
            if state == DevicePoll::Exhausted {
                // A short tail is dropped with the slot (zeroized by it).
                self.filled = 0;
            }
            return state;
        }
        self.filled = 0;
        self.next_id += 1;
        DevicePoll::Ready(self.next_id - 1)
    }

    fn poll_framed(&mut self, out: &mut [u8]) -> DevicePoll {
        loop {
            let mut header = self.header;
            let mut done = self.header_filled;
            let got = self.fill(&mut header, &mut done);
            self.header = header;
            self.header_filled = done;
            if let Err(state) = got {
                return state;
            }
            let id = u64::from_be_bytes(self.header);
            let mut filled = self.filled;
            let got = self.fill(&mut out[..self.block_size], &mut filled);
            self.filled = filled;
            if let Err(state) = got {
                return state;
            }
            self.header_filled = 0;
            self.filled = 0;
            if id < self.next_id {
                // Spent before a restart (or out of order): wipe, skip.
                out[..self.block_size].zeroize();
                if id.checked_add(1) != Some(self.next_id) {
                    tracing::debug!(
                        id,
                        wanted = self.next_id,
                        "framed record below the position skipped"
                    );
                }
                continue;
            }
            let Some(next) = id.checked_add(1) else {
                // No id can follow it: the feed ends here, unused.
                out[..self.block_size].zeroize();
                tracing::error!("framed key record with id 2^64-1: the key feed ends");
                self.exhausted = true;
                return DevicePoll::Exhausted;
            };
            self.next_id = next;
            return DevicePoll::Ready(id);
        }
    }
}

impl QkdDevice for FileSource {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn poll(&mut self, out: &mut [u8]) -> DevicePoll {
        if self.exhausted {
            return DevicePoll::Exhausted;
        }
        match self.format {
            FileFormat::Raw => self.poll_raw(out),
            FileFormat::Framed => self.poll_framed(out),
        }
    }

    fn identity(&self) -> Zeroizing<Vec<u8>> {
        self.identity.clone()
    }

    fn skip_to(&mut self, position: u64) {
        if position <= self.next_id {
            return;
        }
        match (self.format, self.is_pipe) {
            (FileFormat::Raw, false) => {
                let to = position.saturating_mul(self.block_size as u64);
                if self.file.seek(SeekFrom::Start(to)).is_ok() {
                    self.next_id = position;
                    self.filled = 0;
                }
            }
            // A pipe cannot seek; a framed stream skips records below the
            // position as it reads them.
            (FileFormat::Framed, _) => self.next_id = position,
            (FileFormat::Raw, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn whole_blocks_then_exhausted_without_partial_tail() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..132u8).collect();
        f.write_all(&data).unwrap();
        let mut src = FileSource::open(f.path(), 32, FileFormat::Raw, 0).unwrap();
        let mut buf = [0u8; 32];
        // Block 0 names the file and is never key (review finding: it was
        // handed out while its hash sat in the ledger).
        for id in 1..4 {
            assert_eq!(src.poll(&mut buf), DevicePoll::Ready(id));
            assert_eq!(&buf[..], &data[id as usize * 32..(id as usize + 1) * 32]);
        }
        assert_eq!(
            src.poll(&mut buf),
            DevicePoll::Exhausted,
            "4 trailing bytes are not a block"
        );
        assert_eq!(src.poll(&mut buf), DevicePoll::Exhausted);
    }

    #[test]
    fn a_raw_file_resumes_at_its_position_and_refuses_to_have_shrunk() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..128u8).collect();
        f.write_all(&data).unwrap();
        let mut src = FileSource::open(f.path(), 32, FileFormat::Raw, 2).unwrap();
        let mut buf = [0u8; 32];
        assert_eq!(src.poll(&mut buf), DevicePoll::Ready(2));
        assert_eq!(&buf[..], &data[64..96]);
        // The identity is the first block's, wherever the file stands.
        let from_zero = FileSource::open(f.path(), 32, FileFormat::Raw, 0).unwrap();
        assert_eq!(*src.identity(), *from_zero.identity());
        assert!(
            FileSource::open(f.path(), 32, FileFormat::Raw, 4).is_ok(),
            "at the end"
        );
        let err = FileSource::open(f.path(), 32, FileFormat::Raw, 5).unwrap_err();
        assert!(
            err.to_string().contains("already consumed up to byte 160"),
            "{err}"
        );
        let mut seek = FileSource::open(f.path(), 32, FileFormat::Raw, 0).unwrap();
        seek.skip_to(3);
        assert_eq!(seek.poll(&mut buf), DevicePoll::Ready(3));
        assert_eq!(&buf[..], &data[96..128]);
    }

    #[test]
    fn named_pipe_assembles_blocks_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qkd.fifo");
        mkfifo(&path);
        let mut src = FileSource::open(&path, 16, FileFormat::Raw, 0).unwrap();
        let mut buf = [0u8; 16];
        assert!(
            matches!(src.poll(&mut buf), DevicePoll::Pending(_)),
            "no writer yet"
        );
        let mut w = OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all(&[1; 10]).unwrap();
        assert!(
            matches!(src.poll(&mut buf), DevicePoll::Pending(_)),
            "10 of 16 bytes"
        );
        w.write_all(&[2; 10]).unwrap();
        assert_eq!(src.poll(&mut buf), DevicePoll::Ready(0));
        assert_eq!(&buf[..10], &[1; 10]);
        assert_eq!(&buf[10..], &[2; 6]);
        drop(w);
        assert!(
            matches!(src.poll(&mut buf), DevicePoll::Pending(_)),
            "4-byte tail is held back"
        );
        let err = FileSource::open(&path, 16, FileFormat::Raw, 1).unwrap_err();
        assert!(err.to_string().contains("raw named pipe"), "{err}");
    }

    #[test]
    fn framed_records_carry_their_ids_and_spent_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("framed.fifo");
        mkfifo(&path);
        let mut src = FileSource::open(&path, 16, FileFormat::Framed, 5).unwrap();
        let mut w = OpenOptions::new().write(true).open(&path).unwrap();
        for id in [3u64, 4, 5, 9] {
            w.write_all(&id.to_be_bytes()).unwrap();
            w.write_all(&[id as u8; 16]).unwrap();
        }
        let mut buf = [0u8; 16];
        assert_eq!(
            src.poll(&mut buf),
            DevicePoll::Ready(5),
            "3 and 4 were spent"
        );
        assert_eq!(buf, [5; 16]);
        // A record split across writes is assembled.
        w.write_all(&10u64.to_be_bytes()[..3]).unwrap();
        assert_eq!(src.poll(&mut buf), DevicePoll::Ready(9));
        assert!(matches!(src.poll(&mut buf), DevicePoll::Pending(_)));
        w.write_all(&10u64.to_be_bytes()[3..]).unwrap();
        w.write_all(&[10; 16]).unwrap();
        assert_eq!(src.poll(&mut buf), DevicePoll::Ready(10));
        assert_eq!(buf, [10; 16]);
        // Review finding: id 2^64-1 could be produced twice. Now an id
        // that repeats or goes back is skipped, and 2^64-1 ends the feed.
        for id in [10u64, u64::MAX, u64::MAX, 11] {
            w.write_all(&id.to_be_bytes()).unwrap();
            w.write_all(&[7; 16]).unwrap();
        }
        assert_eq!(src.poll(&mut buf), DevicePoll::Exhausted);
        assert_eq!(buf, [0; 16], "wiped, never produced");
        assert_eq!(src.poll(&mut buf), DevicePoll::Exhausted);
    }
}

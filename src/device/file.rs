//! `FileSource`: key blocks read from a file or a named pipe, the way many
//! QKD devices export their post-processed key. Both nodes of a link are
//! given the same key stream (the same file, or each its own pipe fed by its
//! own device); block `n` is bytes `n*block_size..(n+1)*block_size`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use super::{DevicePoll, QkdDevice};

/// How long to wait before polling an empty pipe again.
const PIPE_BACKOFF: Duration = Duration::from_millis(1);

/// A file or named-pipe key source.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    is_pipe: bool,
    block_size: usize,
    filled: usize,
    next_id: u64,
    exhausted: bool,
}

impl FileSource {
    /// Opens `path` without blocking. For a regular file the end of the file
    /// ends the key (`Exhausted`); a pipe with no data or no writer is
    /// merely `Pending`. Trailing bytes short of a whole block are never
    /// handed out.
    pub fn open(path: &Path, block_size: usize) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let is_pipe = file.metadata()?.file_type().is_fifo();
        Ok(Self {
            file,
            is_pipe,
            block_size,
            filled: 0,
            next_id: 0,
            exhausted: false,
        })
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
        while self.filled < self.block_size {
            match self.file.read(&mut out[self.filled..self.block_size]) {
                Ok(0) if self.is_pipe => return DevicePoll::Pending(PIPE_BACKOFF),
                Ok(0) => {
                    // A short tail is dropped with the slot (zeroized by it).
                    self.exhausted = true;
                    self.filled = 0;
                    return DevicePoll::Exhausted;
                }
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return DevicePoll::Pending(PIPE_BACKOFF);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "key file read failed");
                    return DevicePoll::Down(Duration::from_millis(100));
                }
            }
        }
        self.filled = 0;
        self.next_id += 1;
        DevicePoll::Ready(self.next_id - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn whole_blocks_then_exhausted_without_partial_tail() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        f.write_all(&data).unwrap();
        let mut src = FileSource::open(f.path(), 32).unwrap();
        let mut buf = [0u8; 32];
        for id in 0..3 {
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
    fn named_pipe_assembles_blocks_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qkd.fifo");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut src = FileSource::open(&path, 16).unwrap();
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
    }
}

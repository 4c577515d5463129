//! A connection's byte stream: plain TCP, or TLS over it (a rustls
//! server or client session, sans-IO). The HTTP code reads and writes
//! plaintext through `Read`/`Write` and never sees the difference.
//!
//! With TLS:
//! - `read` hands out decrypted bytes; it reads records from the socket
//!   and answers the handshake as needed (so a `WouldBlock` may follow
//!   progress that was only the handshake's);
//! - `write` takes plaintext only once the handshake is done (nothing
//!   secret waits in rustls's unencrypted buffer), encrypts it into
//!   rustls's bounded buffer and sends what the socket takes; the rest is
//!   sent by later calls (`flush_tls`), so a caller must not close while
//!   [`Transport::wants_write`];
//! - the end of the TCP stream, with or without `close_notify`, reads as
//!   end of stream (HTTP framing, not TLS, says whether a message is whole).

use std::io::{self, Read, Write};

use mio::net::TcpStream;

/// Bytes of encrypted output rustls buffers before `write` pushes back.
const TLS_BUFFER: usize = 64 * 1024;

/// Plain TCP or TLS over it.
pub(crate) struct Transport {
    tcp: TcpStream,
    tls: Option<Box<rustls::Connection>>,
}

impl Transport {
    /// Plain TCP.
    pub(crate) fn plain(tcp: TcpStream) -> Transport {
        Transport { tcp, tls: None }
    }

    /// TLS over `tcp` with session `tls`.
    pub(crate) fn tls(tcp: TcpStream, tls: impl Into<rustls::Connection>) -> Transport {
        let mut tls: rustls::Connection = tls.into();
        tls.set_buffer_limit(Some(TLS_BUFFER));
        Transport {
            tcp,
            tls: Some(Box::new(tls)),
        }
    }

    /// The socket (to register with mio, to ask its state).
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// True for TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True while a TLS handshake is under way.
    pub(crate) fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// True when encrypted bytes wait for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// The peer's certificate (DER), once the handshake verified one.
    pub(crate) fn peer_certificate(&self) -> Option<&[u8]> {
        let tls = self.tls.as_ref()?;
        if tls.is_handshaking() {
            return None;
        }
        tls.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }

    /// Sends what TLS has buffered: `Ok(true)` when nothing is left.
    pub(crate) fn flush_tls(&mut self) -> io::Result<bool> {
        match self.tls.as_deref_mut() {
            Some(tls) => flush(tls, &mut self.tcp),
            None => Ok(true),
        }
    }

    /// Queues a TLS `close_notify` and sends what it can (best effort).
    pub(crate) fn close_notify(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = self.flush_tls();
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Transport { tcp, tls } = self;
        let Some(tls) = tls.as_deref_mut() else {
            return tcp.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match tls.read_tls(tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    let processed = tls.process_new_packets();
                    // Handshake answers, or the alert of a failure.
                    let flushed = flush(tls, tcp);
                    processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    flushed?;
                    // Plaintext may be readable now, or more records wait.
                }
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        flush(tls, tcp)?;
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// Sends what `tls` has buffered over `tcp`: `Ok(true)` when nothing is left.
fn flush(tls: &mut rustls::Connection, tcp: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Transport { tcp, tls } = self;
        let Some(tls) = tls.as_deref_mut() else {
            return tcp.write(buf);
        };
        if tls.is_handshaking() {
            // Nothing goes into rustls unencrypted; drive the handshake.
            flush(tls, tcp)?;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = tls.writer().write(buf)?;
        let flushed = flush(tls, tcp)?;
        if n == 0 && flushed && !buf.is_empty() {
            // The buffer was full and is empty now: room again.
            n = tls.writer().write(buf)?;
            flush(tls, tcp)?;
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let Transport { tcp, tls } = self;
        let Some(tls) = tls.as_deref_mut() else {
            return tcp.write_vectored(bufs);
        };
        if tls.is_handshaking() {
            flush(tls, tcp)?;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = tls.writer().write_vectored(bufs)?;
        let flushed = flush(tls, tcp)?;
        let wanted = bufs.iter().any(|b| !b.is_empty());
        if n == 0 && flushed && wanted {
            n = tls.writer().write_vectored(bufs)?;
            flush(tls, tcp)?;
        }
        if n == 0 && wanted {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.flush_tls()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

//! A client connection as the server uses it: one reader (the connection's thread), many
//! writers (the workers answering its requests), plain or TLS.
//!
//! Invariants:
//! * **Every wait has a deadline**: a read waits at most until the deadline its caller gives
//!   (the handshake's, an idle client's, the rest of a message's); a write at most the I/O
//!   limit. Past it the read or write fails with `TimedOut` and the connection ends.
//! * **A reply is written whole**: writers take one lock per message, so replies to requests
//!   answered in parallel never interleave mid-message.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// An accepted socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Socket {
    pub(crate) fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_read_timeout(t),
            Socket::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_write_timeout(t),
            Socket::Tcp(s) => s.set_write_timeout(t),
        }
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_nonblocking(on),
            Socket::Tcp(s) => s.set_nonblocking(on),
        }
    }

    /// Ends the connection's input: its reader sees the end of the stream (a server that
    /// stops lets each connection finish the requests it has).
    pub(crate) fn shutdown_read(&self) {
        let _ = match self {
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Read),
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Read),
        };
    }

    /// Who is connected, for log lines.
    pub(crate) fn peer(&self) -> String {
        match self {
            Socket::Unix(_) => "unix socket client".to_string(),
            Socket::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "tcp client".to_string(), |a| a.to_string()),
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Unix(s) => s.as_fd(),
            Socket::Tcp(s) => s.as_fd(),
        }
    }
}

impl Read for &Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => (&*s).read(buf),
            Socket::Tcp(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Unix(s) => (&*s).write(buf),
            Socket::Tcp(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client did not answer in time")
}

/// What is left until `deadline` (`None`: no deadline), or `TimedOut` if it has passed.
fn left(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let now = Instant::now();
            if now >= d {
                Err(timed_out())
            } else {
                Ok(Some(d - now))
            }
        }
    }
}

/// Waits until `fd` is ready for `events` or `deadline` passes.
fn wait(
    fd: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    deadline: Option<Instant>,
) -> io::Result<()> {
    loop {
        // At most a minute at a time: a deadline far away is just polled again.
        let t = left(deadline)?.map_or(Duration::from_secs(60), |d| d.min(Duration::from_secs(60)));
        let timeout = nix::poll::PollTimeout::try_from(t.max(Duration::from_millis(1)))
            .unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [nix::poll::PollFd::new(fd, events)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A connection's byte stream.
pub(crate) trait Wire: Send + Sync {
    /// Fills `buf`, waiting at most until `deadline`. The client hanging up is `UnexpectedEof`.
    fn read_exact(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()>;
    /// Writes one message made of `parts`, whole, before any other writer's.
    fn write_all(&self, parts: &[&[u8]]) -> io::Result<()>;
}

/// A connection without TLS: the reader reads from one descriptor, writers share another.
pub(crate) struct Plain {
    read: Socket,
    write: Mutex<Socket>,
}

impl Plain {
    pub(crate) fn new(s: &Socket, io_limit: Duration) -> io::Result<Plain> {
        let write = s.try_clone()?;
        write.set_write_timeout(Some(io_limit))?;
        Ok(Plain {
            read: s.try_clone()?,
            write: Mutex::new(write),
        })
    }
}

impl Wire for Plain {
    fn read_exact(&self, mut buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
        while !buf.is_empty() {
            // SO_RCVTIMEO of zero means "wait forever": `left` is never zero.
            self.read.set_read_timeout(left(deadline)?)?;
            match (&self.read).read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => buf = &mut buf[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        let w = self.write.lock();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let r = if parts.len() > 1 && total <= 64 * 1024 {
            // A small message in one write: one packet, one syscall.
            (&*w).write_all(&parts.concat())
        } else {
            parts.iter().try_for_each(|p| (&*w).write_all(p))
        };
        r.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => timed_out(),
            _ => e,
        })
    }
}

/// A connection upgraded to TLS (`NBD_OPT_STARTTLS`). The socket is non-blocking; the TLS
/// state is shared under a lock taken for each read or message, never while waiting.
pub(crate) struct Tls {
    sock: Socket,
    tls: Mutex<rustls::ServerConnection>,
    io_limit: Duration,
}

impl Tls {
    pub(crate) fn new(
        s: &Socket,
        config: Arc<rustls::ServerConfig>,
        io_limit: Duration,
    ) -> io::Result<Tls> {
        let sock = s.try_clone()?;
        sock.set_nonblocking(true)?;
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Tls {
            sock,
            tls: Mutex::new(conn),
            io_limit,
        })
    }

    /// Sends what TLS has queued (handshake messages, alerts, records).
    fn flush(&self, t: &mut rustls::ServerConnection) -> io::Result<()> {
        let deadline = Some(Instant::now() + self.io_limit);
        while t.wants_write() {
            match t.write_tls(&mut &self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(self.sock.as_fd(), nix::poll::PollFlags::POLLOUT, deadline)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Wire for Tls {
    fn read_exact(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            {
                let mut t = self.tls.lock();
                match t.reader().read(&mut buf[filled..]) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        filled += n;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match t.read_tls(&mut &self.sock) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {
                        let processed = t.process_new_packets();
                        // Handshake replies, or the alert that says why it failed.
                        let flushed = self.flush(&mut t);
                        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        flushed?;
                        continue;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            wait(self.sock.as_fd(), nix::poll::PollFlags::POLLIN, deadline)?;
        }
        Ok(())
    }

    fn write_all(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut t = self.tls.lock();
        for p in parts {
            let mut off = 0;
            while off < p.len() {
                let n = t.writer().write(&p[off..])?;
                off += n;
                if n == 0 && !t.wants_write() {
                    return Err(io::Error::other("TLS refused more data to send"));
                }
                if t.wants_write() {
                    self.flush(&mut t)?;
                }
            }
        }
        self.flush(&mut t)
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let mut t = self.tls.lock();
        t.send_close_notify();
        let _ = self.flush(&mut t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wait_only_until_their_deadline() {
        let (a, b) = UnixStream::pair().unwrap();
        let s = Socket::Unix(a);
        let w = Plain::new(&s, Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; 4];
        let t = Instant::now();
        let e = w
            .read_exact(&mut buf, Some(Instant::now() + Duration::from_millis(100)))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
        // Half a message, then nothing: the rest has the same deadline.
        (&b).write_all(&[1, 2]).unwrap();
        let e = w
            .read_exact(&mut buf, Some(Instant::now() + Duration::from_millis(100)))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        (&b).write_all(&[1, 2, 3, 4]).unwrap();
        w.read_exact(&mut buf, None).unwrap();
        assert_eq!(buf, [1, 2, 3, 4]);
        w.write_all(&[b"ab", b"cd"]).unwrap();
        let mut got = [0u8; 4];
        (&b).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcd");
        drop(b);
        let e = w.read_exact(&mut buf, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}

//! The long-lived remote `sh` that answers requests: each request is a shell snippet written
//! to its stdin; the reply is what the snippet printed, then an in-band status line
//! (`\n__WYNG_OK\n`, or `\n__WYNG_ERR rc len\n` followed by `len` bytes of the snippet's
//! stderr). Starting a remote command costs ~0.1 s on a typical sshd; a request on the open
//! shell costs a pipe round trip. If the link drops or the reply is out of step, the shell is
//! never reused.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;

use super::url::Transport;

/// Longest stderr text or framed command output accepted from the remote side.
pub(crate) const MAX_REPLY: usize = 64 << 20;

const OK: &[u8] = b"\n__WYNG_OK\n";
const ERR: &str = "\n__WYNG_ERR ";

/// Why a request failed.
pub enum Failure {
    /// The command ran and failed: its exit code and stderr text.
    Remote(i32, String),
    /// The link or the shell is gone: what ssh said, if anything.
    Link(String),
}

pub struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What ssh (or qvm-run) printed on stderr: the reason when the link drops.
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Collects a child's stderr in the background (bounded).
pub(crate) fn collect_stderr(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let sink = Arc::new(Mutex::new(Vec::new()));
    let s = sink.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut s = s.lock();
            if s.len() < 1 << 16 {
                s.extend_from_slice(&buf[..n]);
            }
        }
    });
    sink
}

/// The text a dead link left: ssh's last words.
pub(crate) fn last_words(t: &Transport, stderr: &Mutex<Vec<u8>>) -> String {
    // Give the reader thread a moment to collect the last words of ssh.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let text = String::from_utf8_lossy(&stderr.lock())
        .trim()
        .replace('\n', "; ");
    if text.is_empty() {
        "the connection was lost".into()
    } else {
        format!("{} failed: {text}", t.program())
    }
}

impl Shell {
    pub fn start(t: &Transport) -> Result<Shell, String> {
        let mut child = t
            .command("exec sh -s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", t.program()))?;
        let stderr = collect_stderr(child.stderr.take().expect("piped"));
        let mut sh = Shell {
            stdin: child.stdin.take().expect("piped"),
            stdout: BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped")),
            child,
            stderr,
        };
        // Each request's stderr goes to a private temporary file, sent back only on failure.
        let init = "export LC_ALL=C; umask 022; E=$(mktemp) || exit 70; trap 'rm -f \"$E\"' EXIT; printf '__WYNG_READY\\n'\n";
        let ready = sh
            .stdin
            .write_all(init.as_bytes())
            .and_then(|_| sh.stdin.flush());
        let mut line = String::new();
        if ready.is_err() || sh.stdout.read_line(&mut line).is_err() || line != "__WYNG_READY\n" {
            let words = last_words(t, &sh.stderr);
            sh.kill();
            return Err(words);
        }
        Ok(sh)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `cmd`; `read_out` consumes exactly what it printed on stdout.
    pub fn request<T>(
        &mut self,
        t: &Transport,
        cmd: &str,
        stdin_free: bool,
        read_out: impl FnOnce(&mut BufReader<ChildStdout>) -> std::io::Result<T>,
    ) -> Result<T, Failure> {
        let redirect = if stdin_free { " </dev/null" } else { "" };
        let text = format!(
            "{{ {cmd}\n}} 2>\"$E\"{redirect}; rc=$?; if [ $rc -eq 0 ]; then printf '\\n__WYNG_OK\\n'; \
             else printf '\\n__WYNG_ERR %d %d\\n' $rc $(wc -c <\"$E\"); cat \"$E\"; fi\n"
        );
        let result = (|| -> std::io::Result<std::result::Result<T, (i32, String)>> {
            self.stdin.write_all(text.as_bytes())?;
            self.stdin.flush()?;
            let value = read_out(&mut self.stdout);
            match read_status(&mut self.stdout)? {
                Ok(()) => value.map(Ok),
                Err(failed) => Ok(Err(failed)),
            }
        })();
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((rc, msg))) => Err(Failure::Remote(rc, msg)),
            Err(e) => {
                tracing::debug!("remote shell error: {e}");
                Err(Failure::Link(last_words(t, &self.stderr)))
            }
        }
    }

    /// Closes stdin (which ends the remote shell and releases its lock) and waits for it.
    pub(crate) fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }

    /// In a forked child: forget the parent's processes without touching them.
    pub fn forget(self) {
        drop(self.stdin);
        drop(self.stdout);
        std::mem::forget(self.child);
    }

    /// After a link failure: make sure the process is gone.
    pub(crate) fn discard(self) {
        self.kill();
    }
}

fn out_of_step() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "remote output out of step")
}

/// Reads exactly `n` bytes, allocating as they arrive (never `n` up front: the length is the
/// remote side's claim).
pub(crate) fn read_exactly(r: &mut impl Read, n: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n.min(1 << 16) as usize);
    r.take(n).read_to_end(&mut buf)?;
    if buf.len() as u64 != n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "remote output ended early",
        ));
    }
    Ok(buf)
}

/// Reads the status that ends every reply: `Ok`, or the failed command's exit code and stderr.
pub(crate) fn read_status(r: &mut impl BufRead) -> std::io::Result<Result<(), (i32, String)>> {
    let mut status = Vec::new();
    // At most one status line, read a byte at a time so nothing after it is consumed.
    let mut byte = [0u8; 1];
    while !status.ends_with(b"\n") || status.len() < 2 {
        r.read_exact(&mut byte)?;
        status.push(byte[0]);
        if status.len() > 64 {
            break;
        }
    }
    if status == OK {
        return Ok(Ok(()));
    }
    let st = String::from_utf8_lossy(&status).into_owned();
    let rest = st.strip_prefix(ERR).ok_or_else(out_of_step)?;
    let mut parts = rest.split_whitespace();
    let rc: i32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1);
    let len: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if len > MAX_REPLY {
        return Err(out_of_step());
    }
    let msg = read_exactly(r, len as u64)?;
    Ok(Err((
        rc,
        String::from_utf8_lossy(&msg).trim().replace('\n', "; "),
    )))
}

/// Reads a framed reply: a decimal length line, then that many bytes.
pub(crate) fn read_framed(out: &mut impl BufRead) -> std::io::Result<String> {
    let mut len = String::new();
    out.take(24).read_line(&mut len)?;
    let n: usize = len
        .trim()
        .parse()
        .ok()
        .filter(|&n| n <= MAX_REPLY)
        .ok_or_else(out_of_step)?;
    let text = read_exactly(out, n as u64)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

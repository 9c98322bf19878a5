//! The chunk stream: chunk files (and hard links to them) go into one `tar -x` on the remote
//! side, with no round trip per file. Any other operation closes the stream first and checks
//! that tar succeeded, so the archive sees writes and renames in the order the engine issued
//! them, which the commit protocol's crash safety needs.

use std::io::Read;
use std::process::{Child, ChildStdin, Stdio};

use super::url::Transport;

pub(crate) struct Upload {
    child: Child,
    tar: tar::Builder<ChildStdin>,
}

/// Why the stream ended badly: the remote's words, and whether it ran out of space.
pub(crate) struct UploadFailure {
    pub text: String,
    pub full: bool,
}

fn header(size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    h.set_entry_type(kind);
    h
}

impl Upload {
    pub fn start(t: &Transport, root_quoted: &str) -> Result<Upload, String> {
        let script = format!("export LC_ALL=C; cd {root_quoted} && exec tar -x -f -");
        let mut child = t
            .command(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", t.program()))?;
        let stdin = child.stdin.take().expect("piped");
        Ok(Upload {
            child,
            tar: tar::Builder::new(stdin),
        })
    }

    pub fn file(&mut self, rel: &str, data: &mut dyn Read, len: u64) -> std::io::Result<()> {
        let mut h = header(len, tar::EntryType::Regular);
        self.tar.append_data(&mut h, rel, data)
    }

    /// A hard-link member, ordered after the file it links to.
    pub fn link(&mut self, from: &str, to: &str) -> std::io::Result<()> {
        let mut h = header(0, tar::EntryType::Link);
        self.tar.append_link(&mut h, to, from)
    }

    /// Ends the stream and waits for tar.
    pub fn finish(self) -> Result<(), UploadFailure> {
        let Upload { mut child, tar } = self;
        let finished = tar.into_inner().map(drop);
        let mut stderr = Vec::new();
        if let Some(e) = child.stderr.take() {
            let _ = e.take(1 << 16).read_to_end(&mut stderr);
        }
        let status = child.wait();
        let text = String::from_utf8_lossy(&stderr).trim().replace('\n', "; ");
        let ok = status.as_ref().is_ok_and(|s| s.success());
        if !ok {
            return Err(UploadFailure {
                full: text.contains("No space left"),
                text: if text.is_empty() {
                    "the connection was lost".into()
                } else {
                    text
                },
            });
        }
        finished.map_err(|e| UploadFailure {
            text: e.to_string(),
            full: false,
        })
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn forget(self) {
        std::mem::forget(self.tar);
        std::mem::forget(self.child);
    }
}

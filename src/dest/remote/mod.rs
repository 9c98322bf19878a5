//! Remote destinations (`ssh://`, `qubes://`, `qubes-ssh://`): an archive directory on another
//! machine, reached through the system `ssh` (so users' config, keys and agents just work) over
//! one shared connection (ControlMaster), or through `qvm-run -p` for Qubes.
//!
//! The remote needs only a POSIX shell with the usual tools (`tar`, `cat`, `stat`, `mv`, `rm`,
//! `ln`, `mkdir`, `base64`, `sync`, and `flock` for the archive lock): nothing is installed
//! there. The parts: [`url`] parses URLs and builds commands; [`shell`] is the long-lived
//! remote `sh` that answers requests; [`upload`] is the `tar -x` stream chunk files go
//! through. Reads are batched: one `stat` and one `cat` for a whole batch of files; a size over
//! the limit is refused before its bytes are fetched. The archive lock is a `flock` on a
//! descriptor of the shell: if we die or the link drops, the shell ends and the lock goes.

pub mod shell;
pub mod upload;
pub mod url;

use std::io::{BufRead, Read, Write};

use parking_lot::Mutex;

use self::shell::{Failure, Shell};
use self::upload::Upload;
use self::url::{sh_quote, Transport};
use super::{Capabilities, Dest};
use crate::error::{Error, Result};

pub use self::url::default_ssh_opts;

/// The available bytes in the output of `df -P -k` (its last line's 4th field, in KiB).
pub(crate) fn parse_df_available(out: &str) -> Option<u64> {
    let line = out.lines().last()?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

pub struct RemoteDest {
    url: String,
    /// Archive directory on the remote side (unquoted).
    root: String,
    transport: Transport,
    shell: Mutex<Option<Shell>>,
    upload: Mutex<Option<Upload>>,
    /// File bytes handed to the remote side (writes and the chunk stream).
    written: std::sync::atomic::AtomicU64,
}

impl RemoteDest {
    /// Parses a remote URL (`o`: `--opt-ssh`, `--opt-qubes`).
    pub fn new(url: &str, o: &super::DestOptions) -> Result<RemoteDest> {
        let control_dir = std::env::temp_dir().join(format!("wyng-ssh-{}", nix::unistd::getuid()));
        std::fs::create_dir_all(&control_dir)
            .map_err(|e| Error::local_io(&control_dir, "cannot create", e))?;
        let _ = std::fs::set_permissions(
            &control_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        let (transport, root) = Transport::parse(url, o, &control_dir)?;
        Ok(RemoteDest {
            url: url.to_string(),
            root,
            transport,
            shell: Mutex::new(None),
            upload: Mutex::new(None),
            written: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn count(&self, n: u64) {
        self.written
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A path under the archive root, quoted for the remote shell.
    fn path(&self, rel: &str) -> String {
        sh_quote(&self.unquoted(rel))
    }

    fn unquoted(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{rel}", self.root.trim_end_matches('/'))
        }
    }

    fn unavailable(&self, detail: String) -> Error {
        Error::DestUnavailable {
            url: self.url.clone(),
            detail,
        }
    }

    /// Runs `cmd` in the remote shell (started on first use). `read_out` consumes the
    /// command's stdout (exactly what it printed).
    fn request<T>(
        &self,
        cmd: &str,
        stdin_free: bool,
        read_out: impl FnOnce(&mut std::io::BufReader<std::process::ChildStdout>) -> std::io::Result<T>,
    ) -> Result<T> {
        self.finish_upload()?;
        let mut guard = self.shell.lock();
        if guard.is_none() {
            *guard = Some(Shell::start(&self.transport).map_err(|e| self.unavailable(e))?);
        }
        let sh = guard.as_mut().expect("started above");
        match sh.request(&self.transport, cmd, stdin_free, read_out) {
            Ok(v) => Ok(v),
            Err(Failure::Remote(rc, msg)) => Err(self.remote_error(rc, &msg, cmd)),
            Err(Failure::Link(why)) => {
                // The link or the shell is gone (or out of step): never reuse it.
                guard.take().expect("present").discard();
                Err(self.unavailable(why))
            }
        }
    }

    /// Runs a command whose stdout is (short) text: the remote sends its length first, so the
    /// text is read exactly, whatever it contains.
    fn run(&self, cmd: &str) -> Result<String> {
        let framed = format!("__o=$({cmd}); __rc=$?; printf '%d\\n' \"${{#__o}}\"; printf '%s' \"$__o\"; (exit $__rc)");
        self.request(&framed, true, shell::read_framed)
    }

    fn remote_error(&self, rc: i32, msg: &str, cmd: &str) -> Error {
        if msg.contains("No space left") || msg.contains("Disk quota exceeded") {
            // The first path the command names, for the message.
            let path = cmd
                .split_whitespace()
                .find(|w| w.contains(&self.root))
                .unwrap_or("")
                .trim_matches('\'')
                .to_string();
            return super::full(&self.url, &path);
        }
        self.unavailable(format!(
            "remote command failed ({rc}): {}",
            if msg.is_empty() { "no message" } else { msg }
        ))
    }

    /// Closes the chunk stream, if any, and checks that every file arrived.
    fn finish_upload(&self) -> Result<()> {
        let Some(up) = self.upload.lock().take() else {
            return Ok(());
        };
        up.finish().map_err(|f| {
            if f.full {
                super::full(&self.url, "(chunk upload)")
            } else {
                self.unavailable(format!("upload failed: {}", f.text))
            }
        })
    }

    /// Appends an entry to the chunk stream (started on first use). If the stream broke, the
    /// error is the remote's reason.
    fn append_upload(&self, append: impl FnOnce(&mut Upload) -> std::io::Result<()>) -> Result<()> {
        let mut up = self.upload.lock();
        if up.is_none() {
            *up = Some(
                Upload::start(&self.transport, &self.path("")).map_err(|e| self.unavailable(e))?,
            );
        }
        if let Err(e) = append(up.as_mut().expect("set above")) {
            drop(up);
            return Err(self
                .finish_upload()
                .err()
                .unwrap_or_else(|| self.unavailable(format!("upload failed: {e}"))));
        }
        Ok(())
    }

    /// Sizes of the files that exist among `rels`, refusing any over `max`.
    fn sizes(&self, rels: &[String], max: u64) -> Result<Vec<Option<u64>>> {
        let names: Vec<String> = rels.iter().map(|r| self.path(r)).collect();
        let sizes = self.run(&format!(
            "stat -L -c '%s %n' -- {} 2>/dev/null; true",
            names.join(" ")
        ))?;
        let mut size_of = std::collections::HashMap::new();
        for line in sizes.lines() {
            if let Some((s, n)) = line.split_once(' ') {
                if let Ok(s) = s.parse::<u64>() {
                    size_of.insert(n.to_string(), s);
                }
            }
        }
        rels.iter()
            .map(|r| match size_of.get(&self.unquoted(r)) {
                Some(&s) if s > max => Err(Error::corrupt(
                    r,
                    format!("file is {s} bytes, more than the {max} allowed"),
                )),
                s => Ok(s.copied()),
            })
            .collect()
    }

    /// Reads several files: one request for their sizes, one for their bytes.
    fn fetch(&self, rels: &[String], max: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; rels.len()];
        if rels.is_empty() {
            return Ok(out);
        }
        let present: Vec<(usize, u64)> = self
            .sizes(rels, max)?
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (i, s)))
            .collect();
        if present.is_empty() {
            return Ok(out);
        }
        let list: Vec<String> = present.iter().map(|(i, _)| self.path(&rels[*i])).collect();
        let files = self.request(&format!("cat -- {}", list.join(" ")), true, |stdout| {
            let mut files = Vec::with_capacity(present.len());
            for &(i, s) in &present {
                files.push((i, shell::read_exactly(stdout, s)?));
            }
            Ok(files)
        })?;
        for (i, f) in files {
            out[i] = Some(f);
        }
        Ok(out)
    }
}

impl Drop for RemoteDest {
    fn drop(&mut self) {
        if let Some(up) = self.upload.lock().take() {
            up.kill();
        }
        if let Some(sh) = self.shell.lock().take() {
            // Closing stdin ends the remote shell (and releases its lock). The shared ssh
            // connection is left to expire (ControlPersist): a mount forked from this process
            // may still be using it.
            sh.close();
        }
    }
}

impl Dest for RemoteDest {
    fn url(&self) -> &str {
        &self.url
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_rename: true,
            hard_links: true,
            process_lock: true,
        }
    }

    fn root_exists(&self) -> Result<bool> {
        let r = self.path("");
        let out = self.run(&format!(
            "if [ -d {r} ]; then echo dir; elif [ -e {r} ]; then echo other; else echo none; fi"
        ))?;
        match out.trim() {
            "dir" => Ok(true),
            "none" => Ok(false),
            _ => Err(self.unavailable("the destination path is not a directory".into())),
        }
    }

    fn create_root(&self) -> Result<()> {
        let r = self.path("");
        self.run(&format!(
            "p=$(dirname -- {r}); [ -d \"$p\" ] || {{ echo \"parent directory $p does not exist\" >&2; exit 1; }}; mkdir -p -- {r}"
        ))
        .map(drop)
    }

    fn read(&self, rel: &str, max: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.fetch(&[rel.to_string()], max)?.pop().flatten())
    }

    fn read_many(&self, rels: &[String], max: u64) -> Result<Vec<Option<Vec<u8>>>> {
        self.fetch(rels, max)
    }

    fn batch_reads(&self) -> bool {
        true
    }

    fn read_into(&self, rel: &str, max: u64, out: &mut dyn Write) -> Result<Option<u64>> {
        let Some(size) = self.sizes(&[rel.to_string()], max)?.pop().flatten() else {
            return Ok(None);
        };
        let mut spool_err = None;
        self.request(&format!("cat -- {}", self.path(rel)), true, |stdout| {
            // Read exactly `size` bytes whatever happens to `out`, so the shell stays in step.
            let mut left = size;
            let mut buf = vec![0u8; 1 << 16];
            while left > 0 {
                let n = (left as usize).min(buf.len());
                stdout.read_exact(&mut buf[..n])?;
                if spool_err.is_none() {
                    if let Err(e) = out.write_all(&buf[..n]) {
                        spool_err = Some(e);
                    }
                }
                left -= n as u64;
            }
            Ok(())
        })?;
        match spool_err {
            Some(e) => Err(Error::io("local spool for a download", e)),
            None => Ok(Some(size)),
        }
    }

    /// Small files through the shell (base64), so that metadata costs no extra connection.
    fn write(&self, rel: &str, data: &[u8]) -> Result<()> {
        use base64::Engine;
        let p = self.path(rel);
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        let mut body = String::with_capacity(b64.len() + b64.len() / 76 + 1);
        for line in b64.as_bytes().chunks(76) {
            body.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            body.push('\n');
        }
        let cmd = format!(
            "mkdir -p -- \"$(dirname -- {p})\" && base64 -d > {p} <<'__WYNG_EOF'\n{body}__WYNG_EOF"
        );
        self.request(&cmd, false, |_| Ok(())).map(drop)?;
        self.count(data.len() as u64);
        Ok(())
    }

    /// Large files go through the tar stream, which the next other operation closes.
    fn write_from(&self, rel: &str, src: &mut dyn Read, len: u64) -> Result<()> {
        self.append_upload(|u| u.file(rel, src, len))?;
        self.finish_upload()?;
        self.count(len);
        Ok(())
    }

    /// Chunk files stream through one `tar -x` (closed by the next other operation).
    fn write_chunk(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.append_upload(|u| u.file(rel, &mut &data[..], data.len() as u64))?;
        self.count(data.len() as u64);
        Ok(())
    }

    /// A hard-link member in the same tar stream: no round trip, and ordered after the file
    /// it links to (which is already on the remote, or earlier in the stream).
    fn link_chunk(&self, from: &str, to: &str) -> Result<()> {
        self.append_upload(|u| u.link(from, to))
    }

    fn stat(&self, rel: &str) -> Result<Option<super::FileStat>> {
        let r = self.path(rel);
        let out = self.run(&format!(
            "if [ -f {r} ]; then stat -L -c '%s %d %i' -- {r}; fi"
        ))?;
        let v: Vec<u64> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        Ok((v.len() == 3).then(|| super::FileStat {
            size: v[0],
            id: (v[1], v[2]),
        }))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.run(&format!("mv -f -- {} {}", self.path(from), self.path(to)))
            .map(drop)
    }

    fn hard_link(&self, from: &str, to: &str) -> Result<()> {
        self.run(&format!("ln -- {} {}", self.path(from), self.path(to)))
            .map(drop)
    }

    fn mkdir_all(&self, rel: &str) -> Result<()> {
        self.run(&format!("mkdir -p -- {}", self.path(rel)))
            .map(drop)
    }

    fn remove_all(&self, rel: &str) -> Result<()> {
        self.run(&format!("rm -rf -- {}", self.path(rel))).map(drop)
    }

    fn list(&self, rel: &str) -> Result<Vec<String>> {
        let r = self.path(rel);
        let out = self.run(&format!("if [ -d {r} ]; then ls -1A -- {r}; fi"))?;
        let mut v: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        v.sort();
        Ok(v)
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        let r = self.path(rel);
        Ok(self
            .run(&format!(
                "if [ -e {r} ] || [ -L {r} ]; then echo 1; else echo 0; fi"
            ))?
            .trim()
            == "1")
    }

    fn sync(&self) -> Result<()> {
        self.run("sync").map(drop)
    }

    /// In scripts of a few thousand moves each: one round trip per batch, not two per file.
    /// Each file must not cost a process either (a fork and exec of `mv` per chunk is ~1 ms):
    /// renames that keep their name between the same two directories go to one `mv`, after a
    /// builtin `[ -e ]` filter that skips sources an interrupted run already moved, and
    /// consecutive removals go to one `rm`.
    fn apply_moves(&self, moves: &[super::Move]) -> Result<()> {
        use super::Move;
        for part in moves.chunks(2000) {
            let mut script = String::from("set -e\n");
            let mut i = 0;
            while i < part.len() {
                match &part[i] {
                    Move::Rename { from, to } => {
                        let (fdir, name) = from.rsplit_once('/').unwrap_or(("", from));
                        let (tdir, tname) = to.rsplit_once('/').unwrap_or(("", to));
                        if name != tname {
                            let (f, t) = (self.path(from), self.path(to));
                            script += &format!("if [ -e {f} ]; then mv -f {f} {t}; fi\n");
                            i += 1;
                            continue;
                        }
                        let (fq, tq) = (self.path(fdir), self.path(tdir));
                        script += "set --; for f in";
                        while let Some(Move::Rename { from, to }) = part.get(i) {
                            match (from.rsplit_once('/'), to.rsplit_once('/')) {
                                (Some((fd, n)), Some((td, tn)))
                                    if fd == fdir && td == tdir && n == tn =>
                                {
                                    script += " ";
                                    script += &sh_quote(n);
                                }
                                _ => break,
                            }
                            i += 1;
                        }
                        script += &format!(
                            "; do if [ -e {fq}/\"$f\" ]; then set -- \"$@\" {fq}/\"$f\"; fi; done\n\
                             if [ $# -gt 0 ]; then mv -f \"$@\" {tq}/; fi\n"
                        );
                    }
                    Move::Remove(_) => {
                        script += "rm -rf";
                        while let Some(Move::Remove(p)) = part.get(i) {
                            script += " ";
                            script += &self.path(p);
                            i += 1;
                        }
                        script += "\n";
                    }
                }
            }
            script += "echo done";
            self.run(&script)?;
        }
        Ok(())
    }

    /// The remote `sync` flushes the whole remote machine: fewer of them (measured on
    /// loopback: 64 MiB cost a 1 GiB send 10–44%, 256 MiB about 3%).
    fn checkpoint_bytes(&self) -> u64 {
        256 << 20
    }

    fn free_space(&self) -> Result<Option<u64>> {
        // POSIX `df -P -k`: the last line's 4th field is the space available, in KiB.
        let out = self.run(&format!("df -P -k {} | tail -n 1", self.path("")))?;
        Ok(parse_df_available(&out))
    }

    fn lock(&self, exclusive: bool) -> Result<bool> {
        let mode = if exclusive { "-x" } else { "-s" };
        let out = self.run(&format!(
            "if command -v flock >/dev/null; then exec 9<{r}; if flock -n {mode} 9; then echo locked; else echo busy; fi; else echo nolock; fi",
            r = self.path("")
        ))?;
        match out.trim() {
            "locked" => Ok(true),
            "nolock" => {
                tracing::warn!(
                    "{}: no flock on the remote side; the archive is not locked",
                    self.url
                );
                Ok(false)
            }
            _ => Err(Error::Busy {
                url: self.url.clone(),
            }),
        }
    }

    fn unlock(&self) {
        let _ = self.run("exec 9<&-");
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn detach_after_fork(&self) {
        // The processes are the parent's children: close our copies of their pipes (so they
        // still end when the parent closes its own) and forget them.
        if let Some(sh) = self.shell.lock().take() {
            sh.forget();
        }
        if let Some(up) = self.upload.lock().take() {
            up.forget();
        }
    }
}

/// Reads lines from a stream (used by callers of `read_into`).
#[allow(dead_code)]
fn _assert_bufread<R: BufRead>(_: R) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_available() {
        let out = "Filesystem     1024-blocks    Used Available Capacity Mounted on\n/dev/sda1         41152736 8738340  30300644      23% /\n";
        assert_eq!(parse_df_available(out), Some(30300644 * 1024));
        assert_eq!(parse_df_available("df: not found"), None);
        assert_eq!(parse_df_available(""), None);
    }

    #[test]
    fn paths_are_quoted() {
        let d =
            RemoteDest::new("ssh://backup@nas.local:2222/srv/my b", &Default::default()).unwrap();
        assert_eq!(d.path("Vol_1/volinfo"), "'/srv/my b/Vol_1/volinfo'");
        assert_eq!(d.unquoted(""), "/srv/my b");
    }
}

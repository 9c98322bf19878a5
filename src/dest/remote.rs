//! Remote destinations: `ssh://[user@]host[:port][/path]`, `qubes://vm[/path]` and
//! `qubes-ssh://vm:[user@]host[:port][/path]`.
//!
//! The remote needs only a POSIX shell with the usual tools (`tar`, `cat`, `stat`, `mv`, `rm`,
//! `ln`, `mkdir`, `sync`, and `flock` for the archive lock): nothing is installed there. Commands
//! run through the system `ssh` (so users' config, keys and agents just work) over one shared
//! connection (ControlMaster), or through `qvm-run -p` for Qubes.
//!
//! * One long-lived remote `sh` serves every operation: requests are shell snippets written to
//!   its stdin, answered on its stdout with an in-band status line (and the remote's stderr text
//!   on failure). Starting a remote command costs ~0.1 s on a typical sshd; a request on the
//!   open shell costs a pipe round trip.
//! * Chunk files are streamed: they go into one `tar -x` process on the remote (no round trip
//!   per chunk). Any other operation first closes that stream and checks that tar succeeded, so
//!   the archive sees writes and renames in the order the engine issued them, which keeps the
//!   commit protocol crash-safe. Small files (metadata) go through the shell, base64-encoded.
//! * Reads are batched: one `stat` and one `cat` for a whole batch of files; a size over the
//!   limit is refused before its bytes are fetched.
//! * The archive lock is a `flock` on a descriptor of that shell: if we die or the link drops,
//!   the shell ends and the lock is released.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Dest;
use crate::error::{Error, Result};

/// How remote commands are run.
#[derive(Clone, Debug)]
enum Transport {
    Ssh {
        target: String,
        port: Option<u16>,
        opts: Vec<String>,
        control: PathBuf,
    },
    Qubes {
        vm: String,
        ssh: Option<Box<Transport>>,
    },
}

/// Single-quotes a string for a POSIX shell.
/// The available bytes in the output of `df -P -k` (its last line's 4th field, in KiB).
fn parse_df_available(out: &str) -> Option<u64> {
    let line = out.lines().last()?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Transport {
    /// A command that runs `script` with `sh` on the remote side.
    fn command(&self, script: &str) -> Command {
        match self {
            Transport::Ssh {
                target,
                port,
                opts,
                control,
            } => {
                let mut c = Command::new("ssh");
                c.arg("-o")
                    .arg(format!("ControlPath={}", control.display()));
                c.args([
                    "-o",
                    "ControlMaster=auto",
                    "-o",
                    "ControlPersist=30",
                    "-o",
                    "BatchMode=yes",
                ]);
                if let Some(p) = port {
                    c.arg("-p").arg(p.to_string());
                }
                c.args(opts)
                    .arg("--")
                    .arg(target)
                    .arg(format!("sh -c {}", sh_quote(script)));
                c
            }
            Transport::Qubes { vm, ssh } => {
                let inner = match ssh {
                    None => format!("sh -c {}", sh_quote(script)),
                    Some(t) => {
                        let c = t.command(script);
                        let mut words = vec![c.get_program().to_string_lossy().into_owned()];
                        words.extend(c.get_args().map(|a| sh_quote(&a.to_string_lossy())));
                        words.join(" ")
                    }
                };
                let mut c = Command::new("qvm-run");
                c.arg("-p").arg(vm).arg(inner);
                c
            }
        }
    }
}

/// The ssh options used unless `--opt-ssh` replaces them.
pub fn default_ssh_opts() -> Vec<String> {
    [
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "Compression=no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

struct Upload {
    child: Child,
    tar: tar::Builder<ChildStdin>,
}

/// The long-lived remote shell that answers requests.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What ssh (or qvm-run) printed on stderr: the reason when the link drops.
    stderr: Arc<Mutex<Vec<u8>>>,
}

const OK: &[u8] = b"\n__WYNG_OK\n";
const ERR: &str = "\n__WYNG_ERR ";

pub struct RemoteDest {
    url: String,
    /// Archive directory on the remote side (unquoted).
    root: String,
    transport: Transport,
    shell: Mutex<Option<Shell>>,
    upload: Mutex<Option<Upload>>,
}

impl RemoteDest {
    /// Parses a remote URL. `ssh_opts` replaces the default ssh options (`--opt-ssh`).
    pub fn new(url: &str, ssh_opts: Option<Vec<String>>) -> Result<RemoteDest> {
        let bad = |why: &str| Error::Usage(format!("--dest '{url}': {why}"));
        let control_dir = std::env::temp_dir().join(format!("wyng-ssh-{}", nix::unistd::getuid()));
        std::fs::create_dir_all(&control_dir)
            .map_err(|e| Error::io(control_dir.display().to_string(), e))?;
        let _ = std::fs::set_permissions(
            &control_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        let ssh = |netloc: &str| -> Result<Transport> {
            let (userhost, port) = match netloc.rsplit_once(':') {
                Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    (h, Some(p.parse::<u16>().map_err(|_| bad("bad port"))?))
                }
                _ => (netloc, None),
            };
            if userhost.is_empty() || userhost.ends_with('@') || userhost.starts_with('-') {
                return Err(bad("no host; write ssh://user@host[:port]/path"));
            }
            Ok(Transport::Ssh {
                target: userhost.to_string(),
                port,
                opts: ssh_opts.clone().unwrap_or_else(default_ssh_opts),
                control: control_dir.join("cm-%C"),
            })
        };
        let split = |rest: &str| -> (String, String) {
            match rest.split_once('/') {
                Some((n, p)) => (n.to_string(), format!("/{p}")),
                None => (rest.to_string(), String::new()),
            }
        };
        let (transport, path) = if let Some(rest) = url.strip_prefix("ssh://") {
            let (netloc, path) = split(rest);
            (ssh(&netloc)?, path)
        } else if let Some(rest) = url.strip_prefix("qubes-ssh://") {
            let (netloc, path) = split(rest);
            let (vm, hostpart) = netloc
                .split_once(':')
                .filter(|(v, h)| !v.is_empty() && !h.is_empty())
                .ok_or_else(|| bad("write qubes-ssh://vm:user@host[:port]/path"))?;
            (
                Transport::Qubes {
                    vm: vm.into(),
                    ssh: Some(Box::new(ssh(hostpart)?)),
                },
                path,
            )
        } else if let Some(rest) = url.strip_prefix("qubes://") {
            let (vm, path) = split(rest);
            if vm.is_empty() || vm.starts_with('-') {
                return Err(bad("no VM name; write qubes://vm/path"));
            }
            (Transport::Qubes { vm, ssh: None }, path)
        } else {
            return Err(bad("not a remote URL"));
        };
        // No path: the login directory, as the original does.
        let root = if path.is_empty() {
            ".".to_string()
        } else {
            path
        };
        Ok(RemoteDest {
            url: url.to_string(),
            root,
            transport,
            shell: Mutex::new(None),
            upload: Mutex::new(None),
        })
    }

    /// A path under the archive root, quoted for the remote shell.
    fn path(&self, rel: &str) -> String {
        if rel.is_empty() {
            sh_quote(&self.root)
        } else {
            sh_quote(&format!("{}/{rel}", self.root.trim_end_matches('/')))
        }
    }

    fn unavailable(&self, detail: String) -> Error {
        Error::DestUnavailable {
            url: self.url.clone(),
            detail,
        }
    }

    fn start_shell(&self) -> Result<Shell> {
        let mut child = self
            .transport
            .command("exec sh -s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.unavailable(format!("cannot run {}: {e}", self.program())))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().extend_from_slice(&buf[..n]);
            }
        });
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
            let _ = sh.child.kill();
            let _ = sh.child.wait();
            return Err(self.link_error(&sh.stderr));
        }
        Ok(sh)
    }

    fn program(&self) -> &'static str {
        match self.transport {
            Transport::Ssh { .. } => "ssh",
            Transport::Qubes { .. } => "qvm-run",
        }
    }

    fn link_error(&self, stderr: &Mutex<Vec<u8>>) -> Error {
        // Give the reader thread a moment to collect the last words of ssh.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let text = String::from_utf8_lossy(&stderr.lock())
            .trim()
            .replace('\n', "; ");
        self.unavailable(if text.is_empty() {
            "the connection was lost".into()
        } else {
            format!("{} failed: {text}", self.program())
        })
    }

    /// Runs `cmd` in the remote shell. `read_out` consumes the command's stdout (exactly what
    /// it printed). Returns its result, or the remote's error text.
    fn request<T>(
        &self,
        cmd: &str,
        stdin_free: bool,
        read_out: impl FnOnce(&mut BufReader<ChildStdout>) -> std::io::Result<T>,
    ) -> Result<T> {
        self.finish_upload()?;
        let mut guard = self.shell.lock();
        if guard.is_none() {
            *guard = Some(self.start_shell()?);
        }
        let sh = guard.as_mut().expect("started above");
        let redirect = if stdin_free { " </dev/null" } else { "" };
        let text = format!(
            "{{ {cmd}\n}} 2>\"$E\"{redirect}; rc=$?; if [ $rc -eq 0 ]; then printf '\\n__WYNG_OK\\n'; \
             else printf '\\n__WYNG_ERR %d %d\\n' $rc $(wc -c <\"$E\"); cat \"$E\"; fi\n"
        );
        let result = (|| -> std::io::Result<std::result::Result<T, (i32, String)>> {
            sh.stdin.write_all(text.as_bytes())?;
            sh.stdin.flush()?;
            let value = read_out(&mut sh.stdout);
            let mut tail = [0u8; 1];
            let mut status = Vec::new();
            // The status line: "\n__WYNG_OK\n" or "\n__WYNG_ERR rc len\n" + stderr text.
            while !status.ends_with(b"\n") || status.len() < 2 {
                sh.stdout.read_exact(&mut tail)?;
                status.push(tail[0]);
                if status.len() > 64 {
                    break;
                }
            }
            if status == OK {
                return value.map(Ok);
            }
            let st = String::from_utf8_lossy(&status).into_owned();
            let Some(rest) = st.strip_prefix(ERR) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "remote output out of step",
                ));
            };
            let mut parts = rest.split_whitespace();
            let rc: i32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1);
            let len: usize = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            let mut msg = vec![0u8; len.min(1 << 20)];
            sh.stdout.read_exact(&mut msg)?;
            Ok(Err((
                rc,
                String::from_utf8_lossy(&msg).trim().replace('\n', "; "),
            )))
        })();
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((rc, msg))) => Err(self.remote_error(rc, &msg)),
            Err(e) => {
                // The link or the shell is gone (or out of step): never reuse it.
                let sh = guard.take().expect("present");
                let mut child = sh.child;
                let _ = child.kill();
                let _ = child.wait();
                let err = self.link_error(&sh.stderr);
                tracing::debug!("remote shell error: {e}");
                Err(err)
            }
        }
    }

    /// Runs a command whose stdout is (short) text: the remote sends its length first, so the
    /// text is read exactly, whatever it contains.
    fn run(&self, cmd: &str) -> Result<String> {
        let framed = format!("__o=$({cmd}); __rc=$?; printf '%d\\n' \"${{#__o}}\"; printf '%s' \"$__o\"; (exit $__rc)");
        self.request(&framed, true, |out| {
            let mut len = String::new();
            out.read_line(&mut len)?;
            let n: usize = len.trim().parse().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "remote output out of step")
            })?;
            let mut text = vec![0u8; n];
            out.read_exact(&mut text)?;
            Ok(String::from_utf8_lossy(&text).into_owned())
        })
    }

    fn remote_error(&self, rc: i32, msg: &str) -> Error {
        if msg.contains("No space left") {
            return Error::DestFull {
                path: self.url.clone(),
            };
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
        let Upload { mut child, tar } = up;
        let finished = tar.into_inner().map(drop);
        let mut stderr = Vec::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_end(&mut stderr);
        }
        let status = child.wait().map_err(|e| self.unavailable(e.to_string()))?;
        if !status.success() {
            let text = String::from_utf8_lossy(&stderr).trim().replace('\n', "; ");
            return Err(if text.contains("No space left") {
                Error::DestFull {
                    path: self.url.clone(),
                }
            } else {
                self.unavailable(format!(
                    "upload failed: {}",
                    if text.is_empty() {
                        "the connection was lost"
                    } else {
                        &text
                    }
                ))
            });
        }
        finished.map_err(|e| self.unavailable(format!("upload failed: {e}")))
    }

    fn start_upload(&self) -> Result<Upload> {
        let script = format!("export LC_ALL=C; cd {} && exec tar -x -f -", self.path(""));
        let mut child = self
            .transport
            .command(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.unavailable(format!("cannot run {}: {e}", self.program())))?;
        let stdin = child.stdin.take().expect("piped");
        Ok(Upload {
            child,
            tar: tar::Builder::new(stdin),
        })
    }

    /// Appends an entry to the chunk stream (started on first use). If the stream broke, the
    /// error is the remote's reason.
    fn append_upload(
        &self,
        append: impl FnOnce(&mut tar::Builder<ChildStdin>) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut up = self.upload.lock();
        if up.is_none() {
            *up = Some(self.start_upload()?);
        }
        if let Err(e) = append(&mut up.as_mut().expect("set above").tar) {
            drop(up);
            return Err(self
                .finish_upload()
                .err()
                .unwrap_or_else(|| self.unavailable(format!("upload failed: {e}"))));
        }
        Ok(())
    }

    /// Reads several files: one request for their sizes, one for their bytes.
    fn fetch(&self, rels: &[String], max: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; rels.len()];
        if rels.is_empty() {
            return Ok(out);
        }
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
        let unquoted = |r: &String| format!("{}/{r}", self.root.trim_end_matches('/'));
        let mut present = Vec::new();
        for (i, r) in rels.iter().enumerate() {
            if let Some(&s) = size_of.get(&unquoted(r)) {
                if s > max {
                    return Err(Error::corrupt(
                        r,
                        format!("file is {s} bytes, more than the {max} allowed"),
                    ));
                }
                present.push((i, s));
            }
        }
        if present.is_empty() {
            return Ok(out);
        }
        let list: Vec<String> = present.iter().map(|(i, _)| self.path(&rels[*i])).collect();
        let files = self.request(&format!("cat -- {}", list.join(" ")), true, |stdout| {
            let mut files = Vec::with_capacity(present.len());
            for &(i, s) in &present {
                let mut buf = vec![0u8; s as usize];
                stdout.read_exact(&mut buf)?;
                files.push((i, buf));
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
        if let Some(mut up) = self.upload.lock().take() {
            let _ = up.child.kill();
            let _ = up.child.wait();
        }
        if let Some(mut sh) = self.shell.lock().take() {
            // Closing stdin ends the remote shell (and releases its lock). The shared ssh
            // connection is left to expire (ControlPersist): a mount forked from this process
            // may still be using it.
            drop(sh.stdin);
            let _ = sh.child.wait();
        }
    }
}

impl Dest for RemoteDest {
    fn url(&self) -> &str {
        &self.url
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
        self.request(&cmd, false, |_| Ok(())).map(drop)
    }

    /// Chunk files stream through one `tar -x` (closed by the next other operation).
    fn write_chunk(&self, rel: &str, data: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        h.set_entry_type(tar::EntryType::Regular);
        self.append_upload(|tar| tar.append_data(&mut h, rel, data))
    }

    /// A hard-link member in the same tar stream: no round trip, and ordered after the file
    /// it links to (which is already on the remote, or earlier in the stream).
    fn link_chunk(&self, from: &str, to: &str) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Link);
        self.append_upload(|tar| tar.append_link(&mut h, to, from))
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

    fn free_space(&self) -> Result<Option<u64>> {
        // POSIX `df -P -k`: the last line's 4th field is the space available, in KiB.
        let out = self.run(&format!("df -P -k {} | tail -n 1", self.path("")))?;
        Ok(parse_df_available(&out))
    }

    fn lock(&self, exclusive: bool) -> Result<()> {
        let mode = if exclusive { "-x" } else { "-s" };
        let out = self.run(&format!(
            "if command -v flock >/dev/null; then exec 9<{r}; if flock -n {mode} 9; then echo locked; else echo busy; fi; else echo nolock; fi",
            r = self.path("")
        ))?;
        match out.trim() {
            "locked" => Ok(()),
            "nolock" => {
                tracing::warn!(
                    "{}: no flock on the remote side; the archive is not locked",
                    self.url
                );
                Ok(())
            }
            _ => Err(self.unavailable(
                "another wyng process is using this archive; wait for it to finish".into(),
            )),
        }
    }

    fn unlock(&self) {
        let _ = self.run("exec 9<&-");
    }

    fn detach_after_fork(&self) {
        // The processes are the parent's children: close our copies of their pipes (so they
        // still end when the parent closes its own) and forget them.
        if let Some(sh) = self.shell.lock().take() {
            drop(sh.stdin);
            drop(sh.stdout);
            std::mem::forget(sh.child);
        }
        if let Some(up) = self.upload.lock().take() {
            std::mem::forget(up.tar);
            std::mem::forget(up.child);
        }
    }
}

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
    fn urls() {
        let d = RemoteDest::new("ssh://backup@nas.local:2222/srv/b", None).unwrap();
        match &d.transport {
            Transport::Ssh { target, port, .. } => {
                assert_eq!(target, "backup@nas.local");
                assert_eq!(*port, Some(2222));
            }
            _ => panic!(),
        }
        assert_eq!(d.root, "/srv/b");
        assert_eq!(d.path("Vol_1/volinfo"), "'/srv/b/Vol_1/volinfo'");
        assert_eq!(RemoteDest::new("ssh://host", None).unwrap().root, ".");
        assert!(RemoteDest::new("ssh:///x", None).is_err());
        assert!(RemoteDest::new("ssh://-oProxyCommand=x/y", None).is_err());
        assert!(RemoteDest::new("qubes://", None).is_err());
        assert!(RemoteDest::new("qubes-ssh://vm/x", None).is_err());
        assert!(RemoteDest::new("qubes-ssh://vm:me@h:22/x", None).is_ok());
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
    }
}

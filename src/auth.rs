//! Unlocking encrypted archives: where the passphrase comes from, and the key cache that spares
//! later runs the passphrase and the two scrypt derivations (`--authmin`).
//!
//! The key cache is the Linux kernel's per-user keyring, not a daemon or a file: the two derived
//! keys (never the passphrase) are stored as a `user` key readable only by the same uid, the
//! kernel keeps them out of swap-visible files and deletes them when the timeout expires. Its
//! description names a hash of uid ‖ destination URL, as the original's agent does. See
//! docs/encryption.md for why this was chosen over the original's agent process.

use std::io::{BufRead, IsTerminal};

use blake2::digest::consts::U20;
use blake2::{Blake2b, Digest};
use linux_keyutils::{KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, Permission};
use zeroize::Zeroizing;

use crate::crypto::MasterKeys;
use crate::error::{Error, Result};

/// Minimum passphrase length when creating an archive (the original's rule).
pub(crate) const MIN_PASSPHRASE: usize = 10;

/// How a command obtains keys.
#[derive(Clone, Debug)]
pub struct Auth {
    /// Shell command printing the passphrase (`--passcmd`).
    pub passcmd: Option<String>,
    /// Minutes to keep derived keys for later runs: 0 = don't store, -1 = forget them now.
    pub authmin: i64,
    /// Use only keys already cached; never ask or read a passphrase (shell completion: a
    /// keystroke must never wait for a prompt).
    pub cached_only: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            passcmd: None,
            authmin: 5,
            cached_only: false,
        }
    }
}

pub use crate::crypto::WRONG_PASSPHRASE;

impl Auth {
    /// Reads the passphrase: from `--passcmd`, a hidden prompt on a terminal, or one line of
    /// standard input otherwise. `confirm` asks twice on a terminal (archive creation).
    pub fn passphrase(&self, confirm: bool) -> Result<Zeroizing<Vec<u8>>> {
        let p = if let Some(cmd) = &self.passcmd {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| Error::Passcmd(format!("could not run: {e}")))?;
            let mut p = Zeroizing::new(out.stdout);
            if !out.status.success() {
                return Err(Error::Passcmd(format!(
                    "failed ({}); check the command",
                    out.status
                )));
            }
            while p.last() == Some(&b'\n') {
                p.pop();
            }
            p
        } else if std::io::stdin().is_terminal() {
            let a = Zeroizing::new(
                rpassword::prompt_password("Enter passphrase: ")
                    .map_err(|e| Error::Auth(format!("cannot read the passphrase: {e}")))?,
            );
            if confirm {
                let b = Zeroizing::new(
                    rpassword::prompt_password("Re-enter passphrase: ")
                        .map_err(|e| Error::Auth(format!("cannot read the passphrase: {e}")))?,
                );
                if *a != *b {
                    return Err(Error::Usage(
                        "the passphrases do not match; nothing was created".into(),
                    ));
                }
            }
            Zeroizing::new(a.as_bytes().to_vec())
        } else {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                Error::Auth(format!(
                    "cannot read the passphrase from standard input: {e}"
                ))
            })?;
            let trimmed = line.strip_suffix('\n').unwrap_or(&line);
            let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
            Zeroizing::new(trimmed.as_bytes().to_vec())
        };
        if p.is_empty() || p.iter().all(|&b| b == 0) {
            return Err(Error::NoPassphrase);
        }
        Ok(p)
    }

    /// A passphrase given explicitly while cached keys exist: `--passcmd`, or a line waiting
    /// on a standard input that is not a terminal (a pipe or file with data; an empty or idle
    /// one gives none, so `< /dev/null` and unattended runs keep using the cache).
    fn given_passphrase(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        if self.cached_only {
            return Ok(None);
        }
        if self.passcmd.is_some() {
            return self.passphrase(false).map(Some);
        }
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Ok(None);
        }
        {
            use std::os::fd::AsFd;
            let mut fds = [nix::poll::PollFd::new(
                stdin.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            // A writer that hands the passphrase over does so as the command starts; a pipe
            // left idle (ssh without -n, a supervisor's stdin) must not hold the command up.
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u8)) {
                Ok(n) if n > 0 => {}
                _ => return Ok(None),
            }
            let ready = fds[0].revents().unwrap_or(nix::poll::PollFlags::empty());
            if !ready.contains(nix::poll::PollFlags::POLLIN) {
                return Ok(None);
            }
        }
        let mut line = Zeroizing::new(String::new());
        if stdin.lock().read_line(&mut line).is_err() {
            return Ok(None);
        }
        let t = line.trim_end_matches(['\n', '\r']);
        Ok((!t.is_empty()).then(|| Zeroizing::new(t.as_bytes().to_vec())))
    }

    /// Keys for an existing archive. `opens` says whether keys open this archive (it tries the
    /// root with them), so cached keys of an archive re-created at the same URL are not used;
    /// `derive` makes keys from a passphrase (and says why they are wrong if they are).
    ///
    /// Cached keys are used without a passphrase. If one is given anyway (`--passcmd`, or
    /// piped on standard input), it must be the archive's: it is checked against the cache
    /// entry's verifier (no second scrypt), and a wrong one fails as a wrong passphrase would
    /// without the cache (exit 3).
    pub fn unlock(
        &self,
        url: &str,
        opens: &dyn Fn(&MasterKeys) -> bool,
        derive: &dyn Fn(&[u8]) -> Result<MasterKeys>,
    ) -> Result<MasterKeys> {
        let id = cache_id(url);
        if let Some(entry) = load_entry(&id).filter(|e| opens(&e.keys)) {
            tracing::debug!("using keys cached in the kernel keyring");
            let verifier = match self.given_passphrase()? {
                None => entry.verifier,
                Some(pass) => {
                    let given = verifier(&entry.keys, &pass);
                    let matches = match &entry.verifier {
                        Some(v) => subtle::ConstantTimeEq::ct_eq(&v[..], &given[..]).into(),
                        // An entry without a verifier: the slow way, once.
                        None => derive(&pass).is_ok_and(|k| *k.meta == *entry.keys.meta),
                    };
                    if !matches {
                        return Err(Error::Auth(format!(
                            "{WRONG_PASSPHRASE} (the passphrase given is checked even while keys are cached)"
                        )));
                    }
                    Some(given)
                }
            };
            self.store(&id, &entry.keys, verifier);
            return Ok(entry.keys);
        }
        if self.cached_only {
            return Err(Error::Auth("no keys cached for this archive".into()));
        }
        let pass = self.passphrase(false)?;
        let keys = derive(&pass)?;
        self.remember(url, &keys, &pass);
        Ok(keys)
    }

    /// Stores (or, with `authmin = -1`, forgets) keys per `--authmin`, with a verifier of the
    /// passphrase they came from.
    pub(crate) fn remember(&self, url: &str, keys: &MasterKeys, pass: &[u8]) {
        self.store(&cache_id(url), keys, Some(verifier(keys, pass)));
    }

    fn store(&self, id: &str, keys: &MasterKeys, verifier: Option<Verifier>) {
        match self.authmin {
            0 => {}
            m if m < 0 => forget_keys(id),
            m => {
                let entry = Entry {
                    keys: MasterKeys {
                        data: keys.data.clone(),
                        meta: keys.meta.clone(),
                    },
                    verifier,
                };
                if let Err(e) = store_entry(id, &entry, (m.min(60 * 24) * 60) as usize) {
                    tracing::warn!("could not keep the keys in the kernel keyring ({e}); later runs will ask again");
                }
            }
        }
    }
}

/// A check value of a passphrase, kept beside the keys it gave. It is keyed by those keys, so
/// it tells nothing to anyone who could not already read the keys themselves (the same uid).
type Verifier = Zeroizing<[u8; 32]>;

fn verifier(keys: &MasterKeys, pass: &[u8]) -> Verifier {
    use blake2::digest::consts::U32;
    let mut h = Blake2b::<U32>::new();
    h.update(b"wyng passphrase verifier\0");
    h.update(&keys.meta[..]);
    h.update(&keys.data[..]);
    h.update(pass);
    Zeroizing::new(h.finalize().into())
}

/// A key cache entry: the two keys, and the verifier of the passphrase they came from.
struct Entry {
    keys: MasterKeys,
    verifier: Option<Verifier>,
}

fn cache_id(url: &str) -> String {
    let uid = nix::unistd::getuid();
    let h: String = Blake2b::<U20>::digest(format!("{uid}{url}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("wyng-keys:{uid}:{h}")
}

fn user_keyring() -> Option<KeyRing> {
    KeyRing::from_special_id(KeyRingIdentifier::User, false).ok()
}

fn load_entry(id: &str) -> Option<Entry> {
    let key = user_keyring()?.search(id).ok()?;
    let mut buf = Zeroizing::new([0u8; 96]);
    let n = key.read(&mut *buf).ok()?;
    if n != 64 && n != 96 {
        return None;
    }
    let mut data = Zeroizing::new([0u8; 32]);
    let mut meta = Zeroizing::new([0u8; 32]);
    data.copy_from_slice(&buf[..32]);
    meta.copy_from_slice(&buf[32..64]);
    let verifier = (n == 96).then(|| {
        let mut v = Zeroizing::new([0u8; 32]);
        v.copy_from_slice(&buf[64..]);
        v
    });
    Some(Entry {
        keys: MasterKeys { data, meta },
        verifier,
    })
}

fn store_entry(id: &str, e: &Entry, seconds: usize) -> std::result::Result<(), String> {
    let ring = user_keyring().ok_or("no user keyring")?;
    let mut payload = Zeroizing::new(Vec::with_capacity(96));
    payload.extend_from_slice(&e.keys.data[..]);
    payload.extend_from_slice(&e.keys.meta[..]);
    if let Some(v) = &e.verifier {
        payload.extend_from_slice(&v[..]);
    }
    let key = ring
        .add_key(id, &payload[..])
        .map_err(|e| format!("{e:?}"))?;
    // Only this uid may find and read it; nobody else may even see it.
    let all = Permission::VIEW
        | Permission::READ
        | Permission::WRITE
        | Permission::SEARCH
        | Permission::LINK
        | Permission::SETATTR;
    let perms = KeyPermissionsBuilder::builder()
        .posessor(all)
        .user(Permission::VIEW | Permission::READ | Permission::SEARCH)
        .build();
    key.set_perms(perms).map_err(|e| format!("{e:?}"))?;
    key.set_timeout(seconds).map_err(|e| format!("{e:?}"))
}

fn forget_keys(id: &str) {
    if let Some(key) = user_keyring().and_then(|r| r.search(id).ok()) {
        let _ = key.invalidate();
    }
}

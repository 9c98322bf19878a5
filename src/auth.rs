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

use crate::crypto::{derive_master, CipherMode, MasterKeys, SaltFile};
use crate::error::{Error, Result};

/// Minimum passphrase length when creating an archive (the original's rule).
pub const MIN_PASSPHRASE: usize = 10;

/// How a command obtains keys.
#[derive(Clone, Debug)]
pub struct Auth {
    /// Shell command printing the passphrase (`--passcmd`).
    pub passcmd: Option<String>,
    /// Minutes to keep derived keys for later runs: 0 = don't store, -1 = forget them now.
    pub authmin: i64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            passcmd: None,
            authmin: 5,
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
                .map_err(|e| Error::Usage(format!("--passcmd could not run: {e}")))?;
            let mut p = Zeroizing::new(out.stdout);
            if !out.status.success() {
                return Err(Error::Usage(format!(
                    "--passcmd failed ({}); check the command",
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
            return Err(Error::Auth(
                "no passphrase given: type it at the prompt, pipe it on standard input, or use --passcmd".into(),
            ));
        }
        Ok(p)
    }

    /// Keys for an existing archive. `opens` says whether keys open this archive (it tries the
    /// root with them), so cached keys of an archive re-created at the same URL are not used.
    pub fn unlock(
        &self,
        url: &str,
        salt: &SaltFile,
        mode: CipherMode,
        opens: &dyn Fn(&MasterKeys) -> bool,
    ) -> Result<MasterKeys> {
        let id = cache_id(url);
        let cached = load_keys(&id).filter(|k| opens(k));
        let keys = match cached {
            Some(k) => {
                tracing::debug!("using keys cached in the kernel keyring");
                k
            }
            None => {
                let pass = self.passphrase(false)?;
                let k = derive_master(&pass, salt, mode);
                if !opens(&k) {
                    return Err(Error::Auth(WRONG_PASSPHRASE.into()));
                }
                k
            }
        };
        self.remember(url, &keys);
        Ok(keys)
    }

    /// Stores (or, with `authmin = -1`, forgets) keys per `--authmin`.
    pub fn remember(&self, url: &str, keys: &MasterKeys) {
        let id = cache_id(url);
        match self.authmin {
            0 => {}
            m if m < 0 => forget_keys(&id),
            m => {
                if let Err(e) = store_keys(&id, keys, (m.min(60 * 24) * 60) as usize) {
                    tracing::warn!("could not keep the keys in the kernel keyring ({e}); later runs will ask again");
                }
            }
        }
    }
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

fn load_keys(id: &str) -> Option<MasterKeys> {
    let key = user_keyring()?.search(id).ok()?;
    let mut buf = Zeroizing::new([0u8; 64]);
    if key.read(&mut *buf).ok()? != 64 {
        return None;
    }
    let mut data = Zeroizing::new([0u8; 32]);
    let mut meta = Zeroizing::new([0u8; 32]);
    data.copy_from_slice(&buf[..32]);
    meta.copy_from_slice(&buf[32..]);
    Some(MasterKeys { data, meta })
}

fn store_keys(id: &str, keys: &MasterKeys, seconds: usize) -> std::result::Result<(), String> {
    let ring = user_keyring().ok_or("no user keyring")?;
    let mut payload = Zeroizing::new([0u8; 64]);
    payload[..32].copy_from_slice(&keys.data[..]);
    payload[32..].copy_from_slice(&keys.meta[..]);
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

//! Cryptography of the format (§5, §6): hash functions, key derivation, the per-mode ciphers and
//! the salt file.
//!
//! Invariants:
//! * Hashes are always over the *compressed* plaintext. `H_meta` is unkeyed BLAKE2b-256 (digest
//!   size parameter 32); `H_data` is HMAC-SHA256 with `mhashkey` in encrypted archives, so a chunk
//!   is authenticated by the (authenticated) manifest that names it.
//! * Metadata objects are sealed with XChaCha20-Poly1305, empty AAD, stored as
//!   nonce ‖ tag ‖ ciphertext; data chunks with XChaCha20 as nonce ‖ ciphertext.
//! * Nonces: ct modes put (time, 10 random bytes, counter) in the nonce; msr and dgr modes derive
//!   it with HMAC-SHA256 under a nonce subkey from 24 random bytes and the plaintext (msr) or the
//!   chunk's raw keyed hash (dgr). Random bytes come from the OS.
//! * Counters only go up: each is reserved ahead in local storage ([`Counter`]) before the
//!   values are used, and every archive.ini save records them.
//! * Keys live in [`Zeroizing`] buffers and are never printed (no `Debug` shows them).

use std::sync::atomic::{AtomicU64, Ordering};

use blake2::digest::consts::{U32, U64};
use blake2::{Blake2b, Digest};
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::XChaCha20;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

use std::io::{Read, Write};

use crate::spool::Spool;

use crate::error::{Error, Result};
use crate::format::Hash32;

/// What a failure to open the root with the keys at hand means for the user.
pub const WRONG_PASSPHRASE: &str = "wrong passphrase or damaged archive.ini";

/// A 32-byte key, wiped on drop.
pub(crate) type Key32 = Zeroizing<[u8; 32]>;
/// A 64-byte subkey, wiped on drop.
pub(crate) type Key64 = Zeroizing<[u8; 64]>;

#[derive(Clone)]
pub enum HashFn {
    Blake2b256,
    Sha256,
    HmacSha256(Key64),
}

impl std::fmt::Debug for HashFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HashFn::Blake2b256 => "Blake2b256",
            HashFn::Sha256 => "Sha256",
            HashFn::HmacSha256(_) => "HmacSha256(<key>)",
        })
    }
}

impl HashFn {
    /// The plain hash named by an archive's `hashtype` (unencrypted and legacy archives).
    pub(crate) fn for_hashtype(hashtype: &str) -> Result<HashFn> {
        match hashtype {
            "blake2b" => Ok(HashFn::Blake2b256),
            "sha256" => Ok(HashFn::Sha256),
            other => Err(Error::Unsupported(format!(
                "hashtype '{other}' without a cipher"
            ))),
        }
    }

    /// A hasher for data that arrives in pieces.
    pub(crate) fn hasher(&self) -> Hasher {
        match self {
            HashFn::Blake2b256 => Hasher::Blake2b(Blake2b::<U32>::new()),
            HashFn::Sha256 => Hasher::Sha256(Sha256::new()),
            HashFn::HmacSha256(key) => Hasher::Hmac(
                <Hmac<Sha256> as Mac>::new_from_slice(&key[..]).expect("HMAC takes any key length"),
            ),
        }
    }

    pub fn hash(&self, data: &[u8]) -> Hash32 {
        match self {
            HashFn::Blake2b256 => Hash32(Blake2b::<U32>::digest(data).into()),
            HashFn::Sha256 => Hash32(Sha256::digest(data).into()),
            HashFn::HmacSha256(key) => Hash32(hmac_sha256(&key[..], &[data])),
        }
    }
}

/// [`HashFn::hash`] in pieces; also a [`Write`] sink.
pub(crate) enum Hasher {
    Blake2b(Blake2b<U32>),
    Sha256(Sha256),
    Hmac(Hmac<Sha256>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Blake2b(h) => Digest::update(h, data),
            Hasher::Sha256(h) => Digest::update(h, data),
            Hasher::Hmac(h) => Mac::update(h, data),
        }
    }

    pub fn finish(self) -> Hash32 {
        Hash32(match self {
            Hasher::Blake2b(h) => h.finalize().into(),
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Hmac(h) => h.finalize().into_bytes().into(),
        })
    }
}

impl Write for Hasher {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Cipher modes (the `ci` code of §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherMode {
    /// `30`: 0.8 betas; counter nonces, no subkeys, salts truncated to 32 bytes. Read support.
    Legacy30,
    /// `32`: xchacha20-ct.
    Ct,
    /// `34`: xchacha20-msr.
    Msr,
    /// `35`: xchacha20-dgr, the default.
    Dgr,
}

impl CipherMode {
    pub(crate) fn from_ci(ci: &str) -> Option<CipherMode> {
        match ci {
            "30" => Some(CipherMode::Legacy30),
            "32" => Some(CipherMode::Ct),
            "34" => Some(CipherMode::Msr),
            "35" => Some(CipherMode::Dgr),
            _ => None,
        }
    }

    pub fn ci(self) -> &'static str {
        match self {
            CipherMode::Legacy30 => "30",
            CipherMode::Ct => "32",
            CipherMode::Msr => "34",
            CipherMode::Dgr => "35",
        }
    }

    /// `(data cipher, metadata cipher)` as `list --verbose` names them.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            CipherMode::Legacy30 => ("xchacha20", "xchacha20-poly1305"),
            CipherMode::Ct => ("xchacha20-ct", "xchacha20-poly1305-ct"),
            CipherMode::Msr => ("xchacha20-msr", "xchacha20-poly1305-msr"),
            CipherMode::Dgr => ("xchacha20-dgr", "xchacha20-poly1305-msr"),
        }
    }

    fn counter_nonces(self) -> bool {
        matches!(self, CipherMode::Legacy30 | CipherMode::Ct)
    }
}

// ---------------------------------------------------------------------------------------------
// archive.salt (§6.2)

pub(crate) const SALT_FILE_LEN: usize = 424;
const SLOT: usize = 80;
const CHECK_AT: usize = 320;

/// The salts and counters file.
#[derive(Clone)]
pub(crate) struct SaltFile {
    /// Slot counters: [data, metadata].
    pub counters: [u64; 2],
    pub salts: [[u8; 64]; 4],
    /// nonce ‖ tag ‖ sealed BLAKE2b-512 of the four salts.
    pub check: [u8; 104],
}

impl SaltFile {
    pub fn random() -> SaltFile {
        let mut salts = [[0u8; 64]; 4];
        for s in &mut salts {
            getrandom::getrandom(s).expect("OS random source");
        }
        SaltFile {
            counters: [0, 0],
            salts,
            check: [0; 104],
        }
    }

    pub fn parse(b: &[u8]) -> Result<SaltFile> {
        let bad = |what: &str| Error::corrupt("archive.salt", what.to_string());
        if b.len() != SALT_FILE_LEN {
            return Err(bad("wrong size"));
        }
        let mut f = SaltFile {
            counters: [0, 0],
            salts: [[0; 64]; 4],
            check: [0; 104],
        };
        for n in 0..4 {
            let slot = &b[n * SLOT..(n + 1) * SLOT];
            if slot[..2].iter().any(|&x| x != 0) && n < 2 {
                return Err(bad("counter out of range"));
            }
            // The bytes the format leaves zero (slots 2 and 3 have no counter): not covered by
            // the check block, so checked here, or damage to them would go unnoticed.
            if (n >= 2 && slot[..10].iter().any(|&x| x != 0)) || slot[74..].iter().any(|&x| x != 0)
            {
                return Err(bad("unused bytes are not zero"));
            }
            if n < 2 {
                f.counters[n] = u64::from_be_bytes(slot[2..10].try_into().expect("8 bytes"));
            }
            f.salts[n].copy_from_slice(&slot[10..74]);
        }
        f.check.copy_from_slice(&b[CHECK_AT..]);
        Ok(f)
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SALT_FILE_LEN];
        for n in 0..4 {
            let slot = &mut b[n * SLOT..(n + 1) * SLOT];
            if n < 2 {
                slot[2..10].copy_from_slice(&self.counters[n].to_be_bytes());
            }
            slot[10..74].copy_from_slice(&self.salts[n]);
        }
        b[CHECK_AT..].copy_from_slice(&self.check);
        b
    }

    /// `salt.bak`: every byte inverted.
    pub(crate) fn inverted(bytes: &[u8]) -> Vec<u8> {
        bytes.iter().map(|b| !b).collect()
    }

    fn salts_digest(&self) -> [u8; 64] {
        let mut h = Blake2b::<U64>::new();
        for s in &self.salts {
            h.update(s);
        }
        h.finalize().into()
    }

    /// Whether two salt files are of the same archive (counters aside).
    pub(crate) fn same_salts(&self, other: &SaltFile) -> bool {
        self.salts == other.salts
    }
}

// ---------------------------------------------------------------------------------------------
// Keys (§6.3, §6.4)

/// The two scrypt-derived master keys.
pub struct MasterKeys {
    pub data: Key32,
    pub meta: Key32,
}

pub(crate) const SCRYPT_LOG_N: u8 = 19;

/// Derives the data and metadata keys from a passphrase: two scrypt runs, the one expensive
/// step of opening an encrypted archive (done once per command, or once per `--authmin`).
/// One after the other: each holds 512 MiB (128·r·N bytes at N = 2^19, r = 8), and Qubes
/// dom0, where the original's users run it, often has 2-4 GiB in all; the original peaks
/// about there too. Both at once would halve the wait and double the peak.
pub(crate) fn derive_master(passphrase: &[u8], salt: &SaltFile, mode: CipherMode) -> MasterKeys {
    derive_master_with(passphrase, salt, mode, SCRYPT_LOG_N)
}

pub(crate) fn derive_master_with(
    passphrase: &[u8],
    salt: &SaltFile,
    mode: CipherMode,
    log_n: u8,
) -> MasterKeys {
    let salt_len = if mode == CipherMode::Legacy30 { 32 } else { 64 };
    let params = scrypt::Params::new(log_n, 8, 1, 32).expect("fixed scrypt parameters");
    let derive = |s: &[u8]| {
        let mut k = Zeroizing::new([0u8; 32]);
        scrypt::scrypt(passphrase, &s[..salt_len], &params, &mut k[..]).expect("32-byte output");
        k
    };
    let data = derive(&salt.salts[0]);
    let meta = derive(&salt.salts[1]);
    MasterKeys { data, meta }
}

/// HKDF-SHA512 subkey (§6.4): 64 bytes from output block `part` (0 or 1) of a 128-byte expansion.
fn subkey(master: &[u8; 32], salt: &[u8; 64], info: &[u8], part: usize) -> Key64 {
    let hk = hkdf::Hkdf::<Sha512>::new(Some(salt), master);
    let mut okm = Zeroizing::new([0u8; 128]);
    hk.expand(info, &mut okm[..])
        .expect("128 bytes is a valid HKDF-SHA512 length");
    let mut k = Zeroizing::new([0u8; 64]);
    k.copy_from_slice(&okm[part * 64..part * 64 + 64]);
    k
}

// ---------------------------------------------------------------------------------------------
// Counters (§6.6)

/// A message counter that never goes down, even across a crash: values are used only after a
/// limit above them has been persisted (`persist`), a block at a time.
pub(crate) struct Counter {
    value: AtomicU64,
    limit: AtomicU64,
    reserved: std::sync::atomic::AtomicBool,
    persist: Mutex<Option<PersistFn>>,
}

/// Persists a counter limit (in local state; its error names where).
pub(crate) type PersistFn = Box<dyn FnMut(u64) -> Result<()> + Send>;

/// How far ahead counters are reserved in local storage.
pub(crate) const COUNTER_RESERVE: u64 = 4096;

impl Counter {
    /// A counter at `value` that hands out nothing until [`reserve_with`](Self::reserve_with)
    /// has persisted a limit: a cipher whose counters were never reserved cannot encrypt
    /// (fails closed), so no code path can use a value that a crash could make us reuse.
    pub fn new(value: u64) -> Counter {
        Counter {
            value: AtomicU64::new(value),
            limit: AtomicU64::new(value),
            reserved: std::sync::atomic::AtomicBool::new(false),
            persist: Mutex::new(None),
        }
    }

    /// From now on, values above the persisted limit are reserved through `persist` first.
    pub(crate) fn reserve_with(&self, mut persist: PersistFn) -> Result<()> {
        let limit = self.value.load(Ordering::SeqCst) + COUNTER_RESERVE;
        persist(limit)?;
        self.limit.store(limit, Ordering::SeqCst);
        *self.persist.lock() = Some(persist);
        self.reserved.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    /// Raises the counter to at least `v` (counters never go down).
    pub(crate) fn raise_to(&self, v: u64) {
        self.value.fetch_max(v, Ordering::SeqCst);
    }

    /// The persisted limit (what must be recorded as the counter's floor).
    pub(crate) fn high_water(&self) -> u64 {
        self.limit.load(Ordering::SeqCst).max(self.get())
    }

    /// Whether values can be handed out (a limit has been reserved).
    pub(crate) fn is_reserved(&self) -> bool {
        self.reserved.load(Ordering::SeqCst)
    }

    /// Advances by `step` and returns the new value.
    fn advance(&self, step: u64) -> Result<u64> {
        if !self.is_reserved() {
            return Err(Error::CountersNotReserved);
        }
        let v = self.value.fetch_add(step, Ordering::SeqCst) + step;
        if v > self.limit.load(Ordering::SeqCst) {
            let mut p = self.persist.lock();
            if v > self.limit.load(Ordering::SeqCst) {
                let new = v + COUNTER_RESERVE;
                let f = p.as_mut().ok_or(Error::CountersNotReserved)?;
                f(new)?;
                self.limit.store(new, Ordering::SeqCst);
            }
        }
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------------
// The archive cipher (§6.5, §6.7)

pub(crate) const META_OVERHEAD: usize = 40;
pub(crate) const DATA_OVERHEAD: usize = 24;

pub(crate) struct ArchiveCipher {
    pub mode: CipherMode,
    data_key: Key32,
    meta_key: Key32,
    data_noncekey: Option<Key64>,
    meta_noncekey: Option<Key64>,
    pub data_counter: Counter,
    pub meta_counter: Counter,
}

impl ArchiveCipher {
    /// Builds the cipher and the keyed data hash from the master keys.
    pub fn new(
        mode: CipherMode,
        keys: &MasterKeys,
        salt: &SaltFile,
        counters: [u64; 2],
    ) -> (ArchiveCipher, HashFn) {
        let msr = !matches!(mode, CipherMode::Legacy30 | CipherMode::Ct);
        let data_noncekey = msr.then(|| subkey(&keys.data, &salt.salts[2], b"Wyng_Nonces0", 0));
        let meta_noncekey = msr.then(|| subkey(&keys.meta, &salt.salts[2], b"Wyng_Nonces1", 0));
        let data_hash = match mode {
            CipherMode::Legacy30 => HashFn::Blake2b256,
            _ => HashFn::HmacSha256(subkey(
                &keys.data,
                &salt.salts[3],
                b"Wyng-Manifest-Hash0",
                1,
            )),
        };
        let c = ArchiveCipher {
            mode,
            data_key: keys.data.clone(),
            meta_key: keys.meta.clone(),
            data_noncekey,
            meta_noncekey,
            data_counter: Counter::new(counters[0]),
            meta_counter: Counter::new(counters[1]),
        };
        (c, data_hash)
    }

    fn counter_nonce(counter: u64) -> [u8; 24] {
        let mut n = [0u8; 24];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        n[..4].copy_from_slice(&(now.saturating_sub(1_577_880_000) as u32).to_be_bytes());
        getrandom::getrandom(&mut n[4..14]).expect("OS random source");
        n[16..].copy_from_slice(&counter.to_be_bytes());
        n
    }

    fn hmac_nonce(key: &[u8], msg: &[u8]) -> [u8; 24] {
        let mut rnd = [0u8; 24];
        getrandom::getrandom(&mut rnd).expect("OS random source");
        let mac = hmac_sha256(key, &[&rnd, msg]);
        let mut n = [0u8; 24];
        n.copy_from_slice(&mac[..24]);
        n
    }

    /// Seals a metadata object: nonce ‖ tag ‖ ciphertext.
    pub(crate) fn encrypt_meta(&self, pt: &[u8]) -> Result<Vec<u8>> {
        let nonce = match &self.meta_noncekey {
            None => Self::counter_nonce(self.meta_counter.advance(1)?),
            Some(k) => {
                self.meta_counter.advance(pt.len() as u64 / 16384)?;
                Self::hmac_nonce(&k[..], pt)
            }
        };
        let mut out = Vec::with_capacity(pt.len() + META_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(pt);
        let aead = XChaCha20Poly1305::new((&*self.meta_key).into());
        let tag = aead
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), b"", &mut out[META_OVERHEAD..])
            .map_err(|_| {
                Error::io(
                    "metadata encryption",
                    std::io::Error::other("object too large to encrypt"),
                )
            })?;
        out[24..40].copy_from_slice(&tag);
        Ok(out)
    }

    /// Opens a sealed metadata object; `None` if it does not authenticate.
    pub(crate) fn decrypt_meta(&self, file: &[u8]) -> Option<Vec<u8>> {
        if file.len() <= META_OVERHEAD {
            return None;
        }
        let mut pt = file[META_OVERHEAD..].to_vec();
        let aead = XChaCha20Poly1305::new((&*self.meta_key).into());
        aead.decrypt_in_place_detached(
            XNonce::from_slice(&file[..24]),
            b"",
            &mut pt,
            Tag::from_slice(&file[24..40]),
        )
        .ok()?;
        Some(pt)
    }

    /// Encrypts a compressed chunk whose keyed hash is `hash`: nonce ‖ ciphertext.
    pub(crate) fn encrypt_data(&self, pt: &[u8], hash: &Hash32) -> Result<Vec<u8>> {
        let count = self.data_counter.advance(1)?;
        let nonce = match (&self.data_noncekey, self.mode) {
            (Some(k), CipherMode::Dgr) => Self::hmac_nonce(&k[..], &hash.0),
            (Some(k), _) => Self::hmac_nonce(&k[..], pt),
            (None, _) => Self::counter_nonce(count),
        };
        debug_assert!(self.mode.counter_nonces() == self.data_noncekey.is_none());
        let mut out = Vec::with_capacity(pt.len() + DATA_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(pt);
        XChaCha20::new((&*self.data_key).into(), (&nonce).into())
            .apply_keystream(&mut out[DATA_OVERHEAD..]);
        Ok(out)
    }

    /// Decrypts a chunk file (not authenticated here: the caller checks the keyed hash).
    pub(crate) fn decrypt_data(&self, file: &[u8]) -> Option<Vec<u8>> {
        if file.len() <= DATA_OVERHEAD {
            return None;
        }
        let mut pt = file[DATA_OVERHEAD..].to_vec();
        let nonce: [u8; 24] = file[..24].try_into().expect("24 bytes");
        XChaCha20::new((&*self.data_key).into(), (&nonce).into()).apply_keystream(&mut pt);
        Some(pt)
    }

    /// [`encrypt_meta`](Self::encrypt_meta) for an object too large to hold in memory: the
    /// same bytes (nonce ‖ tag ‖ ciphertext), written to `out` in two passes over `pt` (an msr
    /// nonce depends on the whole plaintext; the tag is filled in at the end).
    pub(crate) fn encrypt_meta_spool(&self, pt: &Spool, out: &mut Spool) -> Result<()> {
        let io = |e: std::io::Error| Error::io("metadata spool", e);
        let nonce = match &self.meta_noncekey {
            None => Self::counter_nonce(self.meta_counter.advance(1)?),
            Some(k) => {
                self.meta_counter.advance(pt.len() / 16384)?;
                let mut rnd = [0u8; 24];
                getrandom::getrandom(&mut rnd).expect("OS random source");
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&k[..]).expect("any key");
                m.update(&rnd);
                copy_blocks(&mut pt.reader().map_err(io)?, |b| m.update(b)).map_err(io)?;
                let mac: [u8; 32] = m.finalize().into_bytes().into();
                let mut n = [0u8; 24];
                n.copy_from_slice(&mac[..24]);
                n
            }
        };
        out.write_all(&nonce).map_err(io)?;
        out.write_all(&[0u8; 16]).map_err(io)?;
        let tag = aead_stream(
            &self.meta_key,
            &nonce,
            &mut pt.reader().map_err(io)?,
            true,
            out,
        )
        .map_err(io)?;
        out.write_at(24, &tag).map_err(io)
    }

    /// [`decrypt_meta`](Self::decrypt_meta) for a large object: the plaintext goes to `out`,
    /// and is only to be used if this returns true (the tag is checked at the end).
    pub(crate) fn decrypt_meta_spool(&self, file: &Spool, out: &mut Spool) -> Result<bool> {
        let io = |e: std::io::Error| Error::io("metadata spool", e);
        if file.len() <= META_OVERHEAD as u64 {
            return Ok(false);
        }
        let mut r = file.reader().map_err(io)?;
        let mut head = [0u8; META_OVERHEAD];
        r.read_exact(&mut head).map_err(io)?;
        let nonce: [u8; 24] = head[..24].try_into().expect("24 bytes");
        let tag = aead_stream(&self.meta_key, &nonce, &mut r, false, out).map_err(io)?;
        Ok(subtle::ConstantTimeEq::ct_eq(&tag[..], &head[24..40]).into())
    }

    /// Seals the salt file's check block.
    pub(crate) fn seal_check(&self, salt: &mut SaltFile) -> Result<()> {
        let sealed = self.encrypt_meta(&salt.salts_digest())?;
        salt.check.copy_from_slice(&sealed);
        Ok(())
    }

    /// Verifies the salt file's check block with these keys.
    pub(crate) fn verify_check(&self, salt: &SaltFile) -> bool {
        self.decrypt_meta(&salt.check)
            .is_some_and(|d| d[..] == salt.salts_digest()[..])
    }
}

/// Reads `r` to its end in 64 KiB blocks (the last may be shorter), handing each to `f`.
fn copy_blocks(r: &mut dyn Read, mut f: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = fill(r, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}

/// Fills `buf` from `r` unless the input ends first; returns the bytes read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// XChaCha20-Poly1305 with empty AAD over a stream (the AEAD construction of RFC 8439 that
/// the `chacha20poly1305` crate implements for whole buffers, which is all it offers): the
/// Poly1305 key is the first 32 bytes of keystream block 0, the data is XORed from block 1,
/// and the tag covers the ciphertext padded to 16 bytes and the two lengths. Writes the
/// output (ciphertext when `encrypt`, plaintext otherwise) to `out`; returns the tag.
fn aead_stream(
    key: &Key32,
    nonce: &[u8; 24],
    input: &mut dyn Read,
    encrypt: bool,
    out: &mut dyn Write,
) -> std::io::Result<[u8; 16]> {
    use chacha20::cipher::StreamCipherSeek;
    use poly1305::universal_hash::{KeyInit as _, UniversalHash};
    let mut c = XChaCha20::new((&**key).into(), nonce.into());
    let mut mac_key = [0u8; 32];
    c.apply_keystream(&mut mac_key);
    c.seek(64u64);
    let mut mac = poly1305::Poly1305::new((&mac_key).into());
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = fill(input, &mut buf)?;
        if n == 0 {
            break;
        }
        let b = &mut buf[..n];
        if encrypt {
            c.apply_keystream(b);
            mac.update_padded(b);
        } else {
            mac.update_padded(b);
            c.apply_keystream(b);
        }
        out.write_all(b)?;
        len += n as u64;
        if n < buf.len() {
            break;
        }
    }
    let mut lengths = poly1305::Block::default();
    lengths[8..].copy_from_slice(&len.to_le_bytes());
    mac.update(&[lengths]);
    Ok(mac.finalize().into())
}

#[cfg(test)]
mod tests {

    #[test]
    fn streamed_aead_equals_the_crate() {
        for len in [0usize, 1, 15, 16, 17, 65535, 65536, 65537, 300_001] {
            let key: Key32 = Zeroizing::new([7u8; 32]);
            let nonce = [9u8; 24];
            let pt: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let mut ct = Vec::new();
            let tag = aead_stream(&key, &nonce, &mut &pt[..], true, &mut ct).unwrap();
            let mut want = pt.clone();
            let aead = XChaCha20Poly1305::new((&*key).into());
            let want_tag = aead
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), b"", &mut want)
                .unwrap();
            assert_eq!(ct, want, "{len}");
            assert_eq!(&tag[..], &want_tag[..], "{len}");
            let mut back = Vec::new();
            let tag2 = aead_stream(&key, &nonce, &mut &ct[..], false, &mut back).unwrap();
            assert_eq!(back, pt);
            assert_eq!(tag, tag2);
        }
    }
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn test_salt() -> SaltFile {
        let mut s = SaltFile::random();
        for (n, salt) in s.salts.iter_mut().enumerate() {
            for (i, b) in salt.iter_mut().enumerate() {
                *b = (n * 64 + i) as u8;
            }
        }
        s
    }

    #[test]
    fn known_answers() {
        // Format notes §17.3.
        assert_eq!(
            HashFn::Blake2b256.hash(b"abc").to_b64(),
            "vd2BPGNCOXIxce8_7phXm5SWTjuxyz5CcmLIwGjVIxk="
        );
        let salt = test_salt();
        let k = derive_master(b"correct-horse-battery", &salt, CipherMode::Dgr);
        assert_eq!(
            hex(&k.data[..]),
            "41ce08dab04d4dc068df1212e18ecd3ae4388cb4b430b614392ae5156b0e4a6e"
        );
        let nk = subkey(&k.data, &salt.salts[1], b"Wyng_Nonces0", 0);
        assert!(hex(&nk[..])
            .starts_with("beb512488f25f8804837d663c86064c1bc1e8af94ddfcf54aa0ef76e67c06e24"));
        let mhk = subkey(&k.data, &salt.salts[2], b"Wyng-Manifest-Hash0", 1);
        assert!(hex(&mhk[..])
            .starts_with("f3132c63a8ae60c9d320ad76d698e0af12e4c750cf1e5f743e4c5d43a45ac747"));
        assert_eq!(
            HashFn::HmacSha256(mhk).hash(b"abc").to_b64(),
            "GqG22kU0MHc0OAJhv8Rt1o6DdifulnjehMk7i6wNN5g="
        );
        let mut abc = *b"abc";
        XChaCha20::new((&*k.data).into(), (&[0u8; 24]).into()).apply_keystream(&mut abc);
        assert_eq!(hex(&abc), "89b75c");
        let mut abc = *b"abc";
        let tag = XChaCha20Poly1305::new((&*k.data).into())
            .encrypt_in_place_detached(XNonce::from_slice(&[0u8; 24]), b"", &mut abc)
            .unwrap();
        assert_eq!(hex(&abc), "0a0969");
        assert_eq!(hex(&tag), "09d6e19a3b8d522745e96e4e02012eff");
    }

    #[test]
    fn seal_open_every_mode() {
        let salt = test_salt();
        let keys = derive_master_with(b"0123456789", &salt, CipherMode::Dgr, 4);
        for mode in [
            CipherMode::Legacy30,
            CipherMode::Ct,
            CipherMode::Msr,
            CipherMode::Dgr,
        ] {
            let (c, h) = ArchiveCipher::new(mode, &keys, &salt, [0, 0]);
            // Never reserved: nothing can be encrypted (counters fail closed).
            assert!(matches!(
                c.encrypt_meta(b"metadata"),
                Err(Error::CountersNotReserved)
            ));
            c.data_counter.reserve_with(Box::new(|_| Ok(()))).unwrap();
            c.meta_counter.reserve_with(Box::new(|_| Ok(()))).unwrap();
            let m = c.encrypt_meta(b"metadata").unwrap();
            // The streamed form is the same layout: the whole-buffer decryption opens it.
            let dir = tempfile::tempdir().unwrap();
            let big: Vec<u8> = (0..(9 << 20)).map(|i| (i % 253) as u8).collect();
            let mut pt = Spool::new(dir.path());
            pt.write_all(&big).unwrap();
            let mut sealed = Spool::new(dir.path());
            c.encrypt_meta_spool(&pt, &mut sealed).unwrap();
            let mut file = Vec::new();
            sealed.reader().unwrap().read_to_end(&mut file).unwrap();
            assert_eq!(c.decrypt_meta(&file).unwrap(), big, "{mode:?}");
            let mut opened = Spool::new(dir.path());
            assert!(c.decrypt_meta_spool(&sealed, &mut opened).unwrap());
            file[100] ^= 1;
            let mut damaged = Spool::new(dir.path());
            damaged.write_all(&file).unwrap();
            let mut out = Spool::new(dir.path());
            assert!(!c.decrypt_meta_spool(&damaged, &mut out).unwrap());
            assert_eq!(c.decrypt_meta(&m).unwrap(), b"metadata");
            let mut bad = m.clone();
            bad[44] ^= 1;
            assert!(c.decrypt_meta(&bad).is_none(), "{mode:?}");
            let hash = h.hash(b"chunk");
            let d = c.encrypt_data(b"chunk", &hash).unwrap();
            assert_eq!(d.len(), 5 + DATA_OVERHEAD);
            assert_eq!(c.decrypt_data(&d).unwrap(), b"chunk");
            let mut s = salt.clone();
            c.seal_check(&mut s).unwrap();
            assert!(c.verify_check(&s));
            // Nonces never repeat, even for the same plaintext.
            assert_ne!(c.encrypt_data(b"chunk", &hash).unwrap()[..24], d[..24]);
        }
    }

    #[test]
    fn salt_file_layout() {
        let s = test_salt();
        let b = s.to_bytes();
        assert_eq!(b.len(), SALT_FILE_LEN);
        assert_eq!(&b[10..74], &s.salts[0][..]);
        assert_eq!(&b[74..80], &[0u8; 6]);
        let p = SaltFile::parse(&b).unwrap();
        assert!(p.same_salts(&s));
        assert_eq!(SaltFile::inverted(&b)[0], 0xff);
    }

    #[test]
    fn counters_reserve_ahead() {
        let c = Counter::new(10);
        let persisted = std::sync::Arc::new(Mutex::new(Vec::new()));
        let p2 = persisted.clone();
        c.reserve_with(Box::new(move |v| {
            p2.lock().push(v);
            Ok(())
        }))
        .unwrap();
        for _ in 0..COUNTER_RESERVE + 5 {
            c.advance(1).unwrap();
        }
        let p = persisted.lock().clone();
        assert_eq!(p[0], 10 + COUNTER_RESERVE);
        assert!(p.len() == 2 && p[1] > c.get());
        assert!(c.high_water() >= c.get());
    }
}

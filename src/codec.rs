//! Everything between raw bytes and the bytes of a file on the destination.
//!
//! Writing: raw → compress → hash (this hash goes into the parent object) → store.
//! Reading: file → size bound → hash check against the parent's value (constant time) →
//! decompress strictly (exactly one stream, no trailing bytes, exact length).
//! [`Codec`] is the one place where this order lives; an archive cipher slots in between
//! "store"/"file" and the hash step, so no caller ever sees unverified plaintext.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;

use crate::crypto::{ArchiveCipher, HashFn, DATA_OVERHEAD, META_OVERHEAD};
use crate::error::{Error, Result};
use crate::format::Hash32;
use crate::spool::Spool;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Zlib,
    Bz2,
}

impl Compression {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "zstd" => Some(Compression::Zstd),
            "zlib" => Some(Compression::Zlib),
            "bz2" => Some(Compression::Bz2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Zlib => "zlib",
            Compression::Bz2 => "bz2",
        }
    }

    pub(crate) fn default_level(self) -> i32 {
        match self {
            Compression::Zstd => 3,
            Compression::Zlib => 4,
            Compression::Bz2 => 9,
        }
    }

    pub(crate) fn level_range(self) -> (i32, i32) {
        match self {
            Compression::Zstd => (1, 22),
            Compression::Zlib => (0, 9),
            Compression::Bz2 => (1, 9),
        }
    }
}

/// A compression method at a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compressor {
    pub kind: Compression,
    pub level: i32,
}

thread_local! {
    static ZSTD_CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    /// One decompression context per thread: making one costs as much as decoding a chunk.
    static ZSTD_DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl Compressor {
    pub fn new(kind: Compression, level: i32) -> Result<Self> {
        let (lo, hi) = kind.level_range();
        if level < lo || level > hi {
            return Err(Error::Usage(format!(
                "compression level {level} is out of range for {} ({lo}..{hi})",
                kind.name()
            )));
        }
        Ok(Compressor { kind, level })
    }

    /// Compresses the way the original does (format §4.3): one zstd frame *with* the content
    /// size and no checksum; a zlib stream with window 15; a bzip2 stream.
    pub fn compress(&self, data: &[u8]) -> Vec<u8> {
        match self.kind {
            Compression::Zstd => ZSTD_CCTX.with(|cell| {
                let mut cell = cell.borrow_mut();
                if cell.as_ref().map(|(l, _)| *l) != Some(self.level) {
                    let c = zstd::bulk::Compressor::new(self.level)
                        .expect("zstd level checked at open");
                    *cell = Some((self.level, c));
                }
                let (_, c) = cell.as_mut().expect("set above");
                c.compress(data)
                    .expect("zstd compression of an in-memory buffer")
            }),
            Compression::Zlib => {
                let mut c =
                    flate2::Compress::new(flate2::Compression::new(self.level as u32), true);
                let mut out = Vec::with_capacity(data.len() / 2 + 64);
                loop {
                    out.reserve(data.len() / 4 + 1024);
                    let st = c
                        .compress_vec(
                            &data[c.total_in() as usize..],
                            &mut out,
                            flate2::FlushCompress::Finish,
                        )
                        .expect("zlib compression of an in-memory buffer");
                    if st == flate2::Status::StreamEnd {
                        break out;
                    }
                }
            }
            Compression::Bz2 => {
                let mut out = Vec::with_capacity(data.len() / 2 + 64);
                bzip2::read::BzEncoder::new(data, bzip2::Compression::new(self.level as u32))
                    .read_to_end(&mut out)
                    .expect("bzip2 compression of an in-memory buffer");
                out
            }
        }
    }

    /// Decompresses exactly one stream that must use all of `data`, producing at most `max`
    /// bytes (a decompression bomb is an error, not an allocation).
    pub fn decompress(&self, data: &[u8], max: usize) -> std::result::Result<Vec<u8>, String> {
        match self.kind {
            Compression::Zstd => {
                let frame = zstd::zstd_safe::find_frame_compressed_size(data)
                    .map_err(|_| "not a zstd frame".to_string())?;
                if frame != data.len() {
                    return Err("bytes after the zstd frame".into());
                }
                match zstd::zstd_safe::get_frame_content_size(data) {
                    Ok(Some(n)) if n as usize > max || n > max as u64 => {
                        Err(format!("zstd frame declares {n} bytes, more than {max}"))
                    }
                    Ok(Some(n)) => {
                        let out = ZSTD_DCTX.with(|cell| {
                            let mut cell = cell.borrow_mut();
                            if cell.is_none() {
                                *cell = Some(
                                    zstd::bulk::Decompressor::new()
                                        .map_err(|e| format!("zstd: {e}"))?,
                                );
                            }
                            let d = cell.as_mut().expect("set above");
                            d.decompress(data, n as usize)
                                .map_err(|e| format!("zstd: {e}"))
                        })?;
                        if out.len() as u64 != n {
                            return Err("zstd frame shorter than its declared size".into());
                        }
                        Ok(out)
                    }
                    _ => {
                        // No declared size: the frame's window is the only allocation it can
                        // claim, so it may not exceed what `max` bytes of output could need.
                        let mut d = zstd::stream::read::Decoder::with_buffer(data)
                            .map_err(|e| e.to_string())?
                            .single_frame();
                        let log = (max.max(1).next_power_of_two().trailing_zeros()).clamp(10, 27);
                        d.window_log_max(log).map_err(|e| e.to_string())?;
                        read_bounded(d, max)
                    }
                }
            }
            Compression::Zlib => {
                let mut d = flate2::bufread::ZlibDecoder::new(data);
                let out = read_bounded(&mut d, max)?;
                if !d.get_ref().is_empty() {
                    return Err("bytes after the zlib stream".into());
                }
                Ok(out)
            }
            Compression::Bz2 => {
                let mut d = bzip2::bufread::BzDecoder::new(data);
                let out = read_bounded(&mut d, max)?;
                if !d.get_ref().is_empty() {
                    return Err("bytes after the bzip2 stream".into());
                }
                Ok(out)
            }
        }
    }
}

impl Compressor {
    /// Compresses the `len` bytes `input` writes into `out`, as [`compress`](Self::compress)
    /// would (a zstd frame carries the content size, which the original and the checker
    /// require).
    pub(crate) fn compress_with(
        &self,
        len: u64,
        out: &mut dyn Write,
        input: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        match self.kind {
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, self.level)?;
                e.include_contentsize(true)?;
                e.include_checksum(false)?;
                e.set_pledged_src_size(Some(len))?;
                input(&mut e)?;
                e.finish()?;
            }
            Compression::Zlib => {
                let mut e = flate2::write::ZlibEncoder::new(
                    out,
                    flate2::Compression::new(self.level as u32),
                );
                input(&mut e)?;
                e.finish()?;
            }
            Compression::Bz2 => {
                let mut e =
                    bzip2::write::BzEncoder::new(out, bzip2::Compression::new(self.level as u32));
                input(&mut e)?;
                e.finish()?;
            }
        }
        Ok(())
    }

    /// A reader of the decompressed text of exactly one stream that must use all of `input`:
    /// trailing bytes, a truncated stream or a second stream are read errors at the end.
    pub(crate) fn decompress_reader(
        &self,
        input: Box<dyn BufRead + Send>,
    ) -> std::io::Result<Box<dyn BufRead + Send>> {
        let inner: Box<dyn StrictRead> = match self.kind {
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(input)?.single_frame())
            }
            Compression::Zlib => Box::new(flate2::bufread::ZlibDecoder::new(input)),
            Compression::Bz2 => Box::new(bzip2::bufread::BzDecoder::new(input)),
        };
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            Strict {
                inner,
                done: false,
                failed: None,
            },
        )))
    }
}

/// A decoder whose input can be checked for leftovers once its output ends.
trait StrictRead: Read + Send {
    fn input_left(&mut self) -> std::io::Result<bool>;
}

impl StrictRead for zstd::stream::read::Decoder<'static, Box<dyn BufRead + Send>> {
    fn input_left(&mut self) -> std::io::Result<bool> {
        Ok(!self.get_mut().fill_buf()?.is_empty())
    }
}
impl StrictRead for flate2::bufread::ZlibDecoder<Box<dyn BufRead + Send>> {
    fn input_left(&mut self) -> std::io::Result<bool> {
        Ok(!self.get_mut().fill_buf()?.is_empty())
    }
}
impl StrictRead for bzip2::bufread::BzDecoder<Box<dyn BufRead + Send>> {
    fn input_left(&mut self) -> std::io::Result<bool> {
        Ok(!self.get_mut().fill_buf()?.is_empty())
    }
}

struct Strict {
    inner: Box<dyn StrictRead>,
    done: bool,
    /// The first error, repeated to every later read without touching the decoder again:
    /// C libbzip2 read out of bounds when called again after it reported damage (found by
    /// fuzzing under AddressSanitizer; bzip2 now runs on the pure-Rust libbz2-rs-sys), and
    /// no decoder promises anything after an error.
    failed: Option<(std::io::ErrorKind, String)>,
}

impl Read for Strict {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(std::io::Error::new(*kind, msg.clone()));
        }
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some((e.kind(), e.to_string()));
                return Err(e);
            }
        };
        if n == 0 {
            self.done = true;
            if self.inner.input_left()? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "bytes after the compressed stream",
                ));
            }
        }
        Ok(n)
    }
}

fn read_bounded(r: impl Read, max: usize) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    r.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() > max {
        return Err(format!("decompresses to more than {max} bytes"));
    }
    Ok(out)
}

/// gzip as the original writes the archive.ini body (level 4, OS byte 0xff, current mtime).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let mut enc = flate2::GzBuilder::new()
        .mtime(mtime)
        .operating_system(0xff)
        .write(Vec::new(), flate2::Compression::new(4));
    enc.write_all(data).expect("in-memory gzip");
    enc.finish().expect("in-memory gzip")
}

pub fn gunzip(data: &[u8], max: usize) -> std::result::Result<Vec<u8>, String> {
    read_bounded(flate2::bufread::GzDecoder::new(data), max)
}

/// The per-archive transformation of chunks and metadata objects.
#[derive(Clone)]
pub(crate) struct Codec {
    pub compressor: Compressor,
    pub data_hash: HashFn,
    pub meta_hash: HashFn,
    pub chunksize: u64,
    /// `None` for unencrypted archives.
    pub cipher: Option<Arc<ArchiveCipher>>,
}

/// Hashes what is written through it.
struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: crate::crypto::Hasher,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hasher.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An encoded chunk: its manifest hash and the bytes of its file.
pub(crate) struct Encoded {
    pub hash: Hash32,
    pub file: Vec<u8>,
}

impl Codec {
    /// Largest chunk file accepted (format §1).
    pub(crate) fn max_chunk_file(&self) -> u64 {
        self.chunksize + self.chunksize / 64
    }

    /// Compresses and hashes a raw chunk: enough to compare it with the archive. The result
    /// becomes a chunk file with [`Codec::seal_chunk`] only if it is to be stored, so unchanged
    /// chunks cost no encryption and no counter values.
    pub(crate) fn hash_chunk(&self, raw: &[u8]) -> Encoded {
        self.hash_compressed(self.compressor.compress(raw))
    }

    /// [`Codec::hash_chunk`] of data already compressed as this codec compresses (a send to
    /// several archives compresses once per setting: `archive::SharedChunk`).
    pub(crate) fn hash_compressed(&self, file: Vec<u8>) -> Encoded {
        Encoded {
            hash: self.data_hash.hash(&file),
            file,
        }
    }

    /// The bytes of the chunk file for a hashed chunk (encrypted in encrypted archives).
    pub(crate) fn seal_chunk(&self, hashed: Encoded) -> Result<Encoded> {
        match &self.cipher {
            Some(c) => Ok(Encoded {
                file: c.encrypt_data(&hashed.file, &hashed.hash)?,
                hash: hashed.hash,
            }),
            None => Ok(hashed),
        }
    }

    /// Checks a chunk file against its manifest hash and returns its verified, still compressed
    /// payload.
    pub(crate) fn verify_chunk<'a>(
        &self,
        file: &'a [u8],
        expected: &Hash32,
        path: &str,
    ) -> Result<Cow<'a, [u8]>> {
        let min = if self.cipher.is_some() {
            DATA_OVERHEAD + 1
        } else {
            1
        };
        if file.len() < min || file.len() as u64 > self.max_chunk_file() {
            return Err(Error::corrupt(
                path,
                format!("chunk file has a bad size ({} bytes)", file.len()),
            ));
        }
        let payload = match &self.cipher {
            Some(c) => Cow::Owned(
                c.decrypt_data(file)
                    .ok_or_else(|| Error::corrupt(path, "chunk too short"))?,
            ),
            None => Cow::Borrowed(file),
        };
        if !self.data_hash.hash(&payload).ct_eq(expected) {
            return Err(Error::corrupt(
                path,
                "chunk does not match its manifest hash",
            ));
        }
        Ok(payload)
    }

    /// Verifies, then decompresses a chunk file to exactly `raw_len` bytes.
    pub(crate) fn decode_chunk(
        &self,
        file: &[u8],
        expected: &Hash32,
        raw_len: usize,
        path: &str,
    ) -> Result<Vec<u8>> {
        let payload = self.verify_chunk(file, expected, path)?;
        let raw = self
            .compressor
            .decompress(&payload, raw_len)
            .map_err(|e| Error::corrupt(path, format!("chunk does not decompress: {e}")))?;
        if raw.len() != raw_len {
            return Err(Error::corrupt(
                path,
                format!(
                    "chunk decompresses to {} bytes, expected {raw_len}",
                    raw.len()
                ),
            ));
        }
        Ok(raw)
    }

    /// Compresses, hashes and (in encrypted archives) seals a metadata object.
    pub(crate) fn encode_meta(&self, text: &[u8]) -> Result<Encoded> {
        let compressed = self.compressor.compress(text);
        let hash = self.meta_hash.hash(&compressed);
        let file = match &self.cipher {
            Some(c) => c.encrypt_meta(&compressed)?,
            None => compressed,
        };
        Ok(Encoded { hash, file })
    }

    /// Extra bytes a stored metadata object carries beyond its compressed text.
    pub(crate) fn meta_overhead(&self) -> u64 {
        if self.cipher.is_some() {
            META_OVERHEAD as u64
        } else {
            0
        }
    }

    /// Verifies a metadata object (volinfo, info, manifest.z): authentication (encrypted
    /// archives), then the hash its parent holds, then decompression (at most `max_text` bytes).
    /// `max_file` is the format's limit for the compressed object.
    pub(crate) fn decode_meta(
        &self,
        file: &[u8],
        expected: &Hash32,
        max_file: u64,
        max_text: usize,
        path: &str,
    ) -> Result<Vec<u8>> {
        if file.len() as u64 <= self.meta_overhead()
            || file.len() as u64 > max_file + self.meta_overhead()
        {
            return Err(Error::corrupt(
                path,
                format!("file has a bad size ({} bytes)", file.len()),
            ));
        }
        let payload = match &self.cipher {
            Some(c) => Cow::Owned(c.decrypt_meta(file).ok_or_else(|| {
                Error::corrupt(path, "fails authentication (tampered or damaged)")
            })?),
            None => Cow::Borrowed(file),
        };
        if !self.meta_hash.hash(&payload).ct_eq(expected) {
            return Err(Error::corrupt(
                path,
                "does not match the hash recorded in its parent",
            ));
        }
        self.compressor
            .decompress(&payload, max_text)
            .map_err(|e| Error::corrupt(path, format!("does not decompress: {e}")))
    }

    /// The text of a metadata object whose hash is not at hand (a transaction's staged
    /// `info.tmp`, read during recovery only to see what it records): authenticated in
    /// encrypted archives, merely decompressed otherwise. Never used for anything read back.
    pub(crate) fn open_meta_unhashed(
        &self,
        file: &[u8],
        max_text: usize,
        path: &str,
    ) -> Result<Vec<u8>> {
        let payload = match &self.cipher {
            Some(c) => Cow::Owned(c.decrypt_meta(file).ok_or_else(|| {
                Error::corrupt(path, "fails authentication (tampered or damaged)")
            })?),
            None => Cow::Borrowed(file),
        };
        self.compressor
            .decompress(&payload, max_text)
            .map_err(|e| Error::corrupt(path, format!("does not decompress: {e}")))
    }

    /// [`encode_meta`](Self::encode_meta) for a large object (a manifest) given as a text of
    /// `len` bytes that `text` writes: compressed as it is written (its size pledged, so a zstd
    /// frame carries its content size), hashed, then sealed; the result is spooled in `dir`.
    pub(crate) fn encode_meta_stream(
        &self,
        len: u64,
        text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
        dir: &Path,
    ) -> Result<(Hash32, Spool)> {
        let io = |e: std::io::Error| Error::io("metadata spool", e);
        let mut compressed = Spool::new(dir);
        let mut hashing = HashingWriter {
            inner: &mut compressed,
            hasher: self.meta_hash.hasher(),
        };
        self.compressor
            .compress_with(len, &mut hashing, text)
            .map_err(io)?;
        let hash = hashing.hasher.finish();
        let file = match &self.cipher {
            None => compressed,
            Some(c) => {
                let mut sealed = Spool::new(dir);
                c.encrypt_meta_spool(&compressed, &mut sealed)?;
                sealed
            }
        };
        Ok((hash, file))
    }

    /// Verifies a metadata object of any size (authentication, then the hash its parent
    /// holds) before a byte of it is used, and returns a reader of its decompressed text. The
    /// caller bounds what it reads (manifest lines are parsed one at a time).
    pub(crate) fn decode_meta_spool(
        &self,
        file: Spool,
        expected: &Hash32,
        path: &str,
    ) -> Result<Box<dyn BufRead + Send>> {
        let io = |e: std::io::Error| Error::io(path, e);
        if file.len() <= self.meta_overhead() {
            return Err(Error::corrupt(
                path,
                format!("file has a bad size ({} bytes)", file.len()),
            ));
        }
        let payload = match &self.cipher {
            None => file,
            Some(c) => {
                let mut pt = Spool::new(file.dir());
                if !c.decrypt_meta_spool(&file, &mut pt)? {
                    return Err(Error::corrupt(
                        path,
                        "fails authentication (tampered or damaged)",
                    ));
                }
                pt
            }
        };
        let mut h = self.meta_hash.hasher();
        std::io::copy(&mut payload.reader().map_err(io)?, &mut h).map_err(io)?;
        if !h.finish().ct_eq(expected) {
            return Err(Error::corrupt(
                path,
                "does not match the hash recorded in its parent",
            ));
        }
        self.compressor
            .decompress_reader(payload.into_reader().map_err(io)?)
            .map_err(|e| Error::corrupt(path, format!("does not decompress: {e}")))
    }

    /// The archive.ini body for a root text: gzip, sealed in encrypted archives.
    pub(crate) fn seal_root(&self, text: &str) -> Result<Vec<u8>> {
        let gz = gzip(text.as_bytes());
        match &self.cipher {
            Some(c) => c.encrypt_meta(&gz),
            None => Ok(gz),
        }
    }

    /// The root text from an archive.ini body.
    pub(crate) fn open_root(&self, body: &[u8]) -> Result<String> {
        let gz = match &self.cipher {
            Some(c) => Cow::Owned(
                c.decrypt_meta(body)
                    .ok_or_else(|| Error::Auth(crate::crypto::WRONG_PASSPHRASE.into()))?,
            ),
            None => Cow::Borrowed(body),
        };
        let text = gunzip(&gz, crate::format::ini::MAX_BODY * 8)
            .map_err(|e| Error::corrupt("archive.ini", e))?;
        String::from_utf8(text).map_err(|_| Error::corrupt("archive.ini", "not UTF-8 text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder that fails once and must never be called again after that.
    struct FailsOnce(bool);
    impl Read for FailsOnce {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            assert!(!self.0, "decoder called again after its error");
            self.0 = true;
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "damaged",
            ))
        }
    }
    impl StrictRead for FailsOnce {
        fn input_left(&mut self) -> std::io::Result<bool> {
            Ok(false)
        }
    }

    #[test]
    fn a_decoder_error_is_repeated_not_retried() {
        let mut s = Strict {
            inner: Box::new(FailsOnce(false)),
            done: false,
            failed: None,
        };
        let mut b = [0u8; 16];
        for _ in 0..3 {
            let e = s.read(&mut b).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        }
    }

    fn all() -> Vec<Compressor> {
        vec![
            Compressor::new(Compression::Zstd, 3).unwrap(),
            Compressor::new(Compression::Zstd, 19).unwrap(),
            Compressor::new(Compression::Zlib, 4).unwrap(),
            Compressor::new(Compression::Zlib, 0).unwrap(),
            Compressor::new(Compression::Bz2, 9).unwrap(),
        ]
    }

    #[test]
    fn roundtrip_and_strictness() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in all() {
            let z = c.compress(&data);
            assert_eq!(c.decompress(&z, data.len()).unwrap(), data, "{c:?}");
            assert!(
                c.decompress(&z, data.len() - 1).is_err(),
                "bomb limit {c:?}"
            );
            let mut trailing = z.clone();
            trailing.push(0);
            assert!(
                c.decompress(&trailing, data.len()).is_err(),
                "trailing {c:?}"
            );
            assert!(
                c.decompress(&z[..z.len() / 2], data.len()).is_err(),
                "truncated {c:?}"
            );
        }
    }

    #[test]
    fn zlib_matches_python() {
        // Format notes §17.3: zlib.compress(b"abc", 4).
        let c = Compressor::new(Compression::Zlib, 4).unwrap();
        assert_eq!(
            c.compress(b"abc"),
            [0x78, 0x5e, 0x4b, 0x4c, 0x4a, 0x06, 0x00, 0x02, 0x4d, 0x01, 0x27]
        );
    }

    #[test]
    fn zstd_has_content_size() {
        let c = Compressor::new(Compression::Zstd, 3).unwrap();
        let z = c.compress(&[1u8; 5000]);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&z).unwrap(),
            Some(5000)
        );
    }

    #[test]
    fn gzip_roundtrip() {
        let g = gzip(b"[var]\n");
        assert_eq!(&g[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(g[9], 0xff);
        assert_eq!(gunzip(&g, 100).unwrap(), b"[var]\n");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// Decoders see archive bytes: any input is an error or bounded output, never a panic.
        #[test]
        fn decompression_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            for kind in [Compression::Zstd, Compression::Zlib, Compression::Bz2] {
                let c = Compressor { kind, level: kind.default_level() };
                let _ = c.decompress(&bytes, 1 << 16);
            }
        }
    }
}

//! Chunks from one archive into a session of another (`arch-copy`): each chunk file is read
//! from the source, checked against the source's manifest hash, and staged in the target's
//! session as the target stores chunks.
//!
//! Invariants:
//! * **Nothing unverified is written.** A source chunk file is checked (size bound, then its
//!   hash, after decryption in an encrypted source) before a byte of it reaches the target;
//!   a missing or damaged one is an error naming its file.
//! * **No ciphertext crosses archives.** An encrypted chunk is opened with the source's keys and
//!   sealed with the target's own keys, nonce rule and reserved counters, so a copy never holds
//!   a (key, nonce) pair its source used, and sending to both later cannot reuse one.
//! * **Stored bytes are kept where the archives store alike** ([`Transfer::AsStored`]: both
//!   unencrypted, one hash function, one compression method): the file is written byte for
//!   byte and keeps its hash. Otherwise the compressed plaintext is hashed and sealed for the
//!   target ([`Transfer::Reseal`]), and only where the compression method differs is a chunk
//!   decompressed and compressed again ([`Transfer::Recompress`]).

use super::chunks::ChunkLoc;
use super::digests::Digest;
use super::{Archive, SessionWriter};
use crate::codec::Encoded;
use crate::crypto::HashFn;
use crate::error::{Error, Result};
use crate::format::Hash32;

/// How the chunks of one archive become chunks of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// The file as stored, and its hash: the two archives hash and store chunks alike.
    AsStored,
    /// The verified compressed plaintext, hashed and (where the target is encrypted) sealed
    /// for the target: no recompression.
    Reseal,
    /// Decompressed and compressed again with the target's method.
    Recompress,
}

impl Archive {
    /// How chunks of this archive are copied into `target`.
    pub(crate) fn transfer_to(&self, target: &Archive) -> Transfer {
        let same_hash = matches!(
            (&self.codec.data_hash, &target.codec.data_hash),
            (HashFn::Blake2b256, HashFn::Blake2b256) | (HashFn::Sha256, HashFn::Sha256)
        );
        if self.codec.compressor.kind != target.codec.compressor.kind {
            Transfer::Recompress
        } else if same_hash && self.codec.cipher.is_none() && target.codec.cipher.is_none() {
            Transfer::AsStored
        } else {
            Transfer::Reseal
        }
    }
}

/// What [`SessionWriter::copy_chunk`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    /// The chunk's hash in the target.
    pub hash: Hash32,
    /// Bytes written; 0 when the target's previous view already holds this content there
    /// (nothing was written).
    pub stored: u64,
}

/// The digest a copy records for a staged chunk in its resume record: derived from the
/// source's manifest hash (a copy never sees raw data), in a domain of its own, so a send's
/// raw-data digests never match it.
pub fn copy_digest(source_hash: &Hash32) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"wyng arch-copy chunk v1\0");
    h.update(&source_hash.0);
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

impl SessionWriter<'_> {
    /// Copies chunk `loc` of archive `from` (its file as fetched: `None` if it was missing)
    /// into this session at the same address, after verifying it. With `prev`, the hash the
    /// target's previous view holds at this address: if the chunk turns out to be that
    /// content, nothing is written (`stored` 0).
    pub(crate) fn copy_chunk(
        &self,
        from: &Archive,
        how: Transfer,
        loc: &ChunkLoc,
        file: Option<Vec<u8>>,
        prev: Option<&Hash32>,
    ) -> Result<Copied> {
        let file = file.ok_or_else(|| Error::corrupt(&loc.path, "chunk file is missing"))?;
        if file.len() as u64 > from.codec.max_chunk_file() {
            return Err(Error::corrupt(
                &loc.path,
                format!("chunk file has a bad size ({} bytes)", file.len()),
            ));
        }
        let target = self.archive();
        let encoded = match how {
            Transfer::AsStored => {
                from.codec.verify_chunk(&file, &loc.hash, &loc.path)?;
                Encoded {
                    hash: loc.hash,
                    file,
                }
            }
            Transfer::Reseal => {
                let payload = from
                    .codec
                    .verify_chunk(&file, &loc.hash, &loc.path)?
                    .into_owned();
                Encoded {
                    hash: target.codec.data_hash.hash(&payload),
                    file: payload,
                }
            }
            Transfer::Recompress => {
                let raw = from
                    .codec
                    .decode_chunk(&file, &loc.hash, loc.len as usize, &loc.path)?;
                target.codec.hash_chunk(&raw)
            }
        };
        let hash = encoded.hash;
        if prev == Some(&hash) {
            return Ok(Copied { hash, stored: 0 });
        }
        let stored = match how {
            // Already the target's bytes.
            Transfer::AsStored => {
                self.write_staged(loc.idx, &encoded.file)?;
                encoded.file.len() as u64
            }
            _ => self.store(loc.idx, super::session::Hashed(encoded))?,
        };
        Ok(Copied { hash, stored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_digests_are_per_hash_and_never_a_raw_digest() {
        let a = copy_digest(&Hash32([1; 32]));
        assert_eq!(a, copy_digest(&Hash32([1; 32])));
        assert_ne!(a, copy_digest(&Hash32([2; 32])));
        // A send records the digest of raw data; the same bytes as a hash give another.
        assert_ne!(a, crate::archive::digests::digest(&[1; 32]));
    }
}

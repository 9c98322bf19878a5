//! Hash functions of the format (§5). `H_meta` hashes metadata objects, `H_data` hashes chunks;
//! both always run over the *compressed* plaintext. BLAKE2b-256 here is BLAKE2b with the digest
//! size parameter 32, not a truncated BLAKE2b-512.

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};

use crate::error::{Error, Result};
use crate::format::Hash32;

#[derive(Clone, Debug)]
pub enum HashFn {
    Blake2b256,
    Sha256,
}

impl HashFn {
    /// The hash functions for an unencrypted archive's `hashtype` (encrypted archives derive a
    /// keyed data hash from the passphrase instead).
    pub fn for_hashtype(hashtype: &str) -> Result<HashFn> {
        match hashtype {
            "blake2b" => Ok(HashFn::Blake2b256),
            "sha256" => Ok(HashFn::Sha256),
            other => Err(Error::Unsupported(format!(
                "hashtype '{other}' on an unencrypted archive"
            ))),
        }
    }

    pub fn hash(&self, data: &[u8]) -> Hash32 {
        match self {
            HashFn::Blake2b256 => Hash32(Blake2b::<U32>::digest(data).into()),
            HashFn::Sha256 => Hash32(sha2::Sha256::digest(data).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // Format notes §17.3.
        assert_eq!(
            HashFn::Blake2b256.hash(b"abc").to_b64(),
            "vd2BPGNCOXIxce8_7phXm5SWTjuxyz5CcmLIwGjVIxk="
        );
    }
}

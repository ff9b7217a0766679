//! Content ids: SHA-256 multihashes.
//!
//! Work ids and result ids are the SHA-256 of what they name, written as a
//! multihash (`0x12` = sha2-256, `0x20` = 32 bytes, then the digest), so the same
//! content always gets the same id and an id cannot be forged for other content.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

const SHA2_256: u8 = 0x12;
const DIGEST_LEN: u8 = 32;

/// The SHA-256 content id of some bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; 32]);

/// Bytes that are not a SHA-256 multihash.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidError {
    /// Wrong total length.
    #[error("expected 34 bytes, got {0}")]
    Length(usize),
    /// A hash function other than sha2-256, or a digest length other than 32.
    #[error("not a sha2-256 multihash (code {code:#04x}, length {len})")]
    NotSha256 {
        /// The multihash code found.
        code: u8,
        /// The digest length found.
        len: u8,
    },
    /// Text that is not hex.
    #[error("not a hex content id (68 hex digits starting 1220)")]
    Hex,
}

impl ContentId {
    /// Length of the multihash form in bytes.
    pub const ENCODED_LEN: usize = 34;

    /// The content id of `data`.
    pub fn digest(data: &[u8]) -> Self {
        ContentId(Sha256::digest(data).into())
    }

    /// The content id of a token sequence, hashed as little-endian `u32`s.
    pub fn of_tokens(tokens: &[u32]) -> Self {
        let mut hasher = Sha256::new();
        for t in tokens {
            hasher.update(t.to_le_bytes());
        }
        ContentId(hasher.finalize().into())
    }

    /// The raw 32-byte digest.
    pub fn digest_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The multihash form that goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::ENCODED_LEN);
        out.extend([SHA2_256, DIGEST_LEN]);
        out.extend(self.0);
        out
    }

    /// Parses the multihash form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CidError> {
        if bytes.len() != Self::ENCODED_LEN {
            return Err(CidError::Length(bytes.len()));
        }
        if bytes[0] != SHA2_256 || bytes[1] != DIGEST_LEN {
            return Err(CidError::NotSha256 {
                code: bytes[0],
                len: bytes[1],
            });
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&bytes[2..]);
        Ok(ContentId(digest))
    }
}

impl fmt::Display for ContentId {
    /// Hex of the multihash form, as `sha256sum` users expect after the `1220`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1220")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for ContentId {
    type Err = CidError;

    /// Parses the hex form [`fmt::Display`] writes (`1220` + 64 hex digits).
    fn from_str(s: &str) -> Result<Self, CidError> {
        let s = s.trim();
        if !s.is_ascii() || !s.len().is_multiple_of(2) {
            return Err(CidError::Hex);
        }
        let bytes: Option<Vec<u8>> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect();
        ContentId::from_bytes(&bytes.ok_or(CidError::Hex)?)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hex_form_parses_back() {
        let id = ContentId::digest(b"model");
        assert_eq!(id.to_string().parse::<ContentId>(), Ok(id));
        assert_eq!("12zz".parse::<ContentId>(), Err(CidError::Hex));
        assert_eq!("1220ab".parse::<ContentId>(), Err(CidError::Length(3)));
        assert_eq!("é".parse::<ContentId>(), Err(CidError::Hex));
    }

    #[test]
    fn digest_matches_the_published_sha256_of_abc() {
        // FIPS 180-2 test vector for "abc".
        let cid = ContentId::digest(b"abc");
        assert_eq!(
            cid.to_string(),
            "1220ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(ContentId::from_bytes(&cid.to_bytes()), Ok(cid));
    }

    #[test]
    fn token_ids_hash_as_little_endian_words() {
        assert_eq!(
            ContentId::of_tokens(&[1, 2]),
            ContentId::digest(&[1, 0, 0, 0, 2, 0, 0, 0])
        );
    }

    #[test]
    fn other_multihashes_are_rejected() {
        let mut bytes = ContentId::digest(b"x").to_bytes();
        bytes[0] = 0x13; // sha2-512
        assert_eq!(
            ContentId::from_bytes(&bytes),
            Err(CidError::NotSha256 {
                code: 0x13,
                len: 32
            })
        );
        assert_eq!(
            ContentId::from_bytes(&bytes[..33]),
            Err(CidError::Length(33))
        );
    }
}

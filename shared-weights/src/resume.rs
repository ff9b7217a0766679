//! The record of verified pieces a download keeps beside its partial file.
//!
//! A download writes each verified piece into `FILE.part` and then this record
//! (to a temporary file, renamed over the old one), so after a crash, a kill or
//! a reload it knows which pieces it holds without fetching them again. The
//! record names its model and ends with its own SHA-256: a torn or foreign
//! record is refused (and the download starts over) instead of being believed.
//!
//! Layout: `SHARDDL1`, the model's content id (34 bytes), the piece count
//! (u32, little endian), one bit per piece (piece `i` is bit `i % 8` of byte
//! `i / 8`), SHA-256 of everything before it.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};
use shared_proto::ContentId;
use thiserror::Error;

const MAGIC: &[u8; 8] = b"SHARDDL1";
const CID_LEN: usize = 34;
const HEADER_LEN: usize = MAGIC.len() + CID_LEN + 4;

/// Why a record is not used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResumeError {
    /// Not a record, or a torn one.
    #[error("the download record is damaged ({0})")]
    Damaged(&'static str),
    /// A record of another model (or another cut of it).
    #[error("the download record is for another model")]
    OtherModel,
}

/// The record of `have` (verified pieces) of a model with `pieces` pieces.
pub fn encode(model: &ContentId, pieces: u32, have: &BTreeSet<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + pieces.div_ceil(8) as usize + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&model.to_bytes());
    out.extend_from_slice(&pieces.to_le_bytes());
    let mut bits = vec![0u8; pieces.div_ceil(8) as usize];
    for &piece in have.iter().filter(|p| **p < pieces) {
        bits[(piece / 8) as usize] |= 1 << (piece % 8);
    }
    out.extend_from_slice(&bits);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The verified pieces in a record of `model` with `pieces` pieces.
pub fn decode(bytes: &[u8], model: &ContentId, pieces: u32) -> Result<BTreeSet<u32>, ResumeError> {
    let body_len = bytes
        .len()
        .checked_sub(32)
        .ok_or(ResumeError::Damaged("too short"))?;
    let (body, digest) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != digest {
        return Err(ResumeError::Damaged("checksum"));
    }
    if body.len() < HEADER_LEN || &body[..MAGIC.len()] != MAGIC {
        return Err(ResumeError::Damaged("not a download record"));
    }
    let cid = &body[MAGIC.len()..MAGIC.len() + CID_LEN];
    let count = u32::from_le_bytes(
        body[MAGIC.len() + CID_LEN..HEADER_LEN]
            .try_into()
            .map_err(|_| ResumeError::Damaged("piece count"))?,
    );
    if cid != model.to_bytes().as_slice() || count != pieces {
        return Err(ResumeError::OtherModel);
    }
    let bits = &body[HEADER_LEN..];
    if bits.len() != pieces.div_ceil(8) as usize {
        return Err(ResumeError::Damaged("length"));
    }
    Ok((0..pieces)
        .filter(|p| bits[(p / 8) as usize] & (1 << (p % 8)) != 0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_the_pieces_it_was_written_with() {
        let model = ContentId::digest(b"model");
        let have = BTreeSet::from([0, 7, 8, 358]);
        let bytes = encode(&model, 359, &have);
        assert_eq!(decode(&bytes, &model, 359), Ok(have));
        assert_eq!(
            decode(&encode(&model, 3, &BTreeSet::new()), &model, 3),
            Ok(BTreeSet::new())
        );
    }

    #[test]
    fn a_torn_foreign_or_flipped_record_is_refused() {
        let model = ContentId::digest(b"model");
        let bytes = encode(&model, 100, &BTreeSet::from([1, 2, 3]));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], &model, 100),
            Err(ResumeError::Damaged("checksum"))
        );
        assert_eq!(
            decode(&[], &model, 100),
            Err(ResumeError::Damaged("too short"))
        );
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN] ^= 0x10;
        assert_eq!(
            decode(&flipped, &model, 100),
            Err(ResumeError::Damaged("checksum"))
        );
        let other = ContentId::digest(b"other");
        assert_eq!(decode(&bytes, &other, 100), Err(ResumeError::OtherModel));
        assert_eq!(decode(&bytes, &model, 101), Err(ResumeError::OtherModel));
    }
}

//! Manifests: what a model file is, piece by piece.
//!
//! [`Manifest::build`] reads a file once and records its size, its SHA-256, the
//! SHA-256 of every piece and, for a GGUF, where each tensor and each block's
//! tensors are. The result is deterministic (same file, same bytes, same content
//! id), so every peer that builds the manifest of the same file names the model
//! the same way. [`Manifest::from_bytes`] takes a manifest received from a peer
//! and accepts it only when its bytes hash to the content id that was asked for.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::ops::Range;

use prost::Message as _;
use sha2::{Digest, Sha256};
use shared_proto::{ContentId, MANIFEST_MAX_LEN, Validate, ValidationError, limits, pb};
use thiserror::Error;

/// Pieces a file is cut into, at most, before the piece size grows (until it
/// reaches [`limits::MAX_PIECE_SIZE`]): enough pieces to spread over many
/// peers, few enough that the manifest and the per-piece overhead stay small.
const TARGET_PIECES: u64 = 512;

/// The piece size for a file of `file_size` bytes: the smallest power of two,
/// from [`limits::MIN_PIECE_SIZE`] to [`limits::MAX_PIECE_SIZE`], that cuts it
/// into at most 512 pieces. The default model (93.8 MiB) gets 256 KiB pieces.
pub fn piece_size_for(file_size: u64) -> u32 {
    let mut size = limits::MIN_PIECE_SIZE;
    while size < limits::MAX_PIECE_SIZE && file_size.div_ceil(size.into()) > TARGET_PIECES {
        size *= 2;
    }
    size
}

/// Why a manifest cannot be built or accepted.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read the model file: {0}")]
    Io(#[from] io::Error),
    /// The file is empty or larger than the protocol allows.
    #[error("the model file is {size} bytes; a model must be 1 byte to {max} bytes")]
    FileSize {
        /// Its size.
        size: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A piece size the protocol does not allow for this file.
    #[error(
        "a piece size of {0} bytes is not allowed: a power of two from 64 KiB to 16 MiB, \
         at most 65 536 pieces"
    )]
    PieceSize(u32),
    /// The reader ended before the size it was said to have.
    #[error("the model file ended after {read} of {expected} bytes")]
    Truncated {
        /// Bytes read.
        read: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// Received manifest bytes that are not what the content id names.
    #[error("the manifest's bytes hash to {got}, not to the {expected} asked for")]
    WrongCid {
        /// The id asked for.
        expected: ContentId,
        /// The id of the bytes received.
        got: ContentId,
    },
    /// More bytes than any manifest may have.
    #[error("the manifest is {len} bytes; at most {MANIFEST_MAX_LEN} are allowed")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Bytes that are not a manifest.
    #[error("the manifest does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A manifest that breaks the protocol's rules.
    #[error("the manifest is invalid: {0}")]
    Invalid(#[from] ValidationError),
}

/// Why a piece is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PieceError {
    /// An index past the last piece.
    #[error("piece {index} does not exist: the model has {pieces} pieces")]
    OutOfRange {
        /// The index.
        index: u32,
        /// Pieces in the model.
        pieces: u32,
    },
    /// The wrong number of bytes.
    #[error("piece {index} has {got} bytes; it must have {expected}")]
    WrongSize {
        /// The index.
        index: u32,
        /// Bytes received.
        got: usize,
        /// Bytes the manifest says.
        expected: u64,
    },
    /// Bytes that are not the piece's.
    #[error("piece {index} does not match its SHA-256 in the manifest")]
    WrongHash {
        /// The index.
        index: u32,
    },
}

/// Where a GGUF's tensors are: what the manifest records so a peer can fetch
/// only some layers. Made by whoever can read GGUF (the oracle, with
/// `shared-model`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorLayout {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// Name, absolute offset and size of each tensor, in file order.
    pub tensors: Vec<(String, u64, u64)>,
}

/// A model file's manifest, checked: its content id is the SHA-256 of
/// [`Manifest::bytes`], and every field obeys the protocol.
#[derive(Debug, Clone)]
pub struct Manifest {
    proto: pb::ModelManifest,
    bytes: Vec<u8>,
    cid: ContentId,
}

impl Manifest {
    /// Reads a whole file of `file_size` bytes from `reader` and builds its
    /// manifest, with pieces of `piece_size` bytes (default: [`piece_size_for`]).
    /// The file's name is not part of it: the same bytes are the same model.
    pub fn build(
        mut reader: impl Read,
        file_size: u64,
        layout: Option<&TensorLayout>,
        piece_size: Option<u32>,
    ) -> Result<Manifest, ManifestError> {
        if file_size == 0 || file_size > limits::MAX_MODEL_BYTES {
            return Err(ManifestError::FileSize {
                size: file_size,
                max: limits::MAX_MODEL_BYTES,
            });
        }
        let piece_size = piece_size.unwrap_or_else(|| piece_size_for(file_size));
        let allowed = limits::MIN_PIECE_SIZE..=limits::MAX_PIECE_SIZE;
        if !allowed.contains(&piece_size)
            || !piece_size.is_power_of_two()
            || file_size.div_ceil(piece_size.into()) > limits::MAX_PIECES as u64
        {
            return Err(ManifestError::PieceSize(piece_size));
        }
        let mut whole = Sha256::new();
        let mut piece_sha256 = Vec::new();
        let mut buf = vec![0u8; piece_size as usize];
        let mut read = 0u64;
        while read < file_size {
            let len = (file_size - read).min(piece_size.into()) as usize;
            let piece = &mut buf[..len];
            reader.read_exact(piece).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ManifestError::Truncated {
                    read,
                    expected: file_size,
                },
                _ => ManifestError::Io(e),
            })?;
            whole.update(&*piece);
            piece_sha256.push(Sha256::digest(&*piece).to_vec());
            read += len as u64;
        }
        let (architecture, tensors, layers) = match layout {
            Some(layout) => (
                layout.architecture.clone(),
                layout
                    .tensors
                    .iter()
                    .map(|(name, offset, size)| pb::TensorSpan {
                        name: name.clone(),
                        offset: *offset,
                        size: *size,
                    })
                    .collect(),
                layer_pieces(&layout.tensors, piece_size),
            ),
            None => (String::new(), Vec::new(), Vec::new()),
        };
        let proto = pb::ModelManifest {
            version: limits::MANIFEST_VERSION,
            file_size,
            file_sha256: whole.finalize().to_vec(),
            piece_size,
            piece_sha256,
            architecture,
            tensors,
            layers,
        };
        proto.validate()?;
        let bytes = proto.encode_to_vec();
        if bytes.len() > MANIFEST_MAX_LEN {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        let cid = ContentId::digest(&bytes);
        Ok(Manifest { proto, bytes, cid })
    }

    /// Accepts manifest bytes received from a peer when they are the ones
    /// `expected` names, decode, and obey the protocol.
    pub fn from_bytes(expected: &ContentId, bytes: Vec<u8>) -> Result<Manifest, ManifestError> {
        if bytes.len() > MANIFEST_MAX_LEN {
            return Err(ManifestError::TooLarge { len: bytes.len() });
        }
        let cid = ContentId::digest(&bytes);
        if cid != *expected {
            return Err(ManifestError::WrongCid {
                expected: *expected,
                got: cid,
            });
        }
        let proto = pb::ModelManifest::decode(bytes.as_slice())?;
        proto.validate()?;
        Ok(Manifest { proto, bytes, cid })
    }

    /// The model's name on the network.
    pub fn cid(&self) -> &ContentId {
        &self.cid
    }

    /// The encoding the content id was made of (what is sent to peers).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The decoded manifest.
    pub fn proto(&self) -> &pb::ModelManifest {
        &self.proto
    }

    /// Size of the whole file.
    pub fn file_size(&self) -> u64 {
        self.proto.file_size
    }

    /// Bytes per piece (the last may be shorter).
    pub fn piece_size(&self) -> u32 {
        self.proto.piece_size
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        // Validation bounds it by `limits::MAX_PIECES`.
        self.proto.piece_sha256.len() as u32
    }

    /// Where piece `index` lies in the file.
    pub fn piece_range(&self, index: u32) -> Result<Range<u64>, PieceError> {
        if index >= self.piece_count() {
            return Err(PieceError::OutOfRange {
                index,
                pieces: self.piece_count(),
            });
        }
        let start = u64::from(index) * u64::from(self.proto.piece_size);
        let end = (start + u64::from(self.proto.piece_size)).min(self.proto.file_size);
        Ok(start..end)
    }

    /// Accepts `data` as piece `index` only when it is exactly that piece.
    pub fn check_piece(&self, index: u32, data: &[u8]) -> Result<(), PieceError> {
        self.check_piece_size(index, data.len())?;
        self.check_piece_digest(index, Sha256::digest(data).as_slice())
    }

    /// Checks that `len` bytes is piece `index`'s size: the half of
    /// [`Manifest::check_piece`] for callers that hash elsewhere (a browser
    /// hashes with WebCrypto, many times faster than SHA-256 in wasm).
    pub fn check_piece_size(&self, index: u32, len: usize) -> Result<(), PieceError> {
        let range = self.piece_range(index)?;
        let expected = range.end - range.start;
        if len as u64 != expected {
            return Err(PieceError::WrongSize {
                index,
                got: len,
                expected,
            });
        }
        Ok(())
    }

    /// Checks that `digest` is piece `index`'s SHA-256: the other half.
    pub fn check_piece_digest(&self, index: u32, digest: &[u8]) -> Result<(), PieceError> {
        self.piece_range(index)?;
        if digest != self.proto.piece_sha256[index as usize] {
            return Err(PieceError::WrongHash { index });
        }
        Ok(())
    }

    /// Whether `digest` is the SHA-256 of the whole file.
    pub fn is_file_sha256(&self, digest: &[u8]) -> bool {
        self.proto.file_sha256 == digest
    }

    /// The pieces a peer needs to load only blocks `layers` of a GGUF: the
    /// header, every tensor outside the blocks (embeddings, output), and the
    /// tensors of those blocks. Every piece when the manifest has no tensor
    /// layout.
    pub fn pieces_for_layers(&self, layers: Range<u32>) -> BTreeSet<u32> {
        if self.proto.tensors.is_empty() {
            return (0..self.piece_count()).collect();
        }
        let mut pieces = BTreeSet::new();
        let mut add = |start: u64, end: u64| {
            if end > start {
                let first = start / u64::from(self.proto.piece_size);
                let last = (end - 1) / u64::from(self.proto.piece_size);
                pieces.extend(first as u32..=last as u32);
            }
        };
        let first_tensor = self.proto.tensors.iter().map(|t| t.offset).min();
        add(0, first_tensor.unwrap_or(0));
        for t in &self.proto.tensors {
            let wanted = block_of(&t.name).is_none_or(|block| layers.contains(&block));
            if wanted {
                add(t.offset, t.offset + t.size);
            }
        }
        pieces
    }
}

/// The block a GGUF tensor belongs to (`blk.N.…`), if any.
fn block_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("blk.")?;
    rest.split('.').next()?.parse().ok()
}

/// The pieces each block's tensors span, in block order.
fn layer_pieces(tensors: &[(String, u64, u64)], piece_size: u32) -> Vec<pb::LayerPieces> {
    let mut spans: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    for (name, offset, size) in tensors {
        let Some(block) = block_of(name) else {
            continue;
        };
        if *size == 0 {
            continue;
        }
        let end = offset.saturating_add(*size);
        let span = spans.entry(block).or_insert((*offset, end));
        span.0 = span.0.min(*offset);
        span.1 = span.1.max(end);
    }
    let piece_size = u64::from(piece_size);
    spans
        .into_iter()
        .map(|(layer, (start, end))| {
            let first = start / piece_size;
            let last = (end - 1) / piece_size;
            pb::LayerPieces {
                layer,
                first_piece: first as u32,
                piece_count: (last - first + 1) as u32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up file: bytes that are easy to tell apart.
    fn file(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    const KIB: u32 = 1024;

    #[test]
    fn piece_size_grows_with_the_file_and_stays_in_bounds() {
        assert_eq!(piece_size_for(1), limits::MIN_PIECE_SIZE);
        assert_eq!(piece_size_for(98_353_472), 256 * KIB); // the default model
        assert_eq!(piece_size_for(40 << 30), limits::MAX_PIECE_SIZE);
        for size in [1u64, 5 << 20, 1 << 30, 100 << 30] {
            let p = piece_size_for(size);
            assert!(p.is_power_of_two());
            assert!(size.div_ceil(p.into()) <= TARGET_PIECES || p == limits::MAX_PIECE_SIZE);
        }
    }

    #[test]
    fn the_same_bytes_give_the_same_manifest_and_other_bytes_another() {
        let data = file(300_000);
        let a = Manifest::build(data.as_slice(), 300_000, None, None).unwrap();
        let b = Manifest::build(data.as_slice(), 300_000, None, None).unwrap();
        assert_eq!(a.cid(), b.cid());
        assert_eq!(a.bytes(), b.bytes());
        assert_eq!(a.piece_count(), 5); // 64 KiB pieces, the last 37,856 bytes
        assert_eq!(a.piece_range(4).unwrap(), 262_144..300_000);
        assert!(a.is_file_sha256(&Sha256::digest(&data)));
        let mut other = data.clone();
        other[123_456] ^= 1;
        let c = Manifest::build(other.as_slice(), 300_000, None, None).unwrap();
        assert_ne!(a.cid(), c.cid());
    }

    #[test]
    fn pieces_are_checked_by_size_and_hash() {
        let data = file(200_000);
        let m = Manifest::build(data.as_slice(), 200_000, None, None).unwrap();
        let piece = |i: u32| {
            let r = m.piece_range(i).unwrap();
            data[r.start as usize..r.end as usize].to_vec()
        };
        for i in 0..m.piece_count() {
            m.check_piece(i, &piece(i)).unwrap();
        }
        let mut bad = piece(1);
        bad[10] ^= 0x80;
        assert_eq!(
            m.check_piece(1, &bad),
            Err(PieceError::WrongHash { index: 1 })
        );
        assert!(matches!(
            m.check_piece(1, &piece(0)[..1000]),
            Err(PieceError::WrongSize {
                index: 1,
                got: 1000,
                ..
            })
        ));
        // Another piece's bytes are not this piece.
        assert_eq!(
            m.check_piece(2, &piece(1)[..piece(2).len()]),
            Err(PieceError::WrongHash { index: 2 })
        );
        assert_eq!(
            m.check_piece(9, &piece(0)),
            Err(PieceError::OutOfRange {
                index: 9,
                pieces: 4
            })
        );
        // The two halves, for callers that hash elsewhere.
        let digest = Sha256::digest(piece(3));
        assert_eq!(m.check_piece_size(3, piece(3).len()), Ok(()));
        assert_eq!(m.check_piece_digest(3, &digest), Ok(()));
        assert_eq!(
            m.check_piece_digest(2, &digest),
            Err(PieceError::WrongHash { index: 2 })
        );
        assert!(m.check_piece_digest(4, &digest).is_err());
        assert!(m.check_piece_size(3, piece(3).len() + 1).is_err());
    }

    #[test]
    fn received_bytes_are_accepted_only_as_the_manifest_they_hash_to() {
        let data = file(100_000);
        let m = Manifest::build(data.as_slice(), 100_000, None, None).unwrap();
        let again = Manifest::from_bytes(m.cid(), m.bytes().to_vec()).unwrap();
        assert_eq!(again.proto(), m.proto());

        let other = Manifest::build(&data[..90_000], 90_000, None, None).unwrap();
        assert!(matches!(
            Manifest::from_bytes(m.cid(), other.bytes().to_vec()),
            Err(ManifestError::WrongCid { .. })
        ));
        let junk = vec![0xff; 64];
        assert!(matches!(
            Manifest::from_bytes(&ContentId::digest(&junk), junk),
            Err(ManifestError::Decode(_))
        ));
        // Well-formed protobuf that breaks the rules: a digest per piece is missing.
        let mut broken = m.proto().clone();
        broken.piece_sha256.pop();
        let bytes = broken.encode_to_vec();
        assert!(matches!(
            Manifest::from_bytes(&ContentId::digest(&bytes), bytes),
            Err(ManifestError::Invalid(_))
        ));
        let huge = vec![0u8; MANIFEST_MAX_LEN + 1];
        assert!(matches!(
            Manifest::from_bytes(&ContentId::digest(&huge), huge),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_short_reader_an_empty_file_or_a_bad_piece_size_is_an_error() {
        let data = file(1000);
        assert!(matches!(
            Manifest::build(data.as_slice(), 2000, None, None),
            Err(ManifestError::Truncated {
                read: 0,
                expected: 2000
            })
        ));
        assert!(matches!(
            Manifest::build(data.as_slice(), 0, None, None),
            Err(ManifestError::FileSize { size: 0, .. })
        ));
        for bad in [0, 1000, 32 * 1024, 32 << 20, u32::MAX] {
            assert!(matches!(
                Manifest::build(data.as_slice(), 1000, None, Some(bad)),
                Err(ManifestError::PieceSize(b)) if b == bad
            ));
        }
    }

    #[test]
    fn layers_map_to_the_pieces_that_hold_them() {
        // A header, an embedding, two blocks and an output, 64 KiB pieces.
        let k = u64::from(64 * KIB);
        let layout = TensorLayout {
            architecture: "llama".into(),
            tensors: vec![
                ("token_embd.weight".into(), 1000, k),
                ("blk.0.attn_q.weight".into(), 1000 + k, k),
                ("blk.0.ffn_up.weight".into(), 1000 + 2 * k, 10),
                ("blk.1.attn_q.weight".into(), 1010 + 2 * k, 2 * k),
                ("output.weight".into(), 1010 + 4 * k, 100),
            ],
        };
        let size = 1110 + 4 * k;
        let data = file(size as usize);
        let m = Manifest::build(data.as_slice(), size, Some(&layout), None).unwrap();
        assert_eq!(m.piece_count(), 5);
        let layers: Vec<_> = m
            .proto()
            .layers
            .iter()
            .map(|l| (l.layer, l.first_piece, l.piece_count))
            .collect();
        assert_eq!(layers, [(0, 1, 2), (1, 2, 3)]);
        // Block 0 alone: header and embedding (pieces 0–1), block 0 (1–2), output (4).
        assert_eq!(m.pieces_for_layers(0..1), BTreeSet::from([0, 1, 2, 4]));
        assert_eq!(m.pieces_for_layers(0..2).len(), 5);
        assert_eq!(m.proto().architecture, "llama");
    }
}

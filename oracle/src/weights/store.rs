//! A model file being downloaded, on disk.
//!
//! Pieces go into `OUT.part` at their offsets as they arrive (each verified
//! first), and the record of verified pieces (`OUT.part.have`, see
//! `shared_weights::resume`) is replaced after each one, so a download killed
//! at any point starts again where it stopped. A finished file is checked
//! against the manifest's SHA-256 once more and only then renamed to `OUT`: a
//! partial file never has the final name.
//!
//! The record is not trusted blindly: on opening, every piece it lists is
//! hashed again (a crash can leave a record newer than the data it
//! describes), and pieces that fail are fetched again.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shared_weights::{Manifest, PieceError, resume};

use super::{read_exact_at, write_all_at};
use thiserror::Error;

/// Why the store cannot go on.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file could not be read or written (disk full, permissions, …).
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The output path holds a different file: it is never overwritten.
    #[error("{} exists and is not this model (its SHA-256 differs); move it away first", .0.display())]
    Occupied(PathBuf),
    /// A piece that does not fit the manifest (never written).
    #[error(transparent)]
    Piece(#[from] PieceError),
    /// Every piece was written and verified, yet the whole file's SHA-256 is
    /// wrong; the pieces that fail are dropped to be fetched again.
    #[error("the finished file does not match its SHA-256; {0} pieces will be fetched again")]
    Corrupt(usize),
    /// Every piece passes its check but the whole file does not: the manifest
    /// contradicts itself, and fetching again cannot help.
    #[error("the manifest's pieces do not make its file (its SHA-256 contradicts them)")]
    BadManifest,
    /// [`PartFile::finish`] before every piece is here.
    #[error("{0} pieces are still missing")]
    Incomplete(usize),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// What opening a download found.
#[derive(Debug)]
pub enum Opened {
    /// The output file exists and is the model: nothing to do.
    Complete,
    /// A download to carry on (from nothing, or from where it stopped).
    Partial(Box<PartFile>),
}

/// A download in progress: `OUT.part` and its record.
#[derive(Debug)]
pub struct PartFile {
    manifest: Manifest,
    out: PathBuf,
    part: PathBuf,
    record: PathBuf,
    file: File,
    have: BTreeSet<u32>,
}

impl PartFile {
    /// Opens the download of `manifest`'s model to `out`: done already, or
    /// resumed from the pieces a previous run verified (hashed again now).
    pub fn open(manifest: Manifest, out: &Path) -> Result<Opened, StoreError> {
        if out.exists() {
            if file_sha256(out)?.as_slice() == manifest.proto().file_sha256 {
                return Ok(Opened::Complete);
            }
            return Err(StoreError::Occupied(out.to_owned()));
        }
        let part = with_suffix(out, ".part");
        let record = with_suffix(out, ".part.have");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(io_error("cannot open", &part))?;
        // Sparse: the size is right from the start, the blocks come with the pieces.
        file.set_len(manifest.file_size())
            .map_err(io_error("cannot size", &part))?;
        let recorded = match fs::read(&record) {
            Ok(bytes) => resume::decode(&bytes, manifest.cid(), manifest.piece_count())
                .unwrap_or_else(|e| {
                    tracing::warn!(record = %record.display(), error = %e, "starting the download over");
                    BTreeSet::new()
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_error("cannot read", &record)(e)),
        };
        let mut store = PartFile {
            manifest,
            out: out.to_owned(),
            part,
            record,
            file,
            have: BTreeSet::new(),
        };
        for piece in recorded {
            if store
                .read_piece(piece)
                .is_ok_and(|data| store.manifest.check_piece(piece, &data).is_ok())
            {
                store.have.insert(piece);
            }
        }
        Ok(Opened::Partial(Box::new(store)))
    }

    /// The model.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Pieces verified and on disk.
    pub fn have(&self) -> &BTreeSet<u32> {
        &self.have
    }

    /// Every piece is here.
    pub fn is_full(&self) -> bool {
        self.have.len() == self.manifest.piece_count() as usize
    }

    /// Checks piece `index` and writes it (then the record). A piece that
    /// fails its check is refused and nothing is written.
    pub fn write_piece(&mut self, index: u32, data: &[u8]) -> Result<(), StoreError> {
        self.manifest.check_piece(index, data)?;
        let offset = self.manifest.piece_range(index)?.start;
        write_all_at(&self.file, data, offset).map_err(io_error("cannot write to", &self.part))?;
        self.have.insert(index);
        self.save_record()
    }

    /// Reads piece `index` back from the partial file.
    pub fn read_piece(&self, index: u32) -> Result<Vec<u8>, StoreError> {
        let range = self.manifest.piece_range(index)?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        read_exact_at(&self.file, &mut buf, range.start)
            .map_err(io_error("cannot read", &self.part))?;
        Ok(buf)
    }

    /// With every piece here: checks the whole file's SHA-256 and gives the
    /// file its final name. When the check fails, the pieces that fail theirs
    /// are dropped ([`StoreError::Corrupt`]) to be fetched again.
    pub fn finish(&mut self) -> Result<PathBuf, StoreError> {
        if !self.is_full() {
            return Err(StoreError::Incomplete(
                self.manifest.piece_count() as usize - self.have.len(),
            ));
        }
        let digest = file_sha256(&self.part)?;
        if !self.manifest.is_file_sha256(&digest) {
            let bad: Vec<u32> = self
                .have
                .iter()
                .copied()
                .filter(|p| {
                    self.read_piece(*p)
                        .map_or(true, |d| self.manifest.check_piece(*p, &d).is_err())
                })
                .collect();
            if bad.is_empty() {
                return Err(StoreError::BadManifest);
            }
            for p in &bad {
                self.have.remove(p);
            }
            self.save_record()?;
            return Err(StoreError::Corrupt(bad.len()));
        }
        self.file
            .sync_all()
            .map_err(io_error("cannot flush", &self.part))?;
        // A link, not a rename: a file that appeared at `out` meanwhile is
        // never replaced.
        match fs::hard_link(&self.part, &self.out) {
            Ok(()) => {
                let _ = fs::remove_file(&self.part);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Occupied(self.out.clone()));
            }
            // A file system without links: rename, having looked first.
            Err(_) if !self.out.exists() => {
                fs::rename(&self.part, &self.out).map_err(io_error("cannot rename", &self.part))?;
            }
            Err(_) => return Err(StoreError::Occupied(self.out.clone())),
        }
        let _ = fs::remove_file(&self.record);
        Ok(self.out.clone())
    }

    /// Replaces the record, never leaving it half written.
    fn save_record(&self) -> Result<(), StoreError> {
        let bytes = resume::encode(self.manifest.cid(), self.manifest.piece_count(), &self.have);
        write_atomically(&self.record, &bytes)
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// SHA-256 of a whole file.
pub fn file_sha256(path: &Path) -> Result<[u8; 32], StoreError> {
    let mut file = File::open(path).map_err(io_error("cannot open", path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_error("cannot read", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_error("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Writes `bytes` to `path` whole or not at all (a temporary file renamed).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = with_suffix(path, ".tmp");
    let mut f = File::create(&tmp).map_err(io_error("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io_error("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("cannot replace", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(len: usize) -> (Vec<u8>, Manifest) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + i / 977) as u8).collect();
        let m = Manifest::build(data.as_slice(), len as u64, None, None).unwrap();
        (data, m)
    }

    fn piece(data: &[u8], m: &Manifest, i: u32) -> Vec<u8> {
        let r = m.piece_range(i).unwrap();
        data[r.start as usize..r.end as usize].to_vec()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shard-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn partial(m: &Manifest, out: &Path) -> PartFile {
        match PartFile::open(m.clone(), out).unwrap() {
            Opened::Partial(p) => *p,
            Opened::Complete => panic!("expected a partial download"),
        }
    }

    #[test]
    fn pieces_in_any_order_make_the_file_and_only_then_its_name() {
        let (data, m) = model(300_000);
        let d = dir("order");
        let out = d.join("m.gguf");
        let mut p = partial(&m, &out);
        for i in [3, 0, 4, 2, 1] {
            assert!(!out.exists());
            p.write_piece(i, &piece(&data, &m, i)).unwrap();
        }
        assert!(p.is_full());
        assert_eq!(p.finish().unwrap(), out);
        drop(p);
        assert_eq!(fs::read(&out).unwrap(), data);
        assert!(!with_suffix(&out, ".part").exists() && !with_suffix(&out, ".part.have").exists());
        // Opening again finds it complete.
        assert!(matches!(PartFile::open(m, &out).unwrap(), Opened::Complete));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_bad_piece_is_refused_and_nothing_is_written() {
        let (data, m) = model(200_000);
        let d = dir("bad");
        let out = d.join("m.gguf");
        let mut p = partial(&m, &out);
        let mut bad = piece(&data, &m, 1);
        bad[0] ^= 1;
        assert!(matches!(
            p.write_piece(1, &bad),
            Err(StoreError::Piece(PieceError::WrongHash { index: 1 }))
        ));
        assert!(matches!(
            p.write_piece(9, &bad),
            Err(StoreError::Piece(PieceError::OutOfRange { .. }))
        ));
        // An oversized piece, and the same piece of another model.
        let mut long = piece(&data, &m, 1);
        long.push(0);
        assert!(matches!(
            p.write_piece(1, &long),
            Err(StoreError::Piece(PieceError::WrongSize { index: 1, .. }))
        ));
        let other: Vec<u8> = data.iter().map(|b| !b).collect();
        let other_manifest = Manifest::build(other.as_slice(), 200_000, None, None).unwrap();
        assert!(matches!(
            p.write_piece(1, &piece(&other, &other_manifest, 1)),
            Err(StoreError::Piece(PieceError::WrongHash { index: 1 }))
        ));
        assert!(matches!(p.finish(), Err(StoreError::Incomplete(4))));
        assert!(p.have().is_empty());
        assert!(p.read_piece(1).unwrap().iter().all(|b| *b == 0));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_reopened_download_keeps_its_verified_pieces_and_drops_spoiled_ones() {
        let (data, m) = model(300_000);
        let d = dir("resume");
        let out = d.join("m.gguf");
        let mut p = partial(&m, &out);
        for i in [0, 2, 3] {
            p.write_piece(i, &piece(&data, &m, i)).unwrap();
        }
        drop(p); // killed
        // Piece 2's bytes go bad on disk behind the record's back.
        let part = with_suffix(&out, ".part");
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        write_all_at(&f, b"x", m.piece_range(2).unwrap().start + 5).unwrap();
        let p = partial(&m, &out);
        assert_eq!(p.have(), &BTreeSet::from([0, 3]));
        // A damaged record starts over instead of being believed.
        fs::write(with_suffix(&out, ".part.have"), b"junk").unwrap();
        assert!(partial(&m, &out).have().is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_file_that_turns_up_at_the_output_during_the_download_is_kept() {
        let (data, m) = model(100_000);
        let d = dir("late");
        let out = d.join("m.gguf");
        let mut p = partial(&m, &out);
        for i in 0..m.piece_count() {
            p.write_piece(i, &piece(&data, &m, i)).unwrap();
        }
        fs::write(&out, b"written meanwhile").unwrap();
        assert!(matches!(p.finish(), Err(StoreError::Occupied(_))));
        assert_eq!(fs::read(&out).unwrap(), b"written meanwhile");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn another_file_at_the_output_path_is_never_overwritten() {
        let (_, m) = model(100_000);
        let d = dir("occupied");
        let out = d.join("m.gguf");
        fs::write(&out, b"my notes").unwrap();
        assert!(matches!(
            PartFile::open(m, &out),
            Err(StoreError::Occupied(_))
        ));
        assert_eq!(fs::read(&out).unwrap(), b"my notes");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_directory_that_cannot_be_written_is_a_clear_error() {
        let (_, m) = model(100_000);
        let out = Path::new("/proc/shard-cannot-write-here/m.gguf");
        let err = PartFile::open(m, out).unwrap_err();
        assert!(err.to_string().starts_with("cannot open /proc/"), "{err}");
    }
}

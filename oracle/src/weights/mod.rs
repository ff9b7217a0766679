//! Model files as content-addressed pieces, on this machine: the manifest of a
//! file on disk (`oracle manifest`, and what `oracle serve` offers peers).
//! The rules (piece sizes, checks, the picker) are `shared-weights`'.
//!
//! - [`store`]: a download on disk — pieces into `OUT.part`, the record of
//!   verified pieces beside it, the final check and rename.
//! - [`fetch`]: the downloader — a model from every peer that offers it
//!   (`oracle fetch`, and a scout without a model).

pub mod fetch;
pub mod store;

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read, Write};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use shared_model::gguf::Gguf;
use shared_weights::{Manifest, TensorLayout};

/// Builds the manifest of the model file at `path`: reads it once, hashing
/// every piece (with progress on a terminal: a large model takes minutes). A
/// GGUF's tensors and blocks are recorded; another file is cut into pieces
/// without them.
pub fn manifest_of(path: &Path) -> anyhow::Result<Manifest> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    let layout = gguf_layout(path);
    if layout.is_none() {
        tracing::info!(path = %path.display(), "not a GGUF file: its manifest has no tensor layout");
    }
    let reader = Progress::new(BufReader::with_capacity(1 << 20, file), size);
    Manifest::build(reader, size, layout.as_ref(), None)
        .with_context(|| format!("cannot build the manifest of {}", path.display()))
}

/// [`manifest_of`], kept in `cache_dir` so a restart does not hash a large
/// model again. The cache is keyed by the file's path, size and modification
/// time (what `make` and `rsync` trust too); a file changed behind that key
/// would give pieces that fail their check at every receiver, never bad data.
pub fn manifest_cached(path: &Path, cache_dir: &Path) -> anyhow::Result<Manifest> {
    use sha2::Digest as _;
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = sha2::Sha256::digest(format!(
        "{}\0{}\0{modified}",
        canonical.display(),
        meta.len()
    ));
    let cached = cache_dir.join(format!("{}.manifest", hex::encode(&key[..16])));
    if let Ok(bytes) = std::fs::read(&cached) {
        let cid = shared_proto::ContentId::digest(&bytes);
        match Manifest::from_bytes(&cid, bytes) {
            Ok(m) if m.file_size() == meta.len() => return Ok(m),
            _ => tracing::warn!(cache = %cached.display(), "ignoring a damaged cached manifest"),
        }
    }
    let manifest = manifest_of(path)?;
    let saved = std::fs::create_dir_all(cache_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(store::write_atomically(&cached, manifest.bytes())?));
    if let Err(e) = saved {
        // Only the next start pays for it.
        tracing::warn!(cache = %cached.display(), error = %e, "cannot cache the manifest");
    }
    Ok(manifest)
}

/// Piece `index` of the model file at `path`, checked against its manifest
/// before it goes anywhere: a file changed on disk since the manifest was made
/// is an error, never bytes sent under the piece's name.
pub fn read_checked_piece(path: &Path, manifest: &Manifest, index: u32) -> anyhow::Result<Vec<u8>> {
    let range = manifest.piece_range(index)?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    read_exact_at(&file, &mut buf, range.start)
        .with_context(|| format!("cannot read {}", path.display()))?;
    manifest.check_piece(index, &buf).with_context(|| {
        format!(
            "{} changed since its manifest was made; restart to serve it again",
            path.display()
        )
    })?;
    Ok(buf)
}

/// Fills `buf` from `offset` of `file` without moving a shared cursor.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

/// Writes all of `buf` at `offset` of `file`.
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(buf)
    }
}

/// The tensor layout of a GGUF file; `None` when it is not one.
fn gguf_layout(path: &Path) -> Option<TensorLayout> {
    let gguf = Gguf::open(path).ok()?;
    let architecture = gguf
        .metadata
        .str("general.architecture")
        .unwrap_or_default()
        .to_owned();
    Some(TensorLayout {
        architecture,
        tensors: gguf
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.offset, t.size))
            .collect(),
    })
}

/// A reader that shows how much of the file has been hashed, on a terminal.
struct Progress<R> {
    inner: R,
    total: u64,
    read: u64,
    shown_percent: u64,
    show: bool,
}

impl<R> Progress<R> {
    fn new(inner: R, total: u64) -> Self {
        Progress {
            inner,
            total,
            read: 0,
            shown_percent: 0,
            // Small files hash in a blink: no progress line for them.
            show: io::stderr().is_terminal() && total > 256 << 20,
        }
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.show {
            let percent = self.read * 100 / self.total.max(1);
            if percent > self.shown_percent {
                self.shown_percent = percent;
                let gib = |b: u64| b as f64 / f64::from(1 << 30);
                let mut err = io::stderr();
                let _ = write!(
                    err,
                    "\rhashing {:.2} of {:.2} GiB ({percent}%)",
                    gib(self.read),
                    gib(self.total)
                );
                if percent == 100 {
                    let _ = writeln!(err);
                }
            }
        }
        Ok(n)
    }
}

/// `oracle manifest --json`: the whole manifest, digests in hex. A contract
/// for other tools, like every JSON the command line prints.
#[derive(Serialize)]
pub struct ManifestJson {
    /// The model's content id (hex multihash): its name on the network.
    pub cid: String,
    /// The manifest format.
    pub version: u32,
    /// File size, bytes.
    pub file_size: u64,
    /// SHA-256 of the file, hex.
    pub file_sha256: String,
    /// Bytes per piece.
    pub piece_size: u32,
    /// SHA-256 of each piece, hex.
    pub piece_sha256: Vec<String>,
    /// GGUF architecture.
    pub architecture: String,
    /// Tensors: name, offset, size.
    pub tensors: Vec<(String, u64, u64)>,
    /// Blocks: layer, first piece, piece count.
    pub layers: Vec<(u32, u32, u32)>,
}

impl From<&Manifest> for ManifestJson {
    fn from(m: &Manifest) -> Self {
        let p = m.proto();
        ManifestJson {
            cid: m.cid().to_string(),
            version: p.version,
            file_size: p.file_size,
            file_sha256: hex::encode(&p.file_sha256),
            piece_size: p.piece_size,
            piece_sha256: p.piece_sha256.iter().map(hex::encode).collect(),
            architecture: p.architecture.clone(),
            tensors: p
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.offset, t.size))
                .collect(),
            layers: p
                .layers
                .iter()
                .map(|l| (l.layer, l.first_piece, l.piece_count))
                .collect(),
        }
    }
}

/// `oracle manifest`: a summary, then the content id as the last line (or the
/// whole manifest as JSON).
pub fn print_manifest(path: &Path, json: bool) -> anyhow::Result<()> {
    let manifest = manifest_of(path)?;
    if json {
        println!("{}", serde_json::to_string(&ManifestJson::from(&manifest))?);
        return Ok(());
    }
    let p = manifest.proto();
    println!("file          {} ({} bytes)", path.display(), p.file_size);
    println!("sha256        {}", hex::encode(&p.file_sha256));
    println!(
        "pieces        {} of {} KiB",
        manifest.piece_count(),
        p.piece_size / 1024
    );
    if !p.tensors.is_empty() {
        println!(
            "layout        {}, {} tensors, {} blocks",
            if p.architecture.is_empty() {
                "?"
            } else {
                &p.architecture
            },
            p.tensors.len(),
            p.layers.len()
        );
    }
    println!("{}", manifest.cid());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_manifest_is_reused_and_a_damaged_one_is_built_again() {
        let dir = std::env::temp_dir().join(format!("shard-manifest-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.bin");
        std::fs::write(&file, vec![7u8; 150_000]).unwrap();
        let cache = dir.join("manifests");
        let first = manifest_cached(&file, &cache).unwrap();
        let entries: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(std::fs::read(&entries[0]).unwrap(), first.bytes());
        assert_eq!(manifest_cached(&file, &cache).unwrap().cid(), first.cid());
        // A torn cache entry is not believed: the manifest is built again.
        std::fs::write(&entries[0], b"torn").unwrap();
        assert_eq!(manifest_cached(&file, &cache).unwrap().cid(), first.cid());
        assert_eq!(std::fs::read(&entries[0]).unwrap(), first.bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

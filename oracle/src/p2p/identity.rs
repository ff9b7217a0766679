//! The node's identity on disk: its libp2p key and its WebRTC certificate,
//! both in the data directory with mode 0600, so the peer id and the
//! webrtc-direct certhash stay the same across restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use thiserror::Error;

/// File name of the node key (libp2p protobuf encoding).
pub const KEY_FILE: &str = "node.key";
/// File name of the WebRTC certificate (PEM, with its private key).
pub const CERT_FILE: &str = "webrtc-cert.pem";

/// A key or certificate that cannot be loaded or stored.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but holds no usable key or certificate.
    #[error("{path} is corrupt ({detail}); move it away to make a new identity")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` readable by the owner only, atomically (a
/// temporary file renamed into place), so a crash leaves the old file or the
/// new one, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The key in `dir/node.key`, made and stored on first use.
pub fn load_or_create_key(dir: &Path) -> Result<Keypair, IdentityError> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| IdentityError::Corrupt {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            write_private(&path, &bytes)?;
            tracing::info!(path = %path.display(), peer_id = %key.public().to_peer_id(), "made a new node key");
            Ok(key)
        }
        Err(e) => Err(IdentityError::Io { path, source: e }),
    }
}

/// The WebRTC certificate in `dir/webrtc-cert.pem`, made and stored on first use.
pub fn load_or_create_certificate(
    dir: &Path,
) -> Result<libp2p_webrtc::tokio::Certificate, IdentityError> {
    let path = dir.join(CERT_FILE);
    let corrupt = |detail: String| IdentityError::Corrupt {
        path: path.clone(),
        detail,
    };
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            libp2p_webrtc::tokio::Certificate::from_pem(&pem).map_err(|e| corrupt(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let cert = libp2p_webrtc::tokio::Certificate::generate(&mut rand::rng())
                .map_err(|e| corrupt(e.to_string()))?;
            write_private(&path, cert.serialize_pem().as_bytes())?;
            Ok(cert)
        }
        Err(e) => Err(IdentityError::Io { path, source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_survives_a_restart_and_is_private() {
        let dir = std::env::temp_dir().join(format!("shard-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let a = load_or_create_key(&dir).unwrap();
        let b = load_or_create_key(&dir).unwrap();
        assert_eq!(a.public(), b.public());
        let c1 = load_or_create_certificate(&dir).unwrap();
        let c2 = load_or_create_certificate(&dir).unwrap();
        assert_eq!(c1.fingerprint(), c2.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [KEY_FILE, CERT_FILE] {
                let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        std::fs::write(dir.join(KEY_FILE), b"garbage").unwrap();
        assert!(matches!(
            load_or_create_key(&dir),
            Err(IdentityError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Node identity: the ed25519 key pair whose public half is the node's [`NodeId`].
//!
//! The key is created on first start and persisted as a PKCS#8 PEM file with mode
//! 0600. Writes are atomic (temp file, fsync, rename, fsync of the directory) so a
//! crash mid-write can never leave a node with a truncated key and a new identity
//! on the next start.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use rand_core::OsRng;

use crate::topology::NodeId;

/// Why a node identity could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file could not be read (`NotFound` on first start).
    #[error("reading node key {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The I/O error; its kind tells a missing file from other failures.
        source: std::io::Error,
    },
    /// Writing the key file (or its temp file or directory) failed.
    #[error("writing node key {path}: {source}")]
    Write {
        /// The key file being written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's content is not an ed25519 key in PKCS#8 PEM.
    #[error("node key {path} is not an ed25519 PKCS#8 PEM key: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What the PKCS#8 decoder objected to.
        reason: String,
    },
    /// The key file is readable by group or others, so it is refused (Unix only).
    #[error(
        "node key {path} has mode {mode:o}; it must not be readable by group or others \
         (run `chmod 600 {path}`)"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o777`).
        mode: u32,
    },
    /// The key could not be encoded as PKCS#8 (DER or PEM).
    #[error("encoding node key: {0}")]
    Encode(String),
}

/// A node's private identity. Cloning copies the secret; keep clones in-process.
#[derive(Clone)]
pub struct NodeIdentity {
    key: SigningKey,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// A fresh random identity (not persisted).
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut OsRng),
        }
    }

    /// Wraps an existing ed25519 key (not persisted).
    pub fn from_signing_key(key: SigningKey) -> Self {
        Self { key }
    }

    /// The public identity every peer checks us against.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// The secret key, for signing records as this node.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// PKCS#8 v2 DER of the key, the form rcgen and rustls consume.
    pub(crate) fn pkcs8_der(&self) -> Result<Vec<u8>, IdentityError> {
        self.key
            .to_pkcs8_der()
            .map(|doc| doc.as_bytes().to_vec())
            .map_err(|e| IdentityError::Encode(e.to_string()))
    }

    /// Loads the key at `path`, or creates and persists a new one if the file does
    /// not exist yet (first start).
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        match Self::load(path) {
            Ok(id) => Ok(id),
            Err(IdentityError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let id = Self::generate();
                id.save(path)?;
                tracing::info!(
                    node_id = %id.node_id(),
                    path = %path.display(),
                    "created node identity on first start"
                );
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing key, refusing files other users could read.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let read_err = |source| IdentityError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::InsecurePermissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let pem = fs::read_to_string(path).map_err(read_err)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| IdentityError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { key })
    }

    /// Persists the key atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| IdentityError::Encode(e.to_string()))?;
        atomic_write_private(path, pem.as_bytes())
    }
}

/// temp + fsync + rename + fsync(dir): the file is either the old content or the
/// new one, never a prefix, and never world-readable even for an instant.
fn atomic_write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let write_err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(write_err)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "node.key".to_owned());
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    // A leftover temp file from a crashed earlier attempt is garbage; replace it.
    let _ = fs::remove_file(&tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // The rename is only durable once the directory entry is on disk.
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reloaded_with_the_same_node_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/node.key");
        let first = NodeIdentity::load_or_create(&path).expect("create");
        let second = NodeIdentity::load_or_create(&path).expect("reload");
        assert_eq!(first.node_id(), second.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // No temp file is left behind.
        let leftovers: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("readdir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        NodeIdentity::generate().save(&path).expect("save");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = NodeIdentity::load(&path).expect_err("must refuse");
        assert!(matches!(
            err,
            IdentityError::InsecurePermissions { mode: 0o644, .. }
        ));
    }

    #[test]
    fn garbage_key_file_is_reported_as_malformed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        atomic_write_private(&path, b"not a key").expect("write");
        assert!(matches!(
            NodeIdentity::load(&path),
            Err(IdentityError::Malformed { .. })
        ));
    }
}

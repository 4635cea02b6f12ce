//! Signing keys on disk: PKCS#8 PEM, written atomically and readable only by the owner.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;

/// Why a key, or another file written through [`write_atomic`], could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ed25519 PKCS#8 PEM private key, or the key would not encode.
    #[error("{path}: not an ed25519 PKCS#8 PEM private key: {reason}")]
    Format {
        /// The file concerned.
        path: String,
        /// What the PKCS#8 codec reported.
        reason: String,
    },
}

/// A fresh key from the operating system's RNG.
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// Stores `key` as PKCS#8 PEM, atomically, readable only by the owner (mode 0600).
pub fn write_private_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| KeyFileError::Format {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    write_atomic(path, pem.as_bytes(), 0o600)
}

/// Loads an ed25519 key from a PKCS#8 PEM file.
pub fn read_private_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyFileError::Format {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Writes `bytes` to `path` via a temp file, fsync and rename, so a crash
/// leaves either the old file or the new one, never half of either.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    write_atomic_observed(path, bytes, mode, &mut |_| {})
}

/// The points of an atomic write a crash test can stop at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePoint {
    /// The temp file is written and fsynced; the target is still the old file.
    TempSynced,
    /// The rename is done; the folder is not fsynced yet.
    Renamed,
}

/// [`write_atomic`], calling `at` at each [`WritePoint`].
pub fn write_atomic_observed(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    at: &mut dyn FnMut(WritePoint),
) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    // A leftover temp file (a crash, a reused pid) could carry wider
    // permissions than `mode`; start from a fresh file so `mode` applies.
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        at(WritePoint::TempSynced);
        fs::rename(&tmp, path)?;
        at(WritePoint::Renamed);
        Ok(())
    })();
    if let Err(e) = written {
        // Never leave a partial temp file behind (a full disk, say).
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Ok(d) = fs::File::open(dir) {
        // Persist the rename itself; failure here only weakens durability, not correctness.
        let _ = d.sync_all();
    }
    Ok(())
}

/// One generated role key.
pub struct RoleKey {
    /// Key id in the trust root, `<role>-<n>`.
    pub id: String,
    /// The role the key was generated for.
    pub role: crate::trust::Role,
    /// The private key.
    pub key: SigningKey,
}

/// How many keys each role gets and how many must sign.
#[derive(Clone, Debug)]
pub struct TrustRootPlan {
    /// How many root keys to generate.
    pub root_keys: u32,
    /// How many root keys must sign a new trust root.
    pub root_threshold: u32,
    /// How many control keys to generate.
    pub control_keys: u32,
    /// How many control keys must sign a control record.
    pub control_threshold: u32,
    /// Version of the generated trust root.
    pub version: u64,
    /// Unix seconds.
    pub expires_at: i64,
}

impl TrustRootPlan {
    /// One key per role, threshold 1, version 1, expiring at `expires_at`.
    pub fn single_keys(expires_at: i64) -> Self {
        TrustRootPlan {
            root_keys: 1,
            root_threshold: 1,
            control_keys: 1,
            control_threshold: 1,
            version: 1,
            expires_at,
        }
    }
}

/// Generates fresh role keys and the trust-root spec naming them. Key ids are
/// `<role>-<n>` and every key may sign fleet-wide (`*`).
pub fn generate_trust_root(plan: &TrustRootPlan) -> (crate::kinds::TrustRootSpec, Vec<RoleKey>) {
    use crate::kinds::{RoleKeys, TrustKey, TrustRoles, TrustRootSpec};
    use crate::trust::Role;
    let mut keys = Vec::new();
    let mut role_keys = |role: Role, n: u32, threshold: u32| {
        let ids: Vec<String> = (1..=n.max(1))
            .map(|i| format!("{}-{i}", role.as_str()))
            .collect();
        for id in &ids {
            keys.push(RoleKey {
                id: id.clone(),
                role,
                key: generate(),
            });
        }
        RoleKeys {
            key_ids: ids,
            threshold: threshold.clamp(1, n.max(1)),
        }
    };
    let roles = TrustRoles {
        root: role_keys(Role::Root, plan.root_keys, plan.root_threshold),
        control: role_keys(Role::Control, plan.control_keys, plan.control_threshold),
        orchestrator: role_keys(Role::Orchestrator, 1, 1),
        recovery_admin: role_keys(Role::RecoveryAdmin, 1, 1),
    };
    let spec = TrustRootSpec {
        version: plan.version,
        expires_at: crate::time::format_rfc3339(plan.expires_at),
        keys: keys
            .iter()
            .map(|k| TrustKey {
                id: k.id.clone(),
                public_key: hex::encode(k.key.verifying_key().to_bytes()),
                scope: Vec::new(),
            })
            .collect(),
        roles,
    };
    (spec, keys)
}

/// Why a trust-root manifest file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TrustFileError {
    /// The file could not be loaded or fails validation (its first error).
    #[error("trust root: {0}")]
    Manifest(Box<crate::manifest::ManifestError>),
    /// The manifest holds no `TrustRoot` object.
    #[error("{path} holds no TrustRoot")]
    NoTrustRoot {
        /// The file read.
        path: String,
    },
    /// The manifest could not be encoded or written.
    #[error("writing trust root {path}: {reason}")]
    Write {
        /// The file written.
        path: String,
        /// Why encoding or writing failed.
        reason: String,
    },
}

/// Writes `spec` as the `TrustRoot` manifest (named `fleet`) nodes are bootstrapped with.
pub fn write_trust_root_manifest(
    path: &Path,
    spec: &crate::kinds::TrustRootSpec,
) -> Result<(), TrustFileError> {
    let write_err = |reason: String| TrustFileError::Write {
        path: path.display().to_string(),
        reason,
    };
    let manifest = serde_json::json!({
        "apiVersion": crate::kinds::API_VERSION,
        "kind": "TrustRoot",
        "metadata": {"name": "fleet"},
        "spec": spec,
    });
    let yaml = serde_norway::to_string(&manifest).map_err(|e| write_err(e.to_string()))?;
    write_atomic(path, yaml.as_bytes(), 0o644).map_err(|e| write_err(e.to_string()))
}

/// Reads the first `TrustRoot` of a manifest file, strictly validated.
pub fn read_trust_root_manifest(
    path: &Path,
) -> Result<crate::kinds::TrustRootSpec, TrustFileError> {
    let report = crate::manifest::load_path(path);
    if let Some(e) = report.errors.into_iter().next() {
        return Err(TrustFileError::Manifest(Box::new(e)));
    }
    report
        .objects
        .into_iter()
        .find_map(|o| match o.spec {
            crate::kinds::Spec::TrustRoot(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| TrustFileError::NoTrustRoot {
            path: path.display().to_string(),
        })
}

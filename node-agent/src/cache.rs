//! The persisted peer cache: the node's whole directory (admitted envelopes,
//! byte-for-byte) plus its local runtime observations, so that after a restart
//! it can reach its peers without the control plane.
//!
//! One JSON file written atomically (temp file, fsync, rename) with a SHA-256
//! over its content. A file that fails to parse or to match its checksum is
//! moved aside (`peer-cache.json.corrupt-<ms>`) and the node starts empty and
//! rebuilds from peers; it never crashes on a bad cache.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fabric::path::PathKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The cache's file name inside the node's state directory.
pub const CACHE_FILE: &str = "peer-cache.json";
const FORMAT: u32 = 1;

/// What this node observed about one peer. Local facts, never gossiped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Unix milliseconds of the last message or probe answer from the peer.
    pub last_seen_ms: Option<u64>,
    /// Round-trip time to the peer in milliseconds, as the transport last
    /// measured it after a gossip send (`None` when no connection is up).
    pub rtt_ms: Option<u64>,
    /// How the node last reached the peer (direct or through a relay).
    pub path: Option<PathKind>,
    /// Unix milliseconds of the last probe the peer answered as a service provider.
    #[serde(default)]
    pub last_ok_probe_ms: Option<u64>,
    /// Endpoint health: address -> consecutive failures (0 = last attempt worked).
    #[serde(default)]
    pub endpoint_failures: BTreeMap<String, u32>,
}

/// What the cache persists: the node's admitted records and its observations
/// of peers (the checksummed part of the file).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheContent {
    /// Hex of each admitted envelope's bytes.
    pub records: Vec<String>,
    /// Keyed by node name.
    pub observations: BTreeMap<String, Observation>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    sha256: String,
    content: CacheContent,
}

/// Why [`save`] could not write the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The atomic write (temp file, fsync, rename) failed.
    #[error("writing peer cache {path}: {source}")]
    Write {
        /// The cache file being written.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The content could not be serialized to JSON.
    #[error("encoding peer cache: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    /// There was no cache file; the node starts empty.
    Fresh,
    /// The file parsed and matched its checksum; this is its content.
    Restored(CacheContent),
    /// The file was unusable and has been moved to `moved_to`.
    SetAside {
        /// Why the file was refused (unreadable, not a peer cache, unknown
        /// format, checksum mismatch).
        reason: String,
        /// Where the file now is (`peer-cache.json.corrupt-<ms>`).
        moved_to: PathBuf,
    },
}

/// The cache file's path in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(CACHE_FILE)
}

fn checksum(content: &CacheContent) -> Result<String, serde_json::Error> {
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(content)?)))
}

/// Writes `content` atomically (temp file, fsync, rename; mode 0600) with
/// its format number and SHA-256 checksum.
pub fn save(path: &Path, content: &CacheContent) -> Result<(), CacheError> {
    let file = CacheFile {
        format: FORMAT,
        sha256: checksum(content)?,
        content: content.clone(),
    };
    let bytes = serde_json::to_vec(&file)?;
    fabric_schemas::keys::write_atomic(path, &bytes, 0o600).map_err(|e| CacheError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Loads the cache for the owning agent; an unusable file is moved aside.
pub fn load(path: &Path, now_ms: u64) -> Loaded {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Fresh,
        Err(e) => return set_aside(path, format!("unreadable: {e}"), now_ms),
    };
    let file: CacheFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => return set_aside(path, format!("not a peer cache: {e}"), now_ms),
    };
    if file.format != FORMAT {
        return set_aside(path, format!("unknown format {}", file.format), now_ms);
    }
    match checksum(&file.content) {
        Ok(sum) if sum == file.sha256 => Loaded::Restored(file.content),
        _ => set_aside(
            path,
            "checksum mismatch (torn or edited file)".into(),
            now_ms,
        ),
    }
}

fn set_aside(path: &Path, reason: String, now_ms: u64) -> Loaded {
    let moved_to = path.with_extension(format!("json.corrupt-{now_ms}"));
    if let Err(e) = std::fs::rename(path, &moved_to) {
        tracing::warn!(path = %path.display(), error = %e, "could not move corrupt peer cache aside");
    }
    Loaded::SetAside { reason, moved_to }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path_in(dir.path());
        let mut c = CacheContent::default();
        c.records.push("00ff".into());
        c.observations.insert(
            "n".into(),
            Observation {
                rtt_ms: Some(3),
                ..Default::default()
            },
        );
        save(&p, &c).expect("save");
        match load(&p, 1) {
            Loaded::Restored(back) => assert_eq!(back, c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_file_is_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(load(&path_in(dir.path()), 1), Loaded::Fresh));
    }

    #[test]
    fn garbage_and_edited_files_are_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = path_in(dir.path());
        std::fs::write(&p, b"{not json").expect("write");
        match load(&p, 7) {
            Loaded::SetAside { moved_to, .. } => {
                assert!(moved_to.exists());
                assert!(!p.exists());
            }
            other => panic!("{other:?}"),
        }
        save(
            &p,
            &CacheContent {
                records: vec!["aa".into()],
                ..Default::default()
            },
        )
        .expect("save");
        let text = std::fs::read_to_string(&p)
            .expect("read")
            .replace("\"aa\"", "\"ab\"");
        std::fs::write(&p, text).expect("write");
        match load(&p, 8) {
            Loaded::SetAside { reason, .. } => assert!(reason.contains("checksum"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}

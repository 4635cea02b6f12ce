//! The node's content-addressed artifact store: `<state>/artifacts/<sha256>/`.
//!
//! A fetch writes verified pieces into `partial` (preallocated to the signed
//! size, never longer) and records them in `progress.json` only after the
//! piece's bytes are fsynced, so a crash never marks a piece it did not keep
//! and a restarted fetch skips every piece already verified. When every
//! piece is in, the whole file is checked (length and sha256) and only then
//! renamed to `artifact`: a file named `artifact` is always whole and
//! verified, which is what "staged" means. Nothing is half-staged.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fabric_schemas::keys::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::faults;

/// The piece size used when an intent pins no pieces (only the whole file
/// can be checked then).
pub const DEFAULT_PIECE_SIZE: u64 = 1024 * 1024;

/// What is wrong with an artifact or a piece.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A piece did not hash to its pinned digest.
    #[error("piece {index} of {sha256} does not match its pinned digest")]
    BadPiece {
        /// The artifact.
        sha256: String,
        /// The piece.
        index: u64,
    },
    /// A piece had the wrong length.
    #[error("piece {index} of {sha256} is {got} bytes, expected {want}")]
    PieceLength {
        /// The artifact.
        sha256: String,
        /// The piece.
        index: u64,
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
    /// A piece list that does not hash to the intent's root.
    #[error("the piece list offered for {sha256} does not match the signed root")]
    BadPieceList {
        /// The artifact.
        sha256: String,
    },
    /// The whole file is not what the intent names.
    #[error("artifact {sha256}: the whole file is {got_size} bytes with sha256 {got_sha256}, the intent names {want_size} bytes")]
    Mismatch {
        /// The artifact the intent names.
        sha256: String,
        /// Its signed size.
        want_size: u64,
        /// The size of what was assembled.
        got_size: u64,
        /// The hash of what was assembled.
        got_sha256: String,
    },
    /// The file system failed.
    #[error("artifact store {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ArtifactError {
    /// A stable label for status and heartbeats.
    pub fn reason(&self) -> &'static str {
        match self {
            ArtifactError::BadPiece { .. } => "bad_piece",
            ArtifactError::PieceLength { .. } => "piece_length",
            ArtifactError::BadPieceList { .. } => "bad_piece_list",
            ArtifactError::Mismatch { .. } => "sha256_mismatch",
            ArtifactError::Io { .. } => "store_io",
        }
    }
}

/// How an artifact of `size` bytes is cut into pieces of `piece_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The artifact's size.
    pub size: u64,
    /// Bytes per piece (the last may be shorter).
    pub piece_size: u64,
}

impl Layout {
    /// The layout; a zero piece size is taken as [`DEFAULT_PIECE_SIZE`].
    pub fn new(size: u64, piece_size: u64) -> Layout {
        Layout {
            size,
            piece_size: if piece_size == 0 {
                DEFAULT_PIECE_SIZE
            } else {
                piece_size
            },
        }
    }

    /// How many pieces.
    pub fn count(&self) -> u64 {
        self.size.div_ceil(self.piece_size)
    }

    /// Offset and length of piece `i`.
    pub fn range(&self, i: u64) -> (u64, u64) {
        let start = i.saturating_mul(self.piece_size).min(self.size);
        let end = start.saturating_add(self.piece_size).min(self.size);
        (start, end - start)
    }
}

/// The sha256 of a byte string.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The root pinning a piece list: sha256 over the digests in order.
pub fn piece_root(digests: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    h.finalize().into()
}

/// Checks one piece against its pinned digest and the layout.
pub fn verify_piece(
    sha: &str,
    layout: &Layout,
    digests: Option<&[[u8; 32]]>,
    index: u64,
    bytes: &[u8],
) -> Result<(), ArtifactError> {
    let pinned = match digests {
        Some(d) => Some(
            d.get(index as usize)
                .copied()
                .ok_or(ArtifactError::BadPiece {
                    sha256: sha.to_owned(),
                    index,
                })?,
        ),
        None => None,
    };
    check_piece(sha, layout, pinned, index, bytes)
}

/// [`verify_piece`] against the one pinned digest of piece `index`.
fn check_piece(
    sha: &str,
    layout: &Layout,
    pinned: Option<[u8; 32]>,
    index: u64,
    bytes: &[u8],
) -> Result<(), ArtifactError> {
    let (_, want) = layout.range(index);
    if bytes.len() as u64 != want {
        return Err(ArtifactError::PieceLength {
            sha256: sha.to_owned(),
            index,
            got: bytes.len() as u64,
            want,
        });
    }
    if let Some(d) = pinned {
        if d != sha256(bytes) {
            return Err(ArtifactError::BadPiece {
                sha256: sha.to_owned(),
                index,
            });
        }
    }
    Ok(())
}

/// `progress.json` is rewritten at most once per this many pieces...
pub const SAVE_EVERY_PIECES: u32 = 16;
/// ... or once this long has passed since the last save (and always when
/// the last piece is in). A piece written but not yet recorded is fetched
/// again after a crash: only recorded pieces are trusted, so batching costs
/// at most these pieces of refetch and saves rewriting the whole list for
/// every piece.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A fetch in progress, persisted beside `partial`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The layout the fetch uses.
    pub layout: Layout,
    /// The pinned piece digests (hex), when the intent pins pieces.
    #[serde(default)]
    pub digests: Vec<String>,
    /// Which pieces are written, fsynced and verified.
    pub have: Vec<bool>,
    /// Pieces recorded in `have` since the last save.
    #[serde(skip)]
    unsaved: u32,
    /// When `progress.json` was last written.
    #[serde(skip)]
    saved_at: Option<std::time::Instant>,
}

impl Progress {
    fn new(layout: Layout, digests: Option<&[[u8; 32]]>) -> Progress {
        Progress {
            layout,
            digests: digests
                .map(|d| d.iter().map(hex::encode).collect())
                .unwrap_or_default(),
            have: vec![false; layout.count() as usize],
            unsaved: 0,
            saved_at: None,
        }
    }

    /// The pinned digest of piece `index`, when pieces are pinned: `Err`
    /// when pinned but unreadable or missing.
    fn digest(&self, index: u64) -> Result<Option<[u8; 32]>, ()> {
        if self.digests.is_empty() {
            return Ok(None);
        }
        self.digests
            .get(index as usize)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .map(Some)
            .ok_or(())
    }

    /// The pinned digests, decoded.
    pub fn digests(&self) -> Option<Vec<[u8; 32]>> {
        if self.digests.is_empty() {
            return None;
        }
        self.digests
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
            .collect()
    }

    /// Pieces still missing.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.have.len() as u64)
            .filter(|i| !self.have[*i as usize])
            .collect()
    }
}

/// The store of one node.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// The store under `root` (created on first write).
    pub fn new(root: &Path) -> ArtifactStore {
        ArtifactStore {
            root: root.to_path_buf(),
        }
    }

    fn dir(&self, sha: &str) -> PathBuf {
        self.root.join(sha)
    }

    /// Where the staged (whole, verified) artifact is.
    pub fn staged_path(&self, sha: &str) -> PathBuf {
        self.dir(sha).join("artifact")
    }

    fn partial_path(&self, sha: &str) -> PathBuf {
        self.dir(sha).join("partial")
    }

    fn progress_path(&self, sha: &str) -> PathBuf {
        self.dir(sha).join("progress.json")
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> ArtifactError + '_ {
        move |source| ArtifactError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Whether `sha` is staged with the right size. Only a verified file is
    /// ever renamed to `artifact`, so the size check guards against a store
    /// someone else edited, not against our own crashes.
    pub fn is_staged(&self, sha: &str, size: u64) -> bool {
        fs::metadata(self.staged_path(sha)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// The progress of a fetch of `sha`, if one was started.
    pub fn progress(&self, sha: &str) -> Option<Progress> {
        let bytes = fs::read(self.progress_path(sha)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Starts (or resumes) a fetch of `sha`. A recorded fetch with the same
    /// layout and digests is resumed; anything else starts over.
    pub fn begin(
        &self,
        sha: &str,
        layout: Layout,
        digests: Option<&[[u8; 32]]>,
    ) -> Result<Progress, ArtifactError> {
        let fresh = Progress::new(layout, digests);
        if let Some(p) = self.progress(sha) {
            let partial_ok =
                fs::metadata(self.partial_path(sha)).is_ok_and(|m| m.len() == layout.size);
            if p.layout == fresh.layout && p.digests == fresh.digests && partial_ok {
                return Ok(p);
            }
        }
        let dir = self.dir(sha);
        fs::create_dir_all(&dir).map_err(Self::io(&dir))?;
        // The old progress goes before the partial is truncated: a crash in
        // between must not leave pieces marked whose bytes are gone.
        match fs::remove_file(self.progress_path(sha)) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Self::io(&self.progress_path(sha))(e)),
        }
        let partial = self.partial_path(sha);
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&partial)
            .map_err(Self::io(&partial))?;
        // Never more than the signed size: the file is exactly that long.
        f.set_len(layout.size).map_err(Self::io(&partial))?;
        f.sync_all().map_err(Self::io(&partial))?;
        self.save_progress(sha, &fresh)?;
        Ok(fresh)
    }

    fn save_progress(&self, sha: &str, p: &Progress) -> Result<(), ArtifactError> {
        let path = self.progress_path(sha);
        let bytes = serde_json::to_vec(p).map_err(|e| ArtifactError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes, 0o644).map_err(|e| ArtifactError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Keeps one verified piece: its bytes are written and fsynced before
    /// the progress says it is there.
    pub fn put_piece(
        &self,
        sha: &str,
        progress: &mut Progress,
        index: u64,
        bytes: &[u8],
    ) -> Result<(), ArtifactError> {
        let pinned = progress
            .digest(index)
            .map_err(|()| ArtifactError::BadPiece {
                sha256: sha.to_owned(),
                index,
            })?;
        check_piece(sha, &progress.layout, pinned, index, bytes)?;
        let partial = self.partial_path(sha);
        let f = OpenOptions::new()
            .write(true)
            .open(&partial)
            .map_err(Self::io(&partial))?;
        let (offset, _) = progress.layout.range(index);
        f.write_all_at(bytes, offset).map_err(Self::io(&partial))?;
        f.sync_data().map_err(Self::io(&partial))?;
        faults::point("artifact:piece_written");
        if let Some(h) = progress.have.get_mut(index as usize) {
            *h = true;
        }
        progress.unsaved += 1;
        let due = progress.unsaved >= SAVE_EVERY_PIECES
            || progress.saved_at.is_none_or(|t| t.elapsed() >= SAVE_EVERY)
            || progress.have.iter().all(|h| *h);
        if due {
            self.flush(sha, progress)?;
        }
        Ok(())
    }

    /// Records every piece put so far in `progress.json` (a fetch that
    /// stops early calls it, so a resume keeps them).
    pub fn flush(&self, sha: &str, progress: &mut Progress) -> Result<(), ArtifactError> {
        if progress.unsaved == 0 {
            return Ok(());
        }
        self.save_progress(sha, progress)?;
        progress.unsaved = 0;
        progress.saved_at = Some(std::time::Instant::now());
        faults::point("artifact:progress_saved");
        Ok(())
    }

    /// Once every piece is in: checks the whole file and stages it. A file
    /// that is not what the intent names is deleted with its progress (it
    /// will be fetched again from other sources) and the mismatch returned.
    pub fn finish(&self, sha: &str, size: u64) -> Result<PathBuf, ArtifactError> {
        let partial = self.partial_path(sha);
        let (got_size, got) = hash_file(&partial)?;
        if got_size != size || got != sha {
            let _ = fs::remove_file(&partial);
            let _ = fs::remove_file(self.progress_path(sha));
            return Err(ArtifactError::Mismatch {
                sha256: sha.to_owned(),
                want_size: size,
                got_size,
                got_sha256: got,
            });
        }
        faults::point("artifact:verified");
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o444))
            .map_err(Self::io(&partial))?;
        let staged = self.staged_path(sha);
        fs::rename(&partial, &staged).map_err(Self::io(&staged))?;
        sync_dir(&self.dir(sha))?;
        let _ = fs::remove_file(self.progress_path(sha));
        Ok(staged)
    }

    /// Copies a local file into the store as a staged artifact (what
    /// `fabricctl artifact push` does on an `update-store` node). Refuses a
    /// file whose hash or size is not `expect` when that is given.
    pub fn import(
        &self,
        file: &Path,
        expect: Option<(&str, u64)>,
    ) -> Result<(String, u64), ArtifactError> {
        let (size, sha) = hash_file(file)?;
        if let Some((want_sha, want_size)) = expect {
            if want_sha != sha || want_size != size {
                return Err(ArtifactError::Mismatch {
                    sha256: want_sha.to_owned(),
                    want_size,
                    got_size: size,
                    got_sha256: sha,
                });
            }
        }
        if self.is_staged(&sha, size) {
            return Ok((sha, size));
        }
        let dir = self.dir(&sha);
        fs::create_dir_all(&dir).map_err(Self::io(&dir))?;
        let tmp = dir.join(".import");
        {
            let mut src = File::open(file).map_err(Self::io(file))?;
            let mut dst = File::create(&tmp).map_err(Self::io(&tmp))?;
            std::io::copy(&mut src, &mut dst).map_err(Self::io(&tmp))?;
            dst.sync_all().map_err(Self::io(&tmp))?;
        }
        // The copy is checked too: the source may have changed under us.
        let (got_size, got) = hash_file(&tmp)?;
        if got_size != size || got != sha {
            let _ = fs::remove_file(&tmp);
            return Err(ArtifactError::Mismatch {
                sha256: sha,
                want_size: size,
                got_size,
                got_sha256: got,
            });
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444)).map_err(Self::io(&tmp))?;
        let staged = self.staged_path(&sha);
        fs::rename(&tmp, &staged).map_err(Self::io(&staged))?;
        sync_dir(&dir)?;
        Ok((sha, size))
    }

    /// Reads `len` bytes at `offset` of `sha` for a neighbour: from the
    /// staged file, or from verified pieces of a fetch in progress. `None`
    /// if this node does not hold all of that range.
    pub fn read_range(&self, sha: &str, offset: u64, len: u64) -> Option<Vec<u8>> {
        let staged = self.staged_path(sha);
        let path = if staged.is_file() {
            staged
        } else {
            let p = self.progress(sha)?;
            let ps = p.layout.piece_size;
            let first = offset / ps;
            let last = (offset + len.max(1) - 1) / ps;
            if !(first..=last).all(|i| p.have.get(i as usize).copied().unwrap_or(false)) {
                return None;
            }
            self.partial_path(sha)
        };
        let mut f = File::open(path).ok()?;
        let size = f.metadata().ok()?.len();
        if offset.checked_add(len)? > size {
            return None;
        }
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut buf = vec![0; len as usize];
        f.read_exact(&mut buf).ok()?;
        Some(buf)
    }

    /// The piece digests of a staged artifact at `piece_size` (what a
    /// neighbour checks against the intent's root), cached beside it.
    pub fn piece_digests(&self, sha: &str, piece_size: u64) -> Option<Vec<[u8; 32]>> {
        let cache = self.dir(sha).join(format!("pieces-{piece_size}.json"));
        if let Some(d) = fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .and_then(|v| {
                v.iter()
                    .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
                    .collect::<Option<Vec<[u8; 32]>>>()
            })
        {
            return Some(d);
        }
        let digests = if self.staged_path(sha).is_file() {
            digests_of_file(&self.staged_path(sha), piece_size).ok()?
        } else {
            // A fetch in progress knows its pinned digests only for its own layout.
            let p = self.progress(sha)?;
            if p.layout.piece_size != piece_size {
                return None;
            }
            p.digests()?
        };
        let hexes: Vec<String> = digests.iter().map(hex::encode).collect();
        if let Ok(b) = serde_json::to_vec(&hexes) {
            let _ = write_atomic(&cache, &b, 0o644);
        }
        Some(digests)
    }

    /// The size of what this node holds of `sha`: staged, or being fetched.
    pub fn size_of(&self, sha: &str) -> Option<u64> {
        if let Ok(m) = fs::metadata(self.staged_path(sha)) {
            return Some(m.len());
        }
        self.progress(sha).map(|p| p.layout.size)
    }
}

/// Length and sha256 (hex) of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), ArtifactError> {
    let mut f = File::open(path).map_err(ArtifactStore::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(ArtifactStore::io(path))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((total, hex::encode(h.finalize())))
}

/// The SHA-256 of the binary this process runs, hashed once per process on
/// first use (a test binary hosting many in-process agents hashes itself
/// once, not once per agent) and `None` when it cannot be read. Hashing is
/// blocking file I/O: call it off the async workers.
pub fn running_binary_sha256() -> Option<String> {
    static RUNNING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    RUNNING
        .get_or_init(|| match std::env::current_exe() {
            Ok(p) => match hash_file(&p) {
                Ok((_, h)) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hash the running binary");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the running binary");
                None
            }
        })
        .clone()
}

/// The digests of a file's pieces at `piece_size`.
pub fn digests_of_file(path: &Path, piece_size: u64) -> Result<Vec<[u8; 32]>, ArtifactError> {
    let mut f = File::open(path).map_err(ArtifactStore::io(path))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; piece_size as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f
                .read(&mut buf[filled..])
                .map_err(ArtifactStore::io(path))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        out.push(sha256(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ArtifactStore::io(dir))
}

/// Writes a file (tests and `fabricctl artifact push` use it for builds).
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn pieces_fill_a_partial_that_is_staged_only_when_whole_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path());
        let data = blob(70_000);
        let sha = hex::encode(sha256(&data));
        let layout = Layout::new(data.len() as u64, 16_384);
        let digests: Vec<[u8; 32]> = (0..layout.count())
            .map(|i| {
                let (o, l) = layout.range(i);
                sha256(&data[o as usize..(o + l) as usize])
            })
            .collect();
        let mut p = store.begin(&sha, layout, Some(&digests)).expect("begin");
        assert_eq!(p.missing().len(), 5);
        // A bad piece is refused and not marked.
        let err = store
            .put_piece(&sha, &mut p, 1, &vec![0u8; 16_384])
            .expect_err("bad piece");
        assert_eq!(err.reason(), "bad_piece");
        for i in [4, 0, 2] {
            let (o, l) = layout.range(i);
            store
                .put_piece(&sha, &mut p, i, &data[o as usize..(o + l) as usize])
                .expect("piece");
        }
        assert!(!store.is_staged(&sha, data.len() as u64));
        // Saves are batched: a crash now keeps the first piece (recorded at
        // once) and fetches the two unrecorded ones again.
        let crashed = store.begin(&sha, layout, Some(&digests)).expect("resume");
        assert_eq!(crashed.missing(), vec![0, 1, 2, 3]);
        // A fetch that stops flushes; a restart resumes with all of them.
        store.flush(&sha, &mut p).expect("flush");
        let mut p = store.begin(&sha, layout, Some(&digests)).expect("resume");
        assert_eq!(p.missing(), vec![1, 3]);
        // Neighbours can already read the verified pieces.
        assert!(store.read_range(&sha, 0, 16_384).is_some());
        assert!(store.read_range(&sha, 16_384, 16_384).is_none());
        for i in [1, 3] {
            let (o, l) = layout.range(i);
            store
                .put_piece(&sha, &mut p, i, &data[o as usize..(o + l) as usize])
                .expect("piece");
        }
        let staged = store.finish(&sha, data.len() as u64).expect("finish");
        assert_eq!(fs::read(&staged).expect("read"), data);
        assert!(store.is_staged(&sha, data.len() as u64));
        assert_eq!(store.piece_digests(&sha, 16_384).expect("digests"), digests);
    }

    #[test]
    fn a_whole_file_that_is_not_what_the_intent_names_is_never_staged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(dir.path());
        let data = blob(1000);
        let wrong = "00".repeat(32);
        let layout = Layout::new(1000, 0);
        let mut p = store.begin(&wrong, layout, None).expect("begin");
        store
            .put_piece(&wrong, &mut p, 0, &data)
            .expect("unpinned piece");
        let err = store.finish(&wrong, 1000).expect_err("mismatch");
        assert_eq!(err.reason(), "sha256_mismatch");
        assert!(!store.is_staged(&wrong, 1000));
        assert!(store.progress(&wrong).is_none(), "starts over");
    }

    #[test]
    fn a_piece_longer_or_shorter_than_the_layout_is_refused() {
        let layout = Layout::new(100, 64);
        let e = verify_piece("s", &layout, None, 1, &[0; 64]).expect_err("too long");
        assert_eq!(e.reason(), "piece_length");
        assert!(verify_piece("s", &layout, None, 1, &[0; 36]).is_ok());
    }

    #[test]
    fn import_refuses_a_file_whose_hash_or_size_disagrees_with_the_intent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::new(&dir.path().join("store"));
        let file = dir.path().join("build");
        write_file(&file, &blob(5000)).expect("write");
        let (sha, size) = store.import(&file, None).expect("import");
        assert_eq!(size, 5000);
        assert!(store.is_staged(&sha, size));
        let e = store
            .import(&file, Some((&"11".repeat(32), 5000)))
            .expect_err("hash disagrees");
        assert_eq!(e.reason(), "sha256_mismatch");
        let e = store
            .import(&file, Some((&sha, 4999)))
            .expect_err("size disagrees");
        assert_eq!(e.reason(), "sha256_mismatch");
    }
}

//! Binary slots by digest: `<root>/slots/<sha256>/<name>`, written once
//! (mode 0555, fsynced) and never rewritten, and two symlinks, `current` and
//! `previous`, swapped by rename with an fsync of the folder. A crash at any
//! instant leaves `current` naming a complete slot: a slot is renamed into
//! place only after its bytes are fsynced and verified, and each link is
//! replaced by renaming a fully written temporary link over it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::faults;

/// The link to the slot that runs.
pub const CURRENT: &str = "current";
/// The link to the slot that ran before (what a rollback restores).
pub const PREVIOUS: &str = "previous";

/// What went wrong with a slot.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The file is not what was asked for.
    #[error("{path}: {got_size} bytes with sha256 {got_sha256}; expected {want_size} bytes with sha256 {want_sha256}")]
    Mismatch {
        /// The file.
        path: String,
        /// Its size.
        got_size: u64,
        /// Its hash.
        got_sha256: String,
        /// The size asked for.
        want_size: u64,
        /// The hash asked for.
        want_sha256: String,
    },
    /// Not a sha256 in lower-case hex.
    #[error("{0:?} is not a sha256 (64 lower-case hex digits)")]
    BadDigest(String),
    /// The slot to switch to is not installed.
    #[error("slot {0} is not installed")]
    Missing(String),
    /// The file system refused (a read-only folder, a full disk, ...).
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn check_digest(sha: &str) -> Result<(), SlotError> {
    if fabric_schemas::is_sha256_hex(sha) {
        Ok(())
    } else {
        Err(SlotError::BadDigest(sha.to_owned()))
    }
}

/// Length and sha256 (hex) of what `r` yields.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((total, hex::encode(h.finalize())))
}

/// The slots of one binary (`node-agent` or `host-agent`) under `root`.
#[derive(Clone, Debug)]
pub struct Slots {
    root: PathBuf,
    name: String,
}

impl Slots {
    /// Slots of `name` under `root` (created on first install).
    pub fn new(root: &Path, name: &str) -> Slots {
        Slots {
            root: root.to_path_buf(),
            name: name.to_owned(),
        }
    }

    /// The folder holding `slots/` and the links.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The binary of slot `sha`.
    pub fn binary(&self, sha: &str) -> PathBuf {
        self.root.join("slots").join(sha).join(&self.name)
    }

    /// Whether slot `sha` is installed.
    pub fn has(&self, sha: &str) -> bool {
        self.binary(sha).is_file()
    }

    /// Installs `src` as slot `sha` (a no-op if it is there). The copy is
    /// hashed as it is written and must be `size` bytes with sha256 `sha`;
    /// only then is it made 0555, fsynced and renamed into place.
    pub fn install(&self, src: &Path, sha: &str, size: u64) -> Result<PathBuf, SlotError> {
        check_digest(sha)?;
        let dst = self.binary(sha);
        if dst.is_file() {
            return Ok(dst);
        }
        let dir = self.root.join("slots").join(sha);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(".{}.partial", self.name));
        let _ = fs::remove_file(&tmp);
        let mut input = File::open(src).map_err(io(src))?;
        let mut out = File::create(&tmp).map_err(io(&tmp))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = input.read(&mut buf).map_err(io(src))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            // Never more than asked for: a longer file is refused as soon as
            // it is known to be longer.
            if total > size {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io(&tmp))?;
        }
        let got = hex::encode(h.finalize());
        if total != size || got != sha {
            let _ = fs::remove_file(&tmp);
            return Err(SlotError::Mismatch {
                path: src.display().to_string(),
                got_size: total,
                got_sha256: got,
                want_size: size,
                want_sha256: sha.to_owned(),
            });
        }
        out.sync_all().map_err(io(&tmp))?;
        drop(out);
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555)).map_err(io(&tmp))?;
        faults::point("slot:written");
        fs::rename(&tmp, &dst).map_err(io(&dst))?;
        sync_dir(&dir)?;
        faults::point("slot:installed");
        Ok(dst)
    }

    /// The digest a link names, if it names an installed slot.
    pub fn link(&self, link: &str) -> Option<String> {
        let target = fs::read_link(self.root.join(link)).ok()?;
        let sha = target.file_name()?.to_str()?.to_owned();
        self.has(&sha).then_some(sha)
    }

    /// The slot that runs.
    pub fn current(&self) -> Option<String> {
        self.link(CURRENT)
    }

    /// The slot that ran before.
    pub fn previous(&self) -> Option<String> {
        self.link(PREVIOUS)
    }

    /// Points `link` at slot `sha`: a temporary link, renamed over the old
    /// one, then an fsync of the folder.
    fn set_link(&self, link: &str, sha: &str) -> Result<(), SlotError> {
        let tmp = self.root.join(format!(".{link}.new"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("slots").join(sha), &tmp).map_err(io(&tmp))?;
        faults::point(&format!("link:{link}:temp"));
        fs::rename(&tmp, self.root.join(link)).map_err(io(&self.root))?;
        faults::point(&format!("link:{link}:renamed"));
        sync_dir(&self.root)?;
        faults::point(&format!("link:{link}:synced"));
        Ok(())
    }

    /// Makes `sha` current, keeping what was current as `previous`. At every
    /// instant `current` names a complete slot (the old or the new one).
    pub fn switch_to(&self, sha: &str) -> Result<(), SlotError> {
        check_digest(sha)?;
        if !self.has(sha) {
            return Err(SlotError::Missing(sha.to_owned()));
        }
        match self.current() {
            Some(cur) if cur == sha => return Ok(()),
            Some(cur) => self.set_link(PREVIOUS, &cur)?,
            None => {}
        }
        self.set_link(CURRENT, sha)
    }

    /// Puts `previous` back as `current` (the new build failed). `previous`
    /// keeps naming the restored slot, so a second rollback is a no-op.
    pub fn roll_back(&self) -> Result<Option<String>, SlotError> {
        let Some(prev) = self.previous() else {
            return Ok(None);
        };
        self.set_link(CURRENT, &prev)?;
        Ok(Some(prev))
    }

    /// Before a swap: whether a new slot can be installed here at all (the
    /// folder is writable, on one filesystem with the links, has room for
    /// `size` bytes). Refused before anything changes.
    pub fn preflight(&self, size: u64) -> Result<(), SlotError> {
        let dir = self.root.join("slots");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let probe = dir.join(".preflight");
        let f = File::create(&probe).map_err(io(&probe))?;
        // Reserve the space for real: a full disk fails here, not mid-copy.
        let reserved = f.set_len(size).and_then(|()| f.sync_all());
        drop(f);
        let _ = fs::remove_file(&probe);
        reserved.map_err(io(&probe))
    }

    /// Loads the digest of the running binary from its open file (what was
    /// executed is what was hashed).
    pub fn verify(&self, sha: &str) -> Result<(), SlotError> {
        let path = self.binary(sha);
        let f = File::open(&path).map_err(io(&path))?;
        let (size, got) = hash_reader(f).map_err(io(&path))?;
        if got != sha {
            return Err(SlotError::Mismatch {
                path: path.display().to_string(),
                got_size: size,
                got_sha256: got,
                want_size: size,
                want_sha256: sha.to_owned(),
            });
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), SlotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(dir: &Path, name: &str, body: &[u8]) -> (PathBuf, String, u64) {
        let p = dir.join(name);
        fs::write(&p, body).expect("write");
        let (size, sha) = hash_reader(File::open(&p).expect("open")).expect("hash");
        (p, sha, size)
    }

    #[test]
    fn install_switch_and_roll_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = Slots::new(&dir.path().join("host"), "node-agent");
        let (a, sha_a, size_a) = build(dir.path(), "a", b"build a");
        let (b, sha_b, size_b) = build(dir.path(), "b", b"build b");
        let pa = slots.install(&a, &sha_a, size_a).expect("install a");
        let mode = fs::metadata(&pa).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o555);
        slots.switch_to(&sha_a).expect("switch a");
        assert_eq!(slots.current().as_deref(), Some(sha_a.as_str()));
        assert_eq!(slots.previous(), None);
        slots.install(&b, &sha_b, size_b).expect("install b");
        slots.switch_to(&sha_b).expect("switch b");
        assert_eq!(slots.current().as_deref(), Some(sha_b.as_str()));
        assert_eq!(slots.previous().as_deref(), Some(sha_a.as_str()));
        assert_eq!(
            slots.roll_back().expect("roll back").as_deref(),
            Some(sha_a.as_str())
        );
        assert_eq!(slots.current().as_deref(), Some(sha_a.as_str()));
        assert_eq!(fs::read(slots.binary(&sha_a)).expect("read"), b"build a");
    }

    #[test]
    fn a_file_that_is_not_what_the_intent_names_is_not_installed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let slots = Slots::new(&dir.path().join("host"), "node-agent");
        let (a, sha_a, size_a) = build(dir.path(), "a", b"build a");
        let e = slots.install(&a, &sha_a, size_a - 1).expect_err("too long");
        assert!(matches!(e, SlotError::Mismatch { .. }), "{e}");
        let e = slots
            .install(&a, &"00".repeat(32), size_a)
            .expect_err("wrong hash");
        assert!(e.to_string().contains("expected"), "{e}");
        assert!(!slots.has(&sha_a));
        let e = slots.switch_to(&sha_a).expect_err("not installed");
        assert!(matches!(e, SlotError::Missing(_)));
        assert!(matches!(
            slots.install(&a, "../x", 1),
            Err(SlotError::BadDigest(_))
        ));
    }

    #[test]
    fn a_read_only_folder_is_refused_before_any_swap() {
        if rustix::process::geteuid().is_root() {
            // Root writes through 0555; the full-disk and other-filesystem
            // refusals are covered by the process tests.
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("host");
        fs::create_dir_all(root.join("slots")).expect("mkdir");
        fs::set_permissions(root.join("slots"), fs::Permissions::from_mode(0o555)).expect("chmod");
        let slots = Slots::new(&root, "node-agent");
        assert!(slots.preflight(10).is_err());
    }
}

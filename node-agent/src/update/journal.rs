//! The update journal on disk: `<state>/update/journal.json`.
//!
//! Written atomically (temp file, fsync, rename, fsync of the folder): a
//! crash at any point leaves the old journal or the new one. The updater
//! persists the journal before it acts on it, so after a crash it repeats the
//! last command rather than skipping it.
//!
//! Unknown fields are kept out of the types but not refused: after a
//! rollback the previous build must still read the journal a newer build
//! wrote. A journal that does not parse at all is moved aside
//! (`journal.json.corrupt-<ms>`), never deleted, and the updater starts from
//! an empty one and says so.

use std::path::{Path, PathBuf};

use fabric_schemas::keys::{write_atomic_observed, KeyFileError, WritePoint};

use super::faults;
use super::machine::Journal;

/// The journal's file name inside the update folder.
pub const JOURNAL_FILE: &str = "journal.json";

/// What went wrong with the journal file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading, writing or moving the file failed.
    #[error("update journal {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The journal could not be encoded.
    #[error("update journal {path}: {reason}")]
    Encode {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// How a journal was loaded.
#[derive(Debug)]
pub enum Loaded {
    /// Read and parsed.
    Read(Box<Journal>),
    /// No journal yet: a node that never updated.
    Fresh,
    /// The file did not parse; it was moved to `moved_to`.
    Corrupt {
        /// Where the unreadable file now is.
        moved_to: PathBuf,
        /// The parse error.
        reason: String,
    },
}

impl Loaded {
    /// The journal to start from.
    pub fn journal(&self) -> Journal {
        match self {
            Loaded::Read(j) => (**j).clone(),
            Loaded::Fresh | Loaded::Corrupt { .. } => Journal::default(),
        }
    }
}

/// The journal file of one node.
#[derive(Clone, Debug)]
pub struct JournalFile {
    path: PathBuf,
}

impl JournalFile {
    /// The journal in `update_dir` (created on first save).
    pub fn new(update_dir: &Path) -> JournalFile {
        JournalFile {
            path: update_dir.join(JOURNAL_FILE),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl Fn(std::io::Error) -> JournalError + '_ {
        |source| JournalError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Reads the journal; a missing file is [`Loaded::Fresh`], an unreadable
    /// one is moved aside.
    pub fn load(&self, now_ms: u64) -> Result<Loaded, JournalError> {
        self.remove_leftover_temps();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Fresh),
            Err(e) => return Err(self.io()(e)),
        };
        match serde_json::from_slice::<Journal>(&bytes) {
            Ok(j) => Ok(Loaded::Read(Box::new(j))),
            Err(e) => {
                let moved_to = self
                    .path
                    .with_file_name(format!("{JOURNAL_FILE}.corrupt-{now_ms}"));
                std::fs::rename(&self.path, &moved_to).map_err(self.io())?;
                Ok(Loaded::Corrupt {
                    moved_to,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Temp files of saves a crash interrupted: the journal itself is whole
    /// (old or new), these are only debris.
    fn remove_leftover_temps(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let prefix = format!(".{}.tmp-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Persists `journal` atomically.
    pub fn save(&self, journal: &Journal) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(journal).map_err(|e| JournalError::Encode {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(self.io())?;
        }
        faults::point("journal:before_write");
        write_atomic_observed(&self.path, &bytes, 0o644, &mut |p| match p {
            WritePoint::TempSynced => faults::point("journal:temp_synced"),
            WritePoint::Renamed => faults::point("journal:renamed"),
        })
        .map_err(|e| match e {
            KeyFileError::Io { source, .. } => self.io()(source),
            other => JournalError::Encode {
                path: self.path.display().to_string(),
                reason: other.to_string(),
            },
        })?;
        faults::point("journal:saved");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::machine::{Attempt, IntentRef};
    use fabric_proto::update::UpdateState;
    use fabric_schemas::kinds::Component;

    fn journal() -> Journal {
        Journal {
            attempt: Some(Attempt {
                intent: IntentRef {
                    name: "i".into(),
                    generation: 3,
                    component: Component::NodeAgent,
                    version: "0.3.0".into(),
                    sha256: "ab".repeat(32),
                    size: 9,
                },
                state: UpdateState::Staged,
                lease_id: None,
                accepted_plan: None,
                staged_sha256: Some("ab".repeat(32)),
                reason: None,
                transitions: 2,
                starts: 1,
                denylist: vec![],
                applying_since_ms: None,
            }),
            last_known_good: None,
            previous_binary: None,
        }
    }

    #[test]
    fn a_saved_journal_reads_back_and_a_missing_one_is_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = JournalFile::new(&dir.path().join("update"));
        assert!(matches!(f.load(1).expect("load"), Loaded::Fresh));
        f.save(&journal()).expect("save");
        match f.load(1).expect("load") {
            Loaded::Read(j) => assert_eq!(*j, journal()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_journal_from_a_newer_build_with_unknown_fields_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = JournalFile::new(dir.path());
        let mut v = serde_json::to_value(journal()).expect("json");
        v["field_of_a_later_build"] = serde_json::json!(1);
        v["attempt"]["another"] = serde_json::json!("x");
        std::fs::write(f.path(), serde_json::to_vec(&v).expect("encode")).expect("write");
        assert!(matches!(f.load(1).expect("load"), Loaded::Read(j) if *j == journal()));
    }

    #[test]
    fn an_unreadable_journal_is_moved_aside_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = JournalFile::new(dir.path());
        std::fs::write(f.path(), b"{\"attempt\": tru").expect("write");
        match f.load(42).expect("load") {
            Loaded::Corrupt { moved_to, reason } => {
                assert_eq!(
                    std::fs::read(&moved_to).expect("kept"),
                    b"{\"attempt\": tru"
                );
                assert!(
                    moved_to.ends_with("journal.json.corrupt-42"),
                    "{moved_to:?}"
                );
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(!f.path().exists());
    }
}

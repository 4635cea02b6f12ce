//! Store errors. Each one says what failed, on which object or file, and, where
//! an operator can act, what to do.

use std::path::PathBuf;

/// Everything a [`Store`](super::Store) call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object, status or rollout state does not exist.
    #[error("{what}: not found")]
    NotFound { what: String },

    /// Optimistic concurrency: the caller's expected version is not the stored one.
    /// `found` is 0 when the object does not exist. Re-read and retry.
    #[error("{what}: conflict: expected version {expected}, store has {found}; re-read and retry")]
    Conflict {
        what: String,
        expected: u64,
        found: u64,
    },

    /// A signed record older than the one already published: nodes would refuse it
    /// anyway, and publishing it would roll the fleet back.
    #[error(
        "{what}: generation rollback refused: store holds generation {stored}, offered {offered}"
    )]
    RecordRollback {
        what: String,
        stored: i64,
        offered: i64,
    },

    /// The write itself is malformed (empty name, spec not a JSON object, ...).
    #[error("{what}: invalid write: {reason}")]
    Invalid { what: String, reason: String },

    /// The embedded store file exists but is not a readable store.
    #[error(
        "embedded store {}: file is corrupt or not a Fabric store ({detail}); \
         restore it from a backup, or move it aside to start with an empty store",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    /// Another process holds the embedded store file open for writing.
    #[error(
        "embedded store {}: already open by another process; \
         only one reconciler may use an embedded store (use PostgreSQL for replicas)",
        path.display()
    )]
    Locked { path: PathBuf },

    /// An I/O or engine failure in the embedded store.
    #[error("embedded store {}: {op}: {source}", path.display())]
    Embedded {
        path: PathBuf,
        op: &'static str,
        /// Boxed: redb's error is large and would bloat every `Result`.
        #[source]
        source: Box<redb::Error>,
    },

    /// A PostgreSQL failure (connection, query, transaction).
    #[error("postgres store: {op}: {source}")]
    Postgres {
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A schema migration failed; its transaction was rolled back.
    #[error("postgres store: migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The database holds migrations this binary does not know: it was written by a
    /// newer Fabric. Refusing to run avoids corrupting data we do not understand.
    #[error(
        "postgres store: database schema is at migration {found}, this binary knows up to \
         {known}; upgrade the reconciler"
    )]
    SchemaTooNew { found: i64, known: i64 },

    /// Missing or malformed configuration.
    #[error("store configuration: {0}")]
    Config(String),

    /// A stored row could not be decoded.
    #[error("{what}: stored data is unreadable: {detail}")]
    Decode { what: String, detail: String },

    /// A blocking store task panicked or was cancelled.
    #[error("store task for {op} did not finish: {detail}")]
    Task { op: &'static str, detail: String },
}

/// Shorthand used throughout the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// True for errors a caller should handle by re-reading and retrying.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

//! Store errors. Each one says what failed, on which object or file, and, where
//! an operator can act, what to do.

use std::path::PathBuf;

/// Everything a [`Store`](super::Store) call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object, status or rollout state does not exist.
    #[error("{what}: not found")]
    NotFound {
        /// The missing thing, e.g. `FabricNode "edge-1"`.
        what: String,
    },

    /// Optimistic concurrency: the caller's expected version is not the stored one.
    /// `found` is 0 when the object does not exist. Re-read and retry.
    #[error("{what}: conflict: expected version {expected}, store has {found}; re-read and retry")]
    Conflict {
        /// What was written.
        what: String,
        /// The version the caller expected.
        expected: u64,
        /// The version stored (0 if none).
        found: u64,
    },

    /// A signed record older than the one already published: nodes would refuse it
    /// anyway, and publishing it would roll the fleet back.
    #[error(
        "{what}: generation rollback refused: store holds generation {stored}, offered {offered}"
    )]
    RecordRollback {
        /// The record concerned.
        what: String,
        /// Generation already published.
        stored: i64,
        /// Generation offered.
        offered: i64,
    },

    /// The write itself is malformed (empty name, spec not a JSON object, ...).
    #[error("{what}: invalid write: {reason}")]
    Invalid {
        /// What was written.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The embedded store file exists but is not a readable store.
    #[error(
        "embedded store {}: file is corrupt or not a Fabric store ({detail}); \
         restore it from a backup, or move it aside to start with an empty store",
        path.display()
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What the engine reported.
        detail: String,
    },

    /// Another process holds the embedded store file open for writing.
    #[error(
        "embedded store {}: already open by another process; \
         only one reconciler may use an embedded store (use PostgreSQL for replicas)",
        path.display()
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },

    /// An I/O or engine failure in the embedded store.
    #[error("embedded store {}: {op}: {source}", path.display())]
    Embedded {
        /// The store file.
        path: PathBuf,
        /// The operation that failed, e.g. `write lease`.
        op: &'static str,
        /// Boxed: redb's error is large and would bloat every `Result`.
        #[source]
        source: Box<redb::Error>,
    },

    /// A PostgreSQL failure (connection, query, transaction).
    #[error("postgres store: {op}: {source}")]
    Postgres {
        /// The operation that failed.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A schema migration failed; its transaction was rolled back.
    #[error("postgres store: migration {version} ({name}) failed: {source}")]
    Migration {
        /// The migration's number.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The database holds migrations this binary does not know: it was written by a
    /// newer Fabric. Refusing to run avoids corrupting data we do not understand.
    #[error(
        "postgres store: database schema is at migration {found}, this binary knows up to \
         {known}; upgrade the reconciler"
    )]
    SchemaTooNew {
        /// Highest migration the database has applied.
        found: i64,
        /// Highest migration this binary knows.
        known: i64,
    },

    /// Missing or malformed configuration.
    #[error("store configuration: {0}")]
    Config(String),

    /// A stored row could not be decoded.
    #[error("{what}: stored data is unreadable: {detail}")]
    Decode {
        /// The row concerned.
        what: String,
        /// Why it does not decode.
        detail: String,
    },

    /// A blocking store task panicked or was cancelled.
    #[error("store task for {op} did not finish: {detail}")]
    Task {
        /// The store operation.
        op: &'static str,
        /// What went wrong: a panic, a cancellation, a missing result.
        detail: String,
    },
}

/// Shorthand used throughout the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// True for errors a caller should handle by re-reading and retrying.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

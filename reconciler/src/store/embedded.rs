//! The embedded store: one redb file, ACID, no server.
//!
//! redb commits with copy-on-write pages and a checksummed double-buffered
//! header: a commit is either entirely visible after a crash or not at all, so
//! one write transaction per batch is all crash safety needs. redb calls block,
//! so every call runs on tokio's blocking pool.
//!
//! Layout: one table per concern, values are JSON rows (records are a tuple so
//! the envelope stays raw bytes); `meta` holds the format version and the
//! store-wide counters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabric_schemas::kinds::Kind;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::rules::{self, LeaderRow, ObjectRow};
use super::{
    describe, now_millis, Applied, BoxFuture, Event, Heartbeat, Leadership, Lease, NewEvent, Op,
    Result, RolloutState, Store, StoreError, StoredHeartbeat, StoredObject, StoredRecord,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// (generation, stored_at, envelope)
const RECORDS: TableDefinition<&str, (i64, i64, &[u8])> = TableDefinition::new("records");
const HEARTBEATS: TableDefinition<&str, &[u8]> = TableDefinition::new("heartbeats");
const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollout_states");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const LEADERS: TableDefinition<&str, &[u8]> = TableDefinition::new("leaders");

const FORMAT_KEY: &str = "format_version";
const RV_KEY: &str = "resource_version";
const EVENT_SEQ_KEY: &str = "event_seq";
/// Bump when the layout changes incompatibly; older binaries then refuse the file.
const FORMAT_VERSION: u64 = 1;

/// The embedded store. Cloning is cheap and shares the open file (two clones
/// behave like two replicas in one process, which is how the leader-election
/// tests exercise it).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (creating if absent) the store file at `path`.
    pub async fn open(path: impl Into<PathBuf>) -> Result<EmbeddedStore> {
        let path = path.into();
        tokio::task::spawn_blocking(move || EmbeddedStore::open_blocking(&path))
            .await
            .map_err(|e| StoreError::Task {
                op: "open",
                detail: e.to_string(),
            })?
    }

    /// Blocking variant of [`open`](EmbeddedStore::open) for synchronous callers.
    ///
    /// Every open verifies the page checksums of the whole file, so a file
    /// damaged outside redb fails here with [`StoreError::Corrupt`] naming it,
    /// instead of surfacing later as wrong data. The control-plane store is
    /// small (megabytes), so the full read is cheap.
    pub fn open_blocking(path: &Path) -> Result<EmbeddedStore> {
        let path = path.to_path_buf();
        // redb documents that an open may panic on a file corrupted outside it;
        // turn that into the same clear error as a detected corruption.
        let opened = std::panic::catch_unwind(|| {
            let mut builder = Database::builder();
            builder
                .set_check_integrity_on_open(true)
                .set_cache_size(64 * 1024 * 1024);
            builder.create(&path)
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StoreError::Locked { path })
            }
            Ok(Err(e)) => return Err(engine_error(&path, "open", e)),
            Err(panic) => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: format!("redb panicked while opening: {}", panic_text(&panic)),
                })
            }
        };
        let inner = Inner { db, path };
        inner.init()?;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Task {
                op,
                detail: e.to_string(),
            })?
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Maps a redb error, singling out corruption so the operator sees the file name
/// and what to do.
fn engine_error(path: &Path, op: &'static str, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(detail) => StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        },
        redb::Error::UpgradeRequired(v) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("redb file format {v} needs an upgrade this binary cannot do"),
        },
        // redb reports a file that is not a redb database at all (wrong magic
        // number) as an I/O error of kind InvalidData.
        redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => StoreError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        source => StoreError::Embedded {
            path: path.to_owned(),
            op,
            source: Box::new(source),
        },
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Invalid {
        what: what.to_owned(),
        reason: format!("does not serialize: {e}"),
    })
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        what: what.to_owned(),
        detail: e.to_string(),
    })
}

fn object_key(kind: Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str())
}

/// Range of keys of one kind: `Kind/` up to (excluding) `Kind0` (`'0'` follows `'/'`).
fn kind_range(kind: Kind) -> (String, String) {
    (format!("{}/", kind.as_str()), format!("{}0", kind.as_str()))
}

fn split_key(key: &str) -> Option<(Kind, &str)> {
    let (kind, name) = key.split_once('/')?;
    Some((Kind::from_name(kind)?, name))
}

fn stored_object(kind: Kind, name: &str, row: ObjectRow) -> StoredObject {
    StoredObject {
        kind,
        metadata: fabric_schemas::manifest::Metadata {
            name: name.to_owned(),
            labels: row.labels,
            annotations: row.annotations,
            generation: Some(row.generation),
        },
        resource_version: row.resource_version,
        spec: row.spec,
        status: row.status,
        updated_at: row.updated_at,
    }
}

impl Inner {
    /// Creates the tables on a new file and checks the format of an old one.
    fn init(&self) -> Result<()> {
        self.write("initialize", |txn| {
            let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
            let found = meta
                .get(FORMAT_KEY)
                .map_err(|e| self.err("read format version", e))?
                .map(|v| v.value());
            match found {
                Some(v) if v > FORMAT_VERSION => {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: format!(
                            "store format {v} was written by a newer Fabric (this binary knows {FORMAT_VERSION}); upgrade the reconciler"
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    meta.insert(FORMAT_KEY, FORMAT_VERSION)
                        .map_err(|e| self.err("write format version", e))?;
                }
            }
            drop(meta);
            // Opening a table in a write transaction creates it; readers can then
            // rely on every table existing.
            txn.open_table(OBJECTS).map_err(|e| self.err("create objects", e))?;
            txn.open_table(RECORDS).map_err(|e| self.err("create records", e))?;
            txn.open_table(HEARTBEATS).map_err(|e| self.err("create heartbeats", e))?;
            txn.open_table(ROLLOUTS).map_err(|e| self.err("create rollout_states", e))?;
            txn.open_table(LEASES).map_err(|e| self.err("create leases", e))?;
            txn.open_table(EVENTS).map_err(|e| self.err("create events", e))?;
            txn.open_table(LEADERS).map_err(|e| self.err("create leaders", e))?;
            Ok(())
        })
    }

    fn err(&self, op: &'static str, e: impl Into<redb::Error>) -> StoreError {
        engine_error(&self.path, op, e)
    }

    /// One write transaction: committed (durably, fsync) if `f` succeeds,
    /// aborted (nothing written) if it fails.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write().map_err(|e| self.err(op, e))?;
        match f(&txn) {
            Ok(value) => {
                txn.commit().map_err(|e| self.err(op, e))?;
                Ok(value)
            }
            Err(e) => {
                // Abort errors are secondary: the caller needs the original one.
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    fn read(&self, op: &'static str) -> Result<redb::ReadTransaction> {
        self.db.begin_read().map_err(|e| self.err(op, e))
    }

    fn apply_batch(&self, ops: Vec<Op>) -> Result<Vec<Applied>> {
        self.write("apply batch", |txn| {
            let now = now_millis();
            let mut meta = txn.open_table(META).map_err(|e| self.err("open meta", e))?;
            let mut objects = txn
                .open_table(OBJECTS)
                .map_err(|e| self.err("open objects", e))?;
            let mut records = txn
                .open_table(RECORDS)
                .map_err(|e| self.err("open records", e))?;
            let mut rollouts = txn
                .open_table(ROLLOUTS)
                .map_err(|e| self.err("open rollout_states", e))?;
            let mut leases = txn
                .open_table(LEASES)
                .map_err(|e| self.err("open leases", e))?;
            let mut events = txn
                .open_table(EVENTS)
                .map_err(|e| self.err("open events", e))?;
            let counter = |meta: &redb::Table<&str, u64>, key: &str| -> Result<u64> {
                Ok(meta
                    .get(key)
                    .map_err(|e| self.err("read counter", e))?
                    .map_or(0, |v| v.value()))
            };
            let mut rv = counter(&meta, RV_KEY)?;
            let mut seq = counter(&meta, EVENT_SEQ_KEY)?;
            let (rv_start, seq_start) = (rv, seq);

            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                let applied = match op {
                    Op::PutObject(put) => {
                        let key = object_key(put.kind, &put.name);
                        let what = describe(put.kind, &put.name);
                        let current = self.object_row(&objects, &key, &what)?;
                        match rules::put_object(current.as_ref(), &put, now)? {
                            Some(mut row) => {
                                rv += 1;
                                row.resource_version = rv;
                                let bytes = encode(&what, &row)?;
                                objects
                                    .insert(key.as_str(), bytes.as_slice())
                                    .map_err(|e| self.err("write object", e))?;
                                Applied::Object(stored_object(put.kind, &put.name, row))
                            }
                            None => match current {
                                Some(row) => {
                                    Applied::Object(stored_object(put.kind, &put.name, row))
                                }
                                None => {
                                    return Err(StoreError::Task {
                                        op: "put_object",
                                        detail: "no-op put on a missing object".into(),
                                    })
                                }
                            },
                        }
                    }
                    Op::PutStatus {
                        kind,
                        name,
                        status,
                        expected_version,
                    } => {
                        let key = object_key(kind, &name);
                        let what = describe(kind, &name);
                        let current = self.object_row(&objects, &key, &what)?;
                        let row = match rules::put_status(
                            &what,
                            current.as_ref(),
                            &status,
                            expected_version,
                            now,
                        )? {
                            Some(mut row) => {
                                rv += 1;
                                row.resource_version = rv;
                                let bytes = encode(&what, &row)?;
                                objects
                                    .insert(key.as_str(), bytes.as_slice())
                                    .map_err(|e| self.err("write status", e))?;
                                row
                            }
                            // put_status only returns None for a live row.
                            None => current.ok_or_else(|| StoreError::NotFound { what })?,
                        };
                        Applied::Object(stored_object(kind, &name, row))
                    }
                    Op::DeleteObject {
                        kind,
                        name,
                        expected_version,
                    } => {
                        let key = object_key(kind, &name);
                        let what = describe(kind, &name);
                        let current = self.object_row(&objects, &key, &what)?;
                        match rules::delete_object(&what, current.as_ref(), expected_version, now)?
                        {
                            Some(mut tomb) => {
                                rv += 1;
                                tomb.resource_version = rv;
                                let bytes = encode(&what, &tomb)?;
                                objects
                                    .insert(key.as_str(), bytes.as_slice())
                                    .map_err(|e| self.err("write tombstone", e))?;
                                Applied::Deleted(true)
                            }
                            None => Applied::Deleted(false),
                        }
                    }
                    Op::PutRecord {
                        kind,
                        name,
                        generation,
                        envelope,
                    } => {
                        let what = describe(kind, &name);
                        rules::validate_name(&what, "record name", &name)?;
                        let key = object_key(kind, &name);
                        let outcome = {
                            let current = records
                                .get(key.as_str())
                                .map_err(|e| self.err("read record", e))?;
                            let current = current.as_ref().map(|g| g.value());
                            rules::put_record(
                                &what,
                                current.map(|(g, _, env)| (g, env)),
                                generation,
                                &envelope,
                            )?
                        };
                        if outcome != super::RecordOutcome::Unchanged {
                            records
                                .insert(key.as_str(), (generation, now, envelope.as_slice()))
                                .map_err(|e| self.err("write record", e))?;
                        }
                        Applied::Record(outcome)
                    }
                    Op::PutRolloutState {
                        name,
                        state,
                        expected_version,
                    } => {
                        let what = format!("rollout {name:?}");
                        let current: Option<RolloutState> = rollouts
                            .get(name.as_str())
                            .map_err(|e| self.err("read rollout state", e))?
                            .map(|v| decode(&what, v.value()))
                            .transpose()?;
                        let next = rules::put_rollout_state(
                            current.as_ref(),
                            &name,
                            &state,
                            expected_version,
                            now,
                        )?;
                        let bytes = encode(&what, &next)?;
                        rollouts
                            .insert(name.as_str(), bytes.as_slice())
                            .map_err(|e| self.err("write rollout state", e))?;
                        Applied::RolloutState(next)
                    }
                    Op::PutLease(lease) => {
                        rules::validate_lease(&lease)?;
                        let bytes = encode(&format!("lease {:?}", lease.id), &lease)?;
                        leases
                            .insert(lease.id.as_str(), bytes.as_slice())
                            .map_err(|e| self.err("write lease", e))?;
                        Applied::Lease
                    }
                    Op::DeleteLease { id } => {
                        let removed = leases
                            .remove(id.as_str())
                            .map_err(|e| self.err("delete lease", e))?
                            .is_some();
                        Applied::LeaseDeleted(removed)
                    }
                    Op::AppendEvent(event) => {
                        rules::validate_event(&event)?;
                        seq += 1;
                        let bytes = encode("event", &event)?;
                        events
                            .insert(seq, bytes.as_slice())
                            .map_err(|e| self.err("append event", e))?;
                        Applied::Event(seq)
                    }
                };
                out.push(applied);
            }
            if rv != rv_start {
                meta.insert(RV_KEY, rv)
                    .map_err(|e| self.err("write resource version", e))?;
            }
            if seq != seq_start {
                meta.insert(EVENT_SEQ_KEY, seq)
                    .map_err(|e| self.err("write event seq", e))?;
            }
            Ok(out)
        })
    }

    fn object_row(
        &self,
        objects: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
        what: &str,
    ) -> Result<Option<ObjectRow>> {
        objects
            .get(key)
            .map_err(|e| self.err("read object", e))?
            .map(|v| decode(what, v.value()))
            .transpose()
    }

    fn record_heartbeats(&self, batch: &[Heartbeat]) -> Result<()> {
        let folds = rules::fold_heartbeats(batch)?;
        if folds.is_empty() {
            return Ok(());
        }
        self.write("record heartbeats", |txn| {
            let mut table = txn
                .open_table(HEARTBEATS)
                .map_err(|e| self.err("open heartbeats", e))?;
            for fold in folds {
                let what = format!("heartbeat of {:?}", fold.node);
                let current: Option<StoredHeartbeat> = table
                    .get(fold.node.as_str())
                    .map_err(|e| self.err("read heartbeat", e))?
                    .map(|v| decode(&what, v.value()))
                    .transpose()?;
                let merged = rules::merge_heartbeat(current, fold);
                let bytes = encode(&what, &merged)?;
                table
                    .insert(merged.node.as_str(), bytes.as_slice())
                    .map_err(|e| self.err("write heartbeat", e))?;
            }
            Ok(())
        })
    }

    /// Reads and updates one leader row in a write transaction; redb has a single
    /// writer at a time, which makes this a compare-and-set.
    fn leadership(
        &self,
        election: &str,
        decide: impl FnOnce(Option<&LeaderRow>, i64) -> Option<LeaderRow>,
    ) -> Result<Option<LeaderRow>> {
        let what = format!("leader election {election:?}");
        rules::validate_name(&what, "election", election)?;
        self.write("leader election", |txn| {
            let mut table = txn
                .open_table(LEADERS)
                .map_err(|e| self.err("open leaders", e))?;
            let current: Option<LeaderRow> = table
                .get(election)
                .map_err(|e| self.err("read leader", e))?
                .map(|v| decode(&what, v.value()))
                .transpose()?;
            let next = decide(current.as_ref(), now_millis());
            if let Some(row) = &next {
                let bytes = encode(&what, row)?;
                table
                    .insert(election, bytes.as_slice())
                    .map_err(|e| self.err("write leader", e))?;
            }
            Ok(next)
        })
    }
}

fn decode_all<T: DeserializeOwned>(
    inner: &Inner,
    what: &str,
    range: redb::Range<'_, &'static str, &'static [u8]>,
) -> Result<Vec<T>> {
    range
        .map(|entry| {
            let (_, v) = entry.map_err(|e| inner.err("scan", e))?;
            decode(what, v.value())
        })
        .collect()
}

impl Store for EmbeddedStore {
    fn apply_batch(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Applied>>> {
        Box::pin(self.run("apply_batch", move |inner| inner.apply_batch(ops)))
    }

    fn get_object<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredObject>>> {
        let name = name.to_owned();
        Box::pin(self.run("get_object", move |inner| {
            let txn = inner.read("get object")?;
            let table = txn
                .open_table(OBJECTS)
                .map_err(|e| inner.err("open objects", e))?;
            let what = describe(kind, &name);
            let row = inner.object_row(&table, &object_key(kind, &name), &what)?;
            Ok(row
                .filter(|r| !r.deleted)
                .map(|r| stored_object(kind, &name, r)))
        }))
    }

    fn list_objects(&self, kind: Kind) -> BoxFuture<'_, Result<Vec<StoredObject>>> {
        Box::pin(self.run("list_objects", move |inner| {
            let txn = inner.read("list objects")?;
            let table = txn
                .open_table(OBJECTS)
                .map_err(|e| inner.err("open objects", e))?;
            let (lo, hi) = kind_range(kind);
            let mut out = Vec::new();
            for entry in table
                .range(lo.as_str()..hi.as_str())
                .map_err(|e| inner.err("scan objects", e))?
            {
                let (k, v) = entry.map_err(|e| inner.err("scan objects", e))?;
                let key = k.value();
                let name = key.split_once('/').map_or(key, |(_, n)| n);
                let row: ObjectRow = decode(&describe(kind, name), v.value())?;
                if !row.deleted {
                    out.push(stored_object(kind, name, row));
                }
            }
            Ok(out)
        }))
    }

    fn get_record<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>>> {
        let name = name.to_owned();
        Box::pin(self.run("get_record", move |inner| {
            let txn = inner.read("get record")?;
            let table = txn
                .open_table(RECORDS)
                .map_err(|e| inner.err("open records", e))?;
            let row = table
                .get(object_key(kind, &name).as_str())
                .map_err(|e| inner.err("read record", e))?;
            Ok(row.map(|v| {
                let (generation, stored_at, envelope) = v.value();
                StoredRecord {
                    kind,
                    name: name.clone(),
                    generation,
                    envelope: envelope.to_vec(),
                    stored_at,
                }
            }))
        }))
    }

    fn list_records(&self, kind: Option<Kind>) -> BoxFuture<'_, Result<Vec<StoredRecord>>> {
        Box::pin(self.run("list_records", move |inner| {
            let txn = inner.read("list records")?;
            let table = txn
                .open_table(RECORDS)
                .map_err(|e| inner.err("open records", e))?;
            let range = match kind {
                Some(kind) => {
                    let (lo, hi) = kind_range(kind);
                    table.range(lo.as_str()..hi.as_str())
                }
                None => table.iter(),
            }
            .map_err(|e| inner.err("scan records", e))?;
            let mut out = Vec::new();
            for entry in range {
                let (k, v) = entry.map_err(|e| inner.err("scan records", e))?;
                let key = k.value();
                let (kind, name) = split_key(key).ok_or_else(|| StoreError::Decode {
                    what: format!("record key {key:?}"),
                    detail: "not Kind/name with a known kind".into(),
                })?;
                let (generation, stored_at, envelope) = v.value();
                out.push(StoredRecord {
                    kind,
                    name: name.to_owned(),
                    generation,
                    envelope: envelope.to_vec(),
                    stored_at,
                });
            }
            // Keys sort by kind *name*; the contract is kind order then name.
            out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
            Ok(out)
        }))
    }

    fn record_heartbeats<'a>(&'a self, batch: &'a [Heartbeat]) -> BoxFuture<'a, Result<()>> {
        let batch = batch.to_vec();
        Box::pin(self.run("record_heartbeats", move |inner| {
            inner.record_heartbeats(&batch)
        }))
    }

    fn list_heartbeats(&self) -> BoxFuture<'_, Result<Vec<StoredHeartbeat>>> {
        Box::pin(self.run("list_heartbeats", |inner| {
            let txn = inner.read("list heartbeats")?;
            let table = txn
                .open_table(HEARTBEATS)
                .map_err(|e| inner.err("open heartbeats", e))?;
            let range = table.iter().map_err(|e| inner.err("scan heartbeats", e))?;
            decode_all(inner, "heartbeat", range)
        }))
    }

    fn get_rollout_state<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RolloutState>>> {
        let name = name.to_owned();
        Box::pin(self.run("get_rollout_state", move |inner| {
            let txn = inner.read("get rollout state")?;
            let table = txn
                .open_table(ROLLOUTS)
                .map_err(|e| inner.err("open rollout_states", e))?;
            let what = format!("rollout {name:?}");
            table
                .get(name.as_str())
                .map_err(|e| inner.err("read rollout state", e))?
                .map(|v| decode(&what, v.value()))
                .transpose()
        }))
    }

    fn list_leases<'a>(&'a self, rollout: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Lease>>> {
        let rollout = rollout.map(str::to_owned);
        Box::pin(self.run("list_leases", move |inner| {
            let txn = inner.read("list leases")?;
            let table = txn
                .open_table(LEASES)
                .map_err(|e| inner.err("open leases", e))?;
            let range = table.iter().map_err(|e| inner.err("scan leases", e))?;
            let all: Vec<Lease> = decode_all(inner, "lease", range)?;
            Ok(all
                .into_iter()
                .filter(|l| rollout.as_deref().is_none_or(|r| l.rollout == r))
                .collect())
        }))
    }

    fn list_events(&self, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Event>>> {
        Box::pin(self.run("list_events", move |inner| {
            let txn = inner.read("list events")?;
            let table = txn
                .open_table(EVENTS)
                .map_err(|e| inner.err("open events", e))?;
            let mut out = Vec::new();
            let start = since.saturating_add(1);
            for entry in table
                .range(start..)
                .map_err(|e| inner.err("scan events", e))?
                .take(limit)
            {
                let (k, v) = entry.map_err(|e| inner.err("scan events", e))?;
                let event: NewEvent = decode("event", v.value())?;
                out.push(Event {
                    seq: k.value(),
                    event,
                });
            }
            Ok(out)
        }))
    }

    fn try_acquire_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Leadership>>> {
        let (election, holder) = (election.to_owned(), holder.to_owned());
        Box::pin(self.run("try_acquire_leadership", move |inner| {
            rules::validate_name("leader election", "holder", &holder)?;
            let row = inner.leadership(&election, |cur, now| {
                rules::acquire_leadership(cur, &holder, now, ttl)
            })?;
            Ok(row.map(|r| rules::leadership(&election, &r)))
        }))
    }

    fn renew_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Leadership>>> {
        let (election, holder) = (election.to_owned(), holder.to_owned());
        Box::pin(self.run("renew_leadership", move |inner| {
            let row = inner.leadership(&election, |cur, now| {
                rules::renew_leadership(cur, &holder, now, ttl)
            })?;
            Ok(row.map(|r| rules::leadership(&election, &r)))
        }))
    }

    fn release_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        let (election, holder) = (election.to_owned(), holder.to_owned());
        Box::pin(self.run("release_leadership", move |inner| {
            let row = inner.leadership(&election, |cur, now| {
                rules::release_leadership(cur, &holder, now)
            })?;
            Ok(row.is_some())
        }))
    }

    fn current_leader<'a>(
        &'a self,
        election: &'a str,
    ) -> BoxFuture<'a, Result<Option<Leadership>>> {
        let election = election.to_owned();
        Box::pin(self.run("current_leader", move |inner| {
            let txn = inner.read("current leader")?;
            let table = txn
                .open_table(LEADERS)
                .map_err(|e| inner.err("open leaders", e))?;
            let what = format!("leader election {election:?}");
            let row: Option<LeaderRow> = table
                .get(election.as_str())
                .map_err(|e| inner.err("read leader", e))?
                .map(|v| decode(&what, v.value()))
                .transpose()?;
            Ok(rules::live_leadership(
                &election,
                row.as_ref(),
                now_millis(),
            ))
        }))
    }
}

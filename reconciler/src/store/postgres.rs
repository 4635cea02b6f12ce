//! The PostgreSQL store: the durable source of truth in production, shared by
//! several reconciler replicas.
//!
//! Every write that reads before it writes locks the row (`SELECT ... FOR
//! UPDATE`) inside the batch's transaction, asks `rules` what to write, and
//! writes it; a concurrent create of the same key loses on the primary key and
//! is reported as a conflict. Deadlocks between batches touching the same rows
//! in different orders are retried a few times. All tables live in one schema
//! (default `fabric`) chosen through `search_path`, which is also how tests get
//! isolated databases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fabric_schemas::kinds::Kind;
use fabric_schemas::manifest::Metadata;
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Transaction};

use super::rules::{self, LeaderRow, ObjectRow};
use super::{
    describe, migrations, now_millis, Applied, BoxFuture, Event, Heartbeat, Json, Leadership,
    Lease, NewEvent, Op, RecordOutcome, Result, RolloutState, Store, StoreError, StoredHeartbeat,
    StoredObject, StoredRecord,
};

/// Environment variable holding the libpq-style connection string, e.g.
/// `host=/var/run/postgresql user=postgres dbname=fabric_test`.
pub const PG_URL_ENV: &str = "FABRIC_PG_URL";
/// Optional environment variable naming the schema (default `fabric`).
pub(crate) const PG_SCHEMA_ENV: &str = "FABRIC_PG_SCHEMA";

/// Advisory lock that serialises event appends, so event `seq` order is commit
/// order and a reader paging by `seq` never skips an event committed late.
const EVENT_LOCK: i64 = 0x4641_4252_4943_4556; // "FABRICEV"

/// How often a batch that hit a deadlock or serialization failure is retried.
const RETRIES: usize = 3;

/// Where and how to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    /// libpq key/value string or `postgresql://` URL (TLS is not enabled: use a
    /// Unix socket or a local network).
    pub url: String,
    /// Schema holding every Fabric table; `[a-z_][a-z0-9_]*`.
    pub schema: String,
    /// Connections kept open; each runs one transaction at a time.
    pub pool_size: usize,
}

impl PostgresConfig {
    /// Schema `fabric`, a pool of 4 connections.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            schema: "fabric".into(),
            pool_size: 4,
        }
    }

    /// From `FABRIC_PG_URL` (required) and `FABRIC_PG_SCHEMA` (optional).
    pub fn from_env() -> Result<PostgresConfig> {
        let url = std::env::var(PG_URL_ENV).map_err(|_| {
            StoreError::Config(format!(
                "{PG_URL_ENV} is not set; set it to a connection string such as \
                 'host=/var/run/postgresql user=postgres dbname=fabric'"
            ))
        })?;
        let mut config = PostgresConfig::new(url);
        if let Ok(schema) = std::env::var(PG_SCHEMA_ENV) {
            config.schema = schema;
        }
        Ok(config)
    }

    /// The same config in another schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> PostgresConfig {
        self.schema = schema.into();
        self
    }

    fn validate(&self) -> Result<()> {
        let ok = self
            .schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && self.schema.len() <= 63;
        if !ok {
            // The schema is spliced into SQL (identifiers cannot be bound), so it
            // must be a plain identifier.
            return Err(StoreError::Config(format!(
                "schema {:?} must match [a-z_][a-z0-9_]* and be at most 63 bytes",
                self.schema
            )));
        }
        if self.pool_size == 0 {
            return Err(StoreError::Config("pool_size must be at least 1".into()));
        }
        Ok(())
    }
}

/// The PostgreSQL store. Cloning shares the connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Pool>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.config.schema)
            .field("pool_size", &self.inner.config.pool_size)
            .finish()
    }
}

/// A fixed set of connections, each behind a mutex; a closed connection is
/// replaced on next use, so a database restart heals without restarting us.
struct Pool {
    config: PostgresConfig,
    clients: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

fn pg(op: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { op, source }
}

async fn connect(config: &PostgresConfig) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(&config.url, NoTls)
        .await
        .map_err(pg("connect"))?;
    // The connection future does the socket I/O; it ends when the client drops.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "postgres store connection closed with an error");
        }
    });
    client
        .batch_execute(&format!("SET search_path TO {}", config.schema))
        .await
        .map_err(pg("set search_path"))?;
    Ok(client)
}

impl Pool {
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        // Prefer an idle connection; otherwise queue on the next one in turn.
        let mut guard = None;
        for slot in &self.clients {
            if let Ok(g) = slot.try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
                self.clients[i].lock().await
            }
        };
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(connect(&self.config).await?);
        }
        Ok(guard)
    }
}

/// Takes the connection out of a pool guard (always `Some` after `Pool::client`).
fn conn(guard: &mut Option<Client>) -> Result<&mut Client> {
    guard.as_mut().ok_or_else(|| StoreError::Task {
        op: "postgres pool",
        detail: "connection slot empty after connect".into(),
    })
}

fn retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres { source, .. } => matches!(
            source.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
        ),
        _ => false,
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Invalid {
        what: what.to_owned(),
        reason: format!("value {v} does not fit in a signed 64-bit column"),
    })
}

fn json_map(what: &str, v: Json) -> Result<std::collections::BTreeMap<String, String>> {
    serde_json::from_value(v).map_err(|e| StoreError::Decode {
        what: what.to_owned(),
        detail: format!("labels/annotations: {e}"),
    })
}

const OBJECT_COLUMNS: &str =
    "spec, status, labels, annotations, generation, resource_version, updated_at, deleted";

fn object_row(what: &str, row: &Row) -> Result<ObjectRow> {
    Ok(ObjectRow {
        spec: row.get(0),
        status: row.get(1),
        labels: json_map(what, row.get(2))?,
        annotations: json_map(what, row.get(3))?,
        generation: row.get(4),
        resource_version: to_u64(row.get(5)),
        updated_at: row.get(6),
        deleted: row.get(7),
    })
}

fn stored_object(kind: Kind, name: &str, row: ObjectRow) -> StoredObject {
    StoredObject {
        kind,
        metadata: Metadata {
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

fn kind_of(name: &str) -> Result<Kind> {
    Kind::from_name(name).ok_or_else(|| StoreError::Decode {
        what: format!("kind {name:?}"),
        detail: "unknown kind in the database".into(),
    })
}

impl PostgresStore {
    /// Connects, creates the schema if needed and applies pending migrations.
    pub async fn connect(config: PostgresConfig) -> Result<PostgresStore> {
        config.validate()?;
        let mut first = connect(&config).await?;
        migrations::migrate(&mut first, &config.schema).await?;
        let mut clients = Vec::with_capacity(config.pool_size);
        clients.push(Mutex::new(Some(first)));
        // The rest connect lazily on first use.
        clients.extend((1..config.pool_size).map(|_| Mutex::new(None)));
        Ok(PostgresStore {
            inner: Arc::new(Pool {
                config,
                clients,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// Connects using [`PostgresConfig::from_env`].
    pub async fn from_env() -> Result<PostgresStore> {
        PostgresStore::connect(PostgresConfig::from_env()?).await
    }

    /// Drops the whole schema and everything in it. Destroys data: for tests and
    /// explicit resets only.
    pub async fn drop_schema(config: &PostgresConfig) -> Result<()> {
        config.validate()?;
        let client = connect(config).await?;
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", config.schema))
            .await
            .map_err(pg("drop schema"))
    }

    /// The config the store was opened with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// Runs `f` in a transaction, retrying on deadlock/serialization failure.
    async fn in_tx<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: for<'t> Fn(&'t Transaction<'t>) -> BoxFuture<'t, Result<T>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut guard = self.inner.client().await?;
            let client = conn(&mut guard)?;
            let result = async {
                let tx = client.transaction().await.map_err(pg(op))?;
                let value = f(&tx).await?;
                tx.commit().await.map_err(pg(op))?;
                Ok(value)
            }
            .await;
            match result {
                Err(e) if attempt <= RETRIES && retryable(&e) => {
                    tracing::debug!(op, attempt, error = %e, "retrying store transaction");
                    continue;
                }
                other => return other,
            }
        }
    }
}

async fn lock_object(tx: &Transaction<'_>, kind: Kind, name: &str) -> Result<Option<ObjectRow>> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {OBJECT_COLUMNS} FROM objects WHERE kind = $1 AND name = $2 FOR UPDATE"
            ),
            &[&kind.as_str(), &name],
        )
        .await
        .map_err(pg("lock object"))?;
    row.map(|r| object_row(&describe(kind, name), &r))
        .transpose()
}

/// Writes an object row: INSERT when there was none (so a concurrent creator
/// loses on the primary key instead of overwriting), UPDATE otherwise.
async fn write_object(
    tx: &Transaction<'_>,
    kind: Kind,
    name: &str,
    existed: bool,
    row: &mut ObjectRow,
) -> Result<()> {
    let what = describe(kind, name);
    let rv: i64 = tx
        .query_one("SELECT nextval('resource_version_seq')", &[])
        .await
        .map_err(pg("next resource version"))?
        .get(0);
    row.resource_version = to_u64(rv);
    let labels = serde_json::to_value(&row.labels).unwrap_or(Json::Null);
    let annotations = serde_json::to_value(&row.annotations).unwrap_or(Json::Null);
    let params: [&(dyn ToSql + Sync); 10] = [
        &kind.as_str(),
        &name,
        &row.spec,
        &row.status,
        &labels,
        &annotations,
        &row.generation,
        &rv,
        &row.updated_at,
        &row.deleted,
    ];
    let sql = if existed {
        "UPDATE objects SET spec = $3, status = $4, labels = $5, annotations = $6, \
         generation = $7, resource_version = $8, updated_at = $9, deleted = $10 \
         WHERE kind = $1 AND name = $2"
    } else {
        "INSERT INTO objects (kind, name, spec, status, labels, annotations, generation, \
         resource_version, updated_at, deleted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    };
    match tx.execute(sql, &params).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StoreError::Conflict {
            what,
            expected: 0,
            found: 1,
        }),
        Err(e) => Err(StoreError::Postgres {
            op: "write object",
            source: e,
        }),
    }
}

async fn apply_op(tx: &Transaction<'_>, op: Op, now: i64) -> Result<Applied> {
    Ok(match op {
        Op::PutObject(put) => {
            let current = lock_object(tx, put.kind, &put.name).await?;
            match rules::put_object(current.as_ref(), &put, now)? {
                Some(mut row) => {
                    write_object(tx, put.kind, &put.name, current.is_some(), &mut row).await?;
                    Applied::Object(stored_object(put.kind, &put.name, row))
                }
                None => match current {
                    Some(row) => Applied::Object(stored_object(put.kind, &put.name, row)),
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
            let what = describe(kind, &name);
            let current = lock_object(tx, kind, &name).await?;
            let row =
                match rules::put_status(&what, current.as_ref(), &status, expected_version, now)? {
                    Some(mut row) => {
                        write_object(tx, kind, &name, true, &mut row).await?;
                        row
                    }
                    None => current.ok_or_else(|| StoreError::NotFound { what })?,
                };
            Applied::Object(stored_object(kind, &name, row))
        }
        Op::DeleteObject {
            kind,
            name,
            expected_version,
        } => {
            let what = describe(kind, &name);
            let current = lock_object(tx, kind, &name).await?;
            match rules::delete_object(&what, current.as_ref(), expected_version, now)? {
                Some(mut tomb) => {
                    write_object(tx, kind, &name, true, &mut tomb).await?;
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
            let current = tx
                .query_opt(
                    "SELECT generation, envelope FROM records \
                     WHERE kind = $1 AND name = $2 FOR UPDATE",
                    &[&kind.as_str(), &name],
                )
                .await
                .map_err(pg("lock record"))?;
            let current: Option<(i64, Vec<u8>)> = current.map(|r| (r.get(0), r.get(1)));
            let outcome = rules::put_record(
                &what,
                current.as_ref().map(|(g, e)| (*g, e.as_slice())),
                generation,
                &envelope,
            )?;
            if outcome != RecordOutcome::Unchanged {
                // ON CONFLICT with a generation guard: if a concurrent publisher
                // inserted first, we still never roll its record back.
                let n = tx
                    .execute(
                        "INSERT INTO records (kind, name, generation, envelope, stored_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (kind, name) DO UPDATE SET generation = excluded.generation, \
                         envelope = excluded.envelope, stored_at = excluded.stored_at \
                         WHERE records.generation <= excluded.generation",
                        &[&kind.as_str(), &name, &generation, &envelope, &now],
                    )
                    .await
                    .map_err(pg("write record"))?;
                if n == 0 {
                    return Err(StoreError::RecordRollback {
                        what,
                        stored: generation + 1,
                        offered: generation,
                    });
                }
            }
            Applied::Record(outcome)
        }
        Op::PutRolloutState {
            name,
            state,
            expected_version,
        } => {
            let what = format!("rollout {name:?}");
            let current = tx
                .query_opt(
                    "SELECT state, version, updated_at FROM rollout_states \
                     WHERE name = $1 FOR UPDATE",
                    &[&name],
                )
                .await
                .map_err(pg("lock rollout state"))?
                .map(|r| RolloutState {
                    name: name.clone(),
                    state: r.get(0),
                    version: to_u64(r.get(1)),
                    updated_at: r.get(2),
                });
            let next =
                rules::put_rollout_state(current.as_ref(), &name, &state, expected_version, now)?;
            let version = to_i64(&what, next.version)?;
            let sql = if current.is_some() {
                "UPDATE rollout_states SET state = $2, version = $3, updated_at = $4 WHERE name = $1"
            } else {
                "INSERT INTO rollout_states (name, state, version, updated_at) VALUES ($1, $2, $3, $4)"
            };
            match tx
                .execute(sql, &[&name, &next.state, &version, &next.updated_at])
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Err(StoreError::Conflict {
                        what,
                        expected: 0,
                        found: 1,
                    })
                }
                Err(e) => {
                    return Err(StoreError::Postgres {
                        op: "write rollout state",
                        source: e,
                    })
                }
            }
            Applied::RolloutState(next)
        }
        Op::PutLease(lease) => {
            rules::validate_lease(&lease)?;
            tx.execute(
                "INSERT INTO leases (id, rollout, node, body, expires_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET rollout = excluded.rollout, node = excluded.node, \
                 body = excluded.body, expires_at = excluded.expires_at",
                &[&lease.id, &lease.rollout, &lease.node, &lease.body, &lease.expires_at],
            )
            .await
            .map_err(pg("write lease"))?;
            Applied::Lease
        }
        Op::DeleteLease { id } => {
            let n = tx
                .execute("DELETE FROM leases WHERE id = $1", &[&id])
                .await
                .map_err(pg("delete lease"))?;
            Applied::LeaseDeleted(n > 0)
        }
        Op::AppendEvent(event) => {
            rules::validate_event(&event)?;
            let seq: i64 = tx
                .query_one(
                    "INSERT INTO events (at, subject, reason, message, data) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                    &[
                        &event.at,
                        &event.subject,
                        &event.reason,
                        &event.message,
                        &event.data,
                    ],
                )
                .await
                .map_err(pg("append event"))?
                .get(0);
            Applied::Event(to_u64(seq))
        }
    })
}

/// Reads and updates one leader row under `FOR UPDATE`, using the database's
/// clock so replicas with skewed clocks agree on expiry.
/// A leadership decision: current row and database time in, row to write out.
type Decide = Arc<dyn Fn(Option<&LeaderRow>, i64) -> Option<LeaderRow> + Send + Sync>;

async fn leader_cas(
    tx: &Transaction<'_>,
    election: &str,
    decide: &(dyn Fn(Option<&LeaderRow>, i64) -> Option<LeaderRow> + Send + Sync),
) -> Result<Option<LeaderRow>> {
    // Make sure the row exists so FOR UPDATE has something to lock; a placeholder
    // with an empty holder is never live.
    tx.execute(
        "INSERT INTO leader_leases (election, holder, term, expires_at) VALUES ($1, '', 0, 0) \
         ON CONFLICT (election) DO NOTHING",
        &[&election],
    )
    .await
    .map_err(pg("create leader row"))?;
    let row = tx
        .query_one(
            "SELECT holder, term, expires_at, \
             (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
             FROM leader_leases WHERE election = $1 FOR UPDATE",
            &[&election],
        )
        .await
        .map_err(pg("lock leader row"))?;
    let current = LeaderRow {
        holder: row.get(0),
        term: to_u64(row.get(1)),
        expires_at: row.get(2),
    };
    let now: i64 = row.get(3);
    let next = decide(Some(&current), now);
    if let Some(next) = &next {
        let term = to_i64("leader term", next.term)?;
        tx.execute(
            "UPDATE leader_leases SET holder = $2, term = $3, expires_at = $4 WHERE election = $1",
            &[&election, &next.holder, &term, &next.expires_at],
        )
        .await
        .map_err(pg("write leader row"))?;
    }
    Ok(next)
}

impl PostgresStore {
    async fn leadership(
        &self,
        op: &'static str,
        election: &str,
        decide: Decide,
    ) -> Result<Option<LeaderRow>> {
        rules::validate_name(
            &format!("leader election {election:?}"),
            "election",
            election,
        )?;
        let election = election.to_owned();
        self.in_tx(op, move |tx| {
            let (election, decide) = (election.clone(), Arc::clone(&decide));
            Box::pin(async move { leader_cas(tx, &election, &*decide).await })
        })
        .await
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let mut guard = self.inner.client().await?;
        conn(&mut guard)?.query(sql, params).await.map_err(pg(op))
    }
}

fn record_row(row: &Row) -> Result<StoredRecord> {
    Ok(StoredRecord {
        kind: kind_of(row.get(0))?,
        name: row.get(1),
        generation: row.get(2),
        envelope: row.get(3),
        stored_at: row.get(4),
    })
}

impl Store for PostgresStore {
    fn apply_batch(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Applied>>> {
        Box::pin(async move {
            let has_event = ops.iter().any(|op| matches!(op, Op::AppendEvent(_)));
            self.in_tx("apply batch", move |tx| {
                // Owned per attempt: a retried batch starts again from the ops.
                let ops = ops.clone();
                Box::pin(async move {
                    if has_event {
                        // Taken first, before any row lock, so it never joins a
                        // lock cycle with object rows.
                        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENT_LOCK])
                            .await
                            .map_err(pg("take event lock"))?;
                    }
                    let now = now_millis();
                    let mut out = Vec::with_capacity(ops.len());
                    for op in ops {
                        out.push(apply_op(tx, op, now).await?);
                    }
                    Ok(out)
                })
            })
            .await
        })
    }

    fn get_object<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredObject>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "get object",
                    &format!(
                        "SELECT {OBJECT_COLUMNS} FROM objects \
                         WHERE kind = $1 AND name = $2 AND NOT deleted"
                    ),
                    &[&kind.as_str(), &name],
                )
                .await?;
            rows.first()
                .map(|r| {
                    Ok(stored_object(
                        kind,
                        name,
                        object_row(&describe(kind, name), r)?,
                    ))
                })
                .transpose()
        })
    }

    fn list_objects(&self, kind: Kind) -> BoxFuture<'_, Result<Vec<StoredObject>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "list objects",
                    &format!(
                        "SELECT {OBJECT_COLUMNS}, name FROM objects \
                         WHERE kind = $1 AND NOT deleted ORDER BY name COLLATE \"C\""
                    ),
                    &[&kind.as_str()],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let name: String = r.get(8);
                    let row = object_row(&describe(kind, &name), r)?;
                    Ok(stored_object(kind, &name, row))
                })
                .collect()
        })
    }

    fn get_record<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "get record",
                    "SELECT kind, name, generation, envelope, stored_at FROM records \
                     WHERE kind = $1 AND name = $2",
                    &[&kind.as_str(), &name],
                )
                .await?;
            rows.first().map(record_row).transpose()
        })
    }

    fn list_records(&self, kind: Option<Kind>) -> BoxFuture<'_, Result<Vec<StoredRecord>>> {
        Box::pin(async move {
            let kind_name = kind.map(Kind::as_str);
            let rows = self
                .query(
                    "list records",
                    "SELECT kind, name, generation, envelope, stored_at FROM records \
                     WHERE $1::text IS NULL OR kind = $1",
                    &[&kind_name],
                )
                .await?;
            let mut out = rows.iter().map(record_row).collect::<Result<Vec<_>>>()?;
            out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
            Ok(out)
        })
    }

    fn record_heartbeats<'a>(&'a self, batch: &'a [Heartbeat]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let folds = rules::fold_heartbeats(batch)?;
            if folds.is_empty() {
                return Ok(());
            }
            // Column arrays + unnest: one statement (atomic by itself) and one
            // round trip for the whole batch.
            let mut nodes = Vec::with_capacity(folds.len());
            let mut bodies = Vec::with_capacity(folds.len());
            let mut received = Vec::with_capacity(folds.len());
            let mut first = Vec::with_capacity(folds.len());
            let mut counts = Vec::with_capacity(folds.len());
            for f in folds {
                counts.push(to_i64("heartbeat count", f.count)?);
                nodes.push(f.node);
                bodies.push(f.body);
                received.push(f.received_at);
                first.push(f.first_seen);
            }
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut guard = self.inner.client().await?;
                let result = conn(&mut guard)?
                    .execute(
                        "INSERT INTO heartbeats AS h (node, body, received_at, first_seen, received_count) \
                         SELECT * FROM unnest($1::text[], $2::jsonb[], $3::bigint[], $4::bigint[], $5::bigint[]) \
                         ON CONFLICT (node) DO UPDATE SET \
                           body = CASE WHEN excluded.received_at >= h.received_at \
                                       THEN excluded.body ELSE h.body END, \
                           received_at = greatest(h.received_at, excluded.received_at), \
                           first_seen = least(h.first_seen, excluded.first_seen), \
                           received_count = h.received_count + excluded.received_count",
                        &[&nodes, &bodies, &received, &first, &counts],
                    )
                    .await
                    .map_err(pg("record heartbeats"));
                match result {
                    Err(e) if attempt <= RETRIES && retryable(&e) => continue,
                    other => return other.map(|_| ()),
                }
            }
        })
    }

    fn list_heartbeats(&self) -> BoxFuture<'_, Result<Vec<StoredHeartbeat>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "list heartbeats",
                    "SELECT node, body, received_at, first_seen, received_count FROM heartbeats \
                     ORDER BY node COLLATE \"C\"",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| StoredHeartbeat {
                    node: r.get(0),
                    body: r.get(1),
                    received_at: r.get(2),
                    first_seen: r.get(3),
                    received_count: to_u64(r.get(4)),
                })
                .collect())
        })
    }

    fn get_rollout_state<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RolloutState>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "get rollout state",
                    "SELECT state, version, updated_at FROM rollout_states WHERE name = $1",
                    &[&name],
                )
                .await?;
            Ok(rows.first().map(|r| RolloutState {
                name: name.to_owned(),
                state: r.get(0),
                version: to_u64(r.get(1)),
                updated_at: r.get(2),
            }))
        })
    }

    fn list_leases<'a>(&'a self, rollout: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Lease>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "list leases",
                    "SELECT id, rollout, node, body, expires_at FROM leases \
                     WHERE $1::text IS NULL OR rollout = $1 ORDER BY id COLLATE \"C\"",
                    &[&rollout],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Lease {
                    id: r.get(0),
                    rollout: r.get(1),
                    node: r.get(2),
                    body: r.get(3),
                    expires_at: r.get(4),
                })
                .collect())
        })
    }

    fn list_events(&self, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Event>>> {
        Box::pin(async move {
            let since = i64::try_from(since).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .query(
                    "list events",
                    "SELECT seq, at, subject, reason, message, data FROM events \
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&since, &limit],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Event {
                    seq: to_u64(r.get(0)),
                    event: NewEvent {
                        at: r.get(1),
                        subject: r.get(2),
                        reason: r.get(3),
                        message: r.get(4),
                        data: r.get(5),
                    },
                })
                .collect())
        })
    }

    fn try_acquire_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Leadership>>> {
        Box::pin(async move {
            rules::validate_name("leader election", "holder", holder)?;
            let holder = holder.to_owned();
            let decide: Decide =
                Arc::new(move |cur, now| rules::acquire_leadership(cur, &holder, now, ttl));
            let row = self
                .leadership("try_acquire_leadership", election, decide)
                .await?;
            Ok(row.map(|r| rules::leadership(election, &r)))
        })
    }

    fn renew_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Leadership>>> {
        Box::pin(async move {
            let holder = holder.to_owned();
            let decide: Decide =
                Arc::new(move |cur, now| rules::renew_leadership(cur, &holder, now, ttl));
            let row = self
                .leadership("renew_leadership", election, decide)
                .await?;
            Ok(row.map(|r| rules::leadership(election, &r)))
        })
    }

    fn release_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let holder = holder.to_owned();
            let decide: Decide =
                Arc::new(move |cur, now| rules::release_leadership(cur, &holder, now));
            let row = self
                .leadership("release_leadership", election, decide)
                .await?;
            Ok(row.is_some())
        })
    }

    fn current_leader<'a>(
        &'a self,
        election: &'a str,
    ) -> BoxFuture<'a, Result<Option<Leadership>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "current leader",
                    "SELECT holder, term, expires_at, \
                     (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
                     FROM leader_leases WHERE election = $1",
                    &[&election],
                )
                .await?;
            Ok(rows.first().and_then(|r| {
                let row = LeaderRow {
                    holder: r.get(0),
                    term: to_u64(r.get(1)),
                    expires_at: r.get(2),
                };
                rules::live_leadership(election, Some(&row), r.get(3))
            }))
        })
    }
}

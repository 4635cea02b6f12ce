//! The control plane's durable store.
//!
//! One [`Store`] trait, two backends:
//! - [`EmbeddedStore`]: a single redb file, crash-safe, no server; the default
//!   for `fabricctl up` and single-reconciler installs.
//! - [`PostgresStore`]: PostgreSQL through tokio-postgres, the durable source of
//!   truth in production (seed 2.3), shared by several reconciler replicas that
//!   coordinate through its leader election.
//!
//! What the store holds: desired objects with Kubernetes-style `generation` and
//! `resourceVersion`, their status, the signed records published to the fleet,
//! the latest heartbeat per node, rollout state and leases, an append-only event
//! log and leader leases. Every multi-object change goes through
//! [`Store::apply_batch`], which is all-or-nothing on both backends.
//!
//! The semantics (when `generation` moves, what counts as a conflict or a
//! rollback, who wins leadership) live once, sans-IO, in `rules`; the backends
//! only read rows, ask the rules, and write rows in one transaction. The design
//! and measurements are in `docs/stores.md`.

mod embedded;
mod error;
mod migrations;
mod postgres;
mod rules;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fabric_schemas::kinds::Kind;
use fabric_schemas::manifest::{Metadata, Object};
use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedStore;
pub use error::{Result, StoreError};
pub use migrations::{Migration, MIGRATIONS};
pub use postgres::{PostgresConfig, PostgresStore, PG_URL_ENV};

/// JSON as stored (JSONB in PostgreSQL).
pub type Json = serde_json::Value;

/// A boxed `Send` future: keeps [`Store`] object-safe so the reconciler can pick
/// a backend at run time and hold an `Arc<dyn Store>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Milliseconds since the Unix epoch; the store's only time unit.
pub type UnixMillis = i64;

/// The current wall-clock time in [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes a desired object (the `apply` of a manifest).
#[derive(Clone, Debug, PartialEq)]
pub struct PutObject {
    /// Kind of the object.
    pub kind: Kind,
    /// The object's `metadata.name`.
    pub name: String,
    /// Must be a JSON object.
    pub spec: Json,
    /// Labels to store with the object.
    pub labels: BTreeMap<String, String>,
    /// Annotations to store with the object.
    pub annotations: BTreeMap<String, String>,
    /// Optimistic concurrency: `None` writes unconditionally, `Some(0)` only
    /// creates (fails if the object exists), `Some(v)` only if the stored
    /// `resource_version` is `v`.
    pub expected_version: Option<u64>,
}

impl PutObject {
    /// An unconditional put with no labels or annotations.
    pub fn new(kind: Kind, name: impl Into<String>, spec: Json) -> PutObject {
        PutObject {
            kind,
            name: name.into(),
            spec,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            expected_version: None,
        }
    }

    /// The put for a parsed manifest object (its spec, labels and annotations;
    /// any `generation` or status in the file is ignored: the control plane owns them).
    pub fn from_object(object: &Object) -> Result<PutObject> {
        let spec = object.spec.to_json().map_err(|e| StoreError::Invalid {
            what: describe(object.kind, object.name()),
            reason: format!("spec does not serialize to JSON: {e}"),
        })?;
        Ok(PutObject {
            kind: object.kind,
            name: object.metadata.name.clone(),
            spec,
            labels: object.metadata.labels.clone(),
            annotations: object.metadata.annotations.clone(),
            expected_version: None,
        })
    }

    /// Sets the expected `resource_version` (see the field).
    pub fn expect_version(mut self, version: u64) -> PutObject {
        self.expected_version = Some(version);
        self
    }
}

/// A desired object as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Kind of the object.
    pub kind: Kind,
    /// Name, labels, annotations and `generation` (always `Some`).
    pub metadata: Metadata,
    /// Store-wide, strictly increasing on every change of this object (spec,
    /// labels, annotations or status); what optimistic concurrency compares.
    pub resource_version: u64,
    /// The desired spec as JSON.
    pub spec: Json,
    /// The status the controller last wrote, if any.
    pub status: Option<Json>,
    /// When the object last changed.
    pub updated_at: UnixMillis,
}

impl StoredObject {
    /// The object's `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// `metadata.generation`: starts at 1, bumped only when the spec changes.
    pub fn generation(&self) -> i64 {
        self.metadata.generation.unwrap_or(0)
    }
}

/// A signed record as published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Kind of the record.
    pub kind: Kind,
    /// The record's name (its object's name).
    pub name: String,
    /// The record generation, as signed in the envelope.
    pub generation: i64,
    /// The encoded signed envelope, byte for byte.
    pub envelope: Vec<u8>,
    /// When the envelope was stored.
    pub stored_at: UnixMillis,
}

/// What [`Store::put_record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// No record was stored under this kind/name.
    Inserted,
    /// A newer generation, or the same generation re-signed (for example with a
    /// later expiry), replaced the stored envelope.
    Replaced,
    /// The identical envelope was already stored.
    Unchanged,
}

/// One heartbeat as received by the intake.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    /// The node's name.
    pub node: String,
    /// The heartbeat body as sent.
    pub body: Json,
    /// When the intake received it; latest wins.
    pub received_at: UnixMillis,
}

/// The latest heartbeat of a node plus counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredHeartbeat {
    /// The node's name.
    pub node: String,
    /// The body with the greatest `received_at` seen so far (latest wins; an
    /// older heartbeat delivered late is counted but does not replace it).
    pub body: Json,
    /// When `body` was received.
    pub received_at: UnixMillis,
    /// When the first heartbeat of this node was received.
    pub first_seen: UnixMillis,
    /// Every heartbeat ever received from this node.
    pub received_count: u64,
}

/// Durable state of one rollout (the orchestrator's plan progress).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The rollout's name (its intent's).
    pub name: String,
    /// The orchestrator's progress, as JSON.
    pub state: Json,
    /// Starts at 1, +1 on every write; what `expected_version` compares.
    pub version: u64,
    /// When the state was last written.
    pub updated_at: UnixMillis,
}

/// A rollout lease as the orchestrator granted it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease id.
    pub id: String,
    /// The rollout the lease belongs to.
    pub rollout: String,
    /// The node the lease lets apply.
    pub node: String,
    /// The lease spec, or the envelope metadata the orchestrator keeps.
    pub body: Json,
    /// When the lease lapses.
    pub expires_at: UnixMillis,
}

/// An audit event to append.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// When the event happened.
    pub at: UnixMillis,
    /// What the event is about, e.g. `UpdateIntent/node-agent-0.3` or a node id.
    pub subject: String,
    /// A short CamelCase reason (`RolloutPaused`, `LeaseGranted`).
    pub reason: String,
    /// A human-readable sentence.
    pub message: String,
    /// Structured detail, `null` if none.
    pub data: Json,
}

impl NewEvent {
    /// An event stamped now, with no data.
    pub fn new(
        subject: impl Into<String>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> NewEvent {
        NewEvent {
            at: now_millis(),
            subject: subject.into(),
            reason: reason.into(),
            message: message.into(),
            data: Json::Null,
        }
    }
}

/// An appended event with its sequence number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing, in commit order: a reader paging with
    /// `list_events(last_seen_seq)` never misses an event.
    pub seq: u64,
    /// The event as appended.
    #[serde(flatten)]
    pub event: NewEvent,
}

/// A held leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The election's name.
    pub election: String,
    /// The replica holding it.
    pub holder: String,
    /// Fencing token: +1 every time leadership changes hands. A leader can stamp
    /// its writes with it so a deposed leader's late writes are recognisable.
    pub term: u64,
    /// When the leadership lapses unless renewed.
    pub expires_at: UnixMillis,
}

/// One write inside an atomic [`Store::apply_batch`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Create or update a desired object.
    PutObject(PutObject),
    /// Write an object's status.
    PutStatus {
        /// Kind of the object.
        kind: Kind,
        /// Name of the object.
        name: String,
        /// The new status.
        status: Json,
        /// Compare-and-set on `resource_version`; `None` is unconditional.
        expected_version: Option<u64>,
    },
    /// Delete a desired object.
    DeleteObject {
        /// Kind of the object.
        kind: Kind,
        /// Name of the object.
        name: String,
        /// Compare-and-set on `resource_version`; `None` is unconditional.
        expected_version: Option<u64>,
    },
    /// Publish a signed record.
    PutRecord {
        /// Kind of the record.
        kind: Kind,
        /// Name of the record.
        name: String,
        /// The record generation in the envelope; may not go back.
        generation: i64,
        /// The encoded signed envelope.
        envelope: Vec<u8>,
    },
    /// Write a rollout's state.
    PutRolloutState {
        /// The rollout's name.
        name: String,
        /// The new state.
        state: Json,
        /// Compare-and-set on the state's `version`; `None` unconditional, `Some(0)` create only.
        expected_version: Option<u64>,
    },
    /// Store a lease, replacing one with the same id.
    PutLease(Lease),
    /// Delete a lease.
    DeleteLease {
        /// The lease id.
        id: String,
    },
    /// Append an audit event.
    AppendEvent(NewEvent),
}

/// The result of one [`Op`], in the same position as the op in the batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// The object as stored after a put or status write.
    Object(StoredObject),
    /// `true` if an object was deleted.
    Deleted(bool),
    /// What publishing the record did.
    Record(RecordOutcome),
    /// The rollout state as written.
    RolloutState(RolloutState),
    /// The lease was stored.
    Lease,
    /// `true` if a lease was deleted.
    LeaseDeleted(bool),
    /// The appended event's sequence number.
    Event(u64),
}

/// The control plane's durable store. Object-safe; see the module docs.
///
/// Only [`apply_batch`](Store::apply_batch) and the read, heartbeat and
/// leadership methods are backend-specific; the single-write helpers are
/// one-op batches.
pub trait Store: Send + Sync {
    /// Applies every op in one transaction, in order (later ops see earlier
    /// ones). If any op fails, nothing is written and that op's error is returned.
    fn apply_batch(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Applied>>>;

    /// A live object by kind and name.
    fn get_object<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredObject>>>;

    /// Every live object of a kind, sorted by name.
    fn list_objects(&self, kind: Kind) -> BoxFuture<'_, Result<Vec<StoredObject>>>;

    /// The published record of a kind and name.
    fn get_record<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRecord>>>;

    /// Every record, or every record of one kind, sorted by kind then name.
    fn list_records(&self, kind: Option<Kind>) -> BoxFuture<'_, Result<Vec<StoredRecord>>>;

    /// Stores many heartbeats in one transaction (the intake's path). Several
    /// heartbeats of one node in a batch are folded: latest wins, all counted.
    fn record_heartbeats<'a>(&'a self, batch: &'a [Heartbeat]) -> BoxFuture<'a, Result<()>>;

    /// Latest heartbeat per node, sorted by node.
    fn list_heartbeats(&self) -> BoxFuture<'_, Result<Vec<StoredHeartbeat>>>;

    /// A rollout's stored state.
    fn get_rollout_state<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RolloutState>>>;

    /// Every lease, or those of one rollout, sorted by id.
    fn list_leases<'a>(&'a self, rollout: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Lease>>>;

    /// Events with `seq > since`, oldest first, at most `limit`.
    fn list_events(&self, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Event>>>;

    /// Becomes (or stays) leader of `election` for `ttl` unless another holder's
    /// lease is still live. Atomic compare-and-set: among contending replicas at
    /// most one gets `Some` for any instant. Re-acquiring one's own live lease
    /// extends it and keeps the term.
    fn try_acquire_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Leadership>>>;

    /// Extends a live lease held by `holder`. `None` means leadership was lost
    /// (expired and possibly taken): the caller must stop acting as leader.
    fn renew_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Leadership>>>;

    /// Gives up leadership so another replica can take over at once. `false` if
    /// `holder` was not the leader.
    fn release_leadership<'a>(
        &'a self,
        election: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;

    /// The live leader of `election`, if any.
    fn current_leader<'a>(&'a self, election: &'a str)
        -> BoxFuture<'a, Result<Option<Leadership>>>;

    // ---- single-write helpers: one-op batches --------------------------------

    /// Creates or updates a desired object. `generation` is bumped only when the
    /// spec changes; an identical put is a no-op returning the stored object.
    fn put_object(&self, put: PutObject) -> BoxFuture<'_, Result<StoredObject>> {
        single(self, Op::PutObject(put), |a| match a {
            Applied::Object(o) => Some(o),
            _ => None,
        })
    }

    /// Writes an object's status; never bumps `generation`.
    fn put_status<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        status: Json,
        expected_version: Option<u64>,
    ) -> BoxFuture<'a, Result<StoredObject>> {
        let op = Op::PutStatus {
            kind,
            name: name.to_owned(),
            status,
            expected_version,
        };
        single(self, op, |a| match a {
            Applied::Object(o) => Some(o),
            _ => None,
        })
    }

    /// Deletes an object; `false` if it did not exist. Its generation is
    /// remembered, so a re-created object continues above it and records signed
    /// for it never roll back.
    fn delete_object<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        expected_version: Option<u64>,
    ) -> BoxFuture<'a, Result<bool>> {
        let op = Op::DeleteObject {
            kind,
            name: name.to_owned(),
            expected_version,
        };
        single(self, op, |a| match a {
            Applied::Deleted(d) => Some(d),
            _ => None,
        })
    }

    /// Publishes a signed record; refuses a generation older than the stored one.
    fn put_record<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        generation: i64,
        envelope: Vec<u8>,
    ) -> BoxFuture<'a, Result<RecordOutcome>> {
        let op = Op::PutRecord {
            kind,
            name: name.to_owned(),
            generation,
            envelope,
        };
        single(self, op, |a| match a {
            Applied::Record(r) => Some(r),
            _ => None,
        })
    }

    /// Stores one heartbeat (see [`record_heartbeats`](Store::record_heartbeats)).
    fn record_heartbeat<'a>(
        &'a self,
        node: &'a str,
        body: Json,
        received_at: UnixMillis,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let hb = [Heartbeat {
                node: node.to_owned(),
                body,
                received_at,
            }];
            self.record_heartbeats(&hb).await
        })
    }

    /// Writes rollout state with optimistic concurrency on its `version`
    /// (`None` unconditional, `Some(0)` create only).
    fn put_rollout_state<'a>(
        &'a self,
        name: &'a str,
        state: Json,
        expected_version: Option<u64>,
    ) -> BoxFuture<'a, Result<RolloutState>> {
        let op = Op::PutRolloutState {
            name: name.to_owned(),
            state,
            expected_version,
        };
        single(self, op, |a| match a {
            Applied::RolloutState(s) => Some(s),
            _ => None,
        })
    }

    /// Stores a lease, replacing one with the same id.
    fn put_lease(&self, lease: Lease) -> BoxFuture<'_, Result<()>> {
        single(self, Op::PutLease(lease), |a| match a {
            Applied::Lease => Some(()),
            _ => None,
        })
    }

    /// Deletes a lease; `false` if there was none.
    fn delete_lease<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        let op = Op::DeleteLease { id: id.to_owned() };
        single(self, op, |a| match a {
            Applied::LeaseDeleted(d) => Some(d),
            _ => None,
        })
    }

    /// Appends to the audit log; returns the event's sequence number.
    fn append_event(&self, event: NewEvent) -> BoxFuture<'_, Result<u64>> {
        single(self, Op::AppendEvent(event), |a| match a {
            Applied::Event(seq) => Some(seq),
            _ => None,
        })
    }
}

/// Runs one op as a batch and unwraps its result.
fn single<'a, S, T>(
    store: &'a S,
    op: Op,
    pick: fn(Applied) -> Option<T>,
) -> BoxFuture<'a, Result<T>>
where
    S: Store + ?Sized,
    T: Send + 'a,
{
    Box::pin(async move {
        let what = op_label(&op);
        let mut applied = store.apply_batch(vec![op]).await?;
        applied
            .pop()
            .and_then(pick)
            .ok_or_else(|| StoreError::Task {
                op: what,
                detail: "backend returned no result for the op (bug in the store backend)".into(),
            })
    })
}

fn op_label(op: &Op) -> &'static str {
    match op {
        Op::PutObject(_) => "put_object",
        Op::PutStatus { .. } => "put_status",
        Op::DeleteObject { .. } => "delete_object",
        Op::PutRecord { .. } => "put_record",
        Op::PutRolloutState { .. } => "put_rollout_state",
        Op::PutLease(_) => "put_lease",
        Op::DeleteLease { .. } => "delete_lease",
        Op::AppendEvent(_) => "append_event",
    }
}

/// `FabricNode "edge-1"`: how errors name an object.
pub(crate) fn describe(kind: Kind, name: &str) -> String {
    format!("{kind} {name:?}")
}

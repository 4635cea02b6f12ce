//! The fleet-wide data every heartbeat reply needs — the `FabricNode`s (the
//! node-identity check, the update hints' target match, the canonical
//! endpoints' keys), the `UpdateIntent`s and the `control-api` ServiceRecord —
//! read once into a snapshot shared by all replies instead of four store reads
//! per heartbeat.
//!
//! Freshness: a snapshot is used for at most [`ReplyCache::max_age`] after its
//! reads began, and is dropped at once when this process applies objects
//! ([`ReplyCache::invalidate`]). A write made elsewhere (another replica, the
//! orchestrator) therefore reaches replies at most `max_age` late: new update
//! hints and endpoints may be delayed by that much, never lost.
//!
//! The node-identity check never trusts the snapshot to accept a node it does
//! not know: only a cached `nodeId` that equals the claimed one skips the
//! store; a miss (node not in the snapshot, no `nodeId`) or a mismatch reads
//! the node from the store, exactly as without the cache. The one staleness
//! left: a node whose `nodeId` was changed away from its old key (or whose
//! `FabricNode` was deleted) in the last `max_age`, not through this process's
//! apply, may still be accepted under the old key for that long.
//!
//! One refresh at a time: callers that find the snapshot stale wait for the
//! refresh in progress instead of all reading the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fabric::topology::NodeId;
use fabric_schemas::kinds::{FabricNodeSpec, Kind, ServiceRecordSpec, UpdateIntentSpec};

use crate::store::{Store, StoreError};
use fabric_proto::endpoint::ControlEndpoint;

/// Default [`ReplyCache::max_age`].
pub const DEFAULT_REPLY_CACHE_MAX_AGE: Duration = Duration::from_millis(250);

/// One consistent-enough read of the fleet-wide reply data.
#[derive(Debug)]
pub(crate) struct Snapshot {
    taken_at: Instant,
    epoch: u64,
    /// Every live `FabricNode` by name; `None` if its spec does not parse.
    nodes: HashMap<String, Option<FabricNodeSpec>>,
    /// Every parseable `UpdateIntent` with its generation.
    intents: Vec<(UpdateIntentSpec, i64)>,
    endpoints: Vec<ControlEndpoint>,
}

impl Snapshot {
    /// The node's spec if the snapshot holds it with exactly this `nodeId`
    /// (case-insensitive); `None` means "ask the store".
    pub(crate) fn node_with_id(&self, node: &str, node_id: &str) -> Option<&FabricNodeSpec> {
        let spec = self.nodes.get(node)?.as_ref()?;
        let id = spec.node_id.as_deref()?;
        id.eq_ignore_ascii_case(node_id).then_some(spec)
    }

    /// The newest `UpdateIntent` generation per component that targets `node`
    /// (`fabric_proto::hints::update_hints` over the snapshot's intents).
    pub(crate) fn update_hints(
        &self,
        node: &str,
        spec: Option<&FabricNodeSpec>,
    ) -> std::collections::BTreeMap<String, i64> {
        match spec {
            Some(spec) => fabric_proto::hints::update_hints(
                node,
                spec,
                self.intents.iter().map(|(s, g)| (s, *g)),
            ),
            None => std::collections::BTreeMap::new(),
        }
    }

    /// `fabric://<node-id>/control` of every `control-api` provider with a key.
    pub(crate) fn endpoints(&self) -> &[ControlEndpoint] {
        &self.endpoints
    }
}

/// The shared snapshot and its refresh.
#[derive(Debug)]
pub(crate) struct ReplyCache {
    max_age: Duration,
    current: RwLock<Option<Arc<Snapshot>>>,
    refresh: tokio::sync::Mutex<()>,
    epoch: AtomicU64,
}

impl ReplyCache {
    /// `max_age` zero disables the cache (every reply reads the store).
    pub(crate) fn new(max_age: Duration) -> ReplyCache {
        ReplyCache {
            max_age,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Drops the snapshot: the next reply reads the store again.
    pub(crate) fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let guard = match self.current.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let s = guard.as_ref()?;
        (s.epoch == self.epoch.load(Ordering::Acquire) && s.taken_at.elapsed() < self.max_age)
            .then(|| s.clone())
    }

    /// A snapshot no older than `max_age`, refreshed if needed; `None` when
    /// the cache is disabled.
    pub(crate) async fn get(&self, store: &dyn Store) -> Result<Option<Arc<Snapshot>>, StoreError> {
        if self.max_age.is_zero() {
            return Ok(None);
        }
        if let Some(s) = self.fresh() {
            return Ok(Some(s));
        }
        let _refreshing = self.refresh.lock().await;
        if let Some(s) = self.fresh() {
            return Ok(Some(s));
        }
        // Epoch and time are taken before the reads: a write or an
        // invalidation after this point makes the snapshot stale, never
        // silently current.
        let epoch = self.epoch.load(Ordering::Acquire);
        let taken_at = Instant::now();
        let snap = Arc::new(load(store, epoch, taken_at).await?);
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Some(snap.clone());
        Ok(Some(snap))
    }
}

async fn load(store: &dyn Store, epoch: u64, taken_at: Instant) -> Result<Snapshot, StoreError> {
    let nodes: HashMap<String, Option<FabricNodeSpec>> = store
        .list_objects(Kind::FabricNode)
        .await?
        .into_iter()
        .map(|o| {
            let spec = serde_json::from_value::<FabricNodeSpec>(o.spec).ok();
            (o.metadata.name, spec)
        })
        .collect();
    let intents = load_intents(store).await?;
    let services = load_services(store).await?;
    let endpoints = fabric_proto::endpoint::canonical_control_endpoints(
        &services,
        |p| {
            nodes
                .get(p)
                .and_then(|n| n.as_ref())
                .and_then(|n| n.node_id.as_deref())
                .and_then(|id| id.parse::<NodeId>().ok())
        },
        &[],
    );
    Ok(Snapshot {
        taken_at,
        epoch,
        nodes,
        intents,
        endpoints,
    })
}

/// Every parseable `UpdateIntent` with its object generation.
pub(crate) async fn load_intents(
    store: &dyn Store,
) -> Result<Vec<(UpdateIntentSpec, i64)>, StoreError> {
    Ok(store
        .list_objects(Kind::UpdateIntent)
        .await?
        .into_iter()
        .filter_map(|o| {
            let generation = o.generation();
            serde_json::from_value::<UpdateIntentSpec>(o.spec)
                .ok()
                .map(|s| (s, generation))
        })
        .collect())
}

/// Every parseable `ServiceRecord` spec.
pub(crate) async fn load_services(store: &dyn Store) -> Result<Vec<ServiceRecordSpec>, StoreError> {
    Ok(store
        .list_objects(Kind::ServiceRecord)
        .await?
        .into_iter()
        .filter_map(|o| serde_json::from_value(o.spec).ok())
        .collect())
}

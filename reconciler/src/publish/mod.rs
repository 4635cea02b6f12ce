//! Registry publishing: a reconcile loop that turns `FabricNode`,
//! `ServiceRecord`, `UpdateIntent` and `RolloutPolicy` objects of the store into
//! signed records, stores them with [`Store::put_record`] (which refuses a
//! rollback) and hands them to a few nodes through a [`RecordSink`].
//!
//! ## Record generations
//!
//! A node accepts a record only if its generation is not older than the one it
//! holds, and a re-signed record (same content, later expiry) must be newer
//! still, or nodes would refuse it as a conflicting copy of the same generation.
//! So the record generation combines the object's generation with a re-sign
//! counter:
//!
//! ```text
//! record generation = max(object generation << 20, stored record generation + 1)
//! ```
//!
//! A spec change (object generation + 1) always lands on a fresh `<< 20` block
//! above every earlier re-sign; a re-sign of the same spec is the stored
//! record plus one. `record_generation >> 20` is the object generation it was signed from.
//! 2^20 re-signs at the default 12 h interval is over a thousand years. Deleted
//! and re-created objects continue above their old generation (the store keeps
//! tombstones), so their records never roll back either.
//!
//! ## Expiry
//!
//! Records live [`PublishConfig::ttl`] (default 24 h) and are re-signed once
//! half of that has passed, so nodes always hold a record with at least half
//! its life left while the control plane is up, and a control plane that is
//! down for less than half a TTL loses nothing.
//!
//! ## Status
//!
//! Each object gets `observedGeneration` and a `Published` condition: `True`
//! once a record of its current generation is stored; `False` with reason
//! `NodeIdMissing` for a `FabricNode` without `spec.nodeId`, `InvalidSpec` if
//! the stored spec does not parse, `SigningFailed` if the record would not be
//! accepted by nodes (checked with `fabric_schemas::accept` against the trust
//! root before storing). Record, status and an audit event are written in one
//! batch.

mod sink;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fabric_schemas::accept::NothingHeld;
use fabric_schemas::kinds::{Kind, Spec};
use fabric_schemas::trust::Role;
use fabric_schemas::{Envelope, Record, Scope, TrustAnchor};

use crate::store::{NewEvent, Op, Store, StoreError, StoredObject};
use fabric_runtime::status::{
    merge_status, read_status, set_condition, ConditionStatus, NewCondition,
};
use fabric_runtime::{Action, Reconciler};

pub use sink::{
    AgentSink, Delivery, PublishedRecord, RecordInjector, RecordSink, SinkError, StoreOnlySink,
};

/// The kinds this loop publishes.
pub const PUBLISHED_KINDS: [Kind; 4] = [
    Kind::FabricNode,
    Kind::ServiceRecord,
    Kind::UpdateIntent,
    Kind::RolloutPolicy,
];

/// The condition this loop owns.
pub const PUBLISHED_CONDITION: &str = "Published";

pub use fabric_schemas::RESIGN_BITS;

/// The record generation for an object at `object_generation` given the
/// generation of the record already stored (see the module docs).
pub fn record_generation(object_generation: u64, stored: Option<u64>) -> Option<u64> {
    let base = object_generation
        .checked_shl(RESIGN_BITS)
        .filter(|b| b >> RESIGN_BITS == object_generation)?;
    match stored {
        None => Some(base),
        Some(s) => Some(base.max(s.checked_add(1)?)),
    }
}

/// Publishing settings.
#[derive(Clone, Copy, Debug)]
pub struct PublishConfig {
    /// Lifetime of a signed record.
    pub ttl: Duration,
    /// How often every object is re-checked even without a trigger (the
    /// level-triggered safety net: an object written by another writer, a
    /// delivery that failed).
    pub resync: Duration,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            ttl: Duration::from_secs(24 * 3600),
            resync: Duration::from_secs(30),
        }
    }
}

/// Why a signer could not be loaded, or the loop failed on one object.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The keys folder is incomplete or unreadable.
    #[error("keys folder {dir}: {reason}")]
    Keys {
        /// The folder.
        dir: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No node took a record.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A record could not be signed, or nodes would refuse it.
    #[error("{what}: {reason}")]
    Sign {
        /// The object, e.g. `FabricNode "edge-1"`.
        what: String,
        /// Why it could not be signed, or why nodes would refuse it.
        reason: String,
    },
}

/// The control keys and the trust root they belong to.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<SigningKey>,
    trust: TrustAnchor,
}

impl Signer {
    /// A signer from keys and the trust root nodes use. Every record is
    /// checked with `accept` against `trust` before it is stored.
    pub fn new(keys: Vec<SigningKey>, trust: TrustAnchor) -> Self {
        Signer { keys, trust }
    }

    /// Loads a `fabricctl keys init` folder: `DIR/trust-root.yaml` and the
    /// control keys among `DIR/keys/*.pem` (as many as the control threshold
    /// needs, in key-id order).
    pub fn from_keys_dir(dir: &Path) -> Result<Signer, PublishError> {
        let bad = |reason: String| PublishError::Keys {
            dir: dir.display().to_string(),
            reason,
        };
        let trust_file = dir.join("trust-root.yaml");
        let spec = fabric_schemas::keys::read_trust_root_manifest(&trust_file)
            .map_err(|e| bad(e.to_string()))?;
        let trust = TrustAnchor::from_spec(&spec).map_err(|e| bad(format!("trust root: {e}")))?;
        let mut keys = Vec::new();
        let mut ids = spec.roles.control.key_ids.clone();
        ids.sort();
        for id in &ids {
            let path = dir.join("keys").join(format!("{id}.pem"));
            if !path.exists() {
                continue;
            }
            let key =
                fabric_schemas::keys::read_private_key(&path).map_err(|e| bad(e.to_string()))?;
            keys.push(key);
            if keys.len() as u32 >= trust.threshold(Role::Control) {
                break;
            }
        }
        if (keys.len() as u32) < trust.threshold(Role::Control).max(1) {
            return Err(bad(format!(
                "found {} of the {} control key(s) the trust root's threshold needs in {}",
                keys.len(),
                trust.threshold(Role::Control).max(1),
                dir.join("keys").display()
            )));
        }
        Ok(Signer { keys, trust })
    }

    /// The trust root records are checked against.
    pub fn trust(&self) -> &TrustAnchor {
        &self.trust
    }

    /// Signs `spec` and checks the result is acceptable to a node.
    fn sign(
        &self,
        spec: &Spec,
        name: &str,
        generation: u64,
        now: i64,
        ttl: Duration,
    ) -> Result<Envelope, String> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2).max(1);
        let record = Record::new(
            spec,
            name,
            generation,
            now,
            now.saturating_add(ttl),
            Scope::any(),
        )
        .map_err(|e| e.to_string())?;
        let refs: Vec<&SigningKey> = self.keys.iter().collect();
        let env = Envelope::sign(record, &refs);
        fabric_schemas::accept(&self.trust, &NothingHeld, &env.encode(), now)
            .map_err(|r| format!("nodes would refuse the record: {r}"))?;
        Ok(env)
    }
}

/// Shared state of the publishing loop.
pub struct PublishCtx {
    /// Where objects are read and records stored.
    pub store: Arc<dyn Store>,
    /// Signs the records.
    pub signer: Signer,
    /// Where stored records are delivered.
    pub sink: Arc<dyn RecordSink>,
    /// Record lifetime and resync interval.
    pub config: PublishConfig,
    /// Records handed to the sink, so a stored record is delivered once per
    /// process (a new leader delivers everything once; nodes drop duplicates).
    delivered: Mutex<HashMap<(Kind, String), u64>>,
}

impl PublishCtx {
    /// The loop's state, with nothing delivered yet.
    pub fn new(
        store: Arc<dyn Store>,
        signer: Signer,
        sink: Arc<dyn RecordSink>,
        config: PublishConfig,
    ) -> Self {
        PublishCtx {
            store,
            signer,
            sink,
            config,
            delivered: Mutex::new(HashMap::new()),
        }
    }

    fn delivered(&self, key: &(Kind, String)) -> Option<u64> {
        self.delivered.lock().ok().and_then(|m| m.get(key).copied())
    }

    fn mark_delivered(&self, key: (Kind, String), generation: u64) {
        if let Ok(mut m) = self.delivered.lock() {
            m.insert(key, generation);
        }
    }

    /// Every object key of the published kinds (for a resync).
    pub async fn all_keys(&self) -> Result<Vec<(Kind, String)>, StoreError> {
        let mut out = Vec::new();
        for kind in PUBLISHED_KINDS {
            for o in self.store.list_objects(kind).await? {
                out.push((kind, o.name().to_owned()));
            }
        }
        Ok(out)
    }
}

/// The publishing reconciler. See the module docs.
pub struct Publisher;

impl Publisher {
    /// Writes status only if it changed (a status write bumps resource_version).
    async fn set_status(
        ctx: &PublishCtx,
        obj: &StoredObject,
        status: ConditionStatus,
        reason: &str,
        message: &str,
    ) -> Result<(), PublishError> {
        let mut common = read_status(obj.status.as_ref());
        let gen = obj.generation();
        let mut changed = common.observed_generation != Some(gen);
        common.observed_generation = Some(gen);
        changed |= set_condition(
            &mut common.conditions,
            NewCondition {
                type_: PUBLISHED_CONDITION,
                status,
                reason,
                message,
                observed_generation: Some(gen),
            },
            k8s_openapi::jiff::Timestamp::now(),
        );
        if changed {
            let doc = merge_status(obj.status.as_ref(), &common);
            ctx.store
                .put_status(obj.kind, obj.name(), doc, Some(obj.resource_version))
                .await?;
            if status != ConditionStatus::True {
                tracing::warn!(kind = %obj.kind, name = obj.name(), generation = gen, reason, message, "not published");
            }
        }
        Ok(())
    }

    async fn deliver(ctx: &PublishCtx, record: PublishedRecord) -> Result<(), PublishError> {
        let key = (record.kind, record.name.clone());
        if ctx.delivered(&key) == Some(record.generation) {
            return Ok(());
        }
        let d = ctx.sink.deliver(&record).await?;
        for (target, why) in &d.failures {
            tracing::warn!(kind = %record.kind, name = %record.name, generation = record.generation, target, error = %why, "record not taken by node");
        }
        tracing::debug!(kind = %record.kind, name = %record.name, generation = record.generation, holders = ?d.holders, "record handed to the fabric");
        ctx.mark_delivered(key, record.generation);
        Ok(())
    }
}

impl Reconciler for Publisher {
    type Key = (Kind, String);
    type Object = StoredObject;
    type Ctx = PublishCtx;
    type Error = PublishError;

    async fn fetch(
        &self,
        key: &(Kind, String),
        ctx: &PublishCtx,
    ) -> Result<Option<Arc<StoredObject>>, PublishError> {
        Ok(ctx.store.get_object(key.0, &key.1).await?.map(Arc::new))
    }

    async fn reconcile(
        &self,
        obj: Arc<StoredObject>,
        ctx: &PublishCtx,
    ) -> Result<Action, PublishError> {
        if !PUBLISHED_KINDS.contains(&obj.kind) {
            return Ok(Action::await_change());
        }
        let spec = match Spec::from_json(obj.kind, obj.spec.clone()) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("stored spec does not parse as {}: {e}", obj.kind);
                Self::set_status(ctx, &obj, ConditionStatus::False, "InvalidSpec", &msg).await?;
                return Ok(Action::await_change());
            }
        };
        if let Spec::FabricNode(n) = &spec {
            if n.node_id.as_deref().is_none_or(str::is_empty) {
                Self::set_status(
                    ctx,
                    &obj,
                    ConditionStatus::False,
                    "NodeIdMissing",
                    "spec.nodeId is not set; the node record is published once the node's key is known",
                )
                .await?;
                return Ok(Action::await_change());
            }
        }
        let gen = u64::try_from(obj.generation()).unwrap_or(0);
        let now = fabric_schemas::time::now_unix();
        let half_life = i64::try_from(ctx.config.ttl.as_secs() / 2)
            .unwrap_or(i64::MAX)
            .max(1);
        let stored = ctx.store.get_record(obj.kind, obj.name()).await?;
        // The stored record is current if it was signed from this generation
        // and has more than half of its life left.
        let current = stored.as_ref().and_then(|r| {
            let env = Envelope::decode(&r.envelope).ok()?;
            let fresh = env.record.generation >> RESIGN_BITS == gen
                && env.record.expires_at - now > half_life
                && env.record.payload
                    == Record::new(&spec, obj.name(), 0, 0, 1, Scope::any())
                        .ok()?
                        .payload;
            fresh.then_some(env)
        });
        let env = match current {
            Some(env) => env,
            None => {
                let stored_gen = stored
                    .as_ref()
                    .map(|r| u64::try_from(r.generation).unwrap_or(0));
                let Some(record_gen) = record_generation(gen, stored_gen) else {
                    let msg = format!("record generation overflow (object generation {gen}, stored {stored_gen:?})");
                    Self::set_status(
                        ctx,
                        &obj,
                        ConditionStatus::False,
                        "GenerationOverflow",
                        &msg,
                    )
                    .await?;
                    return Ok(Action::await_change());
                };
                let env = match ctx
                    .signer
                    .sign(&spec, obj.name(), record_gen, now, ctx.config.ttl)
                {
                    Ok(env) => env,
                    Err(reason) => {
                        Self::set_status(
                            ctx,
                            &obj,
                            ConditionStatus::False,
                            "SigningFailed",
                            &reason,
                        )
                        .await?;
                        return Err(PublishError::Sign {
                            what: format!("{} {:?}", obj.kind, obj.name()),
                            reason,
                        });
                    }
                };
                let mut common = read_status(obj.status.as_ref());
                common.observed_generation = Some(obj.generation());
                let message = format!(
                    "record generation {record_gen} expires at {}",
                    fabric_schemas::time::format_rfc3339(env.record.expires_at)
                );
                set_condition(
                    &mut common.conditions,
                    NewCondition {
                        type_: PUBLISHED_CONDITION,
                        status: ConditionStatus::True,
                        reason: "Published",
                        message: &message,
                        observed_generation: Some(obj.generation()),
                    },
                    k8s_openapi::jiff::Timestamp::now(),
                );
                let subject = format!("{}/{}", obj.kind, obj.name());
                let mut event = NewEvent::new(&subject, "RecordPublished", &message);
                event.data = serde_json::json!({
                    "recordGeneration": record_gen,
                    "objectGeneration": obj.generation(),
                    "expiresAt": env.record.expires_at,
                    "digest": hex::encode(env.digest()),
                });
                // Record, status and event in one transaction; the status write
                // is conditional on the version we read, so a spec change in
                // between fails the batch (nothing written) and we retry.
                ctx.store
                    .apply_batch(vec![
                        Op::PutRecord {
                            kind: obj.kind,
                            name: obj.name().to_owned(),
                            generation: i64::try_from(record_gen).unwrap_or(i64::MAX),
                            envelope: env.encode(),
                        },
                        Op::PutStatus {
                            kind: obj.kind,
                            name: obj.name().to_owned(),
                            status: merge_status(obj.status.as_ref(), &common),
                            expected_version: Some(obj.resource_version),
                        },
                        Op::AppendEvent(event),
                    ])
                    .await?;
                tracing::info!(kind = %obj.kind, name = obj.name(), generation = obj.generation(), record_generation = record_gen, expires_at = env.record.expires_at, "record published");
                env
            }
        };
        // Also covers a status written by an older version, or lost: cheap no-op otherwise.
        if read_status(obj.status.as_ref()).observed_generation != Some(obj.generation())
            && stored.is_some()
        {
            Self::set_status(
                ctx,
                &obj,
                ConditionStatus::True,
                "Published",
                &format!("record generation {} in force", env.record.generation),
            )
            .await?;
        }
        Self::deliver(
            ctx,
            PublishedRecord {
                kind: obj.kind,
                name: obj.name().to_owned(),
                generation: env.record.generation,
                envelope: env.encode(),
            },
        )
        .await?;
        // Look again when the record reaches half its life.
        let resign_in = (env.record.expires_at - half_life - now).max(1);
        Ok(Action::requeue(Duration::from_secs(
            u64::try_from(resign_in).unwrap_or(1),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_generation_is_monotonic_across_resigns_and_spec_changes() {
        let g1 = record_generation(1, None).expect("gen");
        assert_eq!(g1, 1 << 20);
        let r1 = record_generation(1, Some(g1)).expect("resign");
        assert_eq!(r1, g1 + 1);
        let r2 = record_generation(1, Some(r1)).expect("resign");
        assert!(r2 > r1);
        let g2 = record_generation(2, Some(r2)).expect("spec change");
        assert_eq!(g2, 2 << 20);
        assert_eq!(g2 >> RESIGN_BITS, 2);
        // A stored record from elsewhere that is already ahead is never rolled back.
        assert_eq!(record_generation(2, Some(5 << 20)), Some((5 << 20) + 1));
        assert_eq!(record_generation(u64::MAX >> 10, None), None);
    }
}

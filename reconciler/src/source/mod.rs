//! The GitOps folder source: a folder of manifests is the desired state.
//!
//! The folder is loaded with [`fabric_schemas::manifest::load_path`] at start,
//! whenever it changes (notify, recursive, debounced: a sync runs once the
//! folder has been quiet for [`GitOpsConfig::debounce`], so a `git pull` that
//! touches forty files is one sync), and every [`GitOpsConfig::resync`] as a
//! safety net for changes a watch cannot see (a symlink swap by git-sync, a
//! network filesystem).
//!
//! A sync is all or nothing:
//! - any manifest error: nothing is written, the last good state stays in
//!   force; every error line is logged (`warn`), the `GitOpsSynced` condition
//!   turns `False` with the errors as its message, and a `GitOpsSyncFailed`
//!   event carrying the errors is appended to the store's audit log;
//! - a clean folder: every object is written in one [`Store::apply_batch`]
//!   (the store bumps `metadata.generation` only when a spec changes, so an
//!   unchanged file changes nothing). Objects this source wrote before and that
//!   are gone from the folder are deleted in the same batch when
//!   [`GitOpsConfig::prune`] is set, and otherwise only reported as orphaned.
//!
//! Ownership: the source stamps every object it writes with the annotation
//! [`MANAGED_BY_ANNOTATION`]` = gitops`, and only ever prunes or reports objects
//! carrying it, so objects created through the Control API are never touched.
//! `RolloutLease` objects never come from the folder (the manifest checks
//! refuse them, and the source skips the kind when listing what it owns).
//!
//! An [`Overlay`] may rewrite each loaded object before it is stored, the way
//! a kustomize overlay patches a base: `fabricctl up` uses one to give the
//! example `FabricNode`s the key and loopback endpoint of the node that runs
//! them, so the operator's folder stays the one that is watched and edited.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabric_schemas::kinds::Kind;
use fabric_schemas::manifest::{load_path, LoadReport, ManifestError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use tokio::sync::{mpsc, watch};

use crate::store::{Applied, NewEvent, Op, PutObject, Store, StoreError};
use fabric_runtime::status::{set_condition, ConditionStatus, NewCondition};

/// Annotation marking objects written by the GitOps source.
pub const MANAGED_BY_ANNOTATION: &str = "fabric.dev/managed-by";
/// Its value.
pub const MANAGED_BY_GITOPS: &str = "gitops";
/// The condition this source reports.
pub const SYNCED_CONDITION: &str = "GitOpsSynced";

/// An object's identity in the store.
pub type ObjectKey = (Kind, String);

/// Called with the objects a sync created, changed or deleted (for example to
/// enqueue them into a reconcile loop).
pub type OnChange = Arc<dyn Fn(Vec<ObjectKey>) + Send + Sync>;

/// Rewrites a loaded object before it is stored (see the module docs).
#[derive(Clone)]
pub struct Overlay(pub Arc<dyn Fn(&mut fabric_schemas::manifest::Object) + Send + Sync>);

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Overlay")
    }
}

/// How the source behaves.
#[derive(Clone, Debug)]
pub struct GitOpsConfig {
    /// The manifest folder.
    pub dir: PathBuf,
    /// Delete objects that disappeared from the folder (default: only report them).
    pub prune: bool,
    /// Quiet period after the last file event before a sync.
    pub debounce: Duration,
    /// Full re-sync interval even without file events.
    pub resync: Duration,
    /// Applied to every loaded object before it is stored.
    pub overlay: Option<Overlay>,
}

impl GitOpsConfig {
    /// Defaults for `dir`: no prune, 300 ms debounce, 60 s resync.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        GitOpsConfig {
            dir: dir.into(),
            prune: false,
            debounce: Duration::from_millis(300),
            resync: Duration::from_secs(60),
            overlay: None,
        }
    }
}

/// Why the source could not run at all (manifest errors are not errors of the
/// source: they are reported in [`SourceStatus`] and the loop goes on).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The folder could not be watched.
    #[error("watching {dir}: {source}")]
    Watch {
        /// The folder.
        dir: String,
        /// The watcher's error.
        #[source]
        source: notify::Error,
    },
    /// The blocking manifest load panicked or was cancelled.
    #[error("manifest loader task failed: {0}")]
    Loader(String),
}

/// What the last sync did, for logs, tests and the binary's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceStatus {
    /// The `GitOpsSynced` condition (absent before the first sync).
    pub condition: Option<Condition>,
    /// Syncs attempted so far (successful or not).
    pub syncs: u64,
    /// Objects in force from the last good sync.
    pub objects: usize,
    /// Errors of the last failed sync (empty after a good one).
    pub errors: Vec<String>,
    /// Objects this source wrote earlier that are no longer in the folder and
    /// were not pruned.
    pub orphaned: Vec<ObjectKey>,
}

/// The result of one sync.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncOutcome {
    /// The folder was valid and written in one batch.
    Applied {
        /// Objects created or changed (spec, labels or annotations).
        changed: Vec<ObjectKey>,
        /// Objects deleted because they left the folder (with `prune`).
        pruned: Vec<ObjectKey>,
        /// Objects that left the folder but were kept (without `prune`).
        orphaned: Vec<ObjectKey>,
    },
    /// Nothing was written; the last good state stays in force.
    Rejected {
        /// Every manifest error, one line each.
        errors: Vec<String>,
    },
}

/// The GitOps folder source. See the module docs.
pub struct GitOpsSource {
    config: GitOpsConfig,
    store: Arc<dyn Store>,
    status: watch::Sender<SourceStatus>,
    on_change: Option<OnChange>,
}

impl GitOpsSource {
    /// A source for `config.dir` writing to `store`.
    pub fn new(config: GitOpsConfig, store: Arc<dyn Store>) -> Self {
        GitOpsSource {
            config,
            store,
            status: watch::Sender::new(SourceStatus::default()),
            on_change: None,
        }
    }

    /// Registers the callback told about changed objects after each sync.
    pub fn on_change(mut self, f: OnChange) -> Self {
        self.on_change = Some(f);
        self
    }

    /// Watches the status of the last sync.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// The source's settings.
    pub fn config(&self) -> &GitOpsConfig {
        &self.config
    }

    /// Loads the folder and applies it (or reports why not). Never leaves a
    /// half-applied set: the store batch is atomic.
    pub async fn sync_once(&self) -> Result<SyncOutcome, SourceError> {
        let dir = self.config.dir.clone();
        let report = tokio::task::spawn_blocking(move || load_path(&dir))
            .await
            .map_err(|e| SourceError::Loader(e.to_string()))?;
        let outcome = if report.errors.is_empty() {
            match self.apply(&report).await {
                Ok(o) => o,
                Err(e) => SyncOutcome::Rejected {
                    errors: vec![format!(
                        "{}: the store refused the set, nothing was written: {e}",
                        self.config.dir.display()
                    )],
                },
            }
        } else {
            SyncOutcome::Rejected {
                errors: report.errors.iter().map(ManifestError::to_string).collect(),
            }
        };
        self.report(&outcome, report.objects.len(), report.files)
            .await;
        if let (
            SyncOutcome::Applied {
                changed, pruned, ..
            },
            Some(cb),
        ) = (&outcome, &self.on_change)
        {
            let keys: Vec<ObjectKey> = changed.iter().chain(pruned).cloned().collect();
            if !keys.is_empty() {
                cb(keys);
            }
        }
        Ok(outcome)
    }

    /// Writes the whole set (and prunes) in one batch.
    async fn apply(&self, report: &LoadReport) -> Result<SyncOutcome, StoreError> {
        // What this source owns now, to detect removals and real changes.
        let mut owned: BTreeMap<ObjectKey, u64> = BTreeMap::new();
        let mut versions: BTreeMap<ObjectKey, u64> = BTreeMap::new();
        for kind in Kind::ALL {
            if kind == Kind::RolloutLease {
                continue;
            }
            for o in self.store.list_objects(kind).await? {
                let key = (kind, o.name().to_owned());
                versions.insert(key.clone(), o.resource_version);
                if is_managed(&o.metadata.annotations) {
                    owned.insert(key, o.resource_version);
                }
            }
        }
        let mut ops = Vec::with_capacity(report.objects.len());
        let mut keys = Vec::with_capacity(report.objects.len());
        let mut wanted = BTreeSet::new();
        for obj in &report.objects {
            if obj.kind == Kind::RolloutLease {
                // The manifest checks refuse these already; never store one from a folder.
                continue;
            }
            let overlaid;
            let obj = match &self.config.overlay {
                Some(Overlay(f)) => {
                    let mut o = obj.clone();
                    f(&mut o);
                    overlaid = o;
                    &overlaid
                }
                None => obj,
            };
            let mut put = PutObject::from_object(obj)?;
            put.annotations
                .insert(MANAGED_BY_ANNOTATION.into(), MANAGED_BY_GITOPS.into());
            let key = (obj.kind, obj.name().to_owned());
            wanted.insert(key.clone());
            keys.push(key);
            ops.push(Op::PutObject(put));
        }
        let removed: Vec<ObjectKey> = owned
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        let (pruned, orphaned) = if self.config.prune {
            for (kind, name) in &removed {
                ops.push(Op::DeleteObject {
                    kind: *kind,
                    name: name.clone(),
                    // Only delete what we looked at: a concurrent re-create
                    // through the API makes the batch fail and retry.
                    expected_version: owned.get(&(*kind, name.clone())).copied(),
                });
            }
            (removed, Vec::new())
        } else {
            (Vec::new(), removed)
        };
        let applied = self.store.apply_batch(ops).await?;
        let mut changed = Vec::new();
        for (key, a) in keys.into_iter().zip(&applied) {
            if let Applied::Object(o) = a {
                if versions.get(&key) != Some(&o.resource_version) {
                    changed.push(key);
                }
            }
        }
        Ok(SyncOutcome::Applied {
            changed,
            pruned,
            orphaned,
        })
    }

    /// Logs, updates the condition and appends audit events for one sync.
    async fn report(&self, outcome: &SyncOutcome, objects: usize, files: usize) {
        let dir = self.config.dir.display().to_string();
        let subject = format!("GitOps/{dir}");
        let previous = self.status.borrow().clone();
        let mut next = previous.clone();
        next.syncs += 1;
        let mut conditions: Vec<Condition> = previous.condition.clone().into_iter().collect();
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut events = Vec::new();
        match outcome {
            SyncOutcome::Rejected { errors } => {
                for e in errors {
                    tracing::warn!(dir = %dir, error = %e, "GitOps manifest error; keeping the last good state");
                }
                let message = format!(
                    "{} error(s); the last good state stays in force:\n{}",
                    errors.len(),
                    errors.join("\n")
                );
                set_condition(
                    &mut conditions,
                    NewCondition {
                        type_: SYNCED_CONDITION,
                        status: ConditionStatus::False,
                        reason: "ManifestErrors",
                        message: &message,
                        observed_generation: None,
                    },
                    now,
                );
                // One event per distinct error set, not per save of the same broken file.
                if previous.errors != *errors {
                    let mut ev = NewEvent::new(&subject, "GitOpsSyncFailed", &message);
                    ev.data = serde_json::json!({
                        "condition": conditions.first(),
                        "errors": errors,
                    });
                    events.push(ev);
                }
                next.errors = errors.clone();
            }
            SyncOutcome::Applied {
                changed,
                pruned,
                orphaned,
            } => {
                let message = format!("{objects} object(s) from {files} file(s) in force");
                let was_failing = previous
                    .condition
                    .as_ref()
                    .is_some_and(|c| c.status != "True");
                set_condition(
                    &mut conditions,
                    NewCondition {
                        type_: SYNCED_CONDITION,
                        status: ConditionStatus::True,
                        reason: "Synced",
                        message: &message,
                        observed_generation: None,
                    },
                    now,
                );
                if !changed.is_empty() || !pruned.is_empty() || was_failing {
                    tracing::info!(
                        dir = %dir,
                        objects,
                        changed = changed.len(),
                        pruned = pruned.len(),
                        "GitOps folder applied"
                    );
                    let mut ev = NewEvent::new(&subject, "GitOpsSynced", &message);
                    ev.data = serde_json::json!({
                        "changed": keys_json(changed),
                        "pruned": keys_json(pruned),
                    });
                    events.push(ev);
                }
                if *orphaned != previous.orphaned && !orphaned.is_empty() {
                    for (kind, name) in orphaned {
                        tracing::warn!(dir = %dir, kind = %kind, name = %name, "object no longer in the GitOps folder; not pruned (prune is off)");
                    }
                    let mut ev = NewEvent::new(
                        &subject,
                        "GitOpsOrphaned",
                        format!(
                            "{} object(s) removed from the folder are still in force (prune is off)",
                            orphaned.len()
                        ),
                    );
                    ev.data = serde_json::json!({"orphaned": keys_json(orphaned)});
                    events.push(ev);
                }
                next.errors.clear();
                next.objects = objects;
                next.orphaned = orphaned.clone();
            }
        }
        next.condition = conditions.into_iter().next();
        for ev in events {
            if let Err(e) = self.store.append_event(ev).await {
                tracing::warn!(dir = %dir, error = %e, "could not record the GitOps sync event");
            }
        }
        self.status.send_replace(next);
    }

    /// Syncs at start, then on every (debounced) change in the folder and
    /// every `resync`, until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), SourceError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let dir = self.config.dir.clone();
        // The watcher lives as long as this future; dropping it stops the OS watch.
        let _watcher = watch_dir(&dir, tx)?;
        tokio::pin!(shutdown);
        self.sync_logged().await;
        let mut resync = tokio::time::interval(self.config.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                Some(()) = rx.recv() => {
                    // Debounce: wait until no event came for a whole quiet period.
                    loop {
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            more = tokio::time::timeout(self.config.debounce, rx.recv()) => match more {
                                Ok(Some(())) => continue,
                                _ => break,
                            },
                        }
                    }
                    self.sync_logged().await;
                    resync.reset();
                }
                _ = resync.tick() => {
                    self.sync_logged().await;
                }
            }
        }
    }

    /// A sync whose loader task died is retried at the next change or resync
    /// rather than stopping the source.
    async fn sync_logged(&self) {
        if let Err(e) = self.sync_once().await {
            tracing::error!(dir = %self.config.dir.display(), error = %e, "GitOps sync failed");
        }
    }
}

fn is_managed(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(MANAGED_BY_ANNOTATION)
        .is_some_and(|v| v == MANAGED_BY_GITOPS)
}

fn keys_json(keys: &[ObjectKey]) -> serde_json::Value {
    keys.iter()
        .map(|(k, n)| serde_json::Value::String(format!("{k}/{n}")))
        .collect()
}

/// Starts a recursive notify watch on `dir` that sends a unit per relevant event.
fn watch_dir(
    dir: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> Result<notify::RecommendedWatcher, SourceError> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let err = |source| SourceError::Watch {
        dir: dir.display().to_string(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Reads (open, close-nowrite, access) change nothing.
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
            Ok(_) => {
                let _ = tx.send(());
            }
            Err(e) => {
                // Lost events (queue overflow) are covered by a sync now plus the resync.
                tracing::warn!(error = %e, "GitOps watch error; syncing to be safe");
                let _ = tx.send(());
            }
        }
    })
    .map_err(err)?;
    watcher.watch(dir, RecursiveMode::Recursive).map_err(err)?;
    Ok(watcher)
}

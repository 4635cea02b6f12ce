//! Wiring: one reconciler replica. It campaigns for leadership through the
//! store; while it leads it runs the GitOps source, the publishing loop and
//! (when given an orchestrator) the rollout driver, and when it loses (or
//! gives up) leadership it stops them before another replica can take over.
//! Followers do nothing but wait, so two replicas never both act.
//!
//! Safety margin: a leader renews every `lease_ttl / 3` and steps down on its
//! own once `2/3` of the TTL has passed without a successful renewal, so it
//! stops acting before its lease expires and a follower may acquire it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fabric_schemas::kinds::Kind;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::orchestrator::{Orchestrator, TickReport};
use crate::publish::{PublishConfig, PublishCtx, PublishedRecord, Publisher, RecordSink, Signer};
use crate::rollout::RolloutPhase;
use crate::source::{GitOpsConfig, GitOpsSource, SourceError, SourceStatus};
use crate::store::{Leadership, Store};
use fabric_runtime::{Controller, ControllerConfig};

/// The election every replica of one control plane joins.
pub const ELECTION: &str = "fabric-reconciler";

/// One replica's settings.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// This replica's name in the election (host name + pid by default in the binary).
    pub holder: String,
    /// How long a leadership lasts without renewal.
    pub lease_ttl: Duration,
    /// `None`: no folder source (objects come through the Control API only).
    pub gitops: Option<GitOpsConfig>,
    /// How records are signed and published.
    pub publish: PublishConfig,
    /// Concurrency, backoff and shutdown of the publishing loop.
    pub runtime: ControllerConfig,
}

impl ControlPlaneConfig {
    /// Defaults for `holder`: a 15 s lease, no folder source.
    pub fn new(holder: impl Into<String>) -> Self {
        ControlPlaneConfig {
            holder: holder.into(),
            lease_ttl: Duration::from_secs(15),
            gitops: None,
            publish: PublishConfig::default(),
            runtime: ControllerConfig::default(),
        }
    }
}

/// Why a replica stopped working.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The GitOps source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// What a replica is doing, for logs, tests and status endpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaState {
    /// `Some` while this replica leads.
    pub leading: Option<Leadership>,
    /// The leader as last seen by this replica (itself included).
    pub leader: Option<String>,
    /// The GitOps source's status while leading.
    pub source: Option<SourceStatus>,
}

/// The rollout driver a leader runs next to publishing.
pub struct RolloutLoop {
    /// The driver to tick.
    pub orchestrator: Orchestrator,
    /// Time between ticks. Each tick is level-triggered and writes nothing
    /// when nothing changed, so a short interval only costs store reads.
    pub interval: Duration,
}

impl RolloutLoop {
    /// Default tick interval (`--rollout-interval`).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

    /// A loop ticking `orchestrator` every [`Self::DEFAULT_INTERVAL`].
    pub fn new(orchestrator: Orchestrator) -> Self {
        RolloutLoop {
            orchestrator,
            interval: Self::DEFAULT_INTERVAL,
        }
    }
}

/// One reconciler replica. See the module docs.
pub struct ControlPlane {
    store: Arc<dyn Store>,
    signer: Signer,
    sink: Arc<dyn RecordSink>,
    config: ControlPlaneConfig,
    rollouts: Option<Arc<RolloutLoop>>,
    state: watch::Sender<ReplicaState>,
}

impl ControlPlane {
    /// A replica over `store`, publishing through `sink` with records signed by `signer`.
    pub fn new(
        store: Arc<dyn Store>,
        signer: Signer,
        sink: Arc<dyn RecordSink>,
        config: ControlPlaneConfig,
    ) -> Self {
        ControlPlane {
            store,
            signer,
            sink,
            config,
            rollouts: None,
            state: watch::Sender::new(ReplicaState::default()),
        }
    }

    /// Also drive rollouts while leading: `Orchestrator::tick` every
    /// `interval`, and the lease records it writes handed to the sink like
    /// every other record (an abort's revocations travel the same way).
    pub fn with_rollouts(mut self, rollouts: RolloutLoop) -> Self {
        self.rollouts = Some(Arc::new(rollouts));
        self
    }

    /// Watches what the replica is doing.
    pub fn state(&self) -> watch::Receiver<ReplicaState> {
        self.state.subscribe()
    }

    /// Campaigns and works until `shutdown`; then stops the leader's work and
    /// releases leadership so another replica takes over at once.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ControlPlaneError> {
        let holder = self.config.holder.clone();
        let ttl = self.config.lease_ttl;
        let retry = ttl / 3;
        tokio::pin!(shutdown);
        let mut last_leader: Option<String> = None;
        loop {
            let acquired = match self
                .store
                .try_acquire_leadership(ELECTION, &holder, ttl)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(holder = %holder, error = %e, "leader election failed; retrying");
                    None
                }
            };
            match acquired {
                Some(lease) => {
                    tracing::info!(holder = %holder, term = lease.term, "became leader: running the GitOps source and publishing");
                    last_leader = Some(holder.clone());
                    let stop = self.lead(lease, &mut shutdown).await?;
                    if stop {
                        match self.store.release_leadership(ELECTION, &holder).await {
                            Ok(_) => {
                                tracing::info!(holder = %holder, "released leadership on shutdown")
                            }
                            Err(e) => {
                                tracing::warn!(holder = %holder, error = %e, "could not release leadership; it expires on its own")
                            }
                        }
                        self.state.send_modify(|s| {
                            s.leading = None;
                            s.source = None;
                        });
                        return Ok(());
                    }
                }
                None => {
                    let current = self.store.current_leader(ELECTION).await.ok().flatten();
                    let name = current.as_ref().map(|l| l.holder.clone());
                    if name != last_leader {
                        match &current {
                            Some(l) => {
                                tracing::info!(holder = %holder, leader = %l.holder, term = l.term, "following: another replica leads; waiting for its lease to lapse")
                            }
                            None => tracing::info!(holder = %holder, "no leader; campaigning"),
                        }
                        last_leader = name.clone();
                    }
                    self.state.send_modify(|s| s.leader = name);
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(retry) => {}
                    }
                }
            }
        }
    }

    /// Runs the leader's work until leadership is lost (`Ok(false)`) or
    /// `shutdown` fires (`Ok(true)`).
    async fn lead(
        &self,
        lease: Leadership,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, ControlPlaneError> {
        let holder = self.config.holder.clone();
        let ttl = self.config.lease_ttl;
        self.state.send_modify(|s| {
            s.leading = Some(lease.clone());
            s.leader = Some(holder.clone());
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };

        // The publishing loop, fed by the source, a periodic resync and its own requeues.
        let ctx = Arc::new(PublishCtx::new(
            self.store.clone(),
            self.signer.clone(),
            self.sink.clone(),
            self.config.publish,
        ));
        let controller = Controller::new(Arc::new(Publisher), ctx.clone(), self.config.runtime);
        let queue = controller.queue();
        let mut work = tokio::task::JoinSet::new();
        work.spawn({
            let rx = stop_rx.clone();
            async move {
                controller.run(stopped(rx)).await;
                Ok::<(), ControlPlaneError>(())
            }
        });
        work.spawn({
            let rx = stop_rx.clone();
            let queue = queue.clone();
            let ctx = ctx.clone();
            let every = self.config.publish.resync;
            async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let stop = stopped(rx);
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        () = &mut stop => return Ok(()),
                        _ = tick.tick() => match ctx.all_keys().await {
                            Ok(keys) => for k in keys { queue.enqueue(k); },
                            Err(e) => tracing::warn!(error = %e, "publish resync could not list objects"),
                        },
                    }
                }
            }
        });
        if let Some(rollouts) = self.rollouts.clone() {
            let store = self.store.clone();
            let sink = self.sink.clone();
            let rx = stop_rx.clone();
            work.spawn(async move {
                drive_rollouts(&rollouts, &*store, &*sink, stopped(rx)).await;
                Ok(())
            });
        }
        if let Some(cfg) = self.config.gitops.clone() {
            let q = queue.clone();
            let source =
                GitOpsSource::new(cfg, self.store.clone()).on_change(Arc::new(move |keys| {
                    for k in keys {
                        q.enqueue(k);
                    }
                }));
            let mut status = source.status();
            let state = self.state.clone();
            let rx = stop_rx.clone();
            work.spawn(async move {
                let run = source.run(stopped(rx.clone()));
                tokio::pin!(run);
                let stop = stopped(rx);
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        r = &mut run => return r.map_err(ControlPlaneError::from),
                        Ok(()) = status.changed() => {
                            let s = status.borrow_and_update().clone();
                            state.send_modify(|st| st.source = Some(s));
                        }
                        () = &mut stop => {
                            // Let the source finish its stop path.
                            return (&mut run).await.map_err(ControlPlaneError::from);
                        }
                    }
                }
            });
        }

        // Renew; step down when renewals fail for 2/3 of the TTL.
        let mut valid_until = Instant::now() + ttl;
        let renew_every = ttl / 3;
        let mut failure: Option<ControlPlaneError> = None;
        let shut = loop {
            tokio::select! {
                () = shutdown.as_mut() => break true,
                Some(done) = work.join_next() => {
                    // Leader work ended on its own: an error (the folder
                    // cannot be watched) is fatal for this replica.
                    match done {
                        Ok(Err(e)) => { failure = Some(e); break true; }
                        Ok(Ok(())) => {}
                        Err(e) => tracing::error!(error = %e, "leader task panicked"),
                    }
                }
                () = tokio::time::sleep(renew_every) => {
                    match self.store.renew_leadership(ELECTION, &holder, ttl).await {
                        Ok(Some(_)) => valid_until = Instant::now() + ttl,
                        Ok(None) => {
                            tracing::warn!(holder = %holder, "lost leadership (lease expired or taken); stopping leader work");
                            break false;
                        }
                        Err(e) => {
                            tracing::warn!(holder = %holder, error = %e, "could not renew leadership");
                            if Instant::now() + renew_every >= valid_until {
                                tracing::warn!(holder = %holder, "stepping down: leadership could not be renewed in time");
                                break false;
                            }
                        }
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        while let Some(done) = work.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "leader task ended with an error");
            }
        }
        self.state.send_modify(|s| {
            s.leading = None;
            s.source = None;
        });
        if let Some(e) = failure {
            let _ = self.store.release_leadership(ELECTION, &holder).await;
            return Err(e);
        }
        Ok(shut)
    }
}

/// The leader's rollout loop: tick, log what changed, hand new lease records
/// to the fabric. Errors are logged and retried at the next tick: the driver
/// keeps no state between ticks, so a failed tick loses nothing.
async fn drive_rollouts(
    rollouts: &RolloutLoop,
    store: &dyn Store,
    sink: &dyn RecordSink,
    stop: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(rollouts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut log = RolloutLog::default();
    // Lease record generations already handed over (or tried), per record
    // name, so each grant, renewal and revocation is delivered once.
    let mut handed: HashMap<String, i64> = HashMap::new();
    tracing::info!(interval = ?rollouts.interval, "driving rollouts");
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        match rollouts
            .orchestrator
            .tick(store, fabric_schemas::time::now_unix())
            .await
        {
            Ok(report) => log.record(&report),
            Err(e) if e.is_conflict() => {
                tracing::debug!(error = %e, "rollout tick lost a compare-and-set; retrying next tick")
            }
            Err(e) => tracing::warn!(error = %e, "rollout tick failed; retrying next tick"),
        }
        hand_over_leases(store, sink, &mut handed).await;
    }
}

async fn hand_over_leases(
    store: &dyn Store,
    sink: &dyn RecordSink,
    handed: &mut HashMap<String, i64>,
) {
    let records = match store.list_records(Some(Kind::RolloutLease)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list lease records to hand to the fabric");
            return;
        }
    };
    for r in records {
        if handed.get(&r.name).is_some_and(|g| *g >= r.generation) {
            continue;
        }
        let record = PublishedRecord {
            kind: r.kind,
            name: r.name.clone(),
            generation: u64::try_from(r.generation).unwrap_or(0),
            envelope: r.envelope,
        };
        // Marked even on failure: a node refusing a lease record (say, a
        // revocation that has already expired) would otherwise be retried
        // and logged every tick. The record stays in the store.
        handed.insert(r.name, r.generation);
        match sink.deliver(&record).await {
            Ok(d) => {
                tracing::debug!(name = %record.name, generation = record.generation, holders = ?d.holders, "lease record handed to the fabric")
            }
            Err(e) => {
                tracing::warn!(name = %record.name, generation = record.generation, error = %e, "lease record not taken by any node")
            }
        }
    }
}

/// What was last logged about rollouts, so a tick that changes nothing logs
/// nothing (the loop runs every few seconds).
#[derive(Default)]
struct RolloutLog {
    summaries: BTreeMap<String, String>,
    skipped: BTreeMap<String, String>,
    hold: bool,
    warnings: BTreeSet<String>,
}

impl RolloutLog {
    fn record(&mut self, report: &TickReport) {
        for r in &report.rollouts {
            for l in &r.granted {
                tracing::info!(intent = %r.intent, generation = r.generation, node = %l.node, lease = %l.lease_id, attempt = l.attempt, recovery_override = l.recovery_override, "lease granted");
            }
            for (node, lease, why) in &r.revoked {
                tracing::info!(intent = %r.intent, generation = r.generation, node = %node, lease = %lease, reason = %why, "lease revoked");
            }
            let c = &r.status.counts;
            let conditions: Vec<String> = r
                .status
                .conditions
                .iter()
                .map(|c| format!("{}: {}", c.reason, c.message))
                .chain(
                    r.extra_conditions
                        .iter()
                        .map(|c| format!("{}: {}", c.reason, c.message)),
                )
                .collect();
            let summary = format!(
                "generation {} {:?}: {}/{} done, {} failed, {} in flight, {} remaining; {}",
                r.generation,
                r.status.phase,
                c.done,
                c.target,
                c.failed,
                c.in_flight,
                c.remaining,
                if conditions.is_empty() {
                    "no conditions".to_owned()
                } else {
                    conditions.join("; ")
                }
            );
            if self.summaries.get(&r.intent) == Some(&summary) {
                continue;
            }
            // A stop needs an operator (resume or abort); everything else is progress.
            if matches!(r.status.phase, RolloutPhase::Stopped | RolloutPhase::Failed) {
                tracing::warn!(intent = %r.intent, "rollout stopped: {summary}");
            } else {
                tracing::info!(intent = %r.intent, "rollout {summary}");
            }
            self.summaries.insert(r.intent.clone(), summary);
        }
        let live: BTreeSet<&str> = report.rollouts.iter().map(|r| r.intent.as_str()).collect();
        for s in &report.skipped {
            let line = format!("{}: {}", s.reason, s.message);
            if self.skipped.get(&s.intent) != Some(&line) {
                tracing::warn!(intent = %s.intent, reason = %s.reason, "rollout not planned: {}", s.message);
                self.skipped.insert(s.intent.clone(), line);
            }
        }
        self.skipped
            .retain(|i, _| report.skipped.iter().any(|s| &s.intent == i));
        self.summaries.retain(|i, _| live.contains(i.as_str()));
        for a in &report.bridge_actions {
            tracing::info!(intent = %a.intent, node = %a.node, version = %a.version, "compat bridge action started");
        }
        if report.bridge_hold_required != self.hold {
            if report.bridge_hold_required {
                tracing::warn!("bridge_hold_required: a compat node needs an operator (see `fabricctl rollout status`)");
            } else {
                tracing::info!("bridge hold cleared");
            }
            self.hold = report.bridge_hold_required;
        }
        for lease in &report.orphans_revoked {
            tracing::info!(lease = %lease, "lease of a deleted intent revoked");
        }
        let warnings: BTreeSet<String> = report.warnings.iter().cloned().collect();
        for w in warnings.difference(&self.warnings) {
            tracing::warn!("rollout driver: {w}");
        }
        self.warnings = warnings;
    }
}

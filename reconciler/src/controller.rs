//! Wiring: one reconciler replica. It campaigns for leadership through the
//! store; while it leads it runs the GitOps source and the publishing loop,
//! and when it loses (or gives up) leadership it stops them before another
//! replica can take over. Followers do nothing but wait, so two replicas never
//! both act.
//!
//! Safety margin: a leader renews every `lease_ttl / 3` and steps down on its
//! own once `2/3` of the TTL has passed without a successful renewal, so it
//! stops acting before its lease expires and a follower may acquire it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::publish::{PublishConfig, PublishCtx, Publisher, RecordSink, Signer};
use crate::runtime::{Controller, ControllerConfig};
use crate::source::{GitOpsConfig, GitOpsSource, SourceError, SourceStatus};
use crate::store::{Leadership, Store};

/// The election every replica of one control plane joins.
pub const ELECTION: &str = "fabric-reconciler";

/// One replica's settings.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// This replica's name in the election (host name + pid by default in the binary).
    pub holder: String,
    pub lease_ttl: Duration,
    /// `None`: no folder source (objects come through the Control API only).
    pub gitops: Option<GitOpsConfig>,
    pub publish: PublishConfig,
    pub runtime: ControllerConfig,
}

impl ControlPlaneConfig {
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

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
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

/// One reconciler replica. See the module docs.
pub struct ControlPlane {
    store: Arc<dyn Store>,
    signer: Signer,
    sink: Arc<dyn RecordSink>,
    config: ControlPlaneConfig,
    state: watch::Sender<ReplicaState>,
}

impl ControlPlane {
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
            state: watch::Sender::new(ReplicaState::default()),
        }
    }

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

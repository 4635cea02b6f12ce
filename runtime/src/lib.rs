//! The reconcile-loop runtime, in the shape of kube-rs's `Controller`.
//!
//! A loop is a [`Reconciler`]: `fetch(key)` reads the *current* desired and
//! observed state of one object, `reconcile(object)` makes the world match it
//! and says when to look again ([`Action`]), `error_policy` says what to do
//! when that failed. The runtime ([`Controller`]) owns everything else:
//!
//! - a de-duplicated work queue ([`WorkQueue`]): a key enqueued again while it
//!   is pending runs once; a key is never reconciled concurrently with itself
//!   (a trigger that arrives mid-reconcile runs it again afterwards);
//! - per-key exponential backoff with a cap on errors ([`Backoff`]), reset by
//!   the next success; while a key backs off, new triggers for it wait for the
//!   backoff deadline too, so a periodic resync cannot turn into a hot loop;
//! - level triggering: a trigger carries only a key, never the event, so a
//!   reconcile always works from the whole state and running it twice changes
//!   nothing.
//!
//! Triggers come from a [`QueueHandle`] (a source, a periodic resync, another
//! loop). The runtime needs nothing from the control plane, so the node-agent
//! and the host-agent can use the same loop shape; the queue and backoff are a
//! sans-IO core ([`queue`]) tested with a paused clock.
//!
//! Status is reported one way everywhere: [`status`] (`observedGeneration` +
//! conditions).

pub mod faults;
pub mod logging;
pub mod metrics;
pub mod queue;
pub mod status;
pub mod supervisor;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use queue::{Backoff, BackoffConfig, Jitter, WorkQueue};

/// What to do with a key after a reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile again after this long even if nothing changes (expiry,
    /// polling an external system, periodic re-check).
    Requeue(Duration),
    /// Nothing to do until a trigger arrives for the key.
    AwaitChange,
    /// Retry after the key's exponential backoff (the default error policy).
    Backoff,
}

impl Action {
    /// [`Action::Requeue`] after `after`.
    pub fn requeue(after: Duration) -> Action {
        Action::Requeue(after)
    }

    /// [`Action::AwaitChange`].
    pub fn await_change() -> Action {
        Action::AwaitChange
    }

    /// [`Action::Backoff`].
    pub fn backoff() -> Action {
        Action::Backoff
    }
}

/// One reconcile loop. Implement with `async fn`s; the futures must be `Send`
/// because the runtime runs reconciles of different keys concurrently.
pub trait Reconciler: Send + Sync + 'static {
    /// What the queue holds: an object's identity, never its content.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    /// What `fetch` reads for a key: the current desired and observed state.
    type Object: Send + Sync + 'static;
    /// Shared context every reconcile gets (stores, clients, config).
    type Ctx: Send + Sync + 'static;
    /// Why a fetch or reconcile failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads the current state of `key`; `None` if it no longer exists (the
    /// key is then dropped without calling `reconcile`).
    fn fetch(
        &self,
        key: &Self::Key,
        ctx: &Self::Ctx,
    ) -> impl Future<Output = Result<Option<Arc<Self::Object>>, Self::Error>> + Send;

    /// Makes the world match `obj`. Must be idempotent.
    fn reconcile(
        &self,
        obj: Arc<Self::Object>,
        ctx: &Self::Ctx,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// What to do after `fetch` or `reconcile` failed for `key`.
    fn error_policy(&self, key: &Self::Key, error: &Self::Error, ctx: &Self::Ctx) -> Action {
        let _ = (key, error, ctx);
        Action::Backoff
    }
}

/// Runtime settings.
#[derive(Clone, Copy, Debug)]
pub struct ControllerConfig {
    /// Reconciles of different keys running at once.
    pub concurrency: usize,
    /// Per-key exponential backoff after failures.
    pub backoff: BackoffConfig,
    /// On shutdown, how long running reconciles may take to finish before
    /// they are cancelled.
    pub shutdown_grace: Duration,
    /// Log a failing key at warn level (at its 1st, 2nd, 4th... failure);
    /// `false` logs failures at debug only, for loops whose failures are
    /// ordinary (a node's peers coming and going) and reported elsewhere.
    pub warn_on_failure: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            concurrency: 4,
            backoff: BackoffConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            warn_on_failure: true,
        }
    }
}

/// Enqueues keys into a running (or not yet started) [`Controller`]. Cheap to
/// clone; dropping every handle does not stop the controller.
pub struct QueueHandle<K> {
    tx: mpsc::UnboundedSender<(K, Duration)>,
}

impl<K> Clone for QueueHandle<K> {
    fn clone(&self) -> Self {
        QueueHandle {
            tx: self.tx.clone(),
        }
    }
}

impl<K> QueueHandle<K> {
    /// Asks for a reconcile of `key` as soon as possible. `false` if the
    /// controller has stopped.
    pub fn enqueue(&self, key: K) -> bool {
        self.tx.send((key, Duration::ZERO)).is_ok()
    }

    /// Asks for a reconcile of `key` after `delay`.
    pub fn enqueue_after(&self, key: K, delay: Duration) -> bool {
        self.tx.send((key, delay)).is_ok()
    }
}

/// How one reconcile ended.
enum Outcome<E> {
    Gone,
    Done(Action),
    Failed(E),
}

/// Drives one [`Reconciler`]: see the module docs.
pub struct Controller<R: Reconciler> {
    reconciler: Arc<R>,
    ctx: Arc<R::Ctx>,
    config: ControllerConfig,
    tx: mpsc::UnboundedSender<(R::Key, Duration)>,
    rx: mpsc::UnboundedReceiver<(R::Key, Duration)>,
}

impl<R: Reconciler> Controller<R> {
    /// A controller for `reconciler`; nothing runs until [`run`](Self::run).
    pub fn new(reconciler: Arc<R>, ctx: Arc<R::Ctx>, config: ControllerConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Controller {
            reconciler,
            ctx,
            config,
            tx,
            rx,
        }
    }

    /// A handle to enqueue keys; triggers sent before [`run`](Self::run) are kept.
    pub fn queue(&self) -> QueueHandle<R::Key> {
        QueueHandle {
            tx: self.tx.clone(),
        }
    }

    /// Runs until `shutdown` completes, then lets running reconciles finish
    /// (up to `shutdown_grace`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) {
        let concurrency = self.config.concurrency.max(1);
        let mut queue: WorkQueue<R::Key> = WorkQueue::new();
        let mut backoff: Backoff<R::Key> = Backoff::new(self.config.backoff);
        // Earliest retry of a failing key: later triggers wait for it too.
        let mut retry_at: HashMap<R::Key, Instant> = HashMap::new();
        let mut tasks: JoinSet<Outcome<R::Error>> = JoinSet::new();
        // Which key each task reconciles, so a panicked task still releases its key.
        let mut running: HashMap<tokio::task::Id, R::Key> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            while tasks.len() < concurrency {
                let Some(key) = queue.pop_ready(now) else {
                    break;
                };
                let r = self.reconciler.clone();
                let ctx = self.ctx.clone();
                let task_key = key.clone();
                let handle = tasks.spawn(async move {
                    let key = task_key;
                    match r.fetch(&key, &ctx).await {
                        Ok(None) => Outcome::Gone,
                        Ok(Some(obj)) => match r.reconcile(obj, &ctx).await {
                            Ok(a) => Outcome::Done(a),
                            Err(e) => Outcome::Failed(e),
                        },
                        Err(e) => Outcome::Failed(e),
                    }
                });
                running.insert(handle.id(), key);
            }
            // With every slot busy, a due key must wait for a finished task anyway.
            let next_due = (tasks.len() < concurrency)
                .then(|| queue.next_due())
                .flatten();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, outcome) = match joined {
                        Ok((id, outcome)) => (id, outcome),
                        Err(e) => {
                            // A panic is a bug in the reconciler; treat it as a
                            // failure so the key backs off instead of being lost.
                            let id = e.id();
                            let key = running.remove(&id);
                            tracing::error!(key = ?key, error = %e, "reconcile task panicked");
                            if let Some(key) = key {
                                queue.done(&key);
                                let due = Instant::now() + backoff.on_error(&key);
                                retry_at.insert(key.clone(), due);
                                queue.enqueue(key, due);
                            }
                            continue;
                        }
                    };
                    let Some(key) = running.remove(&id) else {
                        continue;
                    };
                    queue.done(&key);
                    let now = Instant::now();
                    let action = match outcome {
                        Outcome::Gone => {
                            backoff.on_success(&key);
                            retry_at.remove(&key);
                            tracing::debug!(key = ?key, "object gone; dropping key");
                            Action::AwaitChange
                        }
                        Outcome::Done(a) => {
                            backoff.on_success(&key);
                            retry_at.remove(&key);
                            a
                        }
                        Outcome::Failed(e) => {
                            let a = self.reconciler.error_policy(&key, &e, &self.ctx);
                            // A repeated failure is logged at the 1st, 2nd,
                            // 4th, 8th... time with its count, not on every
                            // retry of a key that keeps failing.
                            let failures = backoff.failures(&key) + 1;
                            if self.config.warn_on_failure && failures.is_power_of_two() {
                                tracing::warn!(key = ?key, error = %e, failures, "reconcile failed");
                            } else {
                                tracing::debug!(key = ?key, error = %e, failures, "reconcile failed again");
                            }
                            a
                        }
                    };
                    match action {
                        Action::AwaitChange => {}
                        Action::Requeue(d) => {
                            queue.enqueue(key, now + d);
                        }
                        Action::Backoff => {
                            let due = now + backoff.on_error(&key);
                            retry_at.insert(key.clone(), due);
                            queue.enqueue(key, due);
                        }
                    }
                }
                Some(first) = self.rx.recv() => {
                    // Take every trigger already waiting before starting work,
                    // so a burst for one key collapses into one reconcile.
                    let now = Instant::now();
                    let mut next = Some(first);
                    while let Some((key, delay)) = next {
                        let mut due = now + delay;
                        if let Some(r) = retry_at.get(&key) {
                            due = due.max(*r);
                        }
                        queue.enqueue(key, due);
                        next = self.rx.try_recv().ok();
                    }
                }
                () = sleep_until_opt(next_due) => {}
            }
        }
        if !tasks.is_empty() {
            let grace = self.config.shutdown_grace;
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                tracing::warn!(
                    running = tasks.len(),
                    "reconciles still running after the shutdown grace period; cancelling them"
                );
                tasks.shutdown().await;
            }
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

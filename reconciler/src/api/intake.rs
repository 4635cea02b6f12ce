//! The buffered heartbeat intake: every intake path (HTTP, compat overlap,
//! the fabric `control` service, the co-located node) hands its heartbeat to
//! one bounded queue, and one writer task commits them in batches through
//! [`Store::record_heartbeats`].
//!
//! Why: one durable commit per heartbeat is bounded by fsync latency (a few
//! thousand per second at best, see `docs/stores.md`), while a commit of a few
//! hundred costs barely more than a commit of one.
//!
//! Contract kept from the unbuffered intake: a caller's future resolves only
//! after the batch holding its heartbeat committed, so an `accepted` reply
//! still means "durably stored". When more than
//! [`IntakeConfig::queue_capacity`] heartbeats are waiting, a new one is
//! refused at once ([`IntakeError::Busy`], retryable) instead of growing
//! memory without bound.
//!
//! Several heartbeats of one node in a batch are coalesced by the store's
//! batch fold in the same transaction (latest `received_at` wins, every one is
//! counted), so the stored rows are exactly what one-by-one commits would give.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use super::reply_cache::{ReplyCache, Snapshot, DEFAULT_REPLY_CACHE_MAX_AGE};
use super::IntakeError;
use crate::store::{Heartbeat, Json, Store, StoreError, UnixMillis};

/// How the intake batches heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntakeConfig {
    /// A batch is committed as soon as it holds this many heartbeats.
    pub max_batch: usize,
    /// ... or when its oldest heartbeat has waited this long. This is the
    /// latency a lone heartbeat pays for batching; `0` commits whatever is
    /// queued as soon as the previous commit is done (pure group commit).
    pub max_delay: Duration,
    /// Heartbeats that may wait at once (queued, in the open batch, or being
    /// committed); beyond that the intake refuses with [`IntakeError::Busy`].
    pub queue_capacity: usize,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            max_batch: 256,
            max_delay: Duration::from_millis(20),
            // Several batches' worth: a commit stall of a few hundred
            // milliseconds at fleet rate is absorbed, a store outage is not.
            queue_capacity: 8192,
        }
    }
}

/// Counters of one intake (monotonic since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntakeStats {
    /// Heartbeats admitted to the queue.
    pub queued: u64,
    /// Heartbeats in committed batches.
    pub stored: u64,
    /// Heartbeats whose batch failed to commit.
    pub failed: u64,
    /// Store commits (`record_heartbeats` calls that succeeded).
    pub commits: u64,
    /// Heartbeats refused because the queue was full.
    pub refused_busy: u64,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    stored: AtomicU64,
    failed: AtomicU64,
    commits: AtomicU64,
    refused_busy: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> IntakeStats {
        IntakeStats {
            queued: self.queued.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            refused_busy: self.refused_busy.load(Ordering::Relaxed),
        }
    }
}

/// What a waiting caller learns about its batch. `StoreError` is not `Clone`,
/// and one failure answers every heartbeat of the batch, hence the `Arc`.
type Outcome = Result<(), Arc<StoreError>>;

struct Pending {
    hb: Heartbeat,
    queued_at: Instant,
    done: oneshot::Sender<Outcome>,
    /// Held until the batch is answered, so the capacity counts heartbeats
    /// being committed too, not only those still in the channel.
    permit: OwnedSemaphorePermit,
}

/// What the writer is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// Batch with the configured linger.
    Run,
    /// Still take heartbeats, but commit without lingering: in-flight
    /// requests finish promptly while the listeners shut down.
    Drain,
    /// Take no more; commit what is queued and end.
    Stop,
}

/// A handle to the buffered intake; cheap to clone.
#[derive(Clone)]
pub struct HeartbeatIntake {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    cfg: IntakeConfig,
    /// Fleet-wide reply data shared by every reply (`reply_cache`).
    replies: ReplyCache,
    // Unbounded channel, bounded by `permits`: a permit is taken before a
    // send, so the channel never holds more than `queue_capacity`.
    tx: mpsc::UnboundedSender<Pending>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    mode: watch::Sender<Mode>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for HeartbeatIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeartbeatIntake")
            .field("cfg", &self.inner.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

impl HeartbeatIntake {
    /// Starts the writer task, with replies built from a snapshot at most
    /// 250 ms old (see [`start_with_reply_cache`](Self::start_with_reply_cache)).
    /// Must be called inside a Tokio runtime.
    pub fn start(store: Arc<dyn Store>, cfg: IntakeConfig) -> HeartbeatIntake {
        Self::start_with_reply_cache(store, cfg, DEFAULT_REPLY_CACHE_MAX_AGE)
    }

    /// Starts the writer task. Replies take the fleet-wide data (nodes,
    /// update intents, canonical endpoints) from a shared snapshot at most
    /// `reply_cache` old; zero reads the store for every reply.
    pub fn start_with_reply_cache(
        store: Arc<dyn Store>,
        cfg: IntakeConfig,
        reply_cache: Duration,
    ) -> HeartbeatIntake {
        // Zero would refuse everything or never flush; treat as "one".
        let cfg = IntakeConfig {
            max_batch: cfg.max_batch.max(1),
            max_delay: cfg.max_delay,
            queue_capacity: cfg.queue_capacity.max(1),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (mode, mode_rx) = watch::channel(Mode::Run);
        let counters = Arc::new(Counters::default());
        let writer = tokio::spawn(write_loop(
            store.clone(),
            cfg,
            rx,
            mode_rx,
            counters.clone(),
        ));
        HeartbeatIntake {
            inner: Arc::new(Inner {
                store,
                cfg,
                replies: ReplyCache::new(reply_cache),
                tx,
                permits: Arc::new(Semaphore::new(cfg.queue_capacity)),
                counters,
                mode,
                writer: Mutex::new(Some(writer)),
            }),
        }
    }

    /// The store heartbeats are written to (and replies are read from).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The batching settings the intake runs with.
    pub fn config(&self) -> IntakeConfig {
        self.inner.cfg
    }

    /// How old the replies' shared snapshot may be (zero: no cache).
    pub fn reply_cache_max_age(&self) -> Duration {
        self.inner.replies.max_age()
    }

    /// Drops the replies' shared snapshot, so the next reply reads the
    /// store: called after this process applied objects.
    pub fn invalidate_replies(&self) {
        self.inner.replies.invalidate();
    }

    /// The replies' shared snapshot (refreshed if stale); `None` when the
    /// cache is disabled.
    pub(crate) async fn reply_snapshot(&self) -> Result<Option<Arc<Snapshot>>, StoreError> {
        self.inner.replies.get(self.inner.store.as_ref()).await
    }

    /// The counters so far.
    pub fn stats(&self) -> IntakeStats {
        self.inner.counters.snapshot()
    }

    /// Queues one heartbeat and resolves once the batch holding it committed.
    ///
    /// `node` must already be a valid store name (the intake's
    /// `HeartbeatBody::validate` checks the same rules as the store): one
    /// invalid name would otherwise fail a whole batch. The writer still
    /// isolates such a heartbeat if one slips through.
    pub async fn record(
        &self,
        node: String,
        body: Json,
        received_at: UnixMillis,
    ) -> Result<(), IntakeError> {
        let capacity = self.inner.cfg.queue_capacity;
        let permit = match self.inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                self.inner
                    .counters
                    .refused_busy
                    .fetch_add(1, Ordering::Relaxed);
                return Err(IntakeError::Busy { capacity });
            }
            Err(TryAcquireError::Closed) => return Err(IntakeError::ShuttingDown),
        };
        let (done, wait) = oneshot::channel();
        let pending = Pending {
            hb: Heartbeat {
                node,
                body,
                received_at,
            },
            queued_at: Instant::now(),
            done,
            permit,
        };
        if self.inner.tx.send(pending).is_err() {
            return Err(IntakeError::ShuttingDown);
        }
        self.inner.counters.queued.fetch_add(1, Ordering::Relaxed);
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(IntakeError::Commit(e)),
            // The writer dropped our sender without answering: it stopped
            // (panicked) before committing this heartbeat.
            Err(_) => Err(IntakeError::ShuttingDown),
        }
    }

    /// Stops lingering: from now on every batch is committed as soon as
    /// the previous one is, so callers already waiting are answered promptly.
    /// New heartbeats are still taken (a shutting-down listener's in-flight
    /// requests). [`shutdown`](Self::shutdown) implies it.
    pub fn drain(&self) {
        self.inner.mode.send_if_modified(|m| {
            let changed = *m < Mode::Drain;
            *m = (*m).max(Mode::Drain);
            changed
        });
    }

    /// Refuses new heartbeats, commits everything already queued, answers
    /// its callers, and waits for the writer (bounded). Idempotent.
    pub async fn shutdown(&self) {
        // New callers fail fast instead of queueing behind the last flush.
        self.inner.permits.close();
        let _ = self.inner.mode.send(Mode::Stop);
        let writer = match self.inner.writer.lock() {
            Ok(mut w) => w.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(w) = writer {
            if tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .is_err()
            {
                tracing::warn!("heartbeat intake did not finish its last flush within 30 s");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: let the writer flush and end on its own
        // (the channel closing would end it too; this also stops a linger).
        let _ = self.mode.send(Mode::Stop);
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    cfg: IntakeConfig,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    mut mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(cfg.max_batch);
    let mut closed = false;
    loop {
        // A dropped sender (every handle gone) means stop as well.
        let current = if mode.has_changed().is_err() {
            Mode::Stop
        } else {
            *mode.borrow_and_update()
        };
        if current == Mode::Stop && !closed {
            // `recv` now yields what is left, then `None`.
            rx.close();
            closed = true;
        }
        if batch.is_empty() {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => batch.push(p),
                    None => return,
                },
                // Only to notice Stop while idle; re-evaluated at the top.
                _ = mode.changed(), if !closed => continue,
            }
        }
        // Take what is already waiting without a wake-up per heartbeat.
        while batch.len() < cfg.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Linger for more, measured from the oldest heartbeat so time spent
        // queued behind the previous commit counts against the deadline.
        let deadline = batch[0].queued_at + cfg.max_delay;
        while current == Mode::Run && batch.len() < cfg.max_batch {
            tokio::select! {
                biased;
                p = rx.recv() => match p {
                    Some(p) => batch.push(p),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                // Drain or stop: commit now; the mode is re-read at the top.
                _ = mode.changed() => break,
            }
        }
        commit(store.as_ref(), std::mem::take(&mut batch), &counters).await;
    }
}

/// Commits one batch and answers every caller in it.
async fn commit(store: &dyn Store, batch: Vec<Pending>, counters: &Counters) {
    let (hbs, waiters): (Vec<Heartbeat>, Vec<_>) = batch
        .into_iter()
        .map(|p| (p.hb, (p.done, p.permit)))
        .unzip();
    match store.record_heartbeats(&hbs).await {
        Ok(()) => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters
                .stored
                .fetch_add(hbs.len() as u64, Ordering::Relaxed);
            for (done, _permit) in waiters {
                // A caller that went away (client disconnected) is fine: its
                // heartbeat is stored all the same.
                let _ = done.send(Ok(()));
            }
        }
        // A malformed heartbeat must not take its batch-mates down with it:
        // commit them one by one so only the bad one is refused.
        Err(StoreError::Invalid { .. }) if hbs.len() > 1 => {
            for (hb, (done, _permit)) in hbs.into_iter().zip(waiters) {
                let r = store.record_heartbeats(std::slice::from_ref(&hb)).await;
                match r {
                    Ok(()) => {
                        counters.commits.fetch_add(1, Ordering::Relaxed);
                        counters.stored.fetch_add(1, Ordering::Relaxed);
                        let _ = done.send(Ok(()));
                    }
                    Err(e) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        let _ = done.send(Err(Arc::new(e)));
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, heartbeats = hbs.len(), "heartbeat batch not stored");
            counters
                .failed
                .fetch_add(hbs.len() as u64, Ordering::Relaxed);
            let e = Arc::new(e);
            for (done, _permit) in waiters {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

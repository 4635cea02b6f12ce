//! The updater: a task of its own on the shared reconcile runtime, the thin
//! driver around [`machine::decide`](super::machine::decide).
//!
//! One key, level-triggered: every pass reads what the node holds now
//! (intents and leases from the node core, the artifact store, the host
//! agent's answer), decides, persists the journal, then acts. Wakes, fastest
//! first: an update hint from the control session (direct, and through
//! `update-trigger.json`), a touch of `update-trigger.json` or
//! `apply-result.json` by any process (notify), new intents or leases by
//! gossip, and a slow poll with jitter as the safety net.
//!
//! Liveness is measured: every pass stamps the time, the heartbeat reports
//! `subscription` and `status_at_ms` from that stamp, and the agent's
//! supervisor restarts an updater whose stamp went stale.
//!
//! The host agent interface (`<state>/update/`): the updater writes
//! `apply-request.json` (lease, intent, digest, path of the staged artifact)
//! and the host agent answers in `apply-result.json` with
//! `{"outcome":"committed"|"rolled_back","lease_id":..,"sha256":..,"reason":..}`.
//! Both are written atomically; see `docs/update-plane.md`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric::transport::Transport;
use fabric_proto::update::UpdateState;
use fabric_runtime::{
    Action, BackoffConfig, Controller, ControllerConfig, QueueHandle, Reconciler,
};
use fabric_schemas::kinds::Component;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::artifact::ArtifactStore;
use super::exchange::{fetch, FetchConfig, FetchPlan};
use super::intents::UpdateInputs;
use super::journal::{JournalFile, Loaded};
use super::machine::{self, ArtifactView, Command, HostOutcome, Journal, Observed};

/// The file the control session writes on a fresh hint generation.
pub const TRIGGER_FILE: &str = "update-trigger.json";
pub use fabric_proto::host::{APPLY_REQUEST_FILE, APPLY_RESULT_FILE};

/// How long a node that is not its area's seed waits before fetching.
pub const SEED_HEAD_START: Duration = Duration::from_secs(1);

/// Whether this build wakes its updater on hints and file touches (the
/// notify watcher and the direct hint path are compiled in). Reported as
/// `supports_hint_wake`.
pub const SUPPORTS_HINT_WAKE: bool = true;

/// How the updater runs.
#[derive(Clone, Debug)]
pub struct UpdaterConfig {
    /// The node's name (logs).
    pub name: String,
    /// The node's state folder; the updater keeps `update/` and `artifacts/`.
    pub state_dir: PathBuf,
    /// The component this updater updates.
    pub component: Component,
    /// The safety-net poll; each wait is drawn from 0.5x..1.5x of it.
    pub poll: Duration,
    /// Fetch limits.
    pub fetch: FetchConfig,
    /// Failed fetches of one artifact before the attempt is aborted.
    pub max_fetch_attempts: u32,
    /// Watch the trigger and result files with notify (off: poll only, and
    /// the heartbeat says `supports_hint_wake: false`).
    pub file_wake: bool,
    /// Count this start against an unfinished attempt (the crash-loop
    /// bound): true for the process's first start, false when the
    /// supervisor restarts the task.
    pub count_start: bool,
    /// How long an apply request may go unanswered while this build still
    /// runs before the attempt is rolled back as `apply_timeout`.
    pub apply_timeout: Duration,
}

impl UpdaterConfig {
    /// Defaults for a node.
    pub fn new(name: &str, state_dir: &Path) -> UpdaterConfig {
        UpdaterConfig {
            name: name.to_owned(),
            state_dir: state_dir.to_path_buf(),
            component: Component::NodeAgent,
            poll: Duration::from_secs(60),
            fetch: FetchConfig::default(),
            max_fetch_attempts: 6,
            file_wake: true,
            count_start: true,
            apply_timeout: Duration::from_millis(machine::DEFAULT_APPLY_TIMEOUT_MS),
        }
    }

    /// The update folder.
    pub fn update_dir(&self) -> PathBuf {
        self.state_dir.join("update")
    }
}

/// The `update` object of `status.json` and the heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// One of the seven states.
    pub state: String,
    /// The intent.
    pub intent: String,
    /// Its generation.
    pub generation: u64,
    /// `node-agent` or `host-agent`.
    pub phase: String,
    /// The version it installs.
    pub version: String,
    /// The lease it acts (or was refused) on.
    pub lease_id: Option<String>,
    /// The staged artifact.
    pub staged_sha256: Option<String>,
    /// Why it is blocked, rolled back or aborted.
    pub reason: Option<String>,
}

/// The updater's liveness, as the heartbeat reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdaterLiveness {
    /// Whether the updater passed recently (its stamp is fresh).
    pub alive: bool,
    /// Its last pass (Unix ms).
    pub status_at_ms: Option<u64>,
    /// Restarts by the supervisor.
    pub restarts: u64,
    /// What this build can do.
    pub supports_hint_wake: bool,
    /// Wakes so far, by source.
    pub wakes: std::collections::BTreeMap<String, u64>,
}

/// What wakes the updater.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// A fresh hint generation on the control session.
    Hint,
    /// `update-trigger.json` or `apply-result.json` was touched.
    File,
    /// Intents, leases or sources changed.
    Inputs,
    /// A fetch ended.
    Fetch,
}

impl Wake {
    fn label(self) -> &'static str {
        match self {
            Wake::Hint => "hint",
            Wake::File => "file",
            Wake::Inputs => "gossip",
            Wake::Fetch => "fetch",
        }
    }
}

/// Shared between the updater task, the agent and the heartbeat.
#[derive(Debug, Default)]
pub struct Liveness {
    stamp_ms: AtomicU64,
    restarts: AtomicU64,
    wakes: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Liveness {
    fn stamp(&self, now_ms: u64) {
        self.stamp_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The last pass, Unix ms (0: never).
    pub fn last_pass_ms(&self) -> u64 {
        self.stamp_ms.load(Ordering::Relaxed)
    }

    /// Counts a restart by the supervisor.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    fn woke(&self, by: &str) {
        if let Ok(mut w) = self.wakes.lock() {
            *w.entry(by.to_owned()).or_default() += 1;
        }
    }

    /// The report, with `alive` judged against `stale_after`.
    pub fn report(
        &self,
        now_ms: u64,
        stale_after: Duration,
        supports_hint_wake: bool,
    ) -> UpdaterLiveness {
        let at = self.last_pass_ms();
        UpdaterLiveness {
            alive: at > 0 && now_ms.saturating_sub(at) <= stale_after.as_millis() as u64,
            status_at_ms: (at > 0).then_some(at),
            restarts: self.restarts.load(Ordering::Relaxed),
            supports_hint_wake,
            wakes: self.wakes.lock().map(|w| w.clone()).unwrap_or_default(),
        }
    }
}

pub use fabric_proto::host::ApplyRequest;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One fetch per artifact at a time; failures are counted per artifact.
#[derive(Debug, Default)]
struct FetchSlot {
    running: Option<(String, tokio::task::JoinHandle<()>)>,
    /// The attempt the counts are for: intent, generation, digest.
    attempt: Option<(String, u64, String)>,
    failures: u32,
    last_error: Option<String>,
}

fn attempt_key(i: &machine::IntentRef) -> (String, u64, String) {
    (i.name.clone(), i.generation, i.sha256.clone())
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    /// The journal could not be persisted: nothing was acted on.
    #[error(transparent)]
    Journal(#[from] super::journal::JournalError),
    /// The apply request could not be written.
    #[error("writing {path}: {reason}")]
    Request {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

struct Shared {
    cfg: UpdaterConfig,
    transport: Transport,
    store: ArtifactStore,
    journal_file: JournalFile,
    journal: Mutex<Journal>,
    inputs: watch::Receiver<UpdateInputs>,
    fetch: Mutex<FetchSlot>,
    status: watch::Sender<Option<UpdateStatus>>,
    liveness: Arc<Liveness>,
    queue: Mutex<Option<QueueHandle<()>>>,
    /// Set when this updater was killed or stopped: a pass still running
    /// must not save over the journal of the updater that replaced it.
    killed: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn wake(&self, by: Wake) {
        self.liveness.woke(by.label());
        if let Ok(q) = self.queue.lock() {
            if let Some(q) = q.as_ref() {
                q.enqueue(());
            }
        }
    }

    fn read_host_outcome(&self) -> Option<HostOutcome> {
        let bytes = std::fs::read(self.cfg.update_dir().join(APPLY_RESULT_FILE)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(node = %self.cfg.name, error = %e, "apply-result.json does not parse; ignored");
                None
            }
        }
    }

    fn artifact_view(&self, intent: &machine::IntentRef) -> ArtifactView {
        if self.store.is_staged(&intent.sha256, intent.size) {
            return ArtifactView::Staged;
        }
        let slot = match self.fetch.lock() {
            Ok(s) => s,
            Err(_) => return ArtifactView::Missing,
        };
        if slot.attempt.as_ref() == Some(&attempt_key(intent))
            && slot.failures >= self.cfg.max_fetch_attempts
        {
            return ArtifactView::Failed {
                reason: slot
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "fetch_failed".into()),
            };
        }
        ArtifactView::Missing
    }

    fn start_fetch(self: &Arc<Self>, held: &super::intents::HeldIntent) {
        let Ok(mut slot) = self.fetch.lock() else {
            return;
        };
        let sha = held.intent.sha256.clone();
        let key = attempt_key(&held.intent);
        if slot.attempt.as_ref() != Some(&key) {
            slot.attempt = Some(key);
            slot.failures = 0;
            slot.last_error = None;
        }
        if slot
            .running
            .as_ref()
            .is_some_and(|(s, h)| *s == sha && !h.is_finished())
        {
            return;
        }
        let (sources, fallback) = {
            let inputs = self.inputs.borrow();
            let mut sources: Vec<_> = Vec::new();
            for s in held.area_sources.iter().chain(&inputs.sources) {
                // The origin tier is asked last, whatever else it is.
                if !sources.contains(s) && !inputs.fallback.contains(s) {
                    sources.push(*s);
                }
            }
            (sources, inputs.fallback.clone())
        };
        let plan = FetchPlan {
            sha256: sha.clone(),
            size: held.intent.size,
            pieces: held.pieces.clone(),
            sources,
            fallback,
        };
        // The area's seed fetches at once; the others give it a head start,
        // so they find its pieces instead of all going to the store.
        let head_start = if held.area_rank > 0 && slot.failures == 0 {
            SEED_HEAD_START
        } else {
            Duration::ZERO
        };
        let me = self.clone();
        let handle = tokio::spawn(async move {
            tokio::time::sleep(head_start).await;
            let started = std::time::Instant::now();
            let result = fetch(&me.transport, &me.store, &plan, &me.cfg.fetch).await;
            if let Ok(mut slot) = me.fetch.lock() {
                match &result {
                    Ok(path) => {
                        tracing::info!(node = %me.cfg.name, sha256 = %plan.sha256, path = %path.display(), took_ms = started.elapsed().as_millis() as u64, "artifact fetched, verified and staged");
                    }
                    Err(e) => {
                        slot.failures += 1;
                        slot.last_error = Some(e.reason());
                        // The first failure and the last one are news; the
                        // retries between them are not (a fleet would log
                        // one line per node per retry).
                        if slot.failures == 1 || slot.failures >= me.cfg.max_fetch_attempts {
                            tracing::warn!(node = %me.cfg.name, sha256 = %plan.sha256, failures = slot.failures, max = me.cfg.max_fetch_attempts, error = %e, "artifact fetch failed");
                        } else {
                            tracing::info!(node = %me.cfg.name, sha256 = %plan.sha256, failures = slot.failures, max = me.cfg.max_fetch_attempts, error = %e, "artifact fetch failed; retrying");
                        }
                    }
                }
            }
            let failed = result.is_err();
            me.wake(Wake::Fetch);
            if failed {
                // Retry later, not at once: sources may not have it yet.
                let backoff = Duration::from_secs(
                    1 << me.fetch.lock().map(|s| s.failures.min(5)).unwrap_or(0),
                );
                tokio::time::sleep(backoff).await;
                me.wake(Wake::Fetch);
            }
        });
        slot.running = Some((sha, handle));
    }

    fn write_request(&self, lease_id: &str, journal: &Journal) -> Result<(), UpdaterError> {
        let Some(a) = journal.attempt.as_ref() else {
            return Ok(());
        };
        let path = self.cfg.update_dir().join(APPLY_REQUEST_FILE);
        let req = ApplyRequest {
            lease_id: lease_id.to_owned(),
            intent: a.intent.name.clone(),
            generation: a.intent.generation,
            component: a.intent.component,
            version: a.intent.version.clone(),
            sha256: a.intent.sha256.clone(),
            size: a.intent.size,
            artifact: self.store.staged_path(&a.intent.sha256),
            previous_sha256: journal.previous_binary.clone(),
        };
        let err = |reason: String| UpdaterError::Request {
            path: path.display().to_string(),
            reason,
        };
        let bytes = serde_json::to_vec_pretty(&req).map_err(|e| err(e.to_string()))?;
        // Idempotent: an unchanged request is not rewritten (the host agent
        // may be watching the file).
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        super::faults::point("apply:before_request");
        fabric_schemas::keys::write_atomic(&path, &bytes, 0o644).map_err(|e| err(e.to_string()))?;
        tracing::info!(node = %self.cfg.name, lease_id, sha256 = %req.sha256, "apply request handed to the host agent");
        Ok(())
    }

    fn publish(&self, journal: &Journal) {
        let status = journal.attempt.as_ref().map(|a| UpdateStatus {
            state: a.state.as_str().to_owned(),
            intent: a.intent.name.clone(),
            generation: a.intent.generation,
            phase: a.intent.component.as_str().to_owned(),
            version: a.intent.version.clone(),
            lease_id: a.lease_id.clone(),
            staged_sha256: a.staged_sha256.clone(),
            reason: a.reason.clone(),
        });
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }

    /// One pass. `Ok(true)` when the journal changed (decide again at once).
    fn pass(self: &Arc<Self>) -> Result<bool, UpdaterError> {
        self.liveness.stamp(now_ms());
        let inputs = self.inputs.borrow().clone();
        let held = inputs.intents.get(&self.cfg.component).cloned();
        let journal = self.journal.lock().map(|j| j.clone()).unwrap_or_default();
        let seen = match &held {
            Some(h) => Observed {
                intent: Some(h.intent.clone()),
                lease: inputs.lease_for(&h.intent),
                artifact: self.artifact_view(&h.intent),
                host: self.read_host_outcome(),
                // Only an updater holding an intent needs it (it records the
                // build it replaces): idle nodes never hash themselves.
                running_sha256: super::artifact::running_binary_sha256(),
                now_ms: now_ms(),
                apply_timeout_ms: self.cfg.apply_timeout.as_millis() as u64,
            },
            None => Observed {
                intent: None,
                lease: machine::LeaseView::None,
                artifact: ArtifactView::Missing,
                host: None,
                running_sha256: None,
                now_ms: now_ms(),
                apply_timeout_ms: self.cfg.apply_timeout.as_millis() as u64,
            },
        };
        let decision = machine::decide(&journal, &seen);
        let changed = decision.journal != journal;
        if self.killed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if changed {
            // Persist first, act second.
            self.journal_file.save(&decision.journal)?;
            if let Ok(mut j) = self.journal.lock() {
                *j = decision.journal.clone();
            }
            if let (Some(b), Some(a)) =
                (journal.attempt.as_ref(), decision.journal.attempt.as_ref())
            {
                if b.state == UpdateState::Applying
                    && a.state != UpdateState::Applying
                    && a.reason.as_deref() == Some(machine::APPLY_TIMEOUT)
                {
                    // Withdraw the request, so a host agent that comes back
                    // late does not act on a given-up attempt.
                    let path = self.cfg.update_dir().join(APPLY_REQUEST_FILE);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(node = %self.cfg.name, path = %path.display(), error = %e, "cannot withdraw the unanswered apply request")
                        }
                    }
                    tracing::warn!(node = %self.cfg.name, intent = %a.intent.name, generation = a.intent.generation, timeout_s = self.cfg.apply_timeout.as_secs(), "no host agent answered the apply request; rolled back as apply_timeout (this build keeps running)");
                }
                if b.state != a.state || b.intent.generation != a.intent.generation {
                    tracing::info!(node = %self.cfg.name, intent = %a.intent.name, generation = a.intent.generation, from = b.state.as_str(), to = a.state.as_str(), reason = ?a.reason, lease_id = ?a.lease_id, "update state changed");
                }
            } else if let Some(a) = decision.journal.attempt.as_ref() {
                tracing::info!(node = %self.cfg.name, intent = %a.intent.name, generation = a.intent.generation, state = a.state.as_str(), reason = ?a.reason, "update attempt started");
            }
        }
        for c in &decision.commands {
            match c {
                Command::Fetch { .. } => {
                    if let Some(h) = &held {
                        self.start_fetch(h);
                    }
                }
                Command::RequestApply { lease_id, .. } => {
                    self.write_request(lease_id, &decision.journal)?;
                }
            }
        }
        self.publish(&decision.journal);
        Ok(changed)
    }
}

struct UpdaterLoop {
    shared: Arc<Shared>,
}

impl Reconciler for UpdaterLoop {
    type Key = ();
    type Object = ();
    type Ctx = ();
    type Error = UpdaterError;

    async fn fetch(&self, _: &(), _: &()) -> Result<Option<Arc<()>>, UpdaterError> {
        Ok(Some(Arc::new(())))
    }

    async fn reconcile(&self, _: Arc<()>, _: &()) -> Result<Action, UpdaterError> {
        let shared = self.shared.clone();
        let changed = tokio::task::spawn_blocking(move || shared.pass())
            .await
            .map_err(|e| UpdaterError::Request {
                path: "updater pass".into(),
                reason: e.to_string(),
            })??;
        if changed {
            return Ok(Action::requeue(Duration::from_millis(1)));
        }
        Ok(Action::requeue(jittered(self.shared.cfg.poll)))
    }

    fn error_policy(&self, _: &(), e: &UpdaterError, _: &()) -> Action {
        tracing::warn!(node = %self.shared.cfg.name, error = %e, "updater pass failed; backing off");
        Action::backoff()
    }
}

/// `base` scaled by a factor in 0.5..1.5, so a fleet's polls spread out.
fn jittered(base: Duration) -> Duration {
    use rand_core::RngCore;
    let r = rand_core::OsRng.next_u32() as f64 / u32::MAX as f64;
    base.mul_f64(0.5 + r)
}

/// A running updater.
pub struct Updater {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("name", &self.shared.cfg.name)
            .finish()
    }
}

/// What the agent keeps of its updater across restarts.
#[derive(Clone, Debug)]
pub struct UpdaterView {
    /// The update object.
    pub status: watch::Receiver<Option<UpdateStatus>>,
    /// The liveness stamps.
    pub liveness: Arc<Liveness>,
    /// Whether the running build wakes on hints and files.
    pub supports_hint_wake: bool,
    /// The poll interval (liveness goes stale after three of them).
    pub poll: Duration,
}

impl UpdaterView {
    /// The liveness report now.
    pub fn liveness_now(&self) -> UpdaterLiveness {
        self.liveness
            .report(now_ms(), self.stale_after(), self.supports_hint_wake)
    }

    /// How long without a pass before the updater counts as dead.
    pub fn stale_after(&self) -> Duration {
        // Passes come at least every 1.5 polls, or after a failure's backoff
        // (at most 30 s): beyond both, the task is wedged.
        self.poll.mul_f64(3.0) + Duration::from_secs(30)
    }
}

impl Updater {
    /// Starts the updater: reads the journal first (counting this start
    /// against an unfinished attempt), then runs its loop.
    pub fn start(
        cfg: UpdaterConfig,
        transport: Transport,
        inputs: watch::Receiver<UpdateInputs>,
        status: watch::Sender<Option<UpdateStatus>>,
        liveness: Arc<Liveness>,
    ) -> Result<Updater, UpdaterError> {
        let journal_file = JournalFile::new(&cfg.update_dir());
        let journal = match journal_file.load(now_ms())? {
            Loaded::Corrupt { moved_to, reason } => {
                tracing::error!(node = %cfg.name, moved_to = %moved_to.display(), %reason, "update journal unreadable; kept aside, starting from an empty one");
                Journal::default()
            }
            l => l.journal(),
        };
        let journal = if cfg.count_start {
            let counted = machine::on_start(journal);
            journal_file.save(&counted)?;
            counted
        } else {
            journal
        };
        if let Some(a) = &journal.attempt {
            tracing::info!(node = %cfg.name, intent = %a.intent.name, generation = a.intent.generation, state = a.state.as_str(), starts = a.starts, "update journal read");
        }
        let shared = Arc::new(Shared {
            store: ArtifactStore::new(&cfg.state_dir.join("artifacts")),
            journal_file,
            journal: Mutex::new(journal),
            inputs: inputs.clone(),
            fetch: Mutex::new(FetchSlot::default()),
            status,
            liveness,
            queue: Mutex::new(None),
            killed: std::sync::atomic::AtomicBool::new(false),
            transport,
            cfg,
        });
        let (shutdown, mut stop) = watch::channel(false);
        let controller = Controller::new(
            Arc::new(UpdaterLoop {
                shared: shared.clone(),
            }),
            Arc::new(()),
            ControllerConfig {
                concurrency: 1,
                backoff: BackoffConfig::new(Duration::from_millis(500), Duration::from_secs(30)),
                shutdown_grace: Duration::from_secs(2),
                warn_on_failure: true,
            },
        );
        let queue = controller.queue();
        queue.enqueue(());
        if let Ok(mut q) = shared.queue.lock() {
            *q = Some(queue);
        }
        let watcher = if shared.cfg.file_wake {
            match watch_files(&shared) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(node = %shared.cfg.name, error = %e, "cannot watch the update files; polling only");
                    None
                }
            }
        } else {
            None
        };
        let forwarder = {
            let shared = shared.clone();
            let mut inputs = inputs;
            let mut stop = stop.clone();
            async move {
                loop {
                    tokio::select! {
                        r = inputs.changed() => if r.is_err() { return },
                        _ = stop.changed() => return,
                    }
                    shared.wake(Wake::Inputs);
                }
            }
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                () = controller.run(async move { let _ = stop.wait_for(|s| *s).await; }) => {}
                () = forwarder => {}
            }
        });
        Ok(Updater {
            shared,
            task,
            _watcher: watcher,
            shutdown,
        })
    }

    /// Wakes the updater (a fresh hint generation).
    pub fn wake(&self, by: Wake) {
        self.shared.wake(by);
    }

    /// Whether the task ended (crashed or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Kills the task at once, as a crash would (the supervisor and tests),
    /// with the fetch it runs.
    pub fn abort(&self) {
        self.shared.killed.store(true, Ordering::SeqCst);
        self.task.abort();
        if let Ok(mut slot) = self.shared.fetch.lock() {
            if let Some((_, h)) = slot.running.take() {
                h.abort();
            }
        }
    }

    /// Stops the updater and waits for it.
    pub async fn stop(self) {
        self.shared.killed.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        if let Ok(mut slot) = self.shared.fetch.lock() {
            if let Some((_, h)) = slot.running.take() {
                h.abort();
            }
        }
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// The current state (tests, status).
    pub fn state(&self) -> Option<UpdateState> {
        self.shared
            .journal
            .lock()
            .ok()
            .and_then(|j| j.attempt.as_ref().map(|a| a.state))
    }
}

/// Watches the state folder and the update folder for the trigger and the
/// host agent's answer: any process touching them wakes the updater.
fn watch_files(shared: &Arc<Shared>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let update_dir = shared.cfg.update_dir();
    let _ = std::fs::create_dir_all(&update_dir);
    let weak = Arc::downgrade(shared);
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        let ours = ev.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n == TRIGGER_FILE || n == APPLY_RESULT_FILE)
        });
        if ours {
            if let Some(s) = weak.upgrade() {
                s.wake(Wake::File);
            }
        }
    })?;
    w.watch(&shared.cfg.state_dir, RecursiveMode::NonRecursive)?;
    w.watch(&update_dir, RecursiveMode::NonRecursive)?;
    Ok(w)
}

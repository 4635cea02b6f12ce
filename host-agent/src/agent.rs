//! The host agent's driver: supervises the node-agent from its `current`
//! slot, and applies the node-agent phase the node-agent's updater asks for
//! in `<state>/update/apply-request.json`, answering in `apply-result.json`
//! (the interface of `docs/update-plane.md`).
//!
//! An apply: refuse a digest rolled back for that generation; check the swap
//! can be done (`Slots::preflight`) before anything changes; install the
//! staged artifact as a slot (length and sha256 checked while copying);
//! persist the phase; switch `current`; start the new build; hold it to the
//! readiness deadline and the probation window ([`crate::phase`]); commit,
//! or switch back to `previous`, restart it and report `rolled_back` with the
//! reason.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabric_proto::host::HostStatus;
use fabric_runtime::{Backoff, BackoffConfig};
use serde::{Deserialize, Serialize};

use crate::faults;
use crate::notify::{Notice, NotifySocket};
use crate::phase::{step, Event, Phase, Window};
use crate::slots::{hash_reader, Slots};

pub use fabric_proto::host::{
    ApplyOutcome, ApplyRequest, APPLY_REQUEST_FILE, APPLY_RESULT_FILE, HOST_STATUS_FILE,
};

/// How the host agent runs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The node-agent's state folder (`update/` holds the request and answer).
    pub state_dir: PathBuf,
    /// The host agent's own folder: slots, links, its journal, the notify socket.
    pub host_dir: PathBuf,
    /// A node-agent binary to install as the first slot when none is current.
    pub initial: Option<PathBuf>,
    /// The node-agent's arguments.
    pub args: Vec<String>,
    /// Readiness deadline and probation of an apply.
    pub window: Window,
    /// Restarts of a node-agent that exits outside an apply.
    pub restart_backoff: BackoffConfig,
}

/// What went wrong at start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No slot to run, and no initial binary to install.
    #[error("no current node-agent slot in {0} and no --node-agent binary to install")]
    NothingToRun(String),
    /// The slot store failed.
    #[error(transparent)]
    Slot(#[from] crate::slots::SlotError),
    /// A file or socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The host agent's journal (`<host>/phase.json`), persisted before each
/// switch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostJournal {
    /// The last request acted on.
    #[serde(default)]
    pub lease_id: Option<String>,
    /// Its digest.
    #[serde(default)]
    pub sha256: Option<String>,
    /// `applying`, `committed` or `rolled_back`.
    #[serde(default)]
    pub state: Option<String>,
    /// Why it was rolled back.
    #[serde(default)]
    pub reason: Option<String>,
    /// `(intent, generation, sha256)` rolled back: never applied again.
    #[serde(default)]
    pub denylist: BTreeSet<(String, u64, String)>,
    /// Node-agent restarts outside applies.
    #[serde(default)]
    pub restarts: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), HostError> {
    let io = |e: String| HostError::Io {
        what: path.display().to_string(),
        source: std::io::Error::other(e),
    };
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| io(e.to_string()))?;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| io(e.to_string()))?;
    }
    fabric_schemas::keys::write_atomic(path, &bytes, 0o644).map_err(|e| io(e.to_string()))
}

/// The running node-agent's process id (its process group), so a host agent
/// restarted after a crash can stop what the previous one left running.
pub const CHILD_FILE: &str = "child.pid";

/// Stops a node-agent that a previous host agent started and left running
/// (it was killed, or crashed): two node-agents must never run for one
/// node. The pid is only acted on while `/proc/<pid>/cmdline` names a file
/// under `slots_dir`, so a recycled pid is never signalled.
fn reap_orphan(host_dir: &Path, slots_dir: &Path) {
    let file = host_dir.join(CHILD_FILE);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    let remove = || {
        if let Err(e) = std::fs::remove_file(&file) {
            tracing::warn!(path = %file.display(), error = %e, "cannot remove the child pid file");
        }
    };
    let Some(pid) = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        tracing::warn!(path = %file.display(), "child pid file unreadable; ignored");
        remove();
        return;
    };
    let ours = |pid: rustix::process::Pid| {
        std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero()))
            .ok()
            .is_some_and(|c| {
                let needle = slots_dir.as_os_str().as_encoded_bytes();
                c.windows(needle.len()).any(|w| w == needle)
            })
    };
    if !ours(pid) {
        remove();
        return;
    }
    tracing::warn!(pid = pid.as_raw_nonzero().get(), "a node-agent left running by a previous host agent; stopping its process group before starting one");
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ours(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    remove();
}

/// The node-agent's arguments as last started, kept beside the slots.
pub const ARGS_FILE: &str = "node-agent.args.json";

/// The arguments a running node-agent was started with, read from
/// `/proc/<pid>/cmdline`: everything after the slot path (argv\[0\] for a
/// binary, argv\[1\] behind an interpreter). `None` unless the process runs
/// a file under `slots_dir`.
pub fn running_args(pid: u32, slots_dir: &Path) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let slots = slots_dir.to_string_lossy();
    let at = argv.iter().position(|a| a.starts_with(slots.as_ref()))?;
    Some(argv[at + 1..].to_vec())
}

/// Repairs a lost or stale node-agent command line from local runtime state:
/// the running node-agent's own `/proc/<pid>/cmdline` first (what actually
/// runs), then the arguments the host agent last started it with. `None`
/// when neither is there.
fn repair_args(host_dir: &Path) -> Option<(Vec<String>, String)> {
    let slots = host_dir.join("slots");
    let from_proc = std::fs::read_to_string(host_dir.join(CHILD_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .and_then(|pid| running_args(pid, &slots).map(|a| (a, format!("/proc/{pid}/cmdline"))));
    from_proc.or_else(|| {
        let path = host_dir.join(ARGS_FILE);
        let args: Vec<String> = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        Some((args, path.display().to_string()))
    })
}

enum Woke {
    Exited(Option<std::process::ExitStatus>),
    Notices(Vec<Notice>),
    Tick,
    Shutdown,
}

struct Running {
    child: tokio::process::Child,
    sha: String,
}

/// An apply in flight.
struct Apply {
    req: ApplyRequest,
    phase: Phase,
    /// When the old node-agent was told to stop: the downtime's start.
    stopping_at: Instant,
}

/// The host agent.
pub struct HostAgent {
    cfg: HostConfig,
    slots: Slots,
    notify: NotifySocket,
    journal: HostJournal,
    running: Option<Running>,
    apply: Option<Apply>,
    backoff: Backoff<()>,
    restart_at: Option<Instant>,
    last_health_ms: Option<u64>,
    own_digest: Option<String>,
    /// The version the running node-agent reported with `READY=1`.
    child_version: Option<String>,
    /// The last apply's downtime (old stopped to new ready), in ms.
    last_swap_downtime_ms: Option<u64>,
}

impl HostAgent {
    /// Opens the slots and the journal and binds the notify socket; installs
    /// the initial binary when nothing is current.
    pub fn new(mut cfg: HostConfig) -> Result<HostAgent, HostError> {
        if cfg.args.is_empty() {
            // A wiped or stale unit: the node-agent's command line is taken
            // back from what runs (or last ran) on this machine.
            if let Some((args, from)) = repair_args(&cfg.host_dir) {
                tracing::warn!(%from, args = ?args, "no node-agent arguments given; repaired the command line from local runtime state");
                cfg.args = args;
            }
        }
        let slots = Slots::new(&cfg.host_dir, "node-agent");
        let mut journal: HostJournal = std::fs::read(cfg.host_dir.join("phase.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if journal.state.as_deref() == Some("applying") {
            // A crash mid-apply: the request is done again from the start.
            // Installing and switching are idempotent, and `current` names a
            // complete slot whichever side of the switch the crash fell on.
            tracing::warn!(lease_id = ?journal.lease_id, sha256 = ?journal.sha256, current = ?slots.current(), "an apply was interrupted; redoing it");
            journal.lease_id = None;
        }
        if slots.current().is_none() {
            let Some(initial) = &cfg.initial else {
                return Err(HostError::NothingToRun(cfg.host_dir.display().to_string()));
            };
            let f = std::fs::File::open(initial).map_err(|source| HostError::Io {
                what: initial.display().to_string(),
                source,
            })?;
            let (size, sha) = hash_reader(f).map_err(|source| HostError::Io {
                what: initial.display().to_string(),
                source,
            })?;
            slots.install(initial, &sha, size)?;
            slots.switch_to(&sha)?;
            tracing::info!(sha256 = %sha, "installed the initial node-agent slot");
        }
        reap_orphan(&cfg.host_dir, &cfg.host_dir.join("slots"));
        let notify = NotifySocket::bind(&cfg.host_dir.join("notify.sock")).map_err(|source| {
            HostError::Io {
                what: "binding the notify socket".into(),
                source,
            }
        })?;
        let own_digest = std::env::current_exe()
            .ok()
            .and_then(|p| std::fs::File::open(p).ok())
            .and_then(|f| hash_reader(f).ok())
            .map(|(_, h)| h);
        Ok(HostAgent {
            backoff: Backoff::new(cfg.restart_backoff),
            cfg,
            slots,
            notify,
            journal,
            running: None,
            apply: None,
            restart_at: Some(Instant::now()),
            last_health_ms: None,
            own_digest,
            child_version: None,
            last_swap_downtime_ms: None,
        })
    }

    fn update_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("update")
    }

    fn save_journal(&self) -> Result<(), HostError> {
        write_json(&self.cfg.host_dir.join("phase.json"), &self.journal)
    }

    /// Starts the node-agent from the `current` slot: the slot's file is
    /// hashed first, so what runs is what was verified.
    fn start_child(&mut self) -> Result<(), HostError> {
        let sha = self
            .slots
            .current()
            .ok_or_else(|| HostError::NothingToRun(self.cfg.host_dir.display().to_string()))?;
        self.slots.verify(&sha)?;
        let child = tokio::process::Command::new(self.slots.binary(&sha))
            .args(&self.cfg.args)
            .env("NOTIFY_SOCKET", self.notify.path())
            .env("FABRIC_SLOT_DIGEST", &sha)
            // Its own process group: stopping it stops whatever it started,
            // so nothing of an old build can speak for the new one.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| HostError::Io {
                what: format!("starting slot {sha}"),
                source,
            })?;
        tracing::info!(sha256 = %sha, pid = ?child.id(), "node-agent started");
        match serde_json::to_vec(&self.cfg.args) {
            Ok(b) => {
                if let Err(e) = fabric_schemas::keys::write_atomic(
                    &self.cfg.host_dir.join(ARGS_FILE),
                    &b,
                    0o644,
                ) {
                    tracing::warn!(error = %e, "cannot record the node-agent's arguments");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the node-agent's arguments"),
        }
        if let Some(pid) = child.id() {
            // Written after the spawn: a crash between the two leaves a
            // child nobody reaps but the session's end (systemd's
            // KillMode=control-group); the window is one write.
            if let Err(e) = fabric_schemas::keys::write_atomic(
                &self.cfg.host_dir.join(CHILD_FILE),
                format!("{pid}\n").as_bytes(),
                0o644,
            ) {
                tracing::warn!(error = %e, "cannot record the node-agent's pid");
            }
        }
        self.running = Some(Running { child, sha });
        Ok(())
    }

    async fn stop_child(&mut self) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        self.child_version = None;
        let group = r
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32));
        if let Some(pid) = group {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(Duration::from_secs(5), r.child.wait())
            .await
            .is_err()
        {
            let _ = r.child.kill().await;
        }
        if let Some(pid) = group {
            // Anything it left behind in its group goes too.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = std::fs::remove_file(self.cfg.host_dir.join(CHILD_FILE));
        // What it said before it went is not about the next build.
        self.notify.drain();
    }

    fn answer(&self, req: &ApplyRequest, outcome: &str, reason: Option<String>) {
        let result = match &reason {
            None => ApplyOutcome::Committed {
                lease_id: req.lease_id.clone(),
                sha256: req.sha256.clone(),
            },
            Some(why) => ApplyOutcome::RolledBack {
                lease_id: req.lease_id.clone(),
                sha256: req.sha256.clone(),
                reason: why.clone(),
            },
        };
        debug_assert_eq!(result.outcome(), outcome);
        match write_json(&self.update_dir().join(APPLY_RESULT_FILE), &result) {
            Ok(()) => {
                tracing::info!(lease_id = %req.lease_id, sha256 = %req.sha256, outcome, ?reason, "apply answered")
            }
            Err(e) => tracing::error!(error = %e, "could not write apply-result.json"),
        }
    }

    fn read_request(&self) -> Option<ApplyRequest> {
        let bytes = std::fs::read(self.update_dir().join(APPLY_REQUEST_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Looks for a new request and begins it.
    async fn poll_request(&mut self) -> Result<(), HostError> {
        if self.apply.is_some() {
            return Ok(());
        }
        let Some(req) = self.read_request() else {
            return Ok(());
        };
        if self.journal.lease_id.as_deref() == Some(req.lease_id.as_str()) {
            return Ok(());
        }
        self.journal.lease_id = Some(req.lease_id.clone());
        self.journal.sha256 = Some(req.sha256.clone());
        let key = (req.intent.clone(), req.generation, req.sha256.clone());
        if self.journal.denylist.contains(&key) {
            self.journal.state = Some("rolled_back".into());
            self.journal.reason = Some("denylisted".into());
            self.save_journal()?;
            self.answer(&req, "rolled_back", Some("denylisted".into()));
            return Ok(());
        }
        // Everything that can refuse is done before anything changes.
        let refused = self
            .slots
            .preflight(req.size)
            .and_then(|()| self.slots.install(&req.artifact, &req.sha256, req.size));
        if let Err(e) = refused {
            tracing::warn!(error = %e, "apply refused before the swap; the running build stays");
            self.journal.state = Some("rolled_back".into());
            self.journal.reason = Some(format!("swap_refused: {e}"));
            self.save_journal()?;
            self.answer(&req, "rolled_back", Some(format!("swap_refused: {e}")));
            return Ok(());
        }
        self.journal.state = Some("applying".into());
        self.journal.reason = None;
        self.save_journal()?;
        faults::point("apply:journal_saved");
        let stopping_at = Instant::now();
        self.stop_child().await;
        self.slots.switch_to(&req.sha256)?;
        faults::point("apply:switched");
        self.start_child()?;
        self.apply = Some(Apply {
            req,
            phase: Phase::Starting { since_ms: now_ms() },
            stopping_at,
        });
        Ok(())
    }

    /// Feeds one event to the apply in flight and acts on the outcome.
    async fn on_event(&mut self, event: Event) -> Result<(), HostError> {
        let Some(a) = self.apply.as_mut() else {
            return Ok(());
        };
        let next = step(&a.phase, &event, &a.req.sha256, &self.cfg.window, now_ms());
        if next == a.phase {
            return Ok(());
        }
        a.phase = next.clone();
        match next {
            Phase::Committed => {
                let req = a.req.clone();
                self.apply = None;
                self.journal.state = Some("committed".into());
                self.save_journal()?;
                self.answer(&req, "committed", None);
            }
            Phase::RolledBack { reason } => {
                let req = a.req.clone();
                self.apply = None;
                tracing::warn!(sha256 = %req.sha256, %reason, "new node-agent failed; rolling back");
                self.stop_child().await;
                self.slots.roll_back()?;
                self.journal.denylist.insert((
                    req.intent.clone(),
                    req.generation,
                    req.sha256.clone(),
                ));
                self.journal.state = Some("rolled_back".into());
                self.journal.reason = Some(reason.clone());
                self.save_journal()?;
                self.start_child()?;
                self.answer(&req, "rolled_back", Some(reason));
            }
            _ => {}
        }
        Ok(())
    }

    fn write_status(&self) {
        let status = HostStatus {
            host_agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            host_agent_digest: self.own_digest.clone(),
            node_agent_version: self.child_version.clone(),
            node_agent_digest: self.running.as_ref().map(|r| r.sha.clone()),
            node_agent_slot: self.slots.current(),
            restarts: self.journal.restarts,
            last_health_ms: self.last_health_ms,
            last_swap_downtime_ms: self.last_swap_downtime_ms,
        };
        let _ = write_json(&self.cfg.state_dir.join(HOST_STATUS_FILE), &status);
    }

    /// Runs until `shutdown` completes; the node-agent is stopped on the way out.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), HostError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.running.is_none() && self.restart_at.is_some_and(|t| Instant::now() >= t) {
                self.restart_at = None;
                if let Err(e) = self.start_child() {
                    tracing::error!(error = %e, "node-agent did not start; retrying");
                    self.restart_at = Some(Instant::now() + self.backoff.on_error(&()));
                }
            }
            let woke = {
                let running = &mut self.running;
                let notify = &self.notify;
                let exited = async {
                    match running.as_mut() {
                        Some(r) => r.child.wait().await.ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    status = exited => Woke::Exited(status),
                    notices = notify.recv() => Woke::Notices(notices.unwrap_or_default()),
                    _ = tick.tick() => Woke::Tick,
                    () = &mut shutdown => Woke::Shutdown,
                }
            };
            match woke {
                Woke::Exited(status) => {
                    let code = status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown".into());
                    let sha = self.running.take().map(|r| r.sha).unwrap_or_default();
                    self.child_version = None;
                    tracing::warn!(sha256 = %sha, status = %code, "node-agent exited");
                    if self.apply.is_some() {
                        self.on_event(Event::Exited(code)).await?;
                    } else {
                        self.journal.restarts += 1;
                        let _ = self.save_journal();
                        self.restart_at = Some(Instant::now() + self.backoff.on_error(&()));
                    }
                }
                Woke::Notices(notices) => {
                    for n in notices {
                        match n {
                            Notice::Ready { digest, version } => {
                                self.last_health_ms = Some(now_ms());
                                self.child_version = version;
                                if let Some(a) = self.apply.as_ref().filter(|a| {
                                    matches!(a.phase, Phase::Starting { .. })
                                        && digest.as_deref() == Some(a.req.sha256.as_str())
                                }) {
                                    let ms = a.stopping_at.elapsed().as_millis() as u64;
                                    tracing::info!(sha256 = %a.req.sha256, downtime_ms = ms, "new node-agent ready");
                                    self.last_swap_downtime_ms = Some(ms);
                                }
                                self.backoff.on_success(&());
                                self.on_event(Event::Ready(digest)).await?;
                            }
                            Notice::Watchdog => self.last_health_ms = Some(now_ms()),
                            Notice::Stopping => {}
                        }
                    }
                }
                Woke::Tick => {
                    self.poll_request().await?;
                    self.on_event(Event::Tick).await?;
                    self.write_status();
                }
                Woke::Shutdown => break,
            }
        }
        self.stop_child().await;
        Ok(())
    }
}

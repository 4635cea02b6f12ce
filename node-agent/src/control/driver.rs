//! The control session driver: thin, on the shared reconcile-loop runtime.
//!
//! [`ControlDriver::tick`] is one level-triggered pass (re-read the config,
//! read the canonical endpoints, [`decide`], act, send one heartbeat).
//! [`ControlDriver::run`] drives it as a `fabric_runtime` [`Reconciler`] with
//! one key (the node's session): a pass that got an accepted reply requeues
//! after the heartbeat interval; a failed pass backs off exponentially (base:
//! the interval, cap: [`MAX_BACKOFF_INTERVALS`] intervals), so a node whose
//! control edge is gone does not retry every tick.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fabric::frame::Framed;
use fabric::transport::Transport;
use fabric_proto::endpoint::ControlEndpoint;
use fabric_proto::heartbeat::MAX_HEARTBEAT_BYTES;
use fabric_runtime::{Action, BackoffConfig, Controller, ControllerConfig, Reconciler};
use tokio::sync::{watch, Mutex};

use super::config::{ControlConfigFile, ControlError};
use super::decide::{decide, LiveSession, SessionAction, SessionConfig};
use super::heartbeat::HeartbeatSource;
use super::link::{Link, LocalControlSlot};

/// A failing session is retried at most this many heartbeat intervals apart.
pub const MAX_BACKOFF_INTERVALS: u32 = 4;

/// Where canonical endpoints come from (the signed directory in production).
pub trait CanonicalSource: Send + Sync + 'static {
    /// The canonical endpoints now, preferred first.
    fn canonical(&self) -> Vec<ControlEndpoint>;
}

impl<F> CanonicalSource for F
where
    F: Fn() -> Vec<ControlEndpoint> + Send + Sync + 'static,
{
    fn canonical(&self) -> Vec<ControlEndpoint> {
        self()
    }
}

/// What the driver publishes after each pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlState {
    /// The live session's endpoint.
    pub endpoint: Option<ControlEndpoint>,
    /// Failed heartbeats in a row on the live session.
    pub consecutive_failures: u32,
    /// Reconnects done so far (a test and metrics counter).
    pub reconnects: u64,
    /// Heartbeats the control plane accepted.
    pub heartbeats_ok: u64,
    /// The last decision, for status and tests.
    pub last_action: Option<String>,
    /// The last failure, cleared by the next accepted heartbeat.
    pub last_error: Option<String>,
    /// From the last reply.
    pub update_hints: BTreeMap<String, i64>,
    /// The canonical endpoints the last authenticated reply advertised.
    pub advertised_endpoints: Vec<ControlEndpoint>,
    /// Signed records (intents, leases) the last reply carried, decoded from
    /// hex; the agent admits them through `accept` like any other record.
    pub records: Vec<Vec<u8>>,
}

struct Session {
    endpoint: ControlEndpoint,
    link: Link,
}

/// The control session driver of one node.
pub struct ControlDriver {
    transport: Transport,
    config_path: PathBuf,
    canonical: Arc<dyn CanonicalSource>,
    beats: Arc<dyn HeartbeatSource>,
    local: LocalControlSlot,
    session: Option<Session>,
    /// The endpoint we mean to be on while its link is not open (yet, or
    /// again after a broken channel); counts as the live session for decide.
    pending: Option<ControlEndpoint>,
    failures: u32,
    last_config: Option<(SessionConfig, Option<String>)>,
    request_timeout: Duration,
    state: watch::Sender<ControlState>,
}

impl ControlDriver {
    /// A driver with no session yet.
    pub fn new(
        transport: Transport,
        config_path: PathBuf,
        canonical: Arc<dyn CanonicalSource>,
        beats: Arc<dyn HeartbeatSource>,
    ) -> ControlDriver {
        ControlDriver {
            transport,
            config_path,
            canonical,
            beats,
            local: LocalControlSlot::new(),
            session: None,
            pending: None,
            failures: 0,
            last_config: None,
            request_timeout: Duration::from_secs(5),
            state: watch::channel(ControlState::default()).0,
        }
    }

    /// Bound on each connect and heartbeat round trip.
    pub fn with_request_timeout(mut self, t: Duration) -> ControlDriver {
        self.request_timeout = t;
        self
    }

    /// The in-process link used when the canonical endpoint is this node's
    /// own id (the node co-located with the control plane).
    pub fn with_local_control(mut self, slot: LocalControlSlot) -> ControlDriver {
        self.local = slot;
        self
    }

    /// Starts on an existing session endpoint, as a node that was already
    /// connected before this driver (or this process) took over. The session
    /// is opened lazily on the next heartbeat.
    pub fn assume_live(&mut self, endpoint: ControlEndpoint) {
        self.session = None;
        self.pending = Some(endpoint);
    }

    /// Watches what the driver publishes after each pass.
    pub fn state(&self) -> watch::Receiver<ControlState> {
        self.state.subscribe()
    }

    fn live(&self) -> Option<LiveSession> {
        let endpoint = self
            .session
            .as_ref()
            .map(|s| s.endpoint.clone())
            .or_else(|| self.pending.clone())?;
        Some(LiveSession {
            endpoint,
            consecutive_failures: self.failures,
        })
    }

    /// Re-reads the config; on a bad file keeps the last good one (a broken
    /// rewrite must not take the node off its working session).
    fn config(&mut self) -> (SessionConfig, Option<String>) {
        match ControlConfigFile::load(&self.config_path)
            .and_then(|f| Ok((f.session_config(&self.config_path)?, f.compat_token)))
        {
            Ok(c) => {
                self.last_config = Some(c.clone());
                c
            }
            Err(e) => {
                tracing::warn!(error = %e, "control config unusable; keeping the last good one");
                self.last_config.clone().unwrap_or_default()
            }
        }
    }

    /// One level-triggered pass: decide, act, heartbeat.
    pub async fn tick(&mut self) -> ControlState {
        let (config, token) = self.config();
        let mut canonical = self.canonical.canonical();
        if canonical.is_empty() {
            // Nothing resolves in the signed directory yet: use what the
            // control plane advertised in its last authenticated reply.
            // Identity is still checked by the transport against the
            // advertised node id.
            canonical = self.state.borrow().advertised_endpoints.clone();
        }
        let live = self.live();
        let action = decide(live.as_ref(), &canonical, &config);
        let mut st = self.state.borrow().clone();
        match &action {
            SessionAction::Keep | SessionAction::Wait => {}
            SessionAction::Disconnect => {
                tracing::info!(from = ?live.map(|l| l.endpoint.to_string()), "control session closed: failing and nowhere to go");
                self.session = None;
                self.pending = None;
                self.failures = 0;
            }
            SessionAction::Connect(to) | SessionAction::Reconnect { to, .. } => {
                let from = live.as_ref().map(|l| l.endpoint.to_string());
                tracing::info!(from = ?from, to = %to, "control session moves to canonical endpoint");
                self.session = None;
                self.pending = Some(to.clone());
                self.failures = 0;
                st.reconnects += u64::from(from.is_some());
            }
        }
        st.last_action = Some(format!("{action:?}"));
        if let Some(ep) = self.pending.clone() {
            if let Err(e) = self.open(&ep).await {
                self.failures += 1;
                st.last_error = Some(e.to_string());
            }
        }
        if let Some(session) = self.session.as_mut() {
            let endpoint = session.endpoint.clone();
            let body = self.beats.heartbeat(Some(&endpoint), &config.fallback);
            let result = tokio::time::timeout(
                self.request_timeout,
                session.link.heartbeat(&body, token.as_deref()),
            )
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            match result {
                Ok(reply) if reply.accepted => {
                    self.failures = 0;
                    st.heartbeats_ok += 1;
                    st.update_hints = reply.update_hints;
                    st.records = reply
                        .records
                        .iter()
                        .filter_map(|h| hex::decode(h).ok())
                        .collect();
                    // Only an authenticated reply may steer where the session
                    // goes next; a compat (plain HTTP) reply could be forged
                    // by anyone on the path.
                    if session.link.authenticated() {
                        st.advertised_endpoints = reply
                            .control_endpoints
                            .iter()
                            .filter_map(|s| s.parse().ok())
                            .collect();
                    }
                    st.last_error = None;
                }
                Ok(reply) => {
                    self.failures += 1;
                    st.last_error = reply.error.or_else(|| Some("heartbeat refused".into()));
                }
                Err(e) => {
                    self.failures += 1;
                    st.last_error = Some(e);
                    // A broken channel is reopened on the next pass.
                    if session.link.reopen_on_error() {
                        self.pending = Some(endpoint);
                        self.session = None;
                    }
                }
            }
        }
        st.endpoint = self.live().map(|l| l.endpoint);
        st.consecutive_failures = self.failures;
        self.state.send_replace(st.clone());
        st
    }

    async fn open(&mut self, ep: &ControlEndpoint) -> Result<(), ControlError> {
        let link = match ep {
            ControlEndpoint::Fabric { node_id, .. } if *node_id == self.transport.node_id() => {
                // This node is the provider: its control plane is in process.
                let link = self.local.get().ok_or_else(|| {
                    session_err(
                        ep,
                        "this node's own Control API is not up (no in-process link)",
                    )
                })?;
                Link::Local(link)
            }
            ControlEndpoint::Fabric { node_id, service } => {
                let ch = tokio::time::timeout(
                    self.request_timeout,
                    self.transport.open(*node_id, service),
                )
                .await
                .map_err(|_| session_err(ep, "connect timed out"))?
                .map_err(|e| session_err(ep, &e.to_string()))?;
                Link::Fabric(Box::new(Framed::with_max_frame(ch, MAX_HEARTBEAT_BYTES)))
            }
            ControlEndpoint::Compat { url } => Link::Compat { url: url.clone() },
        };
        self.session = Some(Session {
            endpoint: ep.clone(),
            link,
        });
        self.pending = None;
        Ok(())
    }

    /// Runs the session on the shared runtime until `shutdown` flips: a pass
    /// every `interval` while heartbeats are accepted, exponential backoff
    /// (from `interval` up to [`MAX_BACKOFF_INTERVALS`] × `interval`) while
    /// they fail.
    pub async fn run(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let interval = interval.max(Duration::from_millis(10));
        let controller = Controller::new(
            Arc::new(SessionLoop {
                driver: Mutex::new(self),
                interval,
            }),
            Arc::new(()),
            ControllerConfig {
                concurrency: 1,
                backoff: BackoffConfig::new(interval, interval * MAX_BACKOFF_INTERVALS),
                shutdown_grace: Duration::from_secs(1),
                // The session reports its failures in its state and status.
                warn_on_failure: false,
            },
        );
        controller.queue().enqueue(SessionKey);
        controller
            .run(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
    }
}

fn session_err(ep: &ControlEndpoint, reason: &str) -> ControlError {
    ControlError::Session {
        endpoint: ep.to_string(),
        reason: reason.to_owned(),
    }
}

/// The one key of the session loop: a node has one control session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SessionKey;

/// Why a pass counts as failed (it backs off).
#[derive(Debug, thiserror::Error)]
#[error("control session pass failed ({failures} in a row): {reason}")]
struct PassFailed {
    failures: u32,
    reason: String,
}

struct SessionLoop {
    driver: Mutex<ControlDriver>,
    interval: Duration,
}

impl Reconciler for SessionLoop {
    type Key = SessionKey;
    type Object = ();
    type Ctx = ();
    type Error = PassFailed;

    async fn fetch(&self, _: &SessionKey, _: &()) -> Result<Option<Arc<()>>, PassFailed> {
        // The pass reads its whole state itself (config, directory, session).
        Ok(Some(Arc::new(())))
    }

    async fn reconcile(&self, _: Arc<()>, _: &()) -> Result<Action, PassFailed> {
        let st = self.driver.lock().await.tick().await;
        if st.consecutive_failures == 0 {
            return Ok(Action::requeue(self.interval));
        }
        Err(PassFailed {
            failures: st.consecutive_failures,
            reason: st.last_error.unwrap_or_else(|| "no session".into()),
        })
    }

    fn error_policy(&self, _: &SessionKey, e: &PassFailed, _: &()) -> Action {
        tracing::debug!(error = %e, "control session backs off");
        Action::backoff()
    }
}

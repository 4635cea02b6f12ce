//! The production shape of a reconciler replica: the control plane co-located
//! with a `control-api` node.
//!
//! [`Replica::start`] starts, in one process:
//!
//! - an in-process node-agent for the co-located node (optional). Published
//!   records are injected into it ([`AgentSink`]) and gossip carries them to
//!   every other node; the node serves gossip to the fleet once its own
//!   `FabricNode` record is in the directory, like any member.
//! - the Control API (optional): HTTP on a `control-api-ingress` edge, the
//!   compat listener if configured, and the fabric `control` service on the
//!   node's transport (node heartbeats) when a node runs.
//! - the [`ControlPlane`]: leader election; while leading, the GitOps source,
//!   the publisher and (with [`ReplicaConfig::rollouts`]) the rollout driver.
//!
//! The co-located node cannot open a fabric channel to itself (transports
//! refuse to dial their own id), so its control session runs in process: its
//! agent's own session is turned off and the replica feeds its heartbeats to
//! the intake directly ([`api::intake_colocated`]) and writes the update
//! hints of the reply to its `update-trigger.json`, as the agent would.
//!
//! The Control API runs on every replica, leader or not: reads and heartbeat
//! intake are plain store operations and writes are store transactions, so
//! any replica may serve them; only publishing and rollout ticks need the
//! leader lease.
//!
//! Without a node, records are only stored ([`StoreOnlySink`]) and there is no
//! fabric `control` service; that is the shape of a replica that is not on a
//! `control-api` node (and of the tests that need no fabric).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fabric::edge::EdgeInventory;
use fabric::topology::NodeId;
use fabric_node_agent::agent::AgentError;
use fabric_node_agent::control::{
    heartbeat_from_status, ControlEndpoint, HeartbeatExtras, UpdaterReport, UpdaterSubscription,
};
use fabric_node_agent::status::NodeStatus;
use fabric_node_agent::{AgentConfig, AgentHandle};
use tokio::sync::{oneshot, watch};

use crate::api::{self, ApiConfig, ApiError, ApiHandle, HeartbeatIntake};
use crate::controller::{
    ControlPlane, ControlPlaneConfig, ControlPlaneError, ReplicaState, RolloutLoop,
};
use crate::publish::{AgentSink, RecordInjector, RecordSink, Signer, StoreOnlySink};
use crate::store::Store;

/// Everything one replica runs.
pub struct ReplicaConfig {
    pub plane: ControlPlaneConfig,
    /// The co-located node-agent; `None`: records are stored only.
    pub node: Option<AgentConfig>,
    /// The Control API; `None`: no HTTP edge and no fabric `control` service.
    pub api: Option<ApiConfig>,
    /// The rollout driver the leader runs; `None`: rollouts are not driven.
    pub rollouts: Option<RolloutLoop>,
}

impl ReplicaConfig {
    pub fn new(plane: ControlPlaneConfig) -> Self {
        ReplicaConfig {
            plane,
            node: None,
            api: None,
            rollouts: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("starting the co-located node-agent: {0}")]
    Agent(#[from] AgentError),
    #[error("serving the Control API: {0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error("the control plane task panicked: {0}")]
    Panicked(String),
}

/// A running replica. Stop it with [`Replica::stop`] or [`Replica::run_until`].
pub struct Replica {
    agent: Option<Arc<AgentHandle>>,
    api: Option<ApiHandle>,
    inventory: EdgeInventory,
    state: watch::Receiver<ReplicaState>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ControlPlaneError>>,
    /// The co-located node's in-process heartbeats: stop flag and task.
    heartbeats: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

impl Replica {
    /// Starts the node-agent, then the Control API on its transport, then the
    /// control plane; a failure of any step stops what already started.
    pub async fn start(
        store: Arc<dyn Store>,
        signer: Signer,
        cfg: ReplicaConfig,
    ) -> Result<Replica, ReplicaError> {
        let colocated = cfg.api.is_some();
        let mut local_session = None;
        let agent = match cfg.node {
            Some(mut node) => {
                let name = node.name.clone();
                if colocated && node.control_session {
                    // It would dial its own id, which transports refuse; the
                    // replica runs its session in process instead (below).
                    node.control_session = false;
                    local_session = Some((node.state_dir.clone(), node.heartbeat_interval));
                }
                let handle = Arc::new(fabric_node_agent::start(node).await?);
                tracing::info!(
                    node = %name,
                    node_id = %handle.node_id(),
                    listen = %handle.local_addr(),
                    "co-located node-agent running; published records are handed to it (its FabricNode's spec.nodeId must be this id)"
                );
                Some(handle)
            }
            None => None,
        };
        let sink: Arc<dyn RecordSink> = match &agent {
            Some(a) => Arc::new(AgentSink::new(vec![a.clone() as Arc<dyn RecordInjector>])),
            None => {
                tracing::info!("no co-located node (--node): records are stored only (StoreOnlySink) and the fabric `control` service is not served");
                Arc::new(StoreOnlySink)
            }
        };
        // One inventory for every edge this process opens, so the audit can
        // tell registered listeners from unclassified ones.
        let inventory = EdgeInventory::new();
        let api = match cfg.api {
            Some(api_cfg) => {
                let transport = agent.as_ref().map(|a| a.transport().clone());
                match api::serve(store.clone(), inventory.clone(), api_cfg, transport).await {
                    Ok(h) => {
                        tracing::info!(addr = %h.addr(), compat = ?h.compat_addr(), fabric_control = agent.is_some(), "Control API serving");
                        Some(h)
                    }
                    Err(e) => {
                        stop_agent(agent).await;
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        let heartbeats = match (&agent, local_session, &api) {
            (Some(a), Some((state_dir, every)), Some(h)) => {
                let (tx, rx) = watch::channel(false);
                let task = tokio::spawn(colocated_heartbeats(
                    h.intake().clone(),
                    a.node_id(),
                    a.status_watch(),
                    state_dir,
                    every,
                    rx,
                ));
                Some((tx, task))
            }
            _ => None,
        };
        let mut plane = ControlPlane::new(store, signer, sink, cfg.plane);
        if let Some(r) = cfg.rollouts {
            plane = plane.with_rollouts(r);
        } else {
            tracing::info!("no orchestrator key: rollouts are not driven by this replica");
        }
        let state = plane.state();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(plane.run(async move {
            // A dropped sender is a stop too.
            let _ = rx.await;
        }));
        Ok(Replica {
            agent,
            api,
            inventory,
            state,
            stop,
            task,
            heartbeats,
        })
    }

    /// The co-located node-agent, if any.
    pub fn agent(&self) -> Option<&AgentHandle> {
        self.agent.as_deref()
    }

    /// The Control API's HTTP address, if served.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(ApiHandle::addr)
    }

    /// Every edge listener this replica opened (for `api::run_audit`).
    pub fn inventory(&self) -> &EdgeInventory {
        &self.inventory
    }

    pub fn state(&self) -> watch::Receiver<ReplicaState> {
        self.state.clone()
    }

    /// Runs until `shutdown` completes or the control plane ends on its own
    /// (a fatal error, such as an unwatchable GitOps folder); then stops
    /// everything: the control plane first (releasing leadership), then the
    /// Control API, then the node-agent, which goes last so the leader's last
    /// deliveries still have somewhere to go.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ReplicaError> {
        let Replica {
            agent,
            api,
            inventory: _,
            state: _,
            stop,
            mut task,
            heartbeats,
        } = self;
        let ended = tokio::select! {
            () = shutdown => {
                let _ = stop.send(());
                (&mut task).await
            }
            r = &mut task => r,
        };
        if let Some((tx, t)) = heartbeats {
            let _ = tx.send(true);
            let _ = t.await;
        }
        if let Some(api) = api {
            api.stop().await;
        }
        stop_agent(agent).await;
        match ended {
            Ok(r) => r.map_err(ReplicaError::from),
            Err(e) => Err(ReplicaError::Panicked(e.to_string())),
        }
    }

    /// Stops the replica now.
    pub async fn stop(self) -> Result<(), ReplicaError> {
        self.run_until(std::future::ready(())).await
    }
}

/// Stops the agent (saving its peer cache) once nobody else holds it; the
/// sink's copy is gone when the control plane has ended.
async fn stop_agent(agent: Option<Arc<AgentHandle>>) {
    let Some(agent) = agent else { return };
    match Arc::try_unwrap(agent) {
        Ok(a) => a.stop().await,
        Err(_) => {
            tracing::warn!("co-located node-agent still referenced at shutdown; dropping it without saving its peer cache")
        }
    }
}

/// The co-located node's control session, in process: every `every`, a
/// heartbeat built from the agent's status, exactly as its own session would
/// build it, goes to the intake; the reply's update hints are persisted to
/// `update-trigger.json` (the updater's wake file) when they change.
async fn colocated_heartbeats(
    intake: HeartbeatIntake,
    node_id: NodeId,
    status: watch::Receiver<NodeStatus>,
    state_dir: PathBuf,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let extras = HeartbeatExtras {
        // One workspace version for every crate: this is the node-agent's.
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        host_agent_version: None,
        peer_metrics: Default::default(),
        updater: UpdaterReport {
            subscription: UpdaterSubscription::Alive,
            supports_hint_wake: true,
            status_at_ms: None,
            update: None,
        },
    };
    let live = ControlEndpoint::fabric(node_id);
    let trigger = state_dir.join("update-trigger.json");
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    // Logged once per distinct error, not every interval.
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let recovery = api::canonical_endpoints(intake.store().as_ref())
            .await
            .unwrap_or_default();
        let hb = {
            let st = status.borrow();
            heartbeat_from_status(&st, &extras, Some(&live), &recovery)
        };
        let reply = match api::intake_colocated(&intake, hb, node_id).await {
            Ok(r) => {
                if last_error.take().is_some() {
                    tracing::info!(node_id = %node_id, "co-located node heartbeats accepted again");
                }
                r
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(node_id = %node_id, error = %e, "co-located node heartbeat refused");
                    last_error = Some(e);
                }
                continue;
            }
        };
        if reply.update_hints.is_empty() || reply.update_hints == seen {
            continue;
        }
        let body = serde_json::json!({
            "update_hints": reply.update_hints,
            "at_ms": crate::store::now_millis(),
        });
        let written = serde_json::to_vec_pretty(&body)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                fabric_schemas::keys::write_atomic(&trigger, &b, 0o644).map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => {
                tracing::info!(node_id = %node_id, hints = ?reply.update_hints, "update hint for the co-located node: wrote update-trigger.json");
                seen = reply.update_hints;
            }
            Err(e) => {
                tracing::warn!(node_id = %node_id, error = %e, "could not write update-trigger.json; retrying next heartbeat")
            }
        }
    }
}

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
//! refuse to dial their own id), so its control session reaches the intake in
//! process: the replica installs an [`IntakeLink`] into the node's
//! `local_control` slot once the Control API is up. The session itself (its
//! decisions, its backoff, the `update-trigger.json` writer) is the node's
//! own, the same code every other node runs.
//!
//! The Control API runs on every replica, leader or not: reads and heartbeat
//! intake are plain store operations and writes are store transactions, so
//! any replica may serve them; only publishing and rollout ticks need the
//! leader lease.
//!
//! Without a node, records are only stored ([`StoreOnlySink`]) and there is no
//! fabric `control` service; that is the shape of a replica that is not on a
//! `control-api` node (and of the tests that need no fabric).

use std::net::SocketAddr;
use std::sync::Arc;

use fabric::edge::EdgeInventory;
use fabric::topology::NodeId;
use fabric_node_agent::agent::AgentError;
use fabric_node_agent::control::link::ReplyFuture;
use fabric_node_agent::control::LocalControl;
use fabric_node_agent::{AgentConfig, AgentHandle};
use fabric_proto::heartbeat::HeartbeatBody;
use fabric_reconciler::api::{self, ApiConfig, ApiError, ApiHandle, HeartbeatIntake};
use fabric_reconciler::controller::{
    ControlPlane, ControlPlaneConfig, ControlPlaneError, ReplicaState, RolloutLoop,
};
use fabric_reconciler::publish::{AgentSink, RecordInjector, RecordSink, Signer, StoreOnlySink};
use fabric_reconciler::store::Store;
use tokio::sync::{oneshot, watch};

use crate::inject::AgentInjector;

/// The co-located node's link to its own Control API: heartbeats go straight
/// into the intake, with the same checks as the fabric path (the node's own
/// key as the verified sender) and stamped `fabric`, since nothing crosses a
/// TCP edge.
pub struct IntakeLink {
    intake: HeartbeatIntake,
    node_id: NodeId,
}

impl IntakeLink {
    /// A link for the node `node_id` into `intake`.
    pub fn new(intake: HeartbeatIntake, node_id: NodeId) -> IntakeLink {
        IntakeLink { intake, node_id }
    }
}

impl LocalControl for IntakeLink {
    fn heartbeat(&self, body: HeartbeatBody) -> ReplyFuture<'_> {
        Box::pin(async move {
            api::intake_colocated(&self.intake, body, self.node_id)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Everything one replica runs.
pub struct ReplicaConfig {
    /// The control plane's settings.
    pub plane: ControlPlaneConfig,
    /// The co-located node-agent; `None`: records are stored only.
    pub node: Option<AgentConfig>,
    /// The Control API; `None`: no HTTP edge and no fabric `control` service.
    pub api: Option<ApiConfig>,
    /// The rollout driver the leader runs; `None`: rollouts are not driven.
    pub rollouts: Option<RolloutLoop>,
    /// The process's edge inventory, when several replicas share a process
    /// (`fabricctl up`): one inventory per process, so each listener audit
    /// knows every listener the process opened. `None`: a fresh one.
    pub inventory: Option<EdgeInventory>,
}

impl ReplicaConfig {
    /// Only the control plane: no node, no API, no rollouts.
    pub fn new(plane: ControlPlaneConfig) -> Self {
        ReplicaConfig {
            plane,
            node: None,
            api: None,
            rollouts: None,
            inventory: None,
        }
    }
}

/// Why a replica could not start or ended.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The co-located node-agent did not start.
    #[error("starting the co-located node-agent: {0}")]
    Agent(#[from] AgentError),
    /// The Control API did not start.
    #[error("serving the Control API: {0}")]
    Api(#[from] ApiError),
    /// The control plane failed.
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    /// The control plane task panicked.
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
}

impl Replica {
    /// Starts the node-agent, then the Control API on its transport, then the
    /// control plane; a failure of any step stops what already started.
    pub async fn start(
        store: Arc<dyn Store>,
        signer: Signer,
        cfg: ReplicaConfig,
    ) -> Result<Replica, ReplicaError> {
        let mut cfg = cfg;
        let mut local_control = None;
        let agent = match cfg.node.take() {
            Some(node) => {
                let name = node.name.clone();
                local_control = Some(node.local_control.clone());
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
        Self::assemble(store, signer, cfg, agent, local_control).await
    }

    /// Like [`Replica::start`] around a node-agent that already runs (a
    /// local fleet's node, `fabricctl up`): `slot` is the `local_control`
    /// slot of the config it was started with. `cfg.node` is ignored.
    pub async fn start_with_agent(
        store: Arc<dyn Store>,
        signer: Signer,
        mut cfg: ReplicaConfig,
        agent: AgentHandle,
        slot: fabric_node_agent::control::LocalControlSlot,
    ) -> Result<Replica, ReplicaError> {
        cfg.node = None;
        Self::assemble(store, signer, cfg, Some(Arc::new(agent)), Some(slot)).await
    }

    async fn assemble(
        store: Arc<dyn Store>,
        signer: Signer,
        cfg: ReplicaConfig,
        agent: Option<Arc<AgentHandle>>,
        local_control: Option<fabric_node_agent::control::LocalControlSlot>,
    ) -> Result<Replica, ReplicaError> {
        let sink: Arc<dyn RecordSink> = match &agent {
            Some(a) => Arc::new(AgentSink::new(vec![
                Arc::new(AgentInjector(a.clone())) as Arc<dyn RecordInjector>
            ])),
            None => {
                tracing::info!("no co-located node (--node): records are stored only (StoreOnlySink) and the fabric `control` service is not served");
                Arc::new(StoreOnlySink)
            }
        };
        // One inventory for every edge this process opens, so the audit can
        // tell registered listeners from unclassified ones.
        let inventory = cfg.inventory.clone().unwrap_or_default();
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
        if let (Some(a), Some(slot), Some(h)) = (&agent, local_control, &api) {
            // The node's control session goes to its own id; from now on that
            // reaches the intake in process.
            slot.install(Arc::new(IntakeLink::new(h.intake().clone(), a.node_id())));
        }
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

    /// Watches what the replica is doing (leadership, last error).
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
        } = self;
        let ended = tokio::select! {
            () = shutdown => {
                let _ = stop.send(());
                (&mut task).await
            }
            r = &mut task => r,
        };
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

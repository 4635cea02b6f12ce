//! The node-agent runtime: binds the node's transport, runs the gossip core
//! over fabric channels, probes core-service providers, keeps the persisted
//! peer cache and publishes its status.
//!
//! One task owns the gossip state; listeners and senders talk to it through
//! channels, so the sans-IO core needs no locks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabric::edge::EdgeInventory;
use fabric::frame::{read_frame, write_frame};
use fabric::gossip::{self, GossipConfig};
use fabric::identity::NodeIdentity;
use fabric::path::PathKind;
use fabric::peer_select::PlannerRanker;
use fabric::topology::{NodeId, TopologyLabels};
use fabric::transport::{Transport, TransportConfig};
use fabric_runtime::QueueHandle;
use fabric_schemas::TrustAnchor;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::cache;
use crate::membership::{
    decode_hello, encode_hello, refusal_counts, Cooling, Refusal, MAX_HELLO_BYTES,
    MAX_UNPROVEN_IN_FLIGHT,
};
use crate::node_core::{CoreConfig, Effect, LinkView, NodeCore};
use crate::registry::ProbeResult;
use crate::status::NodeStatus;
use crate::update::artifact::ArtifactStore;
use crate::update::exchange::{serve_one, ARTIFACT_SERVICE};
use crate::update::intents::UpdateInputs;
use crate::update::updater::{
    Liveness, UpdateStatus, Updater, UpdaterConfig, UpdaterView, Wake, SUPPORTS_HINT_WAKE,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// status.json is rewritten at most this often (the status watch sees every round).
const STATUS_FILE_INTERVAL: Duration = Duration::from_secs(1);

/// How long an opener may take to send its hello frame.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time between two restarts of a dead updater.
const UPDATER_RESTART_SPACING: Duration = Duration::from_secs(5);
/// Artifact requests served at once, and how long one may take.
const ARTIFACT_SERVE_SLOTS: usize = 8;
const ARTIFACT_SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits for each background task after the transport shut down.
const BACKGROUND_STOP: Duration = Duration::from_secs(5);

/// The fabric service gossip messages travel on.
pub const GOSSIP_SERVICE: &str = "gossip";
pub use crate::loops::PROBE_SERVICE;
use crate::loops::{ProbeLoop, RedialLoop, PROBE_MAX_FRAME};

/// Everything a node-agent needs to start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node's name (its `FabricNode` metadata.name).
    pub name: String,
    /// Key, peer cache and status live here.
    pub state_dir: PathBuf,
    /// The node's one UDP socket.
    pub listen: SocketAddr,
    /// Where the node sits (area, site, locality and NAT group); given to the
    /// transport's path ranker, the node core and the status report.
    pub labels: TopologyLabels,
    /// Act as a relay for other nodes (the node has the relay role).
    pub relay: bool,
    /// The trust root every gossiped or seeded record is admitted against.
    pub trust: TrustAnchor,
    /// Peers to contact before the directory knows anyone.
    pub bootstrap: Vec<(NodeId, SocketAddr)>,
    /// Signed envelopes to admit at start (how a first node is seeded).
    pub seed_records: Vec<Vec<u8>>,
    /// Gossip core tunables (round length, fanout, budgets).
    pub gossip: GossipConfig,
    /// Gossip partners kept besides the planned peers; `None` sizes it for
    /// the fleet (`node_core::default_partners`).
    pub gossip_partners: Option<usize>,
    /// How often each core-service provider is probed.
    pub probe_interval: Duration,
    /// Transport timers; `None` uses production defaults.
    pub transport: Option<TransportConfig>,
    /// Run the control session (heartbeats to the `control-api` providers of
    /// the signed directory, update hints back).
    pub control_session: bool,
    /// Time between two heartbeats of the control session.
    pub heartbeat_interval: Duration,
    /// The in-process link to this node's own Control API, for a node
    /// co-located with the control plane (filled by the composition root once
    /// the API is up); empty elsewhere.
    pub local_control: crate::control::LocalControlSlot,
    /// Run the updater (intents, journal, artifacts, apply requests).
    pub updater: bool,
    /// The updater's safety-net poll (each wait jittered 0.5x..1.5x).
    pub updater_poll: Duration,
    /// Wake the updater on `update-trigger.json` / `apply-result.json`
    /// touches (notify); off, it polls only and says so in heartbeats.
    pub updater_file_wake: bool,
    /// Failed fetches of one artifact before the attempt is aborted.
    pub updater_fetch_attempts: u32,
    /// How long an apply request may go unanswered while this build runs
    /// before the attempt is rolled back as `apply_timeout`.
    pub updater_apply_timeout: Duration,
    /// The build's version as heartbeats report it (what rollouts compare
    /// with the intent's version).
    pub version: String,
    /// Serve `/metrics` (Prometheus) on this TCP address, through the edge
    /// inventory as a `metrics-edge`; `None`: no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// The process's edge inventory, when several agents (or an agent and a
    /// control plane) share a process: one inventory per process, so the
    /// listener audit (a scan of the process's sockets) knows each of them.
    /// The node reports only the listeners it opened. `None`: its own.
    pub edges: Option<EdgeInventory>,
    /// External TCP ingress edges: each maps the connections it accepts
    /// into fabric channels to a service on a provider node (the seed's
    /// "external TCP exists only at the ingress edge").
    pub ingress: Vec<IngressSpec>,
}

/// One ingress edge: TCP on `listen`, mapped to `service` on `provider`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressSpec {
    /// The TCP address external clients connect to.
    pub listen: SocketAddr,
    /// The fabric service on the provider.
    pub service: String,
    /// The provider node.
    pub provider: NodeId,
}

impl std::str::FromStr for IngressSpec {
    type Err = String;

    /// `LISTEN=SERVICE@NODE_ID`, e.g. `0.0.0.0:8443=web@3f9c…` (64 hex).
    fn from_str(s: &str) -> Result<Self, String> {
        let (listen, target) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected LISTEN=SERVICE@NODE_ID"))?;
        let (service, provider) = target
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: expected LISTEN=SERVICE@NODE_ID"))?;
        if service.is_empty() {
            return Err(format!("{s:?}: the service name is empty"));
        }
        Ok(IngressSpec {
            listen: listen
                .parse()
                .map_err(|e| format!("{s:?}: listen address {listen:?}: {e}"))?,
            service: service.to_owned(),
            provider: provider
                .parse()
                .map_err(|e| format!("{s:?}: provider {provider:?}: {e}"))?,
        })
    }
}

impl AgentConfig {
    /// A config with production defaults: no bootstrap peers or seed records,
    /// default labels, no relay role, a 5 s probe and heartbeat interval, the
    /// control session and the updater (60 s poll, file wake, 6 fetch attempts) on.
    pub fn new(name: &str, state_dir: PathBuf, listen: SocketAddr, trust: TrustAnchor) -> Self {
        AgentConfig {
            name: name.to_owned(),
            state_dir,
            listen,
            labels: TopologyLabels::default(),
            relay: false,
            trust,
            bootstrap: Vec::new(),
            seed_records: Vec::new(),
            gossip: GossipConfig::default(),
            gossip_partners: None,
            probe_interval: Duration::from_secs(5),
            transport: None,
            control_session: true,
            heartbeat_interval: Duration::from_secs(5),
            local_control: crate::control::LocalControlSlot::new(),
            updater: true,
            updater_poll: Duration::from_secs(60),
            updater_file_wake: true,
            updater_fetch_attempts: 6,
            updater_apply_timeout: Duration::from_millis(
                crate::update::machine::DEFAULT_APPLY_TIMEOUT_MS,
            ),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            metrics_listen: None,
            edges: None,
            ingress: Vec::new(),
        }
    }
}

/// Why [`start`] could not bring a node-agent up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory could not be created, or the bound socket's local
    /// address could not be read.
    #[error("creating state directory {path}: {source}")]
    StateDir {
        /// The directory (or `"local address"` for the socket case).
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The node key in the state directory could not be loaded or created.
    #[error("node identity: {0}")]
    Identity(#[from] fabric::identity::IdentityError),
    /// The transport could not bind its UDP socket or start.
    #[error("transport: {0}")]
    Transport(#[from] fabric::transport::TransportError),
    /// The `/metrics` listener could not be opened.
    #[error("metrics listener: {0}")]
    Metrics(String),
    /// An ingress edge could not be opened.
    #[error("ingress edge: {0}")]
    Ingress(String),
}

enum Event {
    Gossip(NodeId, Vec<u8>),
    Inject(Vec<u8>, tokio::sync::oneshot::Sender<Result<bool, String>>),
    Probe(ProbeResult),
    Sent {
        to: NodeId,
        ok: bool,
    },
    Proof(
        NodeId,
        Vec<u8>,
        tokio::sync::oneshot::Sender<Result<(), Refusal>>,
    ),
}

/// A running node-agent.
pub struct AgentHandle {
    node_id: NodeId,
    local_addr: SocketAddr,
    status: watch::Receiver<NodeStatus>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The listeners and loops beside the driver. Each holds the transport
    /// (and so its UDP socket), so `stop` waits for them: when it returns the
    /// node's address is free again.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Talks to the updater's supervisor; `None` without an updater.
    updater: Option<mpsc::UnboundedSender<SupervisorMsg>>,
    transport: Transport,
    /// The ingress edges; each closes when dropped.
    ingress: Vec<fabric::edge::IngressHandle>,
}

/// What the agent tells the updater's supervisor.
#[derive(Clone, Copy, Debug)]
enum SupervisorMsg {
    Wake(Wake),
    Kill,
}

impl AgentHandle {
    /// This node's id (derived from its key in the state directory).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address the node's UDP socket is actually bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the node's latest status report.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A watch that sees every status report the driver publishes.
    pub fn status_watch(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// The node's fabric transport, shared with the agent's own tasks.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Admits a signed envelope at this node (as the control plane would hand
    /// it one). `Ok(true)` if it was new.
    pub async fn inject(&self, envelope: Vec<u8>) -> Result<bool, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.events
            .send(Event::Inject(envelope, tx))
            .await
            .map_err(|_| "agent stopped".to_owned())?;
        rx.await.map_err(|_| "agent stopped".to_owned())?
    }

    /// Kills the updater task as a crash would; the supervisor finds it dead,
    /// restarts it and counts the restart (`updater.restarts` in status).
    /// For diagnostics and tests.
    pub fn kill_updater(&self) -> bool {
        self.updater
            .as_ref()
            .is_some_and(|u| u.send(SupervisorMsg::Kill).is_ok())
    }

    /// Stops the agent, saving its peer cache first. When it returns, every
    /// task of the agent has ended and its UDP port can be bound again.
    pub async fn stop(self) {
        for i in &self.ingress {
            i.stop();
        }
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        self.transport.shutdown().await;
        for mut task in self.background {
            // The transport fails in-flight opens at shutdown, so the loops
            // end at once; the bound only guards against a wedged one.
            if tokio::time::timeout(BACKGROUND_STOP, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a node-agent task outlived the stop grace period; aborting it");
                task.abort();
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts a node-agent on the current tokio runtime.
pub async fn start(cfg: AgentConfig) -> Result<AgentHandle, AgentError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| AgentError::StateDir {
        path: cfg.state_dir.display().to_string(),
        source,
    })?;
    let identity = NodeIdentity::load_or_create(&cfg.state_dir.join("node.key"))?;
    let node_id = identity.node_id();
    let mut tc = cfg
        .transport
        .clone()
        .unwrap_or_else(|| TransportConfig::new(cfg.listen));
    tc.bind = cfg.listen;
    tc.labels = cfg.labels.clone();
    tc.relay = cfg.relay;
    let transport = Transport::bind(&identity, tc).await?;
    // Endpoint order comes from the failure-domain planner (seed P3), fed
    // with what this node observes.
    let ranker = Arc::new(PlannerRanker::new());
    transport.set_path_ranker(ranker.clone());
    let local_addr = transport
        .local_addr()
        .map_err(|source| AgentError::StateDir {
            path: "local address".into(),
            source,
        })?;

    let now = now_ms();
    let cache_path = cache::path_in(&cfg.state_dir);
    let core = NodeCore::new(
        CoreConfig {
            name: cfg.name.clone(),
            node_id,
            local_addr,
            labels: cfg.labels.clone(),
            trust: cfg.trust.clone(),
            bootstrap: cfg.bootstrap.clone(),
            gossip: cfg.gossip.clone(),
            gossip_partners: cfg.gossip_partners,
        },
        cache::load(&cache_path, now),
        &cfg.seed_records,
        ranker,
        now,
    );

    let (events_tx, events_rx) = mpsc::channel(1024);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let initial = NodeStatus::initial(
        &cfg.name,
        node_id,
        local_addr,
        &cfg.labels,
        core.cache_state(),
    );
    let (status_tx, status_rx) = watch::channel(initial);

    let members = Members::default();
    let mut background = vec![
        spawn_gossip_listener(&transport, &members, events_tx.clone(), shutdown_rx.clone())?,
        spawn_probe_responder(
            &transport,
            &members,
            events_tx.clone(),
            cfg.name.clone(),
            shutdown_rx.clone(),
        )?,
    ];

    // The probe and redial loops run on the shared runtime, keyed per
    // target, with backoff; the core only says what is wanted.
    let (probe_targets, targets_rx) = watch::channel(BTreeMap::new());
    let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeResult>(256);
    let (probe_queue, probe_task) = ProbeLoop::spawn(
        transport.clone(),
        members.own.clone(),
        targets_rx,
        probe_tx,
        cfg.probe_interval,
        shutdown_rx.clone(),
    );
    background.push(probe_task);
    {
        let events = events_tx.clone();
        background.push(tokio::spawn(async move {
            while let Some(p) = probe_rx.recv().await {
                if events.send(Event::Probe(p)).await.is_err() {
                    return;
                }
            }
        }));
    }
    let (planned, planned_rx) = watch::channel(BTreeSet::new());
    let (redial_queue, redial_task) =
        RedialLoop::spawn(transport.clone(), planned_rx, shutdown_rx.clone());
    background.push(redial_task);

    // The update plane: the artifact service every node serves, and the
    // updater under its supervisor.
    let (update_inputs, inputs_rx) = watch::channel(UpdateInputs::default());
    let store = ArtifactStore::new(&cfg.state_dir.join("artifacts"));
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    background.push(spawn_artifact_service(
        &transport,
        &members,
        store,
        served.clone(),
        shutdown_rx.clone(),
    )?);
    let (updater_view, updater_ctl) = if cfg.updater {
        let ucfg = UpdaterConfig {
            poll: cfg.updater_poll,
            file_wake: cfg.updater_file_wake,
            max_fetch_attempts: cfg.updater_fetch_attempts,
            apply_timeout: cfg.updater_apply_timeout,
            ..UpdaterConfig::new(&cfg.name, &cfg.state_dir)
        };
        let (status_tx, status_rx) = watch::channel(None);
        let view = UpdaterView {
            status: status_rx,
            liveness: Arc::new(Liveness::default()),
            supports_hint_wake: SUPPORTS_HINT_WAKE && cfg.updater_file_wake,
            poll: ucfg.poll,
        };
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        background.push(tokio::spawn(supervise_updater(
            ucfg,
            transport.clone(),
            inputs_rx,
            status_tx,
            view.clone(),
            ctl_rx,
            shutdown_rx.clone(),
        )));
        (Some(view), Some(ctl))
    } else {
        (None, None)
    };

    let mut edges = NodeEdges {
        inventory: cfg.edges.clone().unwrap_or_default(),
        own: Vec::new(),
    };
    if let Some(addr) = cfg.metrics_listen {
        let listener = edges
            .inventory
            .bind(
                fabric::edge::EdgeRole::MetricsEdge,
                addr,
                fabric::edge::EdgeTarget::Local {
                    handler: "metrics".into(),
                },
            )
            .await
            .map_err(|e| AgentError::Metrics(e.to_string()))?;
        tracing::info!(node = %cfg.name, addr = ?listener.local_addr(), "serving /metrics");
        edges.own.extend(listener.local_addr().ok());
        background.push(tokio::spawn(crate::metrics::serve(
            listener,
            status_tx.subscribe(),
            shutdown_rx.clone(),
        )));
    }
    let mut ingress = Vec::with_capacity(cfg.ingress.len());
    for spec in &cfg.ingress {
        let h = fabric::edge::spawn_ingress(
            &edges.inventory,
            transport.clone(),
            spec.listen,
            spec.provider,
            &spec.service,
        )
        .await
        .map_err(|e| AgentError::Ingress(e.to_string()))?;
        tracing::info!(node = %cfg.name, listen = %h.local_addr(), service = %spec.service, provider = %spec.provider.short(), "ingress edge open");
        edges.own.push(h.local_addr());
        ingress.push(h);
    }
    let driver = Driver {
        cfg,
        transport: transport.clone(),
        core,
        cache_path,
        events: events_tx.clone(),
        status: status_tx,
        edges,
        probe_targets,
        probe_queue,
        members,
        planned,
        redial_queue,
        canonical: watch::channel(Vec::new()).0,
        status_written: None,
        sends: tokio::task::JoinSet::new(),
        update_inputs,
        updater: updater_view,
        own_record: false,
        artifact_bytes_served: served,
        host: None,
    };
    if driver.cfg.control_session {
        background.extend(spawn_control_session(
            &driver.cfg,
            &transport,
            driver.status.subscribe(),
            driver.canonical.subscribe(),
            updater_ctl.clone(),
            events_tx.clone(),
            shutdown_rx.clone(),
        ));
    }
    let task = tokio::spawn(driver.run(events_rx, shutdown_rx));
    Ok(AgentHandle {
        node_id,
        local_addr,
        status: status_rx,
        events: events_tx,
        shutdown: shutdown_tx,
        task,
        background,
        updater: updater_ctl,
        transport,
        ingress,
    })
}

/// The node's side of the Control API: a level-triggered control session
/// (see `control.rs`) plus the updater wake path: a fresh update-hint
/// generation in a heartbeat reply is persisted to `update-trigger.json`, so
/// the heartbeat is not the only signal and a dead updater loop is woken.
fn spawn_control_session(
    cfg: &AgentConfig,
    transport: &Transport,
    status: watch::Receiver<NodeStatus>,
    canonical: watch::Receiver<Vec<fabric_proto::endpoint::ControlEndpoint>>,
    updater: Option<mpsc::UnboundedSender<SupervisorMsg>>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    use crate::control::{ControlDriver, HeartbeatExtras, StatusHeartbeat};
    use fabric_proto::heartbeat::{UpdaterReport, UpdaterSubscription};
    let extras = HeartbeatExtras {
        agent_version: cfg.version.clone(),
        host_agent_version: None,
        peer_metrics: Default::default(),
        // What a node without an updater reports; a node with one reports
        // its measured liveness from status (see `heartbeat_from_status`).
        updater: UpdaterReport {
            subscription: UpdaterSubscription::Gap,
            supports_hint_wake: false,
            status_at_ms: None,
            update: None,
        },
    };
    let driver = ControlDriver::new(
        transport.clone(),
        cfg.state_dir.join("control.json"),
        // The canonical endpoints come from the runner's in-memory directory,
        // not from re-reading the peer cache on every tick.
        Arc::new(move || canonical.borrow().clone()),
        Arc::new(StatusHeartbeat {
            status,
            extras: Arc::new(std::sync::Mutex::new(extras)),
        }),
    )
    .with_local_control(cfg.local_control.clone());
    let mut state = driver.state();
    let trigger = cfg.state_dir.join("update-trigger.json");
    let name = cfg.name.clone();
    let mut stop = shutdown.clone();
    let trigger_writer = tokio::spawn(async move {
        let mut seen = BTreeMap::new();
        let mut admitted_records: Vec<Vec<u8>> = Vec::new();
        loop {
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            // The Control API as an intent source: the records of a reply go
            // through `accept` in the core, as gossip's do.
            let records = state.borrow().records.clone();
            if !records.is_empty() && records != admitted_records {
                for r in &records {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    if events.send(Event::Inject(r.clone(), tx)).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(Ok(true)) => {
                            tracing::info!(node = %name, "record from the control session admitted")
                        }
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(node = %name, error = %e, "record from the control session refused")
                        }
                        Err(_) => return,
                    }
                }
                admitted_records = records;
            }
            let hints = state.borrow().update_hints.clone();
            if hints.is_empty() || hints == seen {
                continue;
            }
            // The direct wake first; the file below wakes it too (and any
            // other updater watching it), and outlives a dead task.
            if let Some(u) = &updater {
                let _ = u.send(SupervisorMsg::Wake(Wake::Hint));
            }
            let body = serde_json::json!({"update_hints": hints, "at_ms": now_ms()});
            match serde_json::to_vec_pretty(&body) {
                Ok(bytes) => match fabric_schemas::keys::write_atomic(&trigger, &bytes, 0o644) {
                    Ok(()) => {
                        tracing::info!(node = %name, ?hints, "update hint from the control session: wrote update-trigger.json to wake the updater")
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "could not write update-trigger.json")
                    }
                },
                Err(e) => tracing::warn!(node = %name, error = %e, "could not encode update hints"),
            }
            seen = hints;
        }
    });
    let interval = cfg.heartbeat_interval;
    [trigger_writer, tokio::spawn(driver.run(interval, shutdown))]
}

/// The door of this node's gossip and probe services (see
/// [`crate::membership`]): the known members (directory plus bootstrap
/// peers), the peers cooling down after a refusal, the refusal counters,
/// and this node's own proof for the channels it opens.
#[derive(Clone)]
struct Members {
    ids: Arc<std::sync::RwLock<std::collections::HashSet<NodeId>>>,
    cooling: Arc<std::sync::Mutex<Cooling>>,
    refused: Arc<[AtomicU64; 8]>,
    unproven: Arc<tokio::sync::Semaphore>,
    own: OwnProof,
    /// Connections to unwanted peers the core accepts, and the peers it wants.
    budget: Arc<std::sync::RwLock<(usize, BTreeSet<NodeId>)>>,
}

/// This node's own signed node record, presented in every hello it sends.
#[derive(Clone, Default)]
pub(crate) struct OwnProof(Arc<std::sync::RwLock<Option<Vec<u8>>>>);

impl OwnProof {
    pub(crate) fn hello(&self) -> Vec<u8> {
        let own = self.0.read().ok().and_then(|p| p.clone());
        encode_hello(own.as_deref())
    }

    fn set(&self, proof: Option<Vec<u8>>) {
        if let Ok(mut p) = self.0.write() {
            *p = proof;
        }
    }
}

impl Default for Members {
    fn default() -> Self {
        Members {
            ids: Default::default(),
            cooling: Default::default(),
            refused: Arc::new(Default::default()),
            unproven: Arc::new(tokio::sync::Semaphore::new(MAX_UNPROVEN_IN_FLIGHT)),
            own: OwnProof::default(),
            budget: Arc::new(std::sync::RwLock::new((usize::MAX, BTreeSet::new()))),
        }
    }
}

impl Members {
    fn set(&self, ids: impl IntoIterator<Item = NodeId>) {
        if let Ok(mut m) = self.ids.write() {
            *m = ids.into_iter().collect();
        }
    }

    fn add(&self, id: NodeId) {
        if let Ok(mut m) = self.ids.write() {
            m.insert(id);
        }
        if let Ok(mut c) = self.cooling.lock() {
            c.clear(&id);
        }
    }

    /// Over budget, a peer this node does not want is turned away: it is
    /// let in while connections to unwanted peers (itself included) stay
    /// within the core's inbound allowance.
    fn over_budget_for(&self, id: &NodeId, connected: &[NodeId]) -> bool {
        self.budget.read().is_ok_and(|b| {
            let (allowance, wanted) = &*b;
            !wanted.contains(id)
                && connected.iter().filter(|p| !wanted.contains(p)).count() > *allowance
        })
    }

    fn known(&self, id: &NodeId) -> bool {
        self.ids.read().is_ok_and(|m| m.contains(id))
    }

    fn cooling(&self, id: &NodeId) -> bool {
        self.cooling
            .lock()
            .is_ok_and(|c| c.is_cooling(id, now_ms()))
    }

    fn refuse(&self, id: NodeId, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
        if why != Refusal::Cooling && why != Refusal::Busy {
            if let Ok(mut c) = self.cooling.lock() {
                c.refuse(id, now_ms());
            }
        }
    }

    fn refused(&self) -> u64 {
        self.refused.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn refusals(&self) -> BTreeMap<String, u64> {
        let counts: [u64; 8] = std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed));
        refusal_counts(&counts)
    }
}

/// Reads the hello frame and decides whether `peer` is let in: a known
/// member at once, anyone else on a valid membership proof checked by the
/// core (which keeps the record). Refusals are counted and cooled down.
async fn admit(
    ch: &mut fabric::channel::Channel,
    members: &Members,
    events: &mpsc::Sender<Event>,
) -> Result<(), Refusal> {
    let peer = ch.peer();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(ch, MAX_HELLO_BYTES))
        .await
        .map_err(|_| Refusal::BadHello)?
        .map_err(|_| Refusal::BadHello)?;
    if members.known(&peer) {
        return Ok(());
    }
    let proof = decode_hello(&hello)?.ok_or(Refusal::NoProof)?;
    crate::membership::precheck(peer, proof)?;
    // The signature check runs in the core, a bounded number at a time.
    let _permit = members.unproven.try_acquire().map_err(|_| Refusal::Busy)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    events
        .send(Event::Proof(peer, proof.to_vec(), tx))
        .await
        .map_err(|_| Refusal::Busy)?;
    rx.await.map_err(|_| Refusal::Busy)??;
    members.add(peer);
    tracing::debug!(peer = %peer.short(), "peer proved membership with its signed node record");
    Ok(())
}

/// Accepts channels for `service` until shutdown, handling each in its own task
/// under a time limit so a slow or silent peer cannot pin a task forever.
fn serve<F, Fut>(
    transport: &Transport,
    service: &str,
    budgeted: bool,
    members: &Members,
    events: &mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) -> Result<tokio::task::JoinHandle<()>, AgentError>
where
    F: Fn(fabric::channel::Channel) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut listener = transport.listen(service)?;
    let transport = transport.clone();
    let members = members.clone();
    let events = events.clone();
    let service = service.to_owned();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let ch = tokio::select! {
                ch = listener.accept() => ch,
                _ = shutdown.changed() => return,
            };
            let Some(mut ch) = ch else { return };
            let peer = ch.peer();
            if budgeted && members.over_budget_for(&peer, &transport.connected_peers()) {
                members.refuse(peer, Refusal::Busy);
                transport.disconnect(peer);
                continue;
            }
            if !members.known(&peer) && members.cooling(&peer) {
                // Refused recently: dropped before anything is read.
                members.refuse(peer, Refusal::Cooling);
                continue;
            }
            let members = members.clone();
            let events = events.clone();
            let handler = handler.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let served = async {
                    match admit(&mut ch, &members, &events).await {
                        Ok(()) => handler(ch).await,
                        Err(why) => {
                            tracing::debug!(peer = %peer.short(), %service, reason = %why, "channel refused at the door");
                            members.refuse(peer, why);
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
            });
        }
    });
    Ok(task)
}

fn spawn_gossip_listener(
    transport: &Transport,
    members: &Members,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let to_core = events.clone();
    serve(
        transport,
        GOSSIP_SERVICE,
        true,
        members,
        &events,
        shutdown,
        move |mut ch| {
            let events = to_core.clone();
            async move {
                let peer = ch.peer();
                match read_frame(&mut ch, gossip::wire::MAX_MESSAGE_BYTES).await {
                    Ok(payload) => {
                        let _ = events.send(Event::Gossip(peer, payload)).await;
                    }
                    Err(e) => tracing::debug!(peer = %peer.short(), error = %e, "bad gossip frame"),
                }
            }
        },
    )
}

fn spawn_probe_responder(
    transport: &Transport,
    members: &Members,
    events: mpsc::Sender<Event>,
    name: String,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    serve(
        transport,
        // A provider answers the whole fleet's probes: its role, not a budget.
        PROBE_SERVICE,
        false,
        members,
        &events,
        shutdown,
        move |mut ch| {
            let name = name.clone();
            async move {
                let answered = async {
                    read_frame(&mut ch, PROBE_MAX_FRAME).await?;
                    write_frame(&mut ch, name.as_bytes(), PROBE_MAX_FRAME).await?;
                    let _ = ch.shutdown().await;
                    Ok::<_, fabric::frame::FrameError>(())
                };
                if let Err(e) = answered.await {
                    tracing::debug!(error = %e, "probe not answered");
                }
            }
        },
    )
}

/// Runs the updater and restarts it when its task died or its liveness
/// stamp went stale while the agent kept running (the seed's
/// `updater_subscription_gap`); each restart is logged and counted.
async fn supervise_updater(
    cfg: UpdaterConfig,
    transport: Transport,
    inputs: watch::Receiver<UpdateInputs>,
    status: watch::Sender<Option<UpdateStatus>>,
    view: UpdaterView,
    mut ctl: mpsc::UnboundedReceiver<SupervisorMsg>,
    mut shutdown: watch::Receiver<bool>,
) {
    let start = |why: &'static str, first: bool| {
        let cfg = UpdaterConfig {
            count_start: first,
            ..cfg.clone()
        };
        let (transport, inputs, status, liveness) = (
            transport.clone(),
            inputs.clone(),
            status.clone(),
            view.liveness.clone(),
        );
        async move {
            let name = cfg.name.clone();
            // Reading and saving the journal is file I/O: off the async threads.
            let started = tokio::task::spawn_blocking(move || {
                Updater::start(cfg, transport, inputs, status, liveness)
            })
            .await;
            match started {
                Ok(Ok(u)) => Some((u, std::time::Instant::now())),
                Ok(Err(e)) => {
                    tracing::error!(node = %name, error = %e, %why, "updater did not start; retrying");
                    None
                }
                Err(e) => {
                    tracing::error!(node = %name, error = %e, %why, "updater start panicked; retrying");
                    None
                }
            }
        }
    };
    let mut running = start("agent start", true).await;
    // Restarts are spaced out: a task that dies at once must not spin.
    let mut last_restart: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = ctl.recv() => match msg {
                Some(SupervisorMsg::Wake(w)) => {
                    if let Some((u, _)) = &running { u.wake(w) }
                }
                Some(SupervisorMsg::Kill) => {
                    if let Some((u, _)) = &running {
                        tracing::warn!(node = %cfg.name, "updater task killed on request");
                        u.abort();
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                let why = match &running {
                    None => Some("not running"),
                    Some((u, _)) if u.is_finished() => Some("its task ended"),
                    Some((_, since)) if since.elapsed() > view.stale_after() && !view.liveness_now().alive => {
                        Some("no pass within three poll intervals (wedged)")
                    }
                    _ => None,
                };
                let spaced = last_restart.is_none_or(|t| t.elapsed() >= UPDATER_RESTART_SPACING);
                if let (Some(why), true) = (why, spaced) {
                    last_restart = Some(std::time::Instant::now());
                    tracing::warn!(node = %cfg.name, reason = why, "updater is dead while the agent runs; restarting it");
                    if let Some((u, _)) = running.take() {
                        u.abort();
                    }
                    view.liveness.restarted();
                    running = start(why, false).await;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some((u, _)) = running {
        u.stop().await;
    }
}

/// Serves this node's artifacts (staged ones and verified pieces) to the
/// fleet's members on the `artifact` service.
fn spawn_artifact_service(
    transport: &Transport,
    members: &Members,
    store: ArtifactStore,
    served: Arc<std::sync::atomic::AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, AgentError> {
    let mut listener = transport.listen(ARTIFACT_SERVICE)?;
    let members = members.clone();
    Ok(tokio::spawn(async move {
        let mut serving = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(ARTIFACT_SERVE_SLOTS));
        loop {
            let ch = tokio::select! {
                ch = listener.accept() => ch,
                _ = shutdown.changed() => break,
            };
            let Some(ch) = ch else { break };
            while serving.try_join_next().is_some() {}
            let peer = ch.peer();
            if !members.known(&peer) {
                members.refuse(peer, Refusal::NoProof);
                continue;
            }
            // Bounded: a member asking for too much waits its turn (and a
            // channel that waits too long times out) instead of filling the
            // blocking pool the updater needs.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (store, served) = (store.clone(), served.clone());
            serving.spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(ARTIFACT_SERVE_TIMEOUT, serve_one(ch, store, served)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(peer = %peer.short(), error = %e, "artifact request not served"),
                    Err(_) => tracing::debug!(peer = %peer.short(), "artifact request timed out"),
                }
            });
        }
        serving.shutdown().await;
    }))
}

/// The thin async driver around [`NodeCore`]: it owns the transport, the
/// loops and the files, feeds the core its inputs and carries out its effects.
struct Driver {
    cfg: AgentConfig,
    transport: Transport,
    core: NodeCore,
    cache_path: PathBuf,
    events: mpsc::Sender<Event>,
    status: watch::Sender<NodeStatus>,
    edges: NodeEdges,
    /// Core-service providers to probe (name -> key), read by the probe loop.
    probe_targets: watch::Sender<BTreeMap<String, NodeId>>,
    probe_queue: QueueHandle<String>,
    members: Members,
    /// The planned peer set, read by the redial loop.
    planned: watch::Sender<BTreeSet<NodeId>>,
    redial_queue: QueueHandle<NodeId>,
    /// The control session's canonical endpoints (signed `control-api`
    /// record, live providers first).
    canonical: watch::Sender<Vec<fabric_proto::endpoint::ControlEndpoint>>,
    status_written: Option<std::time::Instant>,
    /// Gossip pushes in flight.
    sends: tokio::task::JoinSet<()>,
    /// What the updater reads of the core.
    update_inputs: watch::Sender<UpdateInputs>,
    /// The updater's report and liveness, merged into every status.
    updater: Option<UpdaterView>,
    /// Whether the directory holds this node's own record.
    own_record: bool,
    /// Artifact bytes this node served to others.
    artifact_bytes_served: Arc<std::sync::atomic::AtomicU64>,
    /// The host agent's last `host-status.json`, and when it was read.
    host: Option<(std::time::Instant, Option<fabric_proto::host::HostStatus>)>,
}

/// What the core may read of the transport.
struct TransportView<'a> {
    transport: &'a Transport,
    members: &'a Members,
    edges: &'a NodeEdges,
}

/// The listeners this node opened, in a possibly shared inventory.
struct NodeEdges {
    inventory: EdgeInventory,
    /// Their bound addresses.
    own: Vec<SocketAddr>,
}

impl<'a> TransportView<'a> {
    fn of(transport: &'a Transport, members: &'a Members, edges: &'a NodeEdges) -> Self {
        TransportView {
            transport,
            members,
            edges,
        }
    }
}

impl LinkView for TransportView<'_> {
    fn path(&self, node: NodeId) -> Option<PathKind> {
        self.transport.path_to(node)
    }

    fn rtt(&self, node: NodeId) -> Option<Duration> {
        self.transport.connection_stats(node).map(|s| s.path.rtt)
    }

    fn refused_channels(&self) -> u64 {
        self.members.refused()
    }

    fn refusals(&self) -> BTreeMap<String, u64> {
        self.members.refusals()
    }

    fn connected(&self) -> Vec<NodeId> {
        self.transport.connected_peers()
    }

    fn edge_listeners(&self) -> Vec<fabric::edge::EdgeEntry> {
        self.edges
            .inventory
            .entries()
            .into_iter()
            .filter(|e| self.edges.own.contains(&e.bind))
            .collect()
    }
}

impl Driver {
    async fn run(mut self, mut events: mpsc::Receiver<Event>, mut shutdown: watch::Receiver<bool>) {
        let mut round =
            tokio::time::interval(Duration::from_millis(self.cfg.gossip.round_ms.max(50)));
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.apply();
        loop {
            tokio::select! {
                _ = round.tick() => {
                    let view = TransportView::of(&self.transport, &self.members, &self.edges);
                    self.core.round(now_ms(), &view);
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    self.on_event(ev);
                }
                _ = shutdown.changed() => break,
            }
            self.apply();
        }
        self.core.shutdown(now_ms());
        self.apply();
        // The last status may not have reached status.json (it is written
        // at most once a second).
        let last = self.status.borrow().clone();
        if let Err(e) = crate::status::write(&self.cfg.state_dir, &last) {
            tracing::debug!(node = %self.cfg.name, error = %e, "status.json not written");
        }
        // Pushes still in flight hold the transport; they are not worth
        // finishing on the way out.
        self.sends.shutdown().await;
        tracing::info!(node = %self.cfg.name, "node-agent stopped");
    }

    fn on_event(&mut self, ev: Event) {
        let now = now_ms();
        let view = TransportView::of(&self.transport, &self.members, &self.edges);
        match ev {
            Event::Gossip(from, payload) => self.core.on_gossip(from, &payload, now, &view),
            Event::Inject(bytes, reply) => {
                let _ = reply.send(self.core.inject(bytes, now));
            }
            Event::Probe(p) => self.core.on_probe(p, &view),
            Event::Sent { to, ok } => self.core.on_sent(to, ok, now, &view),
            Event::Proof(peer, proof, reply) => {
                let _ = reply.send(self.core.admit_proof(peer, &proof, now));
            }
        }
    }

    /// Carries out what the core decided.
    fn apply(&mut self) {
        for effect in self.core.take_effects() {
            match effect {
                Effect::Send(o) => self.send(o),
                Effect::SetPeer(id, info) => self.transport.set_peer(id, info),
                Effect::Members(ids) => self.members.set(ids),
                Effect::OwnRecord(r) => {
                    self.own_record = r.is_some();
                    self.members.own.set(r);
                }
                Effect::Update(inputs) => {
                    self.update_inputs.send_replace(*inputs);
                }
                Effect::Budget { inbound, wanted } => {
                    if let Ok(mut b) = self.members.budget.write() {
                        *b = (inbound, wanted);
                    }
                }
                Effect::Disconnect(id) => {
                    tracing::debug!(node = %self.cfg.name, peer = %id.short(), "closing an idle connection outside the peer plan and the gossip partners");
                    self.transport.disconnect(id);
                }
                Effect::ProbeTargets(t) => {
                    self.probe_targets.send_replace(t);
                }
                Effect::ProbeNow(name) => {
                    self.probe_queue.enqueue(name);
                }
                Effect::Planned(p) => {
                    self.planned.send_replace(p);
                }
                Effect::Redial(id) => {
                    self.redial_queue.enqueue(id);
                }
                Effect::Canonical(c) => {
                    self.canonical.send_replace(c);
                }
                Effect::Status(mut status) => {
                    if let Some(u) = &self.updater {
                        status.updater = Some(u.liveness_now());
                        status.update = u.status.borrow().clone();
                    }
                    status.artifact_bytes_served = self
                        .artifact_bytes_served
                        .load(std::sync::atomic::Ordering::Relaxed);
                    status.host = self.host_status();
                    status.health = Some(crate::status::health(&status, self.own_record));
                    // status.json is for operators and scripts: once a second
                    // is plenty, and a write is a serialization and an fsync.
                    let due = self
                        .status_written
                        .is_none_or(|t| t.elapsed() >= STATUS_FILE_INTERVAL);
                    if due {
                        if let Err(e) = crate::status::write(&self.cfg.state_dir, &status) {
                            tracing::debug!(node = %self.cfg.name, error = %e, "status.json not written");
                        }
                        self.status_written = Some(std::time::Instant::now());
                    }
                    let _ = self.status.send(*status);
                }
                Effect::SaveCache(content) => {
                    let ok = match cache::save(&self.cache_path, &content) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(node = %self.cfg.name, error = %e, "peer cache not saved; will retry");
                            false
                        }
                    };
                    self.core.on_cache_saved(ok);
                }
            }
        }
    }

    /// The supervising host agent's status, re-read at most once a second.
    fn host_status(&mut self) -> Option<fabric_proto::host::HostStatus> {
        let fresh = self
            .host
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < STATUS_FILE_INTERVAL);
        if !fresh {
            let read = std::fs::read(
                self.cfg
                    .state_dir
                    .join(fabric_proto::host::HOST_STATUS_FILE),
            )
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
            self.host = Some((std::time::Instant::now(), read));
        }
        self.host.as_ref().and_then(|(_, h)| h.clone())
    }

    fn send(&mut self, o: gossip::Outgoing) {
        while self.sends.try_join_next().is_some() {}
        let transport = self.transport.clone();
        let hello = self.members.own.hello();
        let events = self.events.clone();
        self.sends.spawn(async move {
            let fut = async {
                let mut ch = transport
                    .open(o.to, GOSSIP_SERVICE)
                    .await
                    .map_err(|e| e.to_string())?;
                write_frame(&mut ch, &hello, MAX_HELLO_BYTES)
                    .await
                    .map_err(|e| e.to_string())?;
                write_frame(&mut ch, &o.payload, gossip::wire::MAX_MESSAGE_BYTES)
                    .await
                    .map_err(|e| e.to_string())?;
                ch.shutdown().await.map_err(|e| e.to_string())
            };
            let ok = match tokio::time::timeout(Duration::from_secs(10), fut).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::debug!(to = %o.to.short(), error = %e, "gossip send failed");
                    false
                }
                Err(_) => false,
            };
            let _ = events.send(Event::Sent { to: o.to, ok }).await;
        });
    }
}

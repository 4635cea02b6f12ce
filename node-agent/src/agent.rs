//! The node-agent runtime: binds the node's transport, runs the gossip core
//! over fabric channels, probes core-service providers, keeps the persisted
//! peer cache and publishes its status.
//!
//! One task owns the gossip state; listeners and senders talk to it through
//! channels, so the sans-IO core needs no locks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabric::edge::EdgeInventory;
use fabric::frame::{read_frame, write_frame};
use fabric::gossip::{self, Gossip, GossipConfig, RecordKey, Snapshot};
use fabric::identity::NodeIdentity;
use fabric::path::{PathKind, PeerInfo};
use fabric::peer_select::{
    self, LocalNode, PeerCandidate, PeerMetrics, PeerRoles, PlannerConfig, PlannerRanker,
    ResilienceReport, ResilienceTarget,
};
use fabric::topology::{NodeId, TopologyLabels};
use fabric::transport::{Transport, TransportConfig};
use fabric_runtime::QueueHandle;
use fabric_schemas::kinds::CORE_SERVICES;
use fabric_schemas::{Envelope as SignedEnvelope, TrustAnchor};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use crate::admission::RecordAdmission;
use crate::cache::{self, CacheContent, Loaded, Observation};
use crate::directory::Directory;
use crate::registry::{self, ProbeResult, ProbeState, RegistryReport};
use crate::status::NodeStatus;

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
    pub labels: TopologyLabels,
    pub relay: bool,
    pub trust: TrustAnchor,
    /// Peers to contact before the directory knows anyone.
    pub bootstrap: Vec<(NodeId, SocketAddr)>,
    /// Signed envelopes to admit at start (how a first node is seeded).
    pub seed_records: Vec<Vec<u8>>,
    pub gossip: GossipConfig,
    /// How often each core-service provider is probed.
    pub probe_interval: Duration,
    /// Transport timers; `None` uses production defaults.
    pub transport: Option<TransportConfig>,
    /// Run the control session (heartbeats to the `control-api` providers of
    /// the signed directory, update hints back).
    pub control_session: bool,
    pub heartbeat_interval: Duration,
    /// The in-process link to this node's own Control API, for a node
    /// co-located with the control plane (filled by the composition root once
    /// the API is up); empty elsewhere.
    pub local_control: crate::control::LocalControlSlot,
}

impl AgentConfig {
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
            probe_interval: Duration::from_secs(5),
            transport: None,
            control_session: true,
            heartbeat_interval: Duration::from_secs(5),
            local_control: crate::control::LocalControlSlot::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("creating state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node identity: {0}")]
    Identity(#[from] fabric::identity::IdentityError),
    #[error("transport: {0}")]
    Transport(#[from] fabric::transport::TransportError),
}

enum Event {
    Gossip(NodeId, Vec<u8>),
    Inject(Vec<u8>, tokio::sync::oneshot::Sender<Result<bool, String>>),
    Probe(ProbeResult),
    Sent { to: NodeId, ok: bool },
}

/// A running node-agent.
pub struct AgentHandle {
    node_id: NodeId,
    local_addr: SocketAddr,
    status: watch::Receiver<NodeStatus>,
    events: mpsc::Sender<Event>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    transport: Transport,
}

impl AgentHandle {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    pub fn status_watch(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

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

    /// Stops the agent, saving its peer cache first.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        self.transport.shutdown().await;
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
    let mut admission = RecordAdmission::new(cfg.trust.clone());
    let cache_path = cache::path_in(&cfg.state_dir);
    let (restored, observations, cache_state) = match cache::load(&cache_path, now) {
        Loaded::Fresh => (Vec::new(), BTreeMap::new(), "fresh".to_owned()),
        Loaded::Restored(c) => {
            let mut envs = Vec::new();
            for hex_bytes in &c.records {
                let Ok(bytes) = hex::decode(hex_bytes) else {
                    continue;
                };
                // Re-admit: the trust root may have changed and records may have expired.
                // The expiry admission reports goes into the snapshot so the core drops
                // the record when it lapses instead of offering it forever.
                if let Ok(adm) = admission.check(&bytes, now) {
                    let env = gossip::Envelope::new(adm.key, adm.generation, bytes);
                    envs.push((env, adm.expires_at_ms));
                }
            }
            tracing::info!(node = %cfg.name, records = envs.len(), of = c.records.len(), "restored directory from peer cache");
            let state = format!("restored {} records", envs.len());
            (envs, c.observations, state)
        }
        Loaded::SetAside { reason, moved_to } => {
            tracing::warn!(
                node = %cfg.name, %reason, moved_to = %moved_to.display(),
                "peer cache was corrupt; moved it aside and rebuilding the directory from peers"
            );
            (
                Vec::new(),
                BTreeMap::new(),
                format!("corrupt ({reason}); rebuilt from peers"),
            )
        }
    };
    let seed = u64::from_le_bytes(node_id.0[..8].try_into().unwrap_or([0; 8]));
    let mut core = Gossip::with_snapshot(
        node_id,
        cfg.gossip.clone(),
        seed,
        admission,
        Arc::new(Snapshot::from_admitted(restored)),
    );
    for bytes in &cfg.seed_records {
        if let Err(e) = insert_signed(&mut core, bytes.clone(), now) {
            tracing::warn!(node = %cfg.name, error = %e, "seed record refused");
        }
    }

    let (events_tx, events_rx) = mpsc::channel(1024);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let initial = NodeStatus::initial(&cfg.name, node_id, local_addr, &cfg.labels, &cache_state);
    let (status_tx, status_rx) = watch::channel(initial);

    let members = Members::default();
    members.set(cfg.bootstrap.iter().map(|(id, _)| *id));
    spawn_gossip_listener(&transport, &members, events_tx.clone(), shutdown_rx.clone())?;
    spawn_probe_responder(&transport, &members, cfg.name.clone(), shutdown_rx.clone())?;

    // The probe and redial loops run on the shared runtime, keyed per
    // target, with backoff; the runner only tells them what is wanted.
    let (probe_targets, targets_rx) = watch::channel(BTreeMap::new());
    let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeResult>(256);
    let probe_queue = ProbeLoop::spawn(
        transport.clone(),
        targets_rx,
        probe_tx,
        cfg.probe_interval,
        shutdown_rx.clone(),
    );
    {
        let events = events_tx.clone();
        tokio::spawn(async move {
            while let Some(p) = probe_rx.recv().await {
                if events.send(Event::Probe(p)).await.is_err() {
                    return;
                }
            }
        });
    }
    let (planned, planned_rx) = watch::channel(std::collections::BTreeSet::new());
    let redial_queue = RedialLoop::spawn(transport.clone(), planned_rx, shutdown_rx.clone());

    let runner = Runner {
        cfg,
        node_id,
        local_addr,
        transport: transport.clone(),
        core,
        dir: Directory::default(),
        probes: observations
            .iter()
            .filter_map(|(name, o)| {
                let at = o.last_ok_probe_ms?;
                Some((
                    name.clone(),
                    ProbeState {
                        last: None,
                        last_ok_ms: Some(at),
                        rtt_ms: o.rtt_ms,
                    },
                ))
            })
            .collect(),
        last_probe: None,
        observations,
        cache_path,
        cache_state,
        dirty: true,
        events: events_tx.clone(),
        status: status_tx,
        edges: EdgeInventory::new(),
        probe_targets,
        probe_queue,
        ranker,
        members,
        metrics: PeerMetrics::default(),
        resilience: None,
        planned,
        redial_queue,
        canonical: watch::channel(Vec::new()).0,
        dir_root: None,
        leases: Vec::new(),
    };
    if runner.cfg.control_session {
        spawn_control_session(
            &runner.cfg,
            &transport,
            runner.status.subscribe(),
            runner.canonical.subscribe(),
            shutdown_rx.clone(),
        );
    }
    let task = tokio::spawn(runner.run(events_rx, shutdown_rx));
    Ok(AgentHandle {
        node_id,
        local_addr,
        status: status_rx,
        events: events_tx,
        shutdown: shutdown_tx,
        task,
        transport,
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
    shutdown: watch::Receiver<bool>,
) {
    use crate::control::{ControlDriver, HeartbeatExtras, StatusHeartbeat};
    use fabric_proto::heartbeat::{UpdaterReport, UpdaterSubscription};
    let extras = HeartbeatExtras {
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
    tokio::spawn(async move {
        let mut seen = BTreeMap::new();
        loop {
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            let hints = state.borrow().update_hints.clone();
            if hints.is_empty() || hints == seen {
                continue;
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
    tokio::spawn(driver.run(interval, shutdown));
}

fn insert_signed(
    core: &mut Gossip<RecordAdmission>,
    bytes: Vec<u8>,
    now: u64,
) -> Result<bool, String> {
    let signed = SignedEnvelope::decode(&bytes).map_err(|e| e.to_string())?;
    let key = RecordKey::new(signed.record.kind.code(), signed.record.name.clone());
    let env = gossip::Envelope::new(key, signed.record.generation, bytes);
    core.insert_local(env, now).map_err(|r| r.to_string())
}

/// The nodes allowed to use this node's gossip and probe services: those with a
/// signed node record in the directory, plus the bootstrap peers. Anyone else
/// holding some ed25519 key is turned away before costing any work.
#[derive(Clone, Default)]
struct Members {
    ids: Arc<std::sync::RwLock<std::collections::HashSet<NodeId>>>,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Members {
    fn set(&self, ids: impl IntoIterator<Item = NodeId>) {
        if let Ok(mut m) = self.ids.write() {
            *m = ids.into_iter().collect();
        }
    }

    fn admits(&self, id: &NodeId) -> bool {
        let ok = self.ids.read().is_ok_and(|m| m.contains(id));
        if !ok {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }

    fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Accepts channels for `service` until shutdown, handling each in its own task
/// under a time limit so a slow or silent peer cannot pin a task forever.
fn serve<F, Fut>(
    transport: &Transport,
    service: &str,
    members: &Members,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) -> Result<(), AgentError>
where
    F: Fn(fabric::channel::Channel) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut listener = transport.listen(service)?;
    let members = members.clone();
    let service = service.to_owned();
    tokio::spawn(async move {
        loop {
            let ch = tokio::select! {
                ch = listener.accept() => ch,
                _ = shutdown.changed() => return,
            };
            let Some(ch) = ch else { return };
            if !members.admits(&ch.peer()) {
                tracing::debug!(peer = %ch.peer().short(), %service, "channel from a node outside the directory refused");
                continue;
            }
            let fut = handler(ch);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), fut).await;
            });
        }
    });
    Ok(())
}

fn spawn_gossip_listener(
    transport: &Transport,
    members: &Members,
    events: mpsc::Sender<Event>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    serve(
        transport,
        GOSSIP_SERVICE,
        members,
        shutdown,
        move |mut ch| {
            let events = events.clone();
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
    name: String,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    serve(
        transport,
        PROBE_SERVICE,
        members,
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

struct Runner {
    cfg: AgentConfig,
    node_id: NodeId,
    local_addr: SocketAddr,
    transport: Transport,
    core: Gossip<RecordAdmission>,
    dir: Directory,
    probes: BTreeMap<String, ProbeState>,
    last_probe: Option<ProbeResult>,
    observations: BTreeMap<String, Observation>,
    cache_path: PathBuf,
    cache_state: String,
    dirty: bool,
    events: mpsc::Sender<Event>,
    status: watch::Sender<NodeStatus>,
    edges: EdgeInventory,
    /// Core-service providers to probe (name -> key), read by the probe loop.
    probe_targets: watch::Sender<BTreeMap<String, NodeId>>,
    probe_queue: QueueHandle<String>,
    ranker: Arc<PlannerRanker>,
    members: Members,
    metrics: PeerMetrics,
    resilience: Option<ResilienceReport>,
    /// The planned peer set, read by the redial loop.
    planned: watch::Sender<std::collections::BTreeSet<NodeId>>,
    redial_queue: QueueHandle<NodeId>,
    /// The control session's canonical endpoints (signed `control-api`
    /// record, live providers first), kept current every round.
    canonical: watch::Sender<Vec<fabric_proto::endpoint::ControlEndpoint>>,
    /// The store's summary root when the directory was last rebuilt.
    dir_root: Option<u64>,
    /// The node's admission check of every lease it holds, redone whenever
    /// the directory is rebuilt.
    leases: Vec<crate::leases::LeaseCheck>,
}

impl Runner {
    async fn run(mut self, mut events: mpsc::Receiver<Event>, mut shutdown: watch::Receiver<bool>) {
        let mut round =
            tokio::time::interval(Duration::from_millis(self.cfg.gossip.round_ms.max(50)));
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = Instant::now();
        self.refresh_directory();
        loop {
            tokio::select! {
                _ = round.tick() => {
                    let now = now_ms();
                    self.refresh_directory();
                    let peers = self.gossip_peers();
                    let out = self.core.tick(now, &peers);
                    self.send_all(out);
                    self.probe_core_services();
                    self.plan_peers();
                    self.publish_status(now);
                    if self.dirty && last_save.elapsed() >= Duration::from_secs(1) {
                        self.save_cache(now);
                        last_save = Instant::now();
                    }
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    self.on_event(ev);
                }
                _ = shutdown.changed() => break,
            }
        }
        self.save_cache(now_ms());
        tracing::info!(node = %self.cfg.name, "node-agent stopped");
    }

    fn on_event(&mut self, ev: Event) {
        let now = now_ms();
        match ev {
            Event::Gossip(from, payload) => {
                self.seen(from, now);
                let out = self.core.handle_datagram(from, &payload, now);
                if !out.accepted.is_empty() {
                    self.dirty = true;
                    self.refresh_directory();
                }
                self.send_all(out.outgoing);
            }
            Event::Inject(bytes, reply) => {
                let r = insert_signed(&mut self.core, bytes, now);
                if matches!(r, Ok(true)) {
                    self.dirty = true;
                    self.refresh_directory();
                }
                let _ = reply.send(r);
            }
            Event::Probe(p) => {
                if p.ok {
                    let id = self.dir.nodes.get(&p.target).map(|n| n.node_id);
                    if let Some(id) = id {
                        self.seen(id, p.at_ms);
                    }
                    self.last_probe = Some(p.clone());
                } else if self.last_probe.is_none() {
                    self.last_probe = Some(p.clone());
                }
                if p.ok {
                    self.observations
                        .entry(p.target.clone())
                        .or_default()
                        .last_ok_probe_ms = Some(p.at_ms);
                    self.dirty = true;
                }
                self.probes.entry(p.target.clone()).or_default().record(p);
            }
            Event::Sent { to, ok } => {
                if let Some(name) = self.dir.node_by_id(&to).map(|n| n.name.clone()) {
                    let o = self.observations.entry(name).or_default();
                    if ok {
                        o.last_seen_ms = Some(now);
                    }
                    o.path = self.transport.path_to(to);
                    o.rtt_ms = self
                        .transport
                        .connection_stats(to)
                        .map(|s| s.path.rtt.as_millis() as u64);
                }
            }
        }
    }

    fn seen(&mut self, id: NodeId, at_ms: u64) {
        if let Some(name) = self.dir.node_by_id(&id).map(|n| n.name.clone()) {
            let o = self.observations.entry(name).or_default();
            o.last_seen_ms = Some(at_ms);
            o.path = self.transport.path_to(id);
        }
    }

    fn refresh_directory(&mut self) {
        let now = (now_ms() / 1000) as i64;
        // Decoding every envelope is the expensive part: skip it while the
        // store's summary root is unchanged and nothing has expired since.
        let root = self.core.root();
        if self.dir_root == Some(root) && self.dir.next_expiry.is_none_or(|t| now < t) {
            return;
        }
        self.dir_root = Some(root);
        let envelopes = self.core.envelopes();
        let dir = Directory::from_envelopes(&envelopes, now);
        if dir == self.dir {
            // A renewed lease can leave the view as it was.
            self.check_leases(&envelopes, now);
            return;
        }
        for n in dir.nodes.values() {
            if n.node_id != self.node_id {
                self.transport.set_peer(n.node_id, n.peer_info());
            }
        }
        for (id, addr) in &self.cfg.bootstrap {
            if dir.node_by_id(id).is_none() {
                self.transport.set_peer(*id, bootstrap_info(*addr));
            }
        }
        self.members.set(
            dir.nodes
                .values()
                .map(|n| n.node_id)
                .chain(self.cfg.bootstrap.iter().map(|(id, _)| *id)),
        );
        self.dir = dir;
        self.check_leases(&envelopes, now);
    }

    /// Runs lease admission on every lease this node holds; a change in the
    /// outcome is logged once.
    fn check_leases(&mut self, envelopes: &[gossip::Envelope], now: i64) {
        let checks = crate::leases::check_held_leases(
            &self.cfg.name,
            self.core.admission().trust(),
            envelopes,
            &self.dir,
            now,
        );
        for c in &checks {
            if self.leases.contains(c) {
                continue;
            }
            if c.admitted {
                tracing::info!(node = %self.cfg.name, lease_id = %c.lease_id, intent = %c.intent, generation = c.intent_generation, phase = %c.phase, "lease admitted by the node's own check");
            } else {
                tracing::warn!(node = %self.cfg.name, lease_id = %c.lease_id, intent = %c.intent, generation = c.intent_generation, phase = %c.phase, reason = ?c.reason, detail = ?c.detail, "lease refused by the node's own check");
            }
        }
        self.leases = checks;
    }

    fn gossip_peers(&mut self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .dir
            .nodes
            .values()
            .map(|n| n.node_id)
            .filter(|id| *id != self.node_id)
            .collect();
        for (id, addr) in &self.cfg.bootstrap {
            if !peers.contains(id) && *id != self.node_id {
                self.transport.set_peer(*id, bootstrap_info(*addr));
                peers.push(*id);
            }
        }
        peers
    }

    fn send_all(&self, out: Vec<gossip::Outgoing>) {
        for o in out {
            let transport = self.transport.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let fut = async {
                    let mut ch = transport
                        .open(o.to, GOSSIP_SERVICE)
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

    /// Tells the probe loop which providers to probe; a provider new to it
    /// is enqueued once (the loop requeues or backs off on its own).
    fn probe_core_services(&mut self) {
        let mut targets = BTreeMap::new();
        for s in CORE_SERVICES {
            if let Some(entry) = self.dir.services.get(s) {
                for p in &entry.spec.providers {
                    if let Some(node) = self.dir.nodes.get(p) {
                        targets.insert(p.clone(), node.node_id);
                    }
                }
            }
        }
        let known = self.probe_targets.borrow().clone();
        if known == targets {
            return;
        }
        for name in targets.keys() {
            if !known.contains_key(name) {
                self.probe_queue.enqueue(name.clone());
            }
        }
        self.probe_targets.send_replace(targets);
    }

    /// Feeds the planner what the transport has ready, computes the seed's P3
    /// metrics and keeps the planned peers connected.
    fn plan_peers(&mut self) {
        let mut candidates = Vec::new();
        for n in self
            .dir
            .nodes
            .values()
            .filter(|n| n.node_id != self.node_id)
        {
            let path = self.transport.path_to(n.node_id);
            let rtt = self
                .transport
                .connection_stats(n.node_id)
                .map(|s| s.path.rtt);
            self.ranker.update(|o| {
                let peer = o.peers.entry(n.node_id).or_default();
                for e in peer.endpoints.values_mut() {
                    e.direct_ready = false;
                }
                peer.relay_ready_via = None;
                match path {
                    Some(PathKind::Direct { addr }) => o.record_direct_ready(n.node_id, addr, rtt),
                    Some(PathKind::Relayed { via }) => o.record_relay_ready(n.node_id, via),
                    None => {}
                }
            });
            let info = n.peer_info();
            candidates.push(PeerCandidate {
                id: n.node_id,
                labels: info.labels,
                endpoints: info.candidates,
                roles: PeerRoles {
                    is_relay: info.is_relay,
                    is_ingress: n
                        .spec
                        .roles
                        .contains(&fabric_schemas::kinds::NodeRole::Ingress),
                },
                critical: n.spec.critical,
            });
        }
        let local = LocalNode {
            id: self.node_id,
            labels: self.cfg.labels.clone(),
        };
        let plan = match peer_select::plan(
            &local,
            &candidates,
            &self.ranker.observations(),
            &PlannerConfig::default(),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(node = %self.cfg.name, error = %e, "peer plan failed");
                return;
            }
        };
        self.metrics = plan.metrics;
        self.resilience = self.dir.nodes.get(&self.cfg.name).and_then(|me| {
            let t = me
                .spec
                .resilience_target
                .as_ref()
                .filter(|_| me.spec.critical)?;
            let target = ResilienceTarget {
                external_area_ready_count: t.external_area_ready_count,
                recovery_path_count: t.recovery_path_count,
                direct_ready_count: t.direct_ready_count,
                relay_ready_count: t.relay_ready_count,
                independent_ingress_ready_count: t.independent_ingress_ready_count,
            };
            Some(peer_select::evaluate(&target, &self.metrics))
        });
        // Keep the planned peer set connected: the redial loop dials what is
        // planned but not up, backing off per peer.
        let planned: std::collections::BTreeSet<NodeId> = plan
            .direct_peers()
            .into_iter()
            .chain(plan.relay_peers())
            .collect();
        for id in &planned {
            if self.transport.path_to(*id).is_none() {
                self.redial_queue.enqueue(*id);
            }
        }
        self.planned.send_if_modified(|p| {
            let changed = *p != planned;
            *p = planned;
            changed
        });
    }

    fn registry(&self, now: u64) -> RegistryReport {
        registry::report(&self.dir, &self.probes, self.last_probe.as_ref(), now)
    }

    fn publish_status(&mut self, now: u64) {
        let stats = self.core.stats();
        let mut gossip_rejections = BTreeMap::new();
        for r in gossip::RejectReason::ALL {
            let n = stats.rejected(r);
            if n > 0 {
                gossip_rejections.insert(r.label().to_owned(), n);
            }
        }
        let status = NodeStatus {
            name: self.cfg.name.clone(),
            node_id: self.node_id.to_string(),
            listen: self.local_addr.to_string(),
            area: self.cfg.labels.area.clone(),
            site_id: self.cfg.labels.site_id.clone(),
            nat_group: self.cfg.labels.nat_group.clone(),
            directory_records: self.dir.records,
            directory_nodes: self.dir.nodes.len(),
            directory_services: self.dir.services.len(),
            directory_conflicts: self.dir.conflicts.clone(),
            registry: self.registry(now),
            rejections: self
                .core
                .admission()
                .rejections()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            gossip_rejections,
            gossip_accepted: stats.accepted,
            peer_cache: self.cache_state.clone(),
            observations: self.observations.clone(),
            edge_listeners: self.edges.entries(),
            peer_metrics: self.metrics,
            refused_channels: self.members.refused(),
            resilience: self.resilience.clone(),
            leases: self.leases.clone(),
            updated_ms: now,
        };
        let preferred = status
            .registry
            .resolved_core_services
            .get(fabric_proto::endpoint::CONTROL_API_SERVICE)
            .cloned()
            .unwrap_or_default();
        self.canonical.send_if_modified(|c| {
            let next = crate::control::canonical_from_directory(&self.dir, &preferred);
            let changed = *c != next;
            *c = next;
            changed
        });
        let _ = crate::status::write(&self.cfg.state_dir, &status);
        let _ = self.status.send(status);
    }

    fn save_cache(&mut self, now: u64) {
        let now_s = (now / 1000) as i64;
        let records = self
            .core
            .envelopes()
            .into_iter()
            .filter(|e| {
                // Expired records are swept rather than carried across a restart.
                SignedEnvelope::decode(&e.bytes).is_ok_and(|s| s.record.expires_at > now_s)
            })
            .map(|e| hex::encode(&e.bytes))
            .collect();
        let content = CacheContent {
            records,
            observations: self.observations.clone(),
        };
        match cache::save(&self.cache_path, &content) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(node = %self.cfg.name, error = %e, "peer cache not saved; will retry")
            }
        }
    }
}

fn bootstrap_info(addr: SocketAddr) -> PeerInfo {
    PeerInfo::public(addr)
}

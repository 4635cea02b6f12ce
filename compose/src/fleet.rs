//! A whole fleet on one machine: every node a node-agent with its own key,
//! UDP port on loopback, peer cache and state folder; a fresh trust root; the
//! signed records seeded into one node only. Used by `fabricctl up` and by the
//! multi-node tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fabric::gossip::GossipConfig;
use fabric::identity::NodeIdentity;
use fabric::topology::NodeId;
use fabric::transport::TransportConfig;
use fabric_schemas::keys::{generate_trust_root, write_private_key, TrustRootPlan};
use fabric_schemas::kinds::{EndpointScopeSpec, EndpointSpec, FabricNodeSpec, NodeRole, Spec};
use fabric_schemas::manifest::Object;
use fabric_schemas::time::now_unix;
use fabric_schemas::trust::Role;
use fabric_schemas::{Envelope, Record, Scope, TrustAnchor};

use fabric_node_agent::agent::{self, AgentConfig, AgentHandle};
use fabric_node_agent::directory::labels_of;
use fabric_node_agent::status::NodeStatus;

/// A node admitted by [`LocalFleet::admit`].
#[derive(Clone, Debug)]
pub struct Admitted {
    /// Its key.
    pub id: NodeId,
    /// The UDP address its record names (free when admitted).
    pub listen: SocketAddr,
    /// Its signed spec.
    pub spec: FabricNodeSpec,
    /// `NODE_ID@ADDR` of the member it was admitted through (`--bootstrap`).
    pub bootstrap: String,
    /// The fleet's trust-root manifest (`--trust-root`).
    pub trust_root: PathBuf,
}

impl Admitted {
    /// The `fabric-node-agent` flags that run it as admitted.
    pub fn node_agent_args(&self, name: &str, state_dir: &Path) -> Vec<String> {
        vec![
            "--name".into(),
            name.into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--listen".into(),
            self.listen.to_string(),
            "--trust-root".into(),
            self.trust_root.display().to_string(),
            "--bootstrap".into(),
            self.bootstrap.clone(),
            "--area".into(),
            self.spec.area.clone(),
            "--site-id".into(),
            self.spec.site_id.clone(),
            "--locality-group".into(),
            self.spec.locality_group.clone(),
            "--nat-group".into(),
            self.spec.nat_group.clone(),
            "--round-ms".into(),
            "250".into(),
            "--probe-ms".into(),
            "500".into(),
            "--heartbeat-ms".into(),
            "1000".into(),
        ]
    }
}

/// How long [`LocalFleet::restart_node`] waits for a stopped node's port.
pub const REBIND_WINDOW: Duration = Duration::from_secs(10);

/// How a local fleet runs.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Every node's state folder and the trust root go under here.
    pub state_dir: PathBuf,
    /// The loopback address every node binds.
    pub host: IpAddr,
    /// Gossip round length.
    pub round: Duration,
    /// How often each core-service provider is probed.
    pub probe_interval: Duration,
    /// How often each node heartbeats.
    pub heartbeat_interval: Duration,
    /// Lifetime of the signed records.
    pub record_ttl: Duration,
    /// The updaters' safety-net poll.
    pub updater_poll: Duration,
    /// Failed fetches of one artifact before an update attempt is aborted.
    pub updater_fetch_attempts: u32,
    /// How long an apply may go unanswered (no host agent) before the
    /// attempt is rolled back as `apply_timeout`.
    pub updater_apply_timeout: Duration,
    /// Seed every signed record into the first node (`false`: a publisher
    /// delivers them, as under `fabricctl up`).
    pub seed_records: bool,
    /// Run nodes as real processes, each a host agent supervising a
    /// node-agent (`None`: every node is an in-process agent).
    pub processes: Option<ProcessMode>,
    /// Every node serves `/metrics` on an ephemeral loopback port (listed
    /// in its status's edge listeners as a `metrics-edge`).
    pub metrics: bool,
}

/// How a fleet's nodes run as processes: `fabric-host-agent run` per node,
/// supervising `fabric-node-agent` from its own slots, with its own state
/// folder and log.
#[derive(Clone, Debug)]
pub struct ProcessMode {
    /// The `fabric-host-agent` binary.
    pub host_agent: PathBuf,
    /// The node-agent build every node starts from.
    pub node_agent: PathBuf,
    /// Nodes that still run in process (those a co-located control plane
    /// takes over, see [`LocalFleet::detach`]).
    pub in_process: Vec<String>,
    /// The host agent's readiness deadline for a new build.
    pub ready_deadline: Duration,
    /// The host agent's probation before it commits a new build.
    pub probation: Duration,
}

/// A node running as a host-agent process.
pub struct NodeProcess {
    child: std::process::Child,
    /// The host agent's (and its node-agent's) log.
    pub log: PathBuf,
}

impl NodeProcess {
    /// The host agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the host agent with SIGTERM (it stops its node-agent first);
    /// after `grace`, SIGKILL for both.
    fn stop(mut self, state_dir: &Path, grace: Duration) {
        let pid = self.child.id();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(
            pid,
            "host agent did not stop in time; killing it and its node-agent"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_node_agent(state_dir);
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Only reached when the fleet is dropped without `stop_all` (a
        // panic): nothing may outlive the fleet.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGKILLs the node-agent process group the host agent recorded.
fn kill_node_agent(state_dir: &Path) {
    let Ok(pid) = std::fs::read_to_string(state_dir.join("host").join("child.pid")) else {
        return;
    };
    let pid = pid.trim();
    if pid.parse::<u32>().is_ok() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
    }
}

impl FleetOptions {
    /// Defaults for a fleet on 127.0.0.1 under `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        FleetOptions {
            state_dir,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            round: Duration::from_millis(250),
            probe_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            record_ttl: Duration::from_secs(24 * 3600),
            updater_poll: Duration::from_secs(10),
            updater_fetch_attempts: 6,
            updater_apply_timeout: Duration::from_secs(600),
            seed_records: true,
            processes: None,
            metrics: false,
        }
    }
}

/// Why a local fleet could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No `FabricNode` among the manifests.
    #[error("the manifests hold no FabricNode")]
    NoNodes,
    /// A node name not in this fleet.
    #[error("node {0:?} is not part of this fleet")]
    UnknownNode(String),
    /// Keys, folders or records could not be set up.
    #[error("{0}")]
    Setup(String),
    /// A node-agent failed to start.
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    /// The node runs inside a co-located control plane now.
    #[error("node {0:?} was handed to the co-located control plane; restart it there")]
    Detached(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> FleetError + '_ {
    move |e| FleetError::Setup(format!("{what}: {e}"))
}

/// One member of the local fleet.
pub struct Member {
    /// The node's `FabricNode` name.
    pub name: String,
    /// Its spec with the real key and loopback endpoint.
    pub spec: FabricNodeSpec,
    /// Its key.
    pub node_id: NodeId,
    /// Its state folder.
    pub state_dir: PathBuf,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// The running agent; `None` while stopped.
    pub handle: Option<AgentHandle>,
    /// Bootstrap peers to use instead of the fleet's (for tests of joining).
    pub bootstrap_override: Option<Vec<(NodeId, SocketAddr)>>,
    /// The node's in-process control link (installed by a co-located
    /// control plane; see [`LocalFleet::detach`]).
    pub local_control: fabric_node_agent::control::LocalControlSlot,
    /// Handed to a co-located control plane: the fleet no longer runs it.
    pub detached: bool,
    /// The running host-agent process, for a node run as one.
    pub process: Option<NodeProcess>,
}

impl Member {
    /// Whether the node runs (in process or as a process).
    pub fn running(&self) -> bool {
        self.handle.is_some() || self.process.is_some()
    }
}

/// A whole fleet on one machine (see the module docs).
pub struct LocalFleet {
    /// Every node, in manifest order.
    pub members: Vec<Member>,
    /// The fleet's trust root.
    pub trust: TrustAnchor,
    /// Where the trust root and its keys are written.
    pub trust_dir: PathBuf,
    /// The process's edge inventory: every in-process node registers its
    /// listeners here, and so should a control plane in the same process.
    pub inventory: fabric::edge::EdgeInventory,
    control: SigningKey,
    opts: FleetOptions,
    /// Every record signed for the fleet, as seeded into the first node.
    pub records: Vec<Vec<u8>>,
    /// The fleet's bootstrap peers: the first node started in each area, up
    /// to [`MAX_BOOTSTRAP_PEERS`]. Every later node bootstraps from all of
    /// them, so joining depends on no single node.
    pub bootstrap: Vec<(NodeId, SocketAddr)>,
}

/// Bootstrap peers a local fleet hands its nodes.
pub const MAX_BOOTSTRAP_PEERS: usize = 3;

impl LocalFleet {
    /// Starts every `FabricNode` of `objects` and seeds all signed records
    /// (nodes with their live loopback endpoint, services, policies, intents)
    /// into the first node.
    pub async fn start(objects: &[Object], opts: FleetOptions) -> Result<LocalFleet, FleetError> {
        let nodes: Vec<(String, FabricNodeSpec)> = objects
            .iter()
            .filter_map(|o| match &o.spec {
                Spec::FabricNode(n) => Some((o.name().to_owned(), n.clone())),
                _ => None,
            })
            .collect();
        if nodes.is_empty() {
            return Err(FleetError::NoNodes);
        }
        std::fs::create_dir_all(&opts.state_dir).map_err(setup("state folder"))?;
        let trust_dir = opts.state_dir.join("trust");
        std::fs::create_dir_all(trust_dir.join("keys")).map_err(setup("trust folder"))?;
        let expires = now_unix() + 30 * 86_400;
        let (trust_spec, keys) = generate_trust_root(&TrustRootPlan::single_keys(expires));
        for k in &keys {
            write_private_key(&trust_dir.join(format!("keys/{}.pem", k.id)), &k.key)
                .map_err(setup("writing key"))?;
        }
        fabric_schemas::keys::write_trust_root_manifest(
            &trust_dir.join("trust-root.yaml"),
            &trust_spec,
        )
        .map_err(setup("trust root"))?;
        let trust = TrustAnchor::from_spec(&trust_spec).map_err(setup("trust root"))?;
        let control = keys
            .iter()
            .find(|k| k.role == Role::Control)
            .map(|k| k.key.clone())
            .ok_or_else(|| FleetError::Setup("no control key generated".into()))?;

        let mut members = Vec::new();
        for (name, spec) in nodes {
            let state_dir = opts.state_dir.join("nodes").join(&name);
            std::fs::create_dir_all(&state_dir).map_err(setup("node folder"))?;
            let id = NodeIdentity::load_or_create(&state_dir.join("node.key"))
                .map_err(setup("node key"))?
                .node_id();
            members.push(Member {
                name,
                spec,
                node_id: id,
                state_dir,
                addr: SocketAddr::new(opts.host, 0),
                handle: None,
                bootstrap_override: None,
                local_control: Default::default(),
                detached: false,
                process: None,
            });
        }
        let mut fleet = LocalFleet {
            members,
            trust,
            trust_dir,
            inventory: Default::default(),
            control,
            opts,
            records: Vec::new(),
            bootstrap: Vec::new(),
        };
        let mut areas = Vec::new();
        for i in 0..fleet.members.len() {
            fleet.start_member(i).await?;
            let m = &fleet.members[i];
            if fleet.bootstrap.len() < MAX_BOOTSTRAP_PEERS && !areas.contains(&m.spec.area) {
                areas.push(m.spec.area.clone());
                fleet.bootstrap.push((m.node_id, m.addr));
            }
        }
        fleet.records = fleet.sign_all(objects)?;
        if !fleet.opts.seed_records {
            return Ok(fleet);
        }
        let seed = fleet.members[0]
            .handle
            .as_ref()
            .ok_or(FleetError::NoNodes)?;
        for r in &fleet.records {
            seed.inject(r.clone())
                .await
                .map_err(setup("seeding record"))?;
        }
        Ok(fleet)
    }

    fn agent_config(&self, m: &Member) -> AgentConfig {
        let mut cfg = AgentConfig::new(&m.name, m.state_dir.clone(), m.addr, self.trust.clone());
        cfg.labels = labels_of(&m.spec);
        cfg.relay = m.spec.roles.contains(&NodeRole::Relay);
        cfg.bootstrap = match &m.bootstrap_override {
            Some(b) => b.clone(),
            None => self
                .bootstrap
                .iter()
                .filter(|(id, _)| *id != m.node_id)
                .copied()
                .collect(),
        };
        cfg.gossip = GossipConfig {
            round_ms: self.opts.round.as_millis() as u64,
            ..GossipConfig::default()
        };
        cfg.probe_interval = self.opts.probe_interval;
        cfg.heartbeat_interval = self.opts.heartbeat_interval;
        cfg.updater_poll = self.opts.updater_poll;
        cfg.updater_fetch_attempts = self.opts.updater_fetch_attempts;
        cfg.updater_apply_timeout = self.opts.updater_apply_timeout;
        cfg.local_control = m.local_control.clone();
        cfg.edges = Some(self.inventory.clone());
        if self.opts.metrics {
            cfg.metrics_listen = Some(SocketAddr::new(self.opts.host, 0));
        }
        let mut tc = TransportConfig::new(m.addr);
        tc.connect_timeout = Duration::from_secs(2);
        tc.idle_timeout = Duration::from_secs(10);
        tc.keep_alive = Duration::from_secs(2);
        cfg.transport = Some(tc);
        cfg
    }

    async fn start_member(&mut self, i: usize) -> Result<(), FleetError> {
        if let Some(mode) = self
            .opts
            .processes
            .clone()
            .filter(|p| !p.in_process.contains(&self.members[i].name))
        {
            return self.start_process(i, &mode);
        }
        let cfg = self.agent_config(&self.members[i]);
        let handle = agent::start(cfg).await?;
        let m = &mut self.members[i];
        m.addr = handle.local_addr();
        m.handle = Some(handle);
        Ok(())
    }

    /// Starts member `i` as `fabric-host-agent run ... -- <node-agent flags>`
    /// on a free loopback port (its old port on a restart).
    fn start_process(&mut self, i: usize, mode: &ProcessMode) -> Result<(), FleetError> {
        let addr = if self.members[i].addr.port() != 0 {
            self.members[i].addr
        } else {
            let s = std::net::UdpSocket::bind(SocketAddr::new(self.opts.host, 0))
                .map_err(setup("finding a free port"))?;
            s.local_addr().map_err(setup("finding a free port"))?
        };
        let m = &self.members[i];
        let trust_root = self.trust_dir.join("trust-root.yaml");
        let bootstrap: Vec<(NodeId, SocketAddr)> = match &m.bootstrap_override {
            Some(b) => b.clone(),
            None => self
                .bootstrap
                .iter()
                .filter(|(id, _)| *id != m.node_id)
                .copied()
                .collect(),
        };
        let mut node_args: Vec<String> = vec![
            "--name".into(),
            m.name.clone(),
            "--state-dir".into(),
            m.state_dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--trust-root".into(),
            trust_root.display().to_string(),
            "--area".into(),
            m.spec.area.clone(),
            "--site-id".into(),
            m.spec.site_id.clone(),
            "--locality-group".into(),
            m.spec.locality_group.clone(),
            "--nat-group".into(),
            m.spec.nat_group.clone(),
            "--round-ms".into(),
            self.opts.round.as_millis().to_string(),
            "--probe-ms".into(),
            self.opts.probe_interval.as_millis().to_string(),
            "--heartbeat-ms".into(),
            self.opts.heartbeat_interval.as_millis().to_string(),
            "--updater-poll-ms".into(),
            self.opts.updater_poll.as_millis().to_string(),
            "--updater-apply-timeout".into(),
            format!("{}s", self.opts.updater_apply_timeout.as_secs().max(1)),
        ];
        if m.spec.roles.contains(&NodeRole::Relay) {
            node_args.push("--relay".into());
        }
        if self.opts.metrics {
            node_args.push("--metrics-listen".into());
            node_args.push(SocketAddr::new(self.opts.host, 0).to_string());
        }
        for (id, a) in bootstrap {
            node_args.push("--bootstrap".into());
            node_args.push(format!("{id}@{a}"));
        }
        let log = m.state_dir.join("host-agent.log");
        let out = std::fs::File::create(&log).map_err(setup("host agent log"))?;
        let err = out.try_clone().map_err(setup("host agent log"))?;
        let child = std::process::Command::new(&mode.host_agent)
            .arg("run")
            .arg("--exit-with-parent")
            .arg("--state-dir")
            .arg(&m.state_dir)
            .arg("--host-dir")
            .arg(m.state_dir.join("host"))
            .arg("--node-agent")
            .arg(&mode.node_agent)
            .arg("--ready-deadline-ms")
            .arg(mode.ready_deadline.as_millis().to_string())
            .arg("--probation-ms")
            .arg(mode.probation.as_millis().to_string())
            .arg("--")
            .args(&node_args)
            .env(
                "FABRIC_LOG",
                std::env::var("FABRIC_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                FleetError::Setup(format!(
                    "starting {} for {}: {e}",
                    mode.host_agent.display(),
                    m.name
                ))
            })?;
        tracing::info!(node = %m.name, pid = child.id(), %addr, log = %log.display(), "host agent started");
        let m = &mut self.members[i];
        m.addr = addr;
        m.process = Some(NodeProcess { child, log });
        Ok(())
    }

    /// Makes room for a node that runs outside the fleet (a process a test
    /// starts itself): creates its key in `state_dir`, picks a free loopback
    /// port, signs its `FabricNode` record (area `delta`, its own site, LAN
    /// and NAT group) and hands it to the first running member, so the fleet
    /// admits it.
    pub async fn admit(&self, name: &str, state_dir: &Path) -> Result<Admitted, FleetError> {
        std::fs::create_dir_all(state_dir).map_err(setup("node folder"))?;
        let id = NodeIdentity::load_or_create(&state_dir.join("node.key"))
            .map_err(setup("node key"))?
            .node_id();
        let listen = std::net::UdpSocket::bind(SocketAddr::new(self.opts.host, 0))
            .and_then(|s| s.local_addr())
            .map_err(setup("finding a free port"))?;
        let spec = FabricNodeSpec {
            area: "delta".into(),
            site_id: "delta-site-1".into(),
            locality_group: "delta-lan-1".into(),
            nat_group: "delta-nat-1".into(),
            node_id: Some(id.to_string()),
            roles: vec![],
            endpoints: vec![EndpointSpec {
                address: listen.to_string(),
                scope: EndpointScopeSpec::Public,
                locality_group: None,
                nat_group: None,
            }],
            critical: false,
            resilience_target: None,
        };
        let seed = self
            .members
            .iter()
            .find(|m| m.handle.is_some())
            .ok_or(FleetError::NoNodes)?;
        let record = self.sign(
            &Spec::FabricNode(spec.clone()),
            name,
            now_unix().max(1) as u64,
        )?;
        seed.handle
            .as_ref()
            .ok_or(FleetError::NoNodes)?
            .inject(record)
            .await
            .map_err(setup("admitting the node"))?;
        Ok(Admitted {
            id,
            listen,
            spec,
            bootstrap: format!("{}@{}", seed.node_id, seed.addr),
            trust_root: self.trust_root_file(),
        })
    }

    /// Signs one spec with the fleet's control key; generation is the signing second.
    pub fn sign(&self, spec: &Spec, name: &str, generation: u64) -> Result<Vec<u8>, FleetError> {
        let now = now_unix();
        let rec = Record::new(
            spec,
            name,
            generation,
            now,
            now + self.opts.record_ttl.as_secs() as i64,
            Scope::any(),
        )
        .map_err(setup("record"))?;
        Ok(Envelope::sign(rec, &[&self.control]).encode())
    }

    /// The fleet's key for `role` (the orchestrator's signs leases), read
    /// from the trust folder.
    pub fn role_key(&self, role: Role) -> Result<SigningKey, FleetError> {
        let dir = self.trust_dir.join("keys");
        let prefix = format!("{}-", role.as_str());
        let entries = std::fs::read_dir(&dir).map_err(setup("trust keys"))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".pem") {
                return fabric_schemas::keys::read_private_key(&e.path())
                    .map_err(setup("trust key"));
            }
        }
        Err(FleetError::Setup(format!(
            "no {} key in {}",
            role.as_str(),
            dir.display()
        )))
    }

    /// The fleet's control key (signs records).
    pub fn control_key(&self) -> &SigningKey {
        &self.control
    }

    fn sign_all(&self, objects: &[Object]) -> Result<Vec<Vec<u8>>, FleetError> {
        let generation = now_unix().max(1) as u64;
        let by_name: BTreeMap<&str, &Member> =
            self.members.iter().map(|m| (m.name.as_str(), m)).collect();
        let mut out = Vec::new();
        for o in objects {
            let spec = match &o.spec {
                Spec::FabricNode(n) => {
                    let m = by_name
                        .get(o.name())
                        .ok_or_else(|| FleetError::UnknownNode(o.name().to_owned()))?;
                    Spec::FabricNode(self.local_spec(n, m))
                }
                Spec::RolloutLease(_) | Spec::TrustRoot(_) => continue,
                other => other.clone(),
            };
            out.push(self.sign(&spec, o.name(), generation)?);
        }
        Ok(out)
    }

    /// The manifest's node with its real key and its loopback endpoint: the
    /// example addresses are documentation ranges nobody can reach.
    pub fn local_spec(&self, n: &FabricNodeSpec, m: &Member) -> FabricNodeSpec {
        localize(n, m.node_id, m.addr)
    }

    fn index(&self, name: &str) -> Result<usize, FleetError> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| FleetError::UnknownNode(name.to_owned()))
    }

    /// A member by name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// A running member's agent.
    pub fn handle(&self, name: &str) -> Option<&AgentHandle> {
        self.member(name).and_then(|m| m.handle.as_ref())
    }

    /// Hands a running node to a co-located control plane (a reconciler
    /// replica): its agent and its in-process control link. The fleet keeps
    /// its record and address but no longer runs, stops or lists it.
    pub fn detach(
        &mut self,
        name: &str,
    ) -> Result<(AgentHandle, fabric_node_agent::control::LocalControlSlot), FleetError> {
        let i = self.index(name)?;
        let m = &mut self.members[i];
        let handle = m.handle.take().ok_or_else(|| {
            FleetError::Setup(format!("node {name:?} is not running; cannot hand it over"))
        })?;
        m.detached = true;
        Ok((handle, m.local_control.clone()))
    }

    /// Takes a node back from a co-located control plane that stopped (and
    /// stopped its agent with it) and starts it again in process, with a
    /// fresh control link; [`LocalFleet::detach`] hands it over again.
    pub async fn reattach(&mut self, name: &str) -> Result<(), FleetError> {
        let i = self.index(name)?;
        let m = &mut self.members[i];
        if !m.detached {
            return Ok(());
        }
        m.detached = false;
        m.local_control = Default::default();
        self.restart_node(name).await
    }

    /// Kills one node as a crash of its machine would: a process node's
    /// host agent and node-agent get SIGKILL (nothing is saved); an
    /// in-process node is stopped.
    pub async fn kill_node(&mut self, name: &str) -> Result<(), FleetError> {
        let i = self.index(name)?;
        let m = &mut self.members[i];
        if m.detached {
            return Err(FleetError::Detached(name.to_owned()));
        }
        if let Some(mut p) = m.process.take() {
            let dir = m.state_dir.clone();
            let _ = p.child.kill();
            let _ = p.child.wait();
            kill_node_agent(&dir);
            return Ok(());
        }
        if let Some(h) = m.handle.take() {
            h.stop().await;
        }
        Ok(())
    }

    /// Stops one node (saving its cache), as a crash of its machine would not.
    pub async fn stop_node(&mut self, name: &str) -> Result<(), FleetError> {
        let i = self.index(name)?;
        if let Some(h) = self.members[i].handle.take() {
            h.stop().await;
        }
        if let Some(p) = self.members[i].process.take() {
            let dir = self.members[i].state_dir.clone();
            let _ =
                tokio::task::spawn_blocking(move || p.stop(&dir, Duration::from_secs(10))).await;
        }
        Ok(())
    }

    /// Starts a stopped node again on its old address, from its own state folder.
    ///
    /// The stopped node's socket outlives it while QUIC drains the
    /// connections it closed (three probe timeouts: about 3 s for a handshake
    /// that never measured a round trip), so a port still in use is retried
    /// for [`REBIND_WINDOW`].
    pub async fn restart_node(&mut self, name: &str) -> Result<(), FleetError> {
        let i = self.index(name)?;
        if self.members[i].running() {
            return Ok(());
        }
        if self.members[i].detached {
            return Err(FleetError::Detached(name.to_owned()));
        }
        let deadline = tokio::time::Instant::now() + REBIND_WINDOW;
        loop {
            match self.start_member(i).await {
                Err(FleetError::Agent(agent::AgentError::Transport(
                    fabric::transport::TransportError::Bind { source, .. },
                ))) if source.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// The status of every running node: an in-process agent's own, a
    /// process's from the `status.json` it writes (once it has).
    pub fn statuses(&self) -> Vec<NodeStatus> {
        self.members
            .iter()
            .filter_map(|m| match (&m.handle, &m.process) {
                (Some(h), _) => Some(h.status()),
                (None, Some(_)) => fabric_node_agent::status::read(&m.state_dir).ok(),
                (None, None) => None,
            })
            .collect()
    }

    /// Node records the fleet expects in every directory.
    pub fn expected_records(&self) -> usize {
        self.records.len()
    }

    /// Stops every node, saving peer caches.
    pub async fn stop_all(&mut self) {
        let mut stopping = Vec::new();
        for m in &mut self.members {
            if let Some(p) = m.process.take() {
                // Every host agent gets its SIGTERM now; they stop in parallel.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &p.pid().to_string()])
                    .status();
                stopping.push((p, m.state_dir.clone()));
            }
        }
        for m in &mut self.members {
            if let Some(h) = m.handle.take() {
                h.stop().await;
            }
        }
        let _ = tokio::task::spawn_blocking(move || {
            for (p, dir) in stopping {
                p.stop(&dir, Duration::from_secs(10));
            }
        })
        .await;
    }

    /// The trust-root manifest file.
    pub fn trust_root_file(&self) -> PathBuf {
        self.trust_dir.join("trust-root.yaml")
    }

    /// The fleet's state folder.
    pub fn state_dir(&self) -> &Path {
        &self.opts.state_dir
    }
}

/// `n` with the key `id` and the one public endpoint `addr`: a manifest's
/// node as the local node running it is reached.
pub fn localize(n: &FabricNodeSpec, id: NodeId, addr: SocketAddr) -> FabricNodeSpec {
    FabricNodeSpec {
        node_id: Some(id.to_string()),
        endpoints: vec![EndpointSpec {
            address: addr.to_string(),
            scope: EndpointScopeSpec::Public,
            locality_group: None,
            nat_group: None,
        }],
        ..n.clone()
    }
}

/// Builds `count` synthetic nodes spread over three areas, for `--nodes N` and
/// tests. Every node gets distinct site and NAT group per pair; the first node
/// of each area provides a core service.
pub fn synthetic_nodes(count: usize) -> Vec<Object> {
    let areas = ["alpha", "beta", "gamma"];
    let mut out = Vec::new();
    let mut providers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..count {
        let area = areas[i % areas.len()];
        let site = i / areas.len() / 2 + 1;
        let name = format!("{area}-{}", i / areas.len() + 1);
        let mut roles = Vec::new();
        // Two providers per core service when the fleet is big enough, and at
        // least one whatever its size.
        for j in (0..6).filter(|j| *j < count.max(3) && j % count == i) {
            let svc = ["control-api", "update-store", "update-cache"][j % 3];
            let role = match svc {
                "control-api" => NodeRole::ControlApi,
                "update-store" => NodeRole::UpdateStore,
                _ => NodeRole::UpdateCache,
            };
            if !roles.contains(&role) {
                roles.push(role);
                providers.entry(svc).or_default().push(name.clone());
            }
        }
        out.push(object(
            &name,
            Spec::FabricNode(FabricNodeSpec {
                area: area.into(),
                site_id: format!("{area}-site-{site}"),
                locality_group: format!("{area}-lan-{site}"),
                nat_group: format!("{area}-nat-{site}"),
                node_id: None,
                roles,
                endpoints: vec![],
                critical: false,
                resilience_target: None,
            }),
        ));
    }
    for (svc, p) in providers {
        out.push(object(
            svc,
            Spec::ServiceRecord(fabric_schemas::kinds::ServiceRecordSpec {
                service: svc.into(),
                providers: p,
            }),
        ));
    }
    out
}

fn object(name: &str, spec: Spec) -> Object {
    Object {
        kind: spec.kind(),
        metadata: fabric_schemas::manifest::Metadata {
            name: name.into(),
            ..Default::default()
        },
        spec,
        status: None,
        source: fabric_schemas::manifest::Source {
            file: PathBuf::from("<generated>"),
            line: 0,
        },
    }
}

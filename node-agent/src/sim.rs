//! A deterministic simulator of whole fleets of [`NodeCore`]s.
//!
//! Every node is the real sans-IO core with the real admission (ed25519
//! signatures checked by `fabric_schemas::accept`), fed by a discrete-event
//! loop instead of sockets: rounds fire every `round_ms` at a per-node phase,
//! each message arrives after `latency_ms` plus jitter, may be lost
//! (`loss_ppm`), and is turned away at the door exactly as the driver's
//! listener turns it away (the sender must be in the receiver's membership
//! set). Keys, records and all randomness derive from `SimConfig::seed`, so
//! a seed replays a run exactly: [`NodeSim::trace_digest`] is equal for equal
//! seeds.
//!
//! The simulator exists for tests of the node's decisions at fleet scale
//! (joining, spread, a dead bootstrap peer) that would be slow or flaky on
//! real sockets; the loopback fleet tests stay beside it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fabric::edge::EdgeEntry;
use fabric::gossip::rng::Rng;
use fabric::gossip::GossipConfig;
use fabric::path::PathKind;
use fabric::peer_select::PlannerRanker;
use fabric::topology::{NodeId, TopologyLabels};
use fabric_schemas::keys::{generate_trust_root, TrustRootPlan};
use fabric_schemas::kinds::{EndpointScopeSpec, EndpointSpec, FabricNodeSpec};
use fabric_schemas::trust::Role;
use fabric_schemas::{Envelope, Record, Scope, Spec, TrustAnchor};
use sha2::{Digest, Sha256};

use crate::cache::Loaded;
use crate::membership::Cooling;
use crate::node_core::{CoreConfig, Effect, LinkView, NodeCore};

/// Simulated wall clock at start (Unix ms), so expiry checks see real values.
pub const SIM_EPOCH_MS: u64 = 1_780_000_000_000;

/// How a simulated fleet is built and run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes in the fleet (areas `alpha`, `beta`, `gamma` in turn).
    pub nodes: usize,
    /// The seed every key, record and random choice derives from.
    pub seed: u64,
    /// Gossip round length in simulated milliseconds.
    pub round_ms: u64,
    /// One-way message delay in simulated milliseconds, before jitter (up
    /// to half of it again).
    pub latency_ms: u64,
    /// Messages lost per million.
    pub loss_ppm: u32,
    /// Nodes every other node bootstraps from (indices into the fleet).
    pub bootstrap: Vec<usize>,
    /// Nodes the fleet's signed records are seeded into at start.
    pub seeded: Vec<usize>,
    /// Let strangers in on a membership proof (the node's real door). With
    /// `false` the door admits only known members: the gate as it was before
    /// proofs, kept to show what proofs change.
    pub proofs: bool,
    /// Gossip partners per node; `None` for the core's default.
    pub gossip_partners: Option<usize>,
}

impl SimConfig {
    /// `nodes` nodes, all bootstrapping from node 0, which holds the records.
    pub fn new(nodes: usize, seed: u64) -> Self {
        SimConfig {
            nodes,
            seed,
            round_ms: 200,
            latency_ms: 2,
            loss_ppm: 0,
            bootstrap: vec![0],
            seeded: vec![0],
            proofs: true,
            gossip_partners: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Round(usize),
    Deliver {
        from: usize,
        to: usize,
        payload: Vec<u8>,
        proof: Option<Vec<u8>>,
    },
    Sent {
        from: usize,
        to: usize,
        ok: bool,
    },
}

#[derive(Default)]
struct Links {
    /// Peers this node exchanged with successfully (a "connection").
    connected: BTreeMap<NodeId, SocketAddr>,
    members: BTreeSet<NodeId>,
    refused: u64,
    cooling: Cooling,
    own: Option<Vec<u8>>,
    latency: Duration,
}

impl LinkView for Links {
    fn path(&self, node: NodeId) -> Option<PathKind> {
        self.connected
            .get(&node)
            .map(|addr| PathKind::Direct { addr: *addr })
    }

    fn rtt(&self, node: NodeId) -> Option<Duration> {
        self.connected.get(&node).map(|_| self.latency * 2)
    }

    fn refused_channels(&self) -> u64 {
        self.refused
    }

    fn refusals(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    fn connected(&self) -> Vec<NodeId> {
        self.connected.keys().copied().collect()
    }

    fn edge_listeners(&self) -> Vec<EdgeEntry> {
        Vec::new()
    }
}

/// A running simulated fleet.
pub struct NodeSim {
    cfg: SimConfig,
    cores: Vec<NodeCore>,
    links: Vec<Links>,
    addrs: Vec<SocketAddr>,
    index: HashMap<NodeId, usize>,
    down: BTreeSet<usize>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    now: u64,
    rng: Rng,
    records: usize,
    trace: Sha256,
    delivered: u64,
}

fn key_from(seed: u64, label: &str, i: usize) -> SigningKey {
    let mut h = Sha256::new();
    h.update(b"fabric/node-sim/key\0");
    h.update(seed.to_le_bytes());
    h.update(label.as_bytes());
    h.update((i as u64).to_le_bytes());
    SigningKey::from_bytes(&h.finalize().into())
}

/// Why a simulated fleet could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the simulated fleet: {0}")]
pub struct SimError(String);

impl NodeSim {
    /// Builds the fleet: a trust root, one signed `FabricNode` record per
    /// node (with a loopback-shaped address that is never dialled), seeded
    /// into `cfg.seeded`.
    pub fn new(cfg: SimConfig) -> Result<NodeSim, SimError> {
        let epoch_s = (SIM_EPOCH_MS / 1000) as i64;
        let (mut spec, keys) =
            generate_trust_root(&TrustRootPlan::single_keys(epoch_s + 86_400 * 365));
        // Deterministic control key: replace the generated one.
        let control = key_from(cfg.seed, "control", 0);
        let control_id = keys
            .iter()
            .find(|k| k.role == Role::Control)
            .map(|k| k.id.clone())
            .ok_or_else(|| SimError("trust root has no control key".into()))?;
        for k in &mut spec.keys {
            if k.id == control_id {
                k.public_key = hex::encode(control.verifying_key().to_bytes());
            }
        }
        let trust = TrustAnchor::from_spec(&spec).map_err(|e| SimError(e.to_string()))?;
        let areas = ["alpha", "beta", "gamma"];
        let mut ids = Vec::new();
        let mut addrs = Vec::new();
        let mut records = Vec::new();
        for i in 0..cfg.nodes {
            let key = key_from(cfg.seed, "node", i);
            let id = NodeId(key.verifying_key().to_bytes());
            let addr = SocketAddr::from((
                Ipv4Addr::new(127, 10, (i / 250) as u8, (i % 250) as u8 + 1),
                7000,
            ));
            let area = areas[i % areas.len()];
            let spec = FabricNodeSpec {
                area: area.into(),
                site_id: format!("{area}-site-{}", i / 6 + 1),
                locality_group: format!("{area}-lan-{}", i / 6 + 1),
                nat_group: format!("{area}-nat-{}", i / 6 + 1),
                node_id: Some(id.to_string()),
                roles: Vec::new(),
                endpoints: vec![EndpointSpec {
                    address: addr.to_string(),
                    scope: EndpointScopeSpec::Public,
                    locality_group: None,
                    nat_group: None,
                }],
                critical: false,
                resilience_target: None,
            };
            let rec = Record::new(
                &Spec::FabricNode(spec),
                &format!("node-{i}"),
                1,
                epoch_s,
                epoch_s + 86_400,
                Scope::any(),
            )
            .map_err(|e| SimError(e.to_string()))?;
            records.push(Envelope::sign(rec, &[&control]).encode());
            ids.push(id);
            addrs.push(addr);
        }
        let bootstrap: Vec<(NodeId, SocketAddr)> = cfg
            .bootstrap
            .iter()
            .filter_map(|b| Some((*ids.get(*b)?, *addrs.get(*b)?)))
            .collect();
        let mut cores = Vec::new();
        let mut links = Vec::new();
        for i in 0..cfg.nodes {
            let seeds: &[Vec<u8>] = if cfg.seeded.contains(&i) {
                &records
            } else {
                &[]
            };
            let core = NodeCore::new(
                CoreConfig {
                    name: format!("node-{i}"),
                    node_id: ids[i],
                    local_addr: addrs[i],
                    labels: TopologyLabels::default(),
                    trust: trust.clone(),
                    bootstrap: bootstrap.clone(),
                    gossip: GossipConfig {
                        round_ms: cfg.round_ms,
                        ..GossipConfig::default()
                    },
                    gossip_partners: cfg.gossip_partners,
                },
                Loaded::Fresh,
                seeds,
                Arc::new(PlannerRanker::new()),
                SIM_EPOCH_MS,
            );
            cores.push(core);
            links.push(Links {
                latency: Duration::from_millis(cfg.latency_ms),
                ..Links::default()
            });
        }
        let mut sim = NodeSim {
            index: ids.iter().enumerate().map(|(i, id)| (*id, i)).collect(),
            rng: Rng::new(cfg.seed),
            records: records.len(),
            cfg,
            cores,
            links,
            addrs,
            down: BTreeSet::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            now: SIM_EPOCH_MS,
            trace: Sha256::new(),
            delivered: 0,
        };
        for i in 0..sim.cores.len() {
            sim.apply(i);
            let phase = sim.rng.next_u64() % sim.cfg.round_ms.max(1);
            sim.push(SIM_EPOCH_MS + phase, Event::Round(i));
        }
        Ok(sim)
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    /// Takes node `i` down: it neither ticks nor answers until [`NodeSim::up`].
    pub fn down(&mut self, i: usize) {
        self.down.insert(i);
    }

    /// Brings node `i` back.
    pub fn up(&mut self, i: usize) {
        self.down.remove(&i);
    }

    /// Simulated milliseconds since the start.
    pub fn elapsed_ms(&self) -> u64 {
        self.now - SIM_EPOCH_MS
    }

    /// The node cores, by index.
    pub fn cores(&self) -> &[NodeCore] {
        &self.cores
    }

    /// Records every node should end with.
    pub fn expected_records(&self) -> usize {
        self.records
    }

    /// Nodes (up) that do not yet hold every record.
    pub fn laggards(&self) -> Vec<usize> {
        (0..self.cores.len())
            .filter(|i| !self.down.contains(i) && self.cores[*i].record_count() < self.records)
            .collect()
    }

    /// Peers node `i` has exchanged messages with.
    pub fn connections(&self, i: usize) -> usize {
        self.links[i].connected.len()
    }

    /// Channels node `i` refused at the door.
    pub fn refused(&self, i: usize) -> u64 {
        self.links[i].refused
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// A digest of every delivery in order: equal seeds give equal digests.
    pub fn trace_digest(&self) -> String {
        hex::encode(self.trace.clone().finalize())
    }

    /// Runs until every live node holds every record or `max_ms` of
    /// simulated time passed; returns whether it converged.
    pub fn run_until_converged(&mut self, max_ms: u64) -> bool {
        let deadline = SIM_EPOCH_MS + max_ms;
        while let Some(Reverse((at, _, ev))) = self.queue.pop() {
            if at > deadline {
                self.now = deadline;
                return self.laggards().is_empty();
            }
            self.now = at;
            self.handle(ev);
            if self.laggards().is_empty() {
                return true;
            }
        }
        self.laggards().is_empty()
    }

    /// Runs `ms` of simulated time, converged or not.
    pub fn run_for(&mut self, ms: u64) {
        let deadline = self.now + ms;
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > deadline {
                break;
            }
            let Some(Reverse((at, _, ev))) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.handle(ev);
        }
        self.now = deadline;
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Round(i) => {
                if !self.down.contains(&i) {
                    self.cores[i].round(self.now, &self.links[i]);
                    self.apply(i);
                }
                self.push(self.now + self.cfg.round_ms, Event::Round(i));
            }
            Event::Deliver {
                from,
                to,
                payload,
                proof,
            } => {
                let from_id = self.cores[from].node_id();
                let ok = !self.down.contains(&to) && self.door(from_id, to, proof.as_deref());
                if ok {
                    self.delivered += 1;
                    self.trace.update((from as u64).to_le_bytes());
                    self.trace.update((to as u64).to_le_bytes());
                    self.trace.update(&payload);
                    let to_id = self.cores[to].node_id();
                    self.links[to].connected.insert(from_id, self.addrs[from]);
                    self.links[from].connected.insert(to_id, self.addrs[to]);
                    self.cores[to].on_gossip(from_id, &payload, self.now, &self.links[to]);
                    self.apply(to);
                }
                let at = self.now + self.cfg.latency_ms;
                self.push(at, Event::Sent { from, to, ok });
            }
            Event::Sent { from, to, ok } => {
                if !self.down.contains(&from) {
                    let to_id = self.cores[to].node_id();
                    self.cores[from].on_sent(to_id, ok, self.now, &self.links[from]);
                    self.apply(from);
                }
            }
        }
    }

    /// The receiver's door, as the driver's listener runs it.
    fn door(&mut self, from: NodeId, to: usize, proof: Option<&[u8]>) -> bool {
        let links = &self.links[to];
        let core = &self.cores[to];
        let unwanted = links.connected.keys().filter(|id| !core.wants(id)).count();
        if !links.connected.contains_key(&from)
            && !core.wants(&from)
            && unwanted >= core.inbound_allowance()
        {
            // Over budget: a new connection from a peer this node does not
            // want is turned away as busy (the sender backs off).
            self.links[to].refused += 1;
            return false;
        }
        if self.links[to].members.contains(&from) {
            return true;
        }
        let now = self.now;
        let admitted = if self.links[to].cooling.is_cooling(&from, now) || !self.cfg.proofs {
            false
        } else {
            let ok = proof.is_some_and(|p| self.cores[to].admit_proof(from, p, now).is_ok());
            self.apply(to);
            if !ok {
                self.links[to].cooling.refuse(from, now);
            }
            ok
        };
        if !admitted {
            self.links[to].refused += 1;
        }
        admitted
    }

    /// Node `i`'s own record, as it presents it.
    pub fn has_own_record(&self, i: usize) -> bool {
        self.links[i].own.is_some()
    }

    fn apply(&mut self, i: usize) {
        for effect in self.cores[i].take_effects() {
            match effect {
                Effect::Send(o) => {
                    let Some(&to) = self.index.get(&o.to) else {
                        continue;
                    };
                    let lost = self.cfg.loss_ppm > 0
                        && (self.rng.next_u64() % 1_000_000) < u64::from(self.cfg.loss_ppm);
                    let jitter = self.rng.next_u64() % (self.cfg.latency_ms / 2 + 1);
                    let at = self.now + self.cfg.latency_ms + jitter;
                    if lost {
                        self.push(
                            at + self.cfg.latency_ms,
                            Event::Sent {
                                from: i,
                                to,
                                ok: false,
                            },
                        );
                    } else {
                        let proof = self.links[i].own.clone();
                        self.push(
                            at,
                            Event::Deliver {
                                from: i,
                                to,
                                payload: o.payload,
                                proof,
                            },
                        );
                    }
                }
                Effect::Members(m) => self.links[i].members = m,
                Effect::Budget { .. } => {}
                Effect::OwnRecord(r) => self.links[i].own = r,
                Effect::Disconnect(id) => {
                    self.links[i].connected.remove(&id);
                    if let Some(&j) = self.index.get(&id) {
                        let me = self.cores[i].node_id();
                        self.links[j].connected.remove(&me);
                    }
                }
                // Addresses, probes, plans, status and the cache have no
                // network to act on here; the core's own state is what the
                // tests read.
                Effect::SetPeer(..)
                | Effect::ProbeTargets(_)
                | Effect::ProbeNow(_)
                | Effect::Planned(_)
                | Effect::Redial(_)
                | Effect::Canonical(_)
                | Effect::Update(_)
                | Effect::Status(_) => {}
                Effect::SaveCache(_) => self.cores[i].on_cache_saved(true),
            }
        }
    }
}

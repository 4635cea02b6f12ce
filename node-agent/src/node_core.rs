//! The node's sans-IO core: everything a node-agent decides, with no socket,
//! file, clock or task in it.
//!
//! [`NodeCore`] owns the gossip state, the directory view, probe outcomes,
//! observations, the peer plan and the lease checks. It takes inputs (a
//! gossip round is due, a gossip message arrived, a probe answered, a send
//! finished, a record is injected) together with `now` and a read-only
//! [`LinkView`] of what the transport holds, and returns [`Effect`]s: send
//! this gossip message, tell the transport about this peer, probe these
//! providers, keep these peers connected, publish this status, save this
//! cache. The async driver in [`crate::agent`] carries effects out; the
//! deterministic simulator in [`crate::sim`] carries them out in memory, so
//! whole fleets of cores can be run, seeded and replayed in a test.
//!
//! The core never imports tokio, quinn or `std::fs` (the architecture test
//! checks it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fabric::edge::EdgeEntry;
use fabric::gossip::rng::Rng;
use fabric::gossip::{self, Gossip, GossipConfig, RecordKey, Snapshot};
use fabric::path::{PathKind, PeerInfo};
use fabric::peer_select::{
    self, LocalNode, PeerCandidate, PeerMetrics, PeerRoles, PlannerConfig, PlannerRanker,
    ResilienceReport, ResilienceTarget,
};
use fabric::topology::{NodeId, TopologyLabels};
use fabric_proto::endpoint::ControlEndpoint;
use fabric_schemas::kinds::CORE_SERVICES;
use fabric_schemas::{Envelope as SignedEnvelope, Kind, TrustAnchor};

use crate::admission::RecordAdmission;
use crate::cache::{CacheContent, Loaded, Observation};
use crate::directory::Directory;
use crate::leases::LeaseCheck;
use crate::registry::{self, ProbeResult, ProbeState, RegistryReport};
use crate::status::NodeStatus;

/// A dirty peer cache is saved at most this often.
pub const CACHE_SAVE_INTERVAL_MS: u64 = 1_000;

/// What the core needs to start.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// The node's name (its `FabricNode` metadata.name).
    pub name: String,
    /// The node's id (from its key).
    pub node_id: NodeId,
    /// The address the node's socket is bound to; reported as `listen` in status.
    pub local_addr: SocketAddr,
    /// Where the node sits; used by the peer planner and reported in status.
    pub labels: TopologyLabels,
    /// The trust root records are admitted against.
    pub trust: TrustAnchor,
    /// Peers to contact before the directory knows anyone.
    pub bootstrap: Vec<(NodeId, SocketAddr)>,
    /// Gossip core tunables (round length, fanout, budgets).
    pub gossip: GossipConfig,
    /// Gossip partners kept besides the planned peers; `None` sizes it for
    /// the fleet ([`default_partners`]).
    pub gossip_partners: Option<usize>,
}

/// Gossip partners for a fleet of `n` nodes: `log2(n) + 3`, between 4 and 16,
/// so the connection graph stays connected with high probability while each
/// node holds a few dozen connections at most whatever the fleet's size.
pub fn default_partners(n: usize) -> usize {
    let log2 = usize::BITS - n.max(1).leading_zeros();
    (log2 as usize + 3).clamp(4, 16)
}

/// A connection unused by gossip this long, to a peer neither planned nor
/// a partner, is closed.
pub const IDLE_CLOSE_MS: u64 = 30_000;
/// One partner is swapped for a random other node every this many rounds,
/// so the partner graph keeps mixing and newcomers are found.
pub const PARTNER_CHURN_ROUNDS: u64 = 4;
/// The peer plan is redone at least this often (in rounds) while the
/// directory is unchanged.
pub const PLAN_EVERY_ROUNDS: u64 = 4;
/// A peer whose channels keep failing is retried at most this far apart.
pub const PEER_BACKOFF_CAP_MS: u64 = 30_000;

/// What the transport holds right now, as the core may read it.
pub trait LinkView {
    /// The path of the live connection to `node`, if any.
    fn path(&self, node: NodeId) -> Option<PathKind>;
    /// Smoothed RTT of the live connection to `node`, if any.
    fn rtt(&self, node: NodeId) -> Option<Duration>;
    /// Gossip and probe channels refused at the door so far.
    fn refused_channels(&self) -> u64;
    /// Refusals at the door by reason (`no_proof`, `wrong_node`, ...).
    fn refusals(&self) -> BTreeMap<String, u64>;
    /// Peers with a live connection.
    fn connected(&self) -> Vec<NodeId>;
    /// The node's TCP edge listeners.
    fn edge_listeners(&self) -> Vec<EdgeEntry>;
}

/// Something the driver must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send one gossip message on a fresh `gossip` channel; report the outcome
    /// with [`NodeCore::on_sent`].
    Send(gossip::Outgoing),
    /// Tell the transport how to reach a peer.
    SetPeer(NodeId, PeerInfo),
    /// The nodes allowed to use this node's gossip and probe services.
    Members(BTreeSet<NodeId>),
    /// The core-service providers to probe (provider name -> key).
    ProbeTargets(BTreeMap<String, NodeId>),
    /// Probe this provider now (it is new to the probe loop).
    ProbeNow(String),
    /// The planned peer set to keep connected.
    Planned(BTreeSet<NodeId>),
    /// Dial this planned peer (it has no path).
    Redial(NodeId),
    /// The control session's canonical endpoints changed.
    Canonical(Vec<ControlEndpoint>),
    /// Publish this status (status.json, the status watch).
    Status(Box<NodeStatus>),
    /// Persist this peer cache; report the outcome with
    /// [`NodeCore::on_cache_saved`].
    SaveCache(CacheContent),
    /// This node's own signed `FabricNode` record changed: present it as the
    /// membership proof on every channel it opens (see
    /// [`crate::membership`]).
    OwnRecord(Option<Vec<u8>>),
    /// Close the connection to this peer (idle, not planned, not a partner).
    Disconnect(NodeId),
    /// The peers this node wants connected (planned peers and partners) and
    /// how many connections to other peers it accepts: beyond that, the door
    /// turns away channels from anyone else as `busy`.
    Budget {
        /// Connections from unwanted peers the door still accepts
        /// ([`NodeCore::inbound_allowance`]).
        inbound: usize,
        /// The planned peers and gossip partners.
        wanted: BTreeSet<NodeId>,
    },
    /// What the updater reads changed: intents for this node, lease checks,
    /// artifact sources.
    Update(Box<crate::update::intents::UpdateInputs>),
}

/// Per-peer retry state after failed sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PeerBackoff {
    failures: u32,
    next_ms: u64,
}

/// The node's decisions, with no I/O. See the module docs.
pub struct NodeCore {
    cfg: CoreConfig,
    gossip: Gossip<RecordAdmission>,
    dir: Directory,
    /// The store's summary root when the directory was last rebuilt.
    dir_root: Option<u64>,
    probes: BTreeMap<String, ProbeState>,
    last_probe: Option<ProbeResult>,
    observations: BTreeMap<String, Observation>,
    cache_state: String,
    dirty: bool,
    last_save_ms: Option<u64>,
    ranker: Arc<PlannerRanker>,
    members: BTreeSet<NodeId>,
    probe_targets: BTreeMap<String, NodeId>,
    planned: BTreeSet<NodeId>,
    canonical: Vec<ControlEndpoint>,
    metrics: PeerMetrics,
    resilience: Option<ResilienceReport>,
    leases: Vec<LeaseCheck>,
    update_inputs: crate::update::intents::UpdateInputs,
    status: Option<NodeStatus>,
    own_record: Option<Vec<u8>>,
    partners: BTreeSet<NodeId>,
    /// How many candidates there were when the partners were last drawn.
    partners_drawn_from: usize,
    backoff: BTreeMap<NodeId, PeerBackoff>,
    /// Last gossip traffic with each peer, either way (Unix ms).
    last_used: BTreeMap<NodeId, u64>,
    rounds: u64,
    /// The store's summary root when the peers were last planned.
    planned_at_root: Option<u64>,
    last_budget: (usize, BTreeSet<NodeId>),
    rng: Rng,
    out: Vec<Effect>,
}

impl NodeCore {
    /// Builds the core from the loaded peer cache (every cached record is
    /// re-admitted: the trust root may have changed and records may have
    /// expired) and the seed records. `ranker` is shared with the transport,
    /// which reads it to order endpoints; the core writes what it observes.
    pub fn new(
        cfg: CoreConfig,
        loaded: Loaded,
        seed_records: &[Vec<u8>],
        ranker: Arc<PlannerRanker>,
        now_ms: u64,
    ) -> NodeCore {
        let mut admission = RecordAdmission::new(cfg.trust.clone());
        let (restored, observations, cache_state) = match loaded {
            Loaded::Fresh => (Vec::new(), BTreeMap::new(), "fresh".to_owned()),
            Loaded::Restored(c) => {
                let mut envs = Vec::new();
                for hex_bytes in &c.records {
                    let Ok(bytes) = hex::decode(hex_bytes) else {
                        continue;
                    };
                    // The expiry admission reports goes into the snapshot so the
                    // core drops the record when it lapses instead of offering it
                    // forever.
                    if let Ok(adm) = admission.check(&bytes, now_ms) {
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
        let seed = u64::from_le_bytes(cfg.node_id.0[..8].try_into().unwrap_or([0; 8]));
        let mut gossip = Gossip::with_snapshot(
            cfg.node_id,
            cfg.gossip.clone(),
            seed,
            admission,
            Arc::new(Snapshot::from_admitted(restored)),
        );
        for bytes in seed_records {
            if let Err(e) = insert_signed(&mut gossip, bytes.clone(), now_ms) {
                tracing::warn!(node = %cfg.name, error = %e, "seed record refused");
            }
        }
        let probes = observations
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
            .collect();
        let mut core = NodeCore {
            cfg,
            gossip,
            dir: Directory::default(),
            dir_root: None,
            probes,
            last_probe: None,
            observations,
            cache_state,
            dirty: true,
            last_save_ms: None,
            ranker,
            members: BTreeSet::new(),
            probe_targets: BTreeMap::new(),
            planned: BTreeSet::new(),
            canonical: Vec::new(),
            metrics: PeerMetrics::default(),
            resilience: None,
            leases: Vec::new(),
            update_inputs: Default::default(),
            status: None,
            own_record: None,
            partners: BTreeSet::new(),
            partners_drawn_from: 0,
            backoff: BTreeMap::new(),
            last_used: BTreeMap::new(),
            rounds: 0,
            planned_at_root: None,
            last_budget: (0, BTreeSet::new()),
            rng: Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            out: Vec::new(),
        };
        for (id, addr) in core.cfg.bootstrap.clone() {
            if id != core.cfg.node_id {
                core.out.push(Effect::SetPeer(id, PeerInfo::public(addr)));
            }
        }
        core.set_members(core.cfg.bootstrap.iter().map(|(id, _)| *id).collect());
        core.refresh_directory(now_ms);
        core
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// How the peer cache was found at start (`fresh`, `restored N records`,
    /// `corrupt (...)`).
    pub fn cache_state(&self) -> &str {
        &self.cache_state
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The directory view as of the last rebuild.
    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// Records held.
    pub fn record_count(&self) -> usize {
        self.gossip.len()
    }

    /// The status last published.
    pub fn status(&self) -> Option<&NodeStatus> {
        self.status.as_ref()
    }

    /// Effects decided since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// One gossip round: rebuild the directory if records changed, start the
    /// round's exchanges, update the probe targets and the peer plan, publish
    /// status, and save the cache when it is dirty and due.
    pub fn round(&mut self, now_ms: u64, links: &dyn LinkView) {
        self.refresh_directory(now_ms);
        self.rounds += 1;
        let peers = self.gossip_peers(now_ms);
        let sends = self.gossip.tick(now_ms, &peers);
        for s in &sends {
            self.last_used.insert(s.to, now_ms);
        }
        self.out.extend(sends.into_iter().map(Effect::Send));
        self.probe_core_services();
        // Planning reads every directory node: redo it when the directory
        // changed, and otherwise every few rounds for what links changed.
        let root = self.gossip.root();
        if self.planned_at_root != Some(root) || self.rounds % PLAN_EVERY_ROUNDS == 0 {
            self.planned_at_root = Some(root);
            self.plan_peers(links);
        }
        self.close_idle(now_ms, links);
        let budget = (self.inbound_allowance(), self.wanted());
        if budget != self.last_budget {
            self.last_budget = budget.clone();
            self.out.push(Effect::Budget {
                inbound: budget.0,
                wanted: budget.1,
            });
        }
        self.publish_status(now_ms, links);
        let due = self
            .last_save_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= CACHE_SAVE_INTERVAL_MS);
        if self.dirty && due {
            self.save_cache(now_ms);
        }
    }

    /// A gossip message from `from` (whose NodeId the transport verified).
    pub fn on_gossip(&mut self, from: NodeId, payload: &[u8], now_ms: u64, links: &dyn LinkView) {
        self.seen(from, now_ms, links);
        self.last_used.insert(from, now_ms);
        let out = self.gossip.handle_datagram(from, payload, now_ms);
        if !out.accepted.is_empty() {
            self.dirty = true;
            self.refresh_directory(now_ms);
        }
        self.out.extend(out.outgoing.into_iter().map(Effect::Send));
    }

    /// Admits a signed envelope as the control plane would hand it to this
    /// node. `Ok(true)` if it was new.
    pub fn inject(&mut self, bytes: Vec<u8>, now_ms: u64) -> Result<bool, String> {
        let r = insert_signed(&mut self.gossip, bytes, now_ms);
        if matches!(r, Ok(true)) {
            self.dirty = true;
            self.refresh_directory(now_ms);
        }
        r
    }

    /// A probe of a core-service provider finished.
    pub fn on_probe(&mut self, p: ProbeResult, links: &dyn LinkView) {
        if p.ok {
            let id = self.dir.nodes.get(&p.target).map(|n| n.node_id);
            if let Some(id) = id {
                self.seen(id, p.at_ms, links);
            }
            self.last_probe = Some(p.clone());
            self.observations
                .entry(p.target.clone())
                .or_default()
                .last_ok_probe_ms = Some(p.at_ms);
            self.dirty = true;
        } else if self.last_probe.is_none() {
            self.last_probe = Some(p.clone());
        }
        self.probes.entry(p.target.clone()).or_default().record(p);
    }

    /// A [`Effect::Send`] finished.
    pub fn on_sent(&mut self, to: NodeId, ok: bool, now_ms: u64, links: &dyn LinkView) {
        if ok {
            self.backoff.remove(&to);
        } else {
            // Exponential backoff with jitter (0.5x to 1.5x), so a dead or
            // refusing peer is not retried every round and a mass restart
            // does not retry in lockstep.
            let b = self.backoff.entry(to).or_default();
            b.failures = b.failures.saturating_add(1);
            let base = self
                .cfg
                .gossip
                .round_ms
                .saturating_mul(1u64 << b.failures.min(16))
                .min(PEER_BACKOFF_CAP_MS);
            let jitter = self.rng.next_u64() % (base + 1);
            b.next_ms = now_ms + base / 2 + jitter;
            self.partners.remove(&to);
        }
        if let Some(name) = self.dir.node_by_id(&to).map(|n| n.name.clone()) {
            let o = self.observations.entry(name).or_default();
            if ok {
                o.last_seen_ms = Some(now_ms);
            }
            o.path = links.path(to);
            o.rtt_ms = links.rtt(to).map(|d| d.as_millis() as u64);
        }
    }

    /// A [`Effect::SaveCache`] finished.
    pub fn on_cache_saved(&mut self, ok: bool) {
        if ok {
            self.dirty = false;
        }
    }

    /// The node is stopping: a last save of the cache.
    pub fn shutdown(&mut self, now_ms: u64) {
        self.save_cache(now_ms);
    }

    fn seen(&mut self, id: NodeId, at_ms: u64, links: &dyn LinkView) {
        if let Some(name) = self.dir.node_by_id(&id).map(|n| n.name.clone()) {
            let o = self.observations.entry(name).or_default();
            o.last_seen_ms = Some(at_ms);
            o.path = links.path(id);
        }
    }

    fn set_members(&mut self, members: BTreeSet<NodeId>) {
        if members != self.members {
            self.members = members.clone();
            self.out.push(Effect::Members(members));
        }
    }

    fn refresh_directory(&mut self, now_ms: u64) {
        let now = (now_ms / 1000) as i64;
        // Decoding every envelope is the expensive part: skip it while the
        // store's summary root is unchanged and nothing has expired since.
        let root = self.gossip.root();
        if self.dir_root == Some(root) && self.dir.next_expiry.is_none_or(|t| now < t) {
            return;
        }
        self.dir_root = Some(root);
        let envelopes = self.gossip.envelopes();
        let dir = Directory::from_envelopes(&envelopes, now);
        if dir == self.dir {
            // A renewed lease can leave the view as it was.
            self.check_leases(&envelopes, now);
            return;
        }
        for n in dir.nodes.values() {
            if n.node_id != self.cfg.node_id {
                self.out.push(Effect::SetPeer(n.node_id, n.peer_info()));
            }
        }
        for (id, addr) in &self.cfg.bootstrap {
            if dir.node_by_id(id).is_none() && *id != self.cfg.node_id {
                self.out.push(Effect::SetPeer(*id, PeerInfo::public(*addr)));
            }
        }
        let members = dir
            .nodes
            .values()
            .map(|n| n.node_id)
            .chain(self.cfg.bootstrap.iter().map(|(id, _)| *id))
            .collect();
        self.set_members(members);
        self.dir = dir;
        self.check_leases(&envelopes, now);
        self.refresh_own_record();
    }

    /// This node's own `FabricNode` record, when the directory holds one that
    /// names this node's key: the membership proof it presents.
    fn refresh_own_record(&mut self) {
        let mine = self
            .dir
            .nodes
            .get(&self.cfg.name)
            .filter(|n| n.node_id == self.cfg.node_id)
            .and_then(|_| {
                self.gossip.get(&RecordKey::new(
                    Kind::FabricNode.code(),
                    self.cfg.name.clone(),
                ))
            })
            .map(|e| e.bytes.clone());
        if mine != self.own_record {
            self.own_record = mine.clone();
            self.out.push(Effect::OwnRecord(mine));
        }
    }

    /// Checks a membership proof from `peer` (see [`crate::membership`]):
    /// the cheap checks, then `accept` against the trust root and the high-water
    /// marks. A valid proof is kept as a record (it is one), so the peer is
    /// a known member from then on.
    pub fn admit_proof(
        &mut self,
        peer: NodeId,
        proof: &[u8],
        now_ms: u64,
    ) -> Result<(), crate::membership::Refusal> {
        use crate::membership::{precheck, Refusal};
        if self.members.contains(&peer) {
            return Ok(());
        }
        precheck(peer, proof)?;
        match insert_signed(&mut self.gossip, proof.to_vec(), now_ms) {
            Ok(true) => {
                self.dirty = true;
                self.refresh_directory(now_ms);
                if self.members.contains(&peer) {
                    Ok(())
                } else {
                    // Admitted, yet the directory kept another record for
                    // that key (a clash): not proof enough.
                    Err(Refusal::Stale)
                }
            }
            Ok(false) => Err(Refusal::Stale),
            Err(_) => Err(Refusal::Rejected),
        }
    }

    /// Runs lease admission on every lease this node holds; a change in the
    /// outcome is logged once.
    fn check_leases(&mut self, envelopes: &[gossip::Envelope], now: i64) {
        let checks = crate::leases::check_held_leases(
            &self.cfg.name,
            self.gossip.admission().trust(),
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
        self.refresh_update_inputs(envelopes, now);
    }

    /// The updater's view: intents for this node (target and scope checked
    /// here), the lease checks, and where artifacts may come from.
    fn refresh_update_inputs(&mut self, envelopes: &[gossip::Envelope], now: i64) {
        use crate::update::intents::{artifact_sources, intents_for, UpdateInputs};
        let (intents, refused) = match self.dir.nodes.get(&self.cfg.name) {
            Some(me) if me.node_id == self.cfg.node_id => {
                intents_for(&self.cfg.name, &me.spec, envelopes, Some(&self.dir), now)
            }
            // Without its own record the node cannot tell what targets it.
            _ => Default::default(),
        };
        let neighbours: BTreeSet<NodeId> = self.planned.union(&self.partners).copied().collect();
        let (sources, fallback) = artifact_sources(self.cfg.node_id, &neighbours, &self.dir);
        let inputs = UpdateInputs {
            intents,
            refused,
            leases: self.leases.clone(),
            sources,
            fallback,
        };
        if inputs != self.update_inputs {
            self.update_inputs = inputs.clone();
            self.out.push(Effect::Update(Box::new(inputs)));
        }
    }

    fn backing_off(&self, id: &NodeId, now_ms: u64) -> bool {
        self.backoff.get(id).is_some_and(|b| now_ms < b.next_ms)
    }

    /// The peers this round's exchanges and pushes may go to: the planned
    /// peers plus a bounded, sticky set of gossip partners, minus peers
    /// backing off. Every bootstrap peer and every directory node is a
    /// candidate partner, so joining depends on no single node; one partner
    /// is swapped for a random other every [`PARTNER_CHURN_ROUNDS`] rounds.
    fn gossip_peers(&mut self, now_ms: u64) -> Vec<NodeId> {
        let me = self.cfg.node_id;
        let mut eligible: Vec<NodeId> = self
            .dir
            .nodes
            .values()
            .map(|n| n.node_id)
            .chain(self.cfg.bootstrap.iter().map(|(id, _)| *id))
            .filter(|id| *id != me)
            .collect();
        eligible.sort();
        eligible.dedup();
        eligible.retain(|id| !self.backing_off(id, now_ms));
        let budget = self
            .cfg
            .gossip_partners
            .unwrap_or_else(|| default_partners(self.dir.nodes.len().max(eligible.len())));
        let before = self.partners.clone();
        self.partners
            .retain(|id| eligible.binary_search(id).is_ok());
        // Partners picked while the node knew only a few peers (its bootstrap
        // list at a cold start) are drawn again once it knows twice as many,
        // so a whole fleet does not stay attached to its bootstrap nodes.
        if eligible.len() >= 2 * self.partners_drawn_from.max(1) {
            self.partners.clear();
            self.partners_drawn_from = eligible.len();
        }
        if self.rounds % PARTNER_CHURN_ROUNDS == 0 && self.partners.len() >= budget {
            let drop = self.rng.next_u64() as usize % self.partners.len();
            if let Some(id) = self.partners.iter().nth(drop).copied() {
                self.partners.remove(&id);
            }
        }
        let mut spare: Vec<NodeId> = eligible
            .iter()
            .filter(|id| !self.partners.contains(id))
            .copied()
            .collect();
        while self.partners.len() < budget && !spare.is_empty() {
            let i = self.rng.next_u64() as usize % spare.len();
            self.partners.insert(spare.swap_remove(i));
        }
        // A partner dropped for another is closed at once (unless planned):
        // it must not keep a slot of the budget until it idles out.
        for gone in before.difference(&self.partners) {
            if !self.planned.contains(gone) {
                self.last_used.remove(gone);
                self.out.push(Effect::Disconnect(*gone));
            }
        }
        let mut peers: BTreeSet<NodeId> = self.partners.clone();
        peers.extend(
            self.planned
                .iter()
                .filter(|id| !self.backing_off(id, now_ms))
                .copied(),
        );
        peers.into_iter().collect()
    }

    /// Whether this node wants a connection to `peer` (planned or partner).
    pub fn wants(&self, peer: &NodeId) -> bool {
        self.partners.contains(peer)
            || self.planned.contains(peer)
            || self.probe_targets.values().any(|id| id == peer)
    }

    /// Connections this node wants: its planned peers, its gossip partners
    /// and the core-service providers it probes (and sends heartbeats to).
    fn wanted(&self) -> BTreeSet<NodeId> {
        self.partners
            .union(&self.planned)
            .copied()
            .chain(self.probe_targets.values().copied())
            .filter(|id| *id != self.cfg.node_id)
            .collect()
    }

    /// Whether this node provides a core service (the whole fleet probes it).
    fn provides_core_service(&self) -> bool {
        self.probe_targets.contains_key(&self.cfg.name)
    }

    /// The most connections this node should hold: what it opens (planned
    /// peers, partners, the core-service providers), as many again as its
    /// partners for peers that chose it, room for the churn of one partner,
    /// and, on a core-service provider, one per fleet node (every node
    /// probes it).
    pub fn connection_budget(&self) -> usize {
        let partners = self
            .cfg
            .gossip_partners
            .unwrap_or_else(|| default_partners(self.dir.nodes.len()));
        let serving = if self.provides_core_service() {
            self.dir.nodes.len()
        } else {
            0
        };
        self.planned.len() + self.probe_targets.len() + 2 * partners + 2 + serving
    }

    /// Connections to peers this node does not want (peers that chose it)
    /// it accepts: the budget minus what it wants itself, so the total stays
    /// within the budget.
    pub fn inbound_allowance(&self) -> usize {
        self.connection_budget().saturating_sub(self.wanted().len())
    }

    /// Closes connections gossip has not used for [`IDLE_CLOSE_MS`] to peers
    /// this node does not want; over budget, the least recently used of
    /// those go first whatever their age.
    fn close_idle(&mut self, now_ms: u64, links: &dyn LinkView) {
        let wanted = self.wanted();
        let connected = links.connected();
        let over_by = connected.len().saturating_sub(self.connection_budget());
        let mut closable: Vec<(u64, NodeId)> = connected
            .into_iter()
            .filter(|id| !wanted.contains(id))
            .map(|id| (self.last_used.get(&id).copied().unwrap_or(0), id))
            .collect();
        closable.sort();
        let mut over = over_by;
        for (used, id) in closable {
            let idle = now_ms.saturating_sub(used);
            if idle >= IDLE_CLOSE_MS || over > 0 {
                over = over.saturating_sub(1);
                self.last_used.remove(&id);
                self.out.push(Effect::Disconnect(id));
            }
        }
    }

    /// Tells the probe loop which providers to probe; a provider new to it
    /// is probed at once (the loop requeues or backs off on its own).
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
        if self.probe_targets == targets {
            return;
        }
        for name in targets.keys() {
            if !self.probe_targets.contains_key(name) {
                self.out.push(Effect::ProbeNow(name.clone()));
            }
        }
        self.probe_targets = targets.clone();
        self.out.push(Effect::ProbeTargets(targets));
    }

    /// Feeds the planner what the transport has ready, computes the seed's P3
    /// metrics and keeps the planned peers connected.
    fn plan_peers(&mut self, links: &dyn LinkView) {
        let mut candidates = Vec::new();
        for n in self
            .dir
            .nodes
            .values()
            .filter(|n| n.node_id != self.cfg.node_id)
        {
            let path = links.path(n.node_id);
            let rtt = links.rtt(n.node_id);
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
            id: self.cfg.node_id,
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
        let planned: BTreeSet<NodeId> = plan
            .direct_peers()
            .into_iter()
            .chain(plan.relay_peers())
            .collect();
        for id in &planned {
            if links.path(*id).is_none() {
                self.out.push(Effect::Redial(*id));
            }
        }
        if planned != self.planned {
            self.planned = planned.clone();
            self.out.push(Effect::Planned(planned));
        }
    }

    fn registry(&self, now_ms: u64) -> RegistryReport {
        registry::report(&self.dir, &self.probes, self.last_probe.as_ref(), now_ms)
    }

    fn publish_status(&mut self, now_ms: u64, links: &dyn LinkView) {
        let stats = self.gossip.stats();
        let mut gossip_rejections = BTreeMap::new();
        for r in gossip::RejectReason::ALL {
            let n = stats.rejected(r);
            if n > 0 {
                gossip_rejections.insert(r.label().to_owned(), n);
            }
        }
        let status = NodeStatus {
            name: self.cfg.name.clone(),
            node_id: self.cfg.node_id.to_string(),
            listen: self.cfg.local_addr.to_string(),
            area: self.cfg.labels.area.clone(),
            site_id: self.cfg.labels.site_id.clone(),
            nat_group: self.cfg.labels.nat_group.clone(),
            directory_records: self.dir.records,
            directory_nodes: self.dir.nodes.len(),
            directory_services: self.dir.services.len(),
            directory_conflicts: self.dir.conflicts.clone(),
            registry: self.registry(now_ms),
            rejections: self
                .gossip
                .admission()
                .rejections()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            gossip_rejections,
            gossip_accepted: stats.accepted,
            peer_cache: self.cache_state.clone(),
            observations: self.observations.clone(),
            edge_listeners: links.edge_listeners(),
            peer_metrics: self.metrics,
            refused_channels: links.refused_channels(),
            door_refusals: links.refusals(),
            connections: links.connected().len(),
            connection_budget: self.connection_budget(),
            gossip_partners: self.partners.len(),
            resilience: self.resilience.clone(),
            leases: self.leases.clone(),
            // The driver fills these from the updater and the checks.
            update: None,
            updater: None,
            health: None,
            artifact_bytes_served: 0,
            host: None,
            updated_ms: now_ms,
        };
        let preferred = status
            .registry
            .resolved_core_services
            .get(fabric_proto::endpoint::CONTROL_API_SERVICE)
            .cloned()
            .unwrap_or_default();
        let canonical = crate::control::canonical_from_directory(&self.dir, &preferred);
        if canonical != self.canonical {
            self.canonical = canonical.clone();
            self.out.push(Effect::Canonical(canonical));
        }
        self.status = Some(status.clone());
        self.out.push(Effect::Status(Box::new(status)));
    }

    fn save_cache(&mut self, now_ms: u64) {
        let now_s = (now_ms / 1000) as i64;
        let records = self
            .gossip
            .envelopes()
            .into_iter()
            .filter(|e| {
                // Expired records are swept rather than carried across a restart.
                SignedEnvelope::decode(&e.bytes).is_ok_and(|s| s.record.expires_at > now_s)
            })
            .map(|e| hex::encode(&e.bytes))
            .collect();
        self.last_save_ms = Some(now_ms);
        self.out.push(Effect::SaveCache(CacheContent {
            records,
            observations: self.observations.clone(),
        }));
    }
}

fn insert_signed(
    gossip: &mut Gossip<RecordAdmission>,
    bytes: Vec<u8>,
    now_ms: u64,
) -> Result<bool, String> {
    let signed = SignedEnvelope::decode(&bytes).map_err(|e| e.to_string())?;
    let key = RecordKey::new(signed.record.kind.code(), signed.record.name.clone());
    let env = gossip::Envelope::new(key, signed.record.generation, bytes);
    gossip.insert_local(env, now_ms).map_err(|r| r.to_string())
}

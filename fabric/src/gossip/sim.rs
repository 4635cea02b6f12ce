//! Deterministic in-process network driving the real [`Gossip`] core.
//!
//! Discrete-event simulation: every node ticks once per `round_ms` at a random
//! phase; each datagram gets a latency drawn from `latency_min_ms..=latency_max_ms`
//! and may be lost (`loss_ppm`) or cut by a partition. All randomness comes
//! from [`Rng`] seeded by `SimConfig::seed`, and nothing iterates a hash map
//! in a way that reaches the output, so a seed reproduces a run exactly.
//!
//! A "round" in the reports is one `round_ms` window of simulated time, i.e.
//! one tick of every node; the message exchanges a tick starts complete
//! within the window because latency is far below `round_ms`.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::core::{Gossip, GossipConfig};
use super::record::{Admission, AdmittedRecord, Envelope, RecordKey, RejectReason};
use super::rng::Rng;
use super::store::Snapshot;
use crate::topology::NodeId;

/// Kind tag the simulator uses for node records.
pub const NODE_RECORD_KIND: u8 = 1;
/// Kind tag the simulator uses for other (service) records.
pub const SERVICE_RECORD_KIND: u8 = 2;
/// Simulated wall clock at start (ms since the Unix epoch), so expiry checks
/// see realistic values.
pub const SIM_EPOCH_MS: u64 = 1_780_000_000_000;

/// Lifetime of the records the simulator mints (node records, `Sim::record`).
pub const SIM_RECORD_TTL_MS: u64 = 86_400_000;

const MAGIC: &[u8; 4] = b"SIMR";
const TAG_BYTES: usize = 16;

/// Stand-in for `fabric_schemas::accept` with the same failure modes:
/// a record is `MAGIC kind name_len name generation expires_ms payload tag`,
/// where `tag` is a keyed SHA-256 over the rest with the fleet secret. A
/// wrong tag is a forgery; an old generation is a rollback.
#[derive(Clone, Debug)]
pub struct SimAdmission {
    secret: [u8; 32],
    /// Admission calls made (each stands for a signature verification).
    pub calls: u64,
}

impl SimAdmission {
    /// Accepts records tagged with `secret`, the simulated fleet's signing key.
    pub fn new(secret: [u8; 32]) -> Self {
        SimAdmission { secret, calls: 0 }
    }
}

fn tag(secret: &[u8; 32], body: &[u8]) -> [u8; TAG_BYTES] {
    let mut h = Sha256::new();
    h.update(b"fabric/gossip/sim-signature\0");
    h.update(secret);
    h.update(body);
    let full = h.finalize();
    let mut out = [0u8; TAG_BYTES];
    out.copy_from_slice(&full[..TAG_BYTES]);
    out
}

/// Builds a record "signed" with `secret` (use another secret to forge one).
pub fn sim_record(
    secret: &[u8; 32],
    key: &RecordKey,
    generation: u64,
    expires_ms: u64,
    payload: &[u8],
) -> Envelope {
    let mut body = Vec::with_capacity(4 + 2 + key.name.len() + 16 + payload.len() + TAG_BYTES);
    body.extend_from_slice(MAGIC);
    body.push(key.kind);
    // Names longer than the wire allows cannot be gossiped anyway.
    body.push(key.name.len().min(255) as u8);
    body.extend_from_slice(&key.name.as_bytes()[..key.name.len().min(255)]);
    body.extend_from_slice(&generation.to_be_bytes());
    body.extend_from_slice(&expires_ms.to_be_bytes());
    body.extend_from_slice(payload);
    let t = tag(secret, &body);
    body.extend_from_slice(&t);
    Envelope::new(key.clone(), generation, body)
}

impl Admission for SimAdmission {
    fn admit(
        &mut self,
        bytes: &[u8],
        held: Option<(u64, [u8; 32])>,
        now_ms: u64,
    ) -> Result<AdmittedRecord, RejectReason> {
        self.calls += 1;
        let malformed = RejectReason::Malformed;
        if bytes.len() < 4 + 2 + 16 + TAG_BYTES || &bytes[..4] != MAGIC {
            return Err(malformed);
        }
        let (body, t) = bytes.split_at(bytes.len() - TAG_BYTES);
        if tag(&self.secret, body) != t {
            return Err(RejectReason::Forged);
        }
        let kind = body[4];
        let name_len = usize::from(body[5]);
        let name = body.get(6..6 + name_len).ok_or(malformed)?;
        let name = std::str::from_utf8(name).map_err(|_| malformed)?;
        let rest = body.get(6 + name_len..6 + name_len + 16).ok_or(malformed)?;
        let mut g = [0u8; 8];
        g.copy_from_slice(&rest[..8]);
        let mut x = [0u8; 8];
        x.copy_from_slice(&rest[8..]);
        let generation = u64::from_be_bytes(g);
        let expires_at_ms = u64::from_be_bytes(x);
        if expires_at_ms <= now_ms {
            return Err(RejectReason::Expired);
        }
        if held.is_some_and(|(h, _)| generation < h) {
            return Err(RejectReason::Stale);
        }
        Ok(AdmittedRecord {
            key: RecordKey::new(kind, name),
            generation,
            expires_at_ms: Some(expires_at_ms),
        })
    }
}

/// Network and workload parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Fleet size.
    pub nodes: usize,
    /// Seeds every random choice: node ids, tick phases, latency, loss, peer picks.
    pub seed: u64,
    /// Shortest one-way datagram latency.
    pub latency_min_ms: u64,
    /// Longest one-way datagram latency (latency is uniform in between).
    pub latency_max_ms: u64,
    /// Datagram loss, parts per million.
    pub loss_ppm: u32,
    /// Opaque payload per record; with the header and tag a node record is
    /// `payload_bytes + ~110` bytes on the wire.
    pub payload_bytes: usize,
    /// All nodes tick at the same instant (the synchronous model of the
    /// push-pull analysis) instead of at random phases.
    pub lockstep: bool,
    /// Tunables every node's gossip core gets.
    pub gossip: GossipConfig,
}

impl SimConfig {
    /// `nodes` nodes seeded with `seed`: 5-50 ms latency, no loss, 200-byte
    /// payloads, random tick phases, default gossip tunables.
    pub fn new(nodes: usize, seed: u64) -> Self {
        SimConfig {
            nodes,
            seed,
            latency_min_ms: 5,
            latency_max_ms: 50,
            loss_ppm: 0,
            payload_bytes: 200,
            lockstep: false,
            gossip: GossipConfig::default(),
        }
    }
}

/// Traffic counters since the last [`Sim::reset_metrics`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimReport {
    /// Fleet size (the divisor of the per-node means).
    pub nodes: usize,
    /// Rounds (`round_ms` windows) run.
    pub rounds: u32,
    /// Datagrams sent, including those then lost or cut by a partition.
    pub messages: u64,
    /// Bytes of those datagrams.
    pub bytes: u64,
    /// Most bytes one node sent in one of its rounds (tick to tick).
    pub max_node_round_sent: u64,
    /// Most bytes one node received in one of its rounds (tick to tick).
    pub max_node_round_recv: u64,
    /// Datagrams dropped by random loss (`loss_ppm`).
    pub dropped_loss: u64,
    /// Datagrams dropped because sender and receiver were in different partition groups.
    pub dropped_partition: u64,
    /// Bytes sent per message type (see [`super::MESSAGE_TYPES`]).
    pub bytes_by_type: [u64; 6],
}

impl SimReport {
    /// Mean bytes sent per node per round (equal to bytes received, less loss).
    pub fn bytes_per_node_round(&self) -> f64 {
        self.bytes as f64 / (self.nodes.max(1) as f64 * f64::from(self.rounds.max(1)))
    }

    /// Mean datagrams sent per node per round.
    pub fn msgs_per_node_round(&self) -> f64 {
        self.messages as f64 / (self.nodes.max(1) as f64 * f64::from(self.rounds.max(1)))
    }
}

struct Event {
    at: u64,
    seq: u64,
    kind: EventKind,
}

enum EventKind {
    Tick(u32),
    Deliver {
        from: u32,
        to: u32,
        payload: Vec<u8>,
    },
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The simulated fleet.
pub struct Sim {
    cfg: SimConfig,
    secret: [u8; 32],
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
    nodes: Vec<Gossip<SimAdmission>>,
    queue: BinaryHeap<Reverse<Event>>,
    seq: u64,
    now: u64,
    rng: Rng,
    group: Option<Vec<u32>>,
    win_sent: Vec<u64>,
    win_recv: Vec<u64>,
    report: SimReport,
    type_baseline: [u64; 6],
}

impl Sim {
    /// A fleet with empty directories.
    pub fn new(cfg: SimConfig) -> Self {
        Self::build(cfg, |_, _| None)
    }

    /// Every node starts holding the same full directory: one node record per
    /// node, generation 1 (a seeded state, shared in memory).
    pub fn full_directory(cfg: SimConfig) -> Self {
        Self::build(cfg, |ids, make| {
            // The expiry `make` signs into every record, as admission would
            // report it.
            let expires_at_ms = Some(SIM_EPOCH_MS + SIM_RECORD_TTL_MS);
            let envs: Vec<(Envelope, Option<u64>)> =
                ids.iter().map(|id| (make(id, 1), expires_at_ms)).collect();
            Some(Arc::new(Snapshot::from_admitted(envs)))
        })
    }

    /// Every node starts holding only its own node record.
    pub fn cold_start(cfg: SimConfig) -> Self {
        let mut sim = Self::new(cfg);
        for i in 0..sim.nodes.len() {
            let env = sim.node_record(i, 1);
            // Cannot fail: the record is fresh and correctly signed.
            let _ = sim.nodes[i].insert_local(env, sim.now);
        }
        sim
    }

    fn build(
        cfg: SimConfig,
        snapshot: impl FnOnce(&[NodeId], &dyn Fn(&NodeId, u64) -> Envelope) -> Option<Arc<Snapshot>>,
    ) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let mut secret = [0u8; 32];
        for c in secret.chunks_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let mut ids = Vec::with_capacity(cfg.nodes);
        let mut index = HashMap::with_capacity(cfg.nodes);
        while ids.len() < cfg.nodes {
            let mut b = [0u8; 32];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            let id = NodeId(b);
            if index.insert(id, ids.len() as u32).is_none() {
                ids.push(id);
            }
        }
        let now = SIM_EPOCH_MS;
        let payload = vec![0xA5u8; cfg.payload_bytes];
        let make = |id: &NodeId, generation: u64| {
            let key = RecordKey::new(NODE_RECORD_KIND, id.to_string());
            sim_record(&secret, &key, generation, now + SIM_RECORD_TTL_MS, &payload)
        };
        let base = snapshot(&ids, &make).unwrap_or_else(|| Arc::new(Snapshot::empty()));
        let nodes = ids
            .iter()
            .map(|id| {
                let seed = rng.next_u64();
                Gossip::with_snapshot(
                    *id,
                    cfg.gossip.clone(),
                    seed,
                    SimAdmission::new(secret),
                    base.clone(),
                )
            })
            .collect();
        let mut sim = Sim {
            secret,
            win_sent: vec![0; cfg.nodes],
            win_recv: vec![0; cfg.nodes],
            report: SimReport {
                nodes: cfg.nodes,
                ..SimReport::default()
            },
            ids,
            index,
            nodes,
            queue: BinaryHeap::new(),
            type_baseline: [0; 6],
            seq: 0,
            now,
            rng,
            group: None,
            cfg,
        };
        for i in 0..sim.cfg.nodes {
            let phase = if sim.cfg.lockstep {
                0
            } else {
                sim.rng.below(sim.cfg.gossip.round_ms)
            };
            sim.push(now + phase, EventKind::Tick(i as u32));
        }
        sim
    }

    fn push(&mut self, at: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A fleet of no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Simulated time in ms since the Unix epoch; starts at [`SIM_EPOCH_MS`].
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Node ids; node `i` of [`Sim::node`] has `ids()[i]`.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Node `i`'s gossip core, to inspect its directory and stats.
    pub fn node(&self, i: usize) -> &Gossip<SimAdmission> {
        &self.nodes[i]
    }

    /// Direct access, for tests that hand a node crafted datagrams.
    pub fn node_mut(&mut self, i: usize) -> &mut Gossip<SimAdmission> {
        &mut self.nodes[i]
    }

    /// The node record of node `i` at `generation`, validly signed.
    pub fn node_record(&self, i: usize, generation: u64) -> Envelope {
        let key = RecordKey::new(NODE_RECORD_KIND, self.ids[i].to_string());
        self.record(&key, generation)
    }

    /// A validly signed record expiring in a day.
    pub fn record(&self, key: &RecordKey, generation: u64) -> Envelope {
        let payload = vec![0x5Au8; self.cfg.payload_bytes];
        sim_record(
            &self.secret,
            key,
            generation,
            self.now + SIM_RECORD_TTL_MS,
            &payload,
        )
    }

    /// The fleet secret, for tests that need to sign (or mis-sign) records.
    pub fn secret(&self) -> [u8; 32] {
        self.secret
    }

    /// Hands `env` to node `i` as if obtained locally.
    pub fn insert(&mut self, i: usize, env: Envelope) -> Result<bool, RejectReason> {
        let now = self.now;
        self.nodes[i].insert_local(env, now)
    }

    /// Splits the network: datagrams between nodes of different groups are dropped.
    pub fn partition(&mut self, group_of: impl Fn(usize) -> u32) {
        self.group = Some((0..self.nodes.len()).map(group_of).collect());
    }

    /// Ends a [`Sim::partition`]: datagrams flow between all nodes again.
    pub fn heal(&mut self) {
        self.group = None;
    }

    /// Zeroes the report, so the next [`Sim::report`] covers only what runs after
    /// (scenarios call it once their setup is done).
    pub fn reset_metrics(&mut self) {
        self.report = SimReport {
            nodes: self.nodes.len(),
            ..SimReport::default()
        };
        self.type_baseline = self.bytes_by_type();
    }

    fn bytes_by_type(&self) -> [u64; 6] {
        let mut out = [0u64; 6];
        for n in &self.nodes {
            for (o, b) in out.iter_mut().zip(n.stats().bytes_out_by_type) {
                *o += b;
            }
        }
        out
    }

    /// Traffic since the last [`Sim::reset_metrics`] (or since the start).
    pub fn report(&self) -> SimReport {
        let mut r = self.report.clone();
        for ((o, now), base) in r
            .bytes_by_type
            .iter_mut()
            .zip(self.bytes_by_type())
            .zip(self.type_baseline)
        {
            *o = now - base;
        }
        r
    }

    /// Nodes holding `key` at `generation` or newer.
    pub fn holders(&self, key: &RecordKey, generation: u64) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.generation(key).is_some_and(|g| g >= generation))
            .count()
    }

    /// True when every node holds exactly the same directory.
    pub fn roots_agree(&self) -> bool {
        let r = self.nodes.first().map(|n| n.root());
        self.nodes.iter().all(|n| Some(n.root()) == r)
    }

    /// Runs one `round_ms` window of simulated time.
    pub fn run_round(&mut self) {
        let end = self.now + self.cfg.gossip.round_ms;
        while self.queue.peek().is_some_and(|Reverse(e)| e.at < end) {
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            self.now = ev.at;
            match ev.kind {
                EventKind::Tick(i) => {
                    let idx = i as usize;
                    // Per-node rounds run tick to tick (that is what the
                    // node's budget covers), so close the node's round here.
                    self.close_node_round(idx);
                    let out = self.nodes[idx].tick(ev.at, &self.ids);
                    self.push(ev.at + self.cfg.gossip.round_ms, EventKind::Tick(i));
                    for o in out {
                        self.transmit(i, o.to, o.payload);
                    }
                }
                EventKind::Deliver { from, to, payload } => {
                    self.win_recv[to as usize] += payload.len() as u64;
                    let from_id = self.ids[from as usize];
                    let out = self.nodes[to as usize].handle_datagram(from_id, &payload, ev.at);
                    for o in out.outgoing {
                        self.transmit(to, o.to, o.payload);
                    }
                }
            }
        }
        self.now = end;
        self.report.rounds += 1;
    }

    fn close_node_round(&mut self, i: usize) {
        self.report.max_node_round_sent = self.report.max_node_round_sent.max(self.win_sent[i]);
        self.report.max_node_round_recv = self.report.max_node_round_recv.max(self.win_recv[i]);
        self.win_sent[i] = 0;
        self.win_recv[i] = 0;
    }

    fn transmit(&mut self, from: u32, to: NodeId, payload: Vec<u8>) {
        let Some(&to) = self.index.get(&to) else {
            return;
        };
        self.win_sent[from as usize] += payload.len() as u64;
        self.report.messages += 1;
        self.report.bytes += payload.len() as u64;
        if let Some(g) = &self.group {
            if g[from as usize] != g[to as usize] {
                self.report.dropped_partition += 1;
                return;
            }
        }
        if self.cfg.loss_ppm > 0 && self.rng.chance_ppm(self.cfg.loss_ppm) {
            self.report.dropped_loss += 1;
            return;
        }
        let span = self
            .cfg
            .latency_max_ms
            .saturating_sub(self.cfg.latency_min_ms);
        let latency = self.cfg.latency_min_ms + self.rng.below(span + 1);
        let at = self.now + latency;
        self.push(at, EventKind::Deliver { from, to, payload });
    }

    /// Runs rounds until `done` holds (checked after each round); returns the
    /// number of rounds it took, or `None` after `max_rounds`.
    pub fn run_until(
        &mut self,
        max_rounds: u32,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u32> {
        if done(self) {
            return Some(0);
        }
        for r in 1..=max_rounds {
            self.run_round();
            if done(self) {
                return Some(r);
            }
        }
        None
    }
}

/// The push-pull bound of Karp, Schindelhauer, Shenker and Vöcking (2000):
/// log₃(N) + O(ln ln N) rounds; we use log₃(N) + ln(ln(N)) as its value.
pub fn push_pull_bound(n: usize) -> f64 {
    let n = (n.max(3)) as f64;
    n.ln() / 3f64.ln() + n.ln().ln()
}

/// Outcome of one scenario run.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioResult {
    /// The scenario's name: `inject-one`, `churn`, `cold-start` or `idle`.
    pub scenario: &'static str,
    /// Fleet size.
    pub nodes: usize,
    /// The seed, so the run can be repeated exactly.
    pub seed: u64,
    /// Rounds until the scenario's goal held; `None` if it did not within the
    /// allowed rounds.
    pub converged_round: Option<u32>,
    /// Traffic from the end of the scenario's setup to the end of the run.
    pub report: SimReport,
}

/// One new record injected at one node of a fleet whose full directory
/// (N node records) is already in sync; rounds until every node holds it.
pub fn scenario_inject_one(cfg: SimConfig, max_rounds: u32) -> ScenarioResult {
    let (nodes, seed) = (cfg.nodes, cfg.seed);
    let mut sim = Sim::full_directory(cfg);
    let key = RecordKey::new(SERVICE_RECORD_KIND, "update-store");
    let env = sim.record(&key, 1);
    let _ = sim.insert(0, env);
    sim.reset_metrics();
    let converged_round = sim.run_until(max_rounds, |s| s.holders(&key, 1) == s.len());
    ScenarioResult {
        scenario: "inject-one",
        nodes,
        seed,
        converged_round,
        report: sim.report(),
    }
}

/// `updates` nodes publish generation 2 of their node record at once into an
/// in-sync full directory; rounds until every node holds all of them.
pub fn scenario_churn(cfg: SimConfig, updates: usize, max_rounds: u32) -> ScenarioResult {
    let (nodes, seed) = (cfg.nodes, cfg.seed);
    let mut sim = Sim::full_directory(cfg);
    let stride = (nodes / updates.max(1)).max(1);
    let changed: Vec<usize> = (0..nodes).step_by(stride).take(updates).collect();
    let mut keys = Vec::new();
    for &i in &changed {
        let env = sim.node_record(i, 2);
        keys.push(env.key.clone());
        let _ = sim.insert(i, env);
    }
    sim.reset_metrics();
    let converged_round = sim.run_until(max_rounds, |s| {
        keys.iter().all(|k| s.holders(k, 2) == s.len())
    });
    ScenarioResult {
        scenario: "churn",
        nodes,
        seed,
        converged_round,
        report: sim.report(),
    }
}

/// Every node starts with only its own node record; rounds until every node
/// holds all N.
pub fn scenario_cold_start(cfg: SimConfig, max_rounds: u32) -> ScenarioResult {
    let (nodes, seed) = (cfg.nodes, cfg.seed);
    let mut sim = Sim::cold_start(cfg);
    sim.reset_metrics();
    let converged_round = sim.run_until(max_rounds, |s| s.nodes.iter().all(|n| n.len() == nodes));
    ScenarioResult {
        scenario: "cold-start",
        nodes,
        seed,
        converged_round,
        report: sim.report(),
    }
}

/// An in-sync full directory with nothing new: the steady-state cost.
pub fn scenario_idle(cfg: SimConfig, rounds: u32) -> ScenarioResult {
    let (nodes, seed) = (cfg.nodes, cfg.seed);
    let mut sim = Sim::full_directory(cfg);
    sim.reset_metrics();
    for _ in 0..rounds {
        sim.run_round();
    }
    ScenarioResult {
        scenario: "idle",
        nodes,
        seed,
        converged_round: Some(0),
        report: sim.report(),
    }
}

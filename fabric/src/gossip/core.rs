//! The sans-IO gossip state machine.
//!
//! Inputs: datagrams from peers ([`Gossip::handle_datagram`]), round ticks with
//! the current peer list ([`Gossip::tick`]) and local records
//! ([`Gossip::insert_local`]), each with the caller's `now_ms`. Outputs:
//! encoded datagrams to send and the records that were accepted. No sockets,
//! no clock, no global randomness: a seed fixes every random choice.
//!
//! One round = one tick. Each round this node
//! 1. opens one anti-entropy exchange with a random peer (push-pull):
//!    `SyncMids` -> `SyncLeaves` -> `SyncEntries` -> `Records(+want)` -> `Records`;
//!    both sides end up with whatever the other had newer in the leaves that
//!    differed, and the exchange narrows to those leaves so in-sync nodes
//!    spend ~520 bytes;
//! 2. pushes its hot records (the rumor wave) to `fanout` random peers.
//!
//! Before both, the tick drops every record whose expiry (from admission) has
//! passed, so nodes that dropped it agree on their summaries again; between
//! ticks an expired record is held but never offered.
//!
//! Every byte sent is charged to a per-round and a per-peer budget; every
//! byte received is charged to the sender's token bucket before decoding.

use std::collections::HashMap;
use std::sync::Arc;

use super::budget::{PeerGuard, TokenBucket};
use super::record::{
    digest_of, Admission, Envelope, KeyHash, RecordKey, RejectReason, MAX_NAME_BYTES,
};
use super::rng::Rng;
use super::rumor::HotSet;
use super::store::{Entry, Snapshot, Store};
use super::wire::{
    self, envelope_len, EntryDigest, LeafEntries, Message, MidLeaves, RumorAck, ENTRY_DIGEST_BYTES,
    HEADER_BYTES, KEY_HASH_BYTES, LEAF_COUNT, LEAVES_PER_MID, MAX_MESSAGE_BYTES, MID_COUNT,
    MID_LEAVES_BYTES, RUMOR_ACK_BYTES,
};
use crate::topology::NodeId;

/// Tunables. Defaults are sized for 10,000 nodes with ~300-byte records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipConfig {
    /// Nominal time between ticks; token buckets refill per this period.
    pub round_ms: u64,
    /// Peers each round's rumor wave is pushed to.
    pub fanout: usize,
    /// A hot record cools after this many rounds...
    pub rumor_max_rounds: u32,
    /// ...or after this many "already known" answers.
    pub rumor_stop_after_known: u32,
    /// Most records hot at once; older rumors are dropped beyond it.
    pub max_hot: usize,
    /// Bytes this node sends per round, all peers and messages together.
    pub round_budget_bytes: usize,
    /// Of which at most this much goes to rumor pushes.
    pub rumor_budget_bytes: usize,
    /// Bytes this node sends to any one peer per round.
    pub peer_round_budget_bytes: usize,
    /// Inbound token bucket per peer: burst size...
    pub peer_in_burst_bytes: u64,
    /// ...and refill per `round_ms`.
    pub peer_in_bytes_per_round: u64,
    /// Admission calls per peer per round (bounds signature checks).
    pub peer_admissions_per_round: u32,
    /// Largest record accepted.
    pub max_record_bytes: usize,
    /// Anti-entropy exchanges opened per round while catching up (the
    /// previous round pulled at least `catch_up_threshold` records); one
    /// otherwise.
    pub max_exchanges_per_round: usize,
    /// Records pulled in one round that count as catching up. While catching
    /// up, accepted records also stop joining the rumor wave (the fleet has
    /// them already).
    pub catch_up_threshold: u32,
    /// Mids expanded to leaf hashes per exchange.
    pub max_mids_per_exchange: usize,
    /// Entry digests listed per exchange.
    pub max_entries_per_exchange: usize,
    /// Keys requested per exchange.
    pub max_want_per_exchange: usize,
    /// Strike score at which a peer is ignored...
    pub ban_threshold: u32,
    /// ...for this long.
    pub ban_ms: u64,
    /// Strike score forgiven per round.
    pub strike_decay_per_round: u32,
    /// Peer state entries kept before idle ones are pruned.
    pub max_peer_states: usize,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            round_ms: 1000,
            fanout: 3,
            rumor_max_rounds: 8,
            rumor_stop_after_known: 3,
            max_hot: 512,
            round_budget_bytes: 48 * 1024,
            rumor_budget_bytes: 16 * 1024,
            peer_round_budget_bytes: 24 * 1024,
            peer_in_burst_bytes: 96 * 1024,
            peer_in_bytes_per_round: 48 * 1024,
            peer_admissions_per_round: 256,
            max_record_bytes: 8 * 1024,
            max_exchanges_per_round: 3,
            catch_up_threshold: 8,
            max_mids_per_exchange: 8,
            max_entries_per_exchange: 1024,
            max_want_per_exchange: 256,
            ban_threshold: 64,
            ban_ms: 60_000,
            strike_decay_per_round: 4,
            max_peer_states: 4096,
        }
    }
}

/// A datagram for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The peer to send it to.
    pub to: NodeId,
    /// One encoded gossip message, sent as a single datagram.
    pub payload: Vec<u8>,
}

/// A record that entered the directory (new key or higher generation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The record's key.
    pub key: RecordKey,
    /// The generation now held.
    pub generation: u64,
}

/// What handling one datagram produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Replies and follow-ups to send.
    pub outgoing: Vec<Outgoing>,
    /// Records the datagram brought into the directory.
    pub accepted: Vec<Accepted>,
}

/// Counters for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Records that entered the directory, gossiped or inserted locally.
    pub accepted: u64,
    /// Envelopes identical to the one held (same generation and digest), dropped
    /// without asking admission.
    pub duplicates: u64,
    rejected: [u64; RejectReason::ALL.len()],
    /// Datagrams that were not a valid gossip message (each a strike).
    pub decode_errors: u64,
    /// Datagrams dropped undecoded because the sender's token bucket was empty...
    pub rate_limited_msgs: u64,
    /// ...and their bytes.
    pub rate_limited_bytes: u64,
    /// Datagrams dropped undecoded because the sender is banned.
    pub banned_drops: u64,
    /// Times a peer's strikes reached `ban_threshold` and it was banned.
    pub bans: u64,
    /// Envelopes skipped unchecked because their sender used up its
    /// `peer_admissions_per_round`.
    pub admission_budget_skips: u64,
    /// Datagrams that passed the token bucket and went on to decoding.
    pub msgs_in: u64,
    /// Bytes that passed the token bucket and were decoded.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub msgs_out: u64,
    /// Bytes sent, all message types together.
    pub bytes_out: u64,
    /// Anti-entropy exchanges this node opened (`SyncMids` sent).
    pub exchanges_started: u64,
    /// `SyncMids` received whose root equalled ours, ending the exchange at once.
    pub exchanges_in_sync: u64,
    /// Records dropped from the directory because their expiry passed.
    pub expired: u64,
    /// Bytes sent per message type, indexed like [`MESSAGE_TYPES`].
    pub bytes_out_by_type: [u64; 6],
}

/// Labels of [`GossipStats::bytes_out_by_type`].
pub const MESSAGE_TYPES: [&str; 6] = [
    "sync_mids",
    "sync_leaves",
    "sync_entries",
    "records",
    "rumor",
    "rumor_feedback",
];

impl GossipStats {
    /// Envelopes refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()]
    }

    /// Envelopes refused for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

/// Outcome of [`Gossip::check`] for an envelope that passed.
enum Checked {
    /// Identical to the record held; nothing to store.
    Duplicate,
    /// Admitted and wins over what is held; store it with this expiry.
    New { expires_at_ms: Option<u64> },
}

enum Ingest {
    Accepted,
    Known,
    Rejected(RejectReason),
    Skipped,
}

/// The gossip core for one node. `A` is the caller's admission rule.
pub struct Gossip<A: Admission> {
    id: NodeId,
    cfg: GossipConfig,
    rng: Rng,
    admission: A,
    store: Store,
    hot: HotSet,
    peers: HashMap<NodeId, PeerGuard>,
    round: u64,
    round_sent: usize,
    rumor_sent: usize,
    /// Records accepted from anti-entropy replies since the last tick.
    pulled: u32,
    stats: GossipStats,
}

impl<A: Admission> Gossip<A> {
    /// A node with an empty directory.
    pub fn new(id: NodeId, cfg: GossipConfig, seed: u64, admission: A) -> Self {
        Self::with_snapshot(id, cfg, seed, admission, Arc::new(Snapshot::empty()))
    }

    /// A node starting from already-admitted records (its persisted cache).
    pub fn with_snapshot(
        id: NodeId,
        cfg: GossipConfig,
        seed: u64,
        admission: A,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        // Mix the node id into the seed so nodes built from one seed still
        // make independent choices.
        let mut mix = seed;
        for chunk in id.0.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            mix = super::rng::splitmix64(&mut mix) ^ u64::from_le_bytes(w);
        }
        Gossip {
            id,
            hot: HotSet::new(cfg.max_hot),
            cfg,
            rng: Rng::new(mix),
            admission,
            store: Store::new(snapshot),
            peers: HashMap::new(),
            round: 0,
            round_sent: 0,
            rumor_sent: 0,
            pulled: 0,
            stats: GossipStats::default(),
        }
    }

    /// This node's id; datagrams from it are ignored and it is never picked as a peer.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The tunables in force.
    pub fn config(&self) -> &GossipConfig {
        &self.cfg
    }

    /// Counters since construction.
    pub fn stats(&self) -> &GossipStats {
        &self.stats
    }

    /// The admission rule, e.g. to read state it keeps.
    pub fn admission(&self) -> &A {
        &self.admission
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// No records held.
    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// Summary root: equal on two nodes iff they hold the same records (w.h.p.).
    pub fn root(&self) -> u64 {
        self.store.root()
    }

    /// The held envelope for `key`; one past its expiry stays until the next tick.
    pub fn get(&self, key: &RecordKey) -> Option<&Envelope> {
        self.store.get(&key.hash()).map(|e| &e.envelope)
    }

    /// The generation held for `key`.
    pub fn generation(&self, key: &RecordKey) -> Option<u64> {
        self.store.get(&key.hash()).map(Entry::generation)
    }

    /// Every held envelope, for persisting the peer cache.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.store.envelopes()
    }

    /// Records being pushed by the rumor wave right now.
    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }

    /// Whether `peer` is banned at `now_ms`: its datagrams are dropped unread and
    /// it is not picked for exchanges or pushes.
    pub fn is_banned(&self, peer: &NodeId, now_ms: u64) -> bool {
        self.peers.get(peer).is_some_and(|g| g.banned(now_ms))
    }

    /// Adds a record this node obtained itself (from the control channel or
    /// its own signer). Same checks as a gossiped one; `Ok(true)` if it is new.
    pub fn insert_local(&mut self, env: Envelope, now_ms: u64) -> Result<bool, RejectReason> {
        let mut sink = Vec::new();
        match self.ingest(None, env, now_ms, &mut sink) {
            Ingest::Accepted => Ok(true),
            Ingest::Known | Ingest::Skipped => Ok(false),
            Ingest::Rejected(r) => Err(r),
        }
    }

    /// Starts a round: one anti-entropy exchange and the rumor pushes.
    /// `peers` is who the driver can currently reach (self is skipped).
    pub fn tick(&mut self, now_ms: u64, peers: &[NodeId]) -> Vec<Outgoing> {
        // Sweep first, so this round's SyncMids already describes the
        // directory without expired records: a receiver refuses those, so
        // keeping them would make every exchange differ and resend them.
        let swept = self.store.sweep(now_ms);
        if !swept.is_empty() {
            self.stats.expired += swept.len() as u64;
            tracing::debug!(count = swept.len(), "gossip records expired and dropped");
        }
        self.round += 1;
        self.round_sent = 0;
        self.rumor_sent = 0;
        let decay = self.cfg.strike_decay_per_round;
        for g in self.peers.values_mut() {
            g.strikes = g.strikes.saturating_sub(decay);
        }
        if self.peers.len() > self.cfg.max_peer_states {
            // Forget peers with nothing to remember: not banned, no strikes,
            // quiet for ten rounds. Their bucket would be full by now anyway.
            let idle = self.cfg.round_ms.saturating_mul(10);
            self.peers.retain(|_, g| {
                g.banned(now_ms) || g.strikes > 0 || now_ms.saturating_sub(g.last_seen) < idle
            });
        }

        let mut out = Vec::new();
        // A node that is far behind (cold start, long partition) pulls from
        // several peers per round; in steady state one exchange suffices.
        let exchanges = if self.pulled >= self.cfg.catch_up_threshold {
            self.cfg.max_exchanges_per_round.max(1)
        } else {
            1
        };
        self.pulled = 0;
        let msg = Message::SyncMids {
            root: self.store.root(),
            mids: Box::new(*self.store.mids()),
        };
        for partner in self.pick_peers(now_ms, peers, exchanges) {
            self.stats.exchanges_started += 1;
            self.send(partner, &msg, now_ms, &mut out);
        }

        if !self.hot.is_empty() {
            let targets = self.pick_peers(now_ms, peers, self.cfg.fanout);
            let hot = self.hot.by_freshness();
            for t in targets {
                let room = self
                    .room(&t)
                    .min(self.cfg.rumor_budget_bytes.saturating_sub(self.rumor_sent));
                let mut size = HEADER_BYTES + 2;
                let mut envelopes = Vec::new();
                for (k, g) in &hot {
                    let Some(e) = self.store.get(k) else { continue };
                    if e.generation() != *g || !e.live(now_ms) {
                        continue;
                    }
                    let len = envelope_len(&e.envelope);
                    if size + len > room {
                        break;
                    }
                    size += len;
                    envelopes.push(e.envelope.clone());
                }
                if !envelopes.is_empty() {
                    self.rumor_sent += size;
                    self.send(t, &Message::Rumor { envelopes }, now_ms, &mut out);
                }
            }
            self.hot
                .end_round(self.cfg.rumor_max_rounds, self.cfg.rumor_stop_after_known);
        }
        out
    }

    /// Handles one datagram from `from`.
    pub fn handle_datagram(&mut self, from: NodeId, payload: &[u8], now_ms: u64) -> Output {
        let mut out = Output::default();
        if from == self.id {
            return out;
        }
        let guard = self.guard(from, now_ms);
        guard.last_seen = now_ms;
        if guard.banned(now_ms) {
            self.stats.banned_drops += 1;
            return out;
        }
        if !guard.inbound.try_take(payload.len(), now_ms) {
            self.stats.rate_limited_msgs += 1;
            self.stats.rate_limited_bytes += payload.len() as u64;
            return out;
        }
        self.stats.msgs_in += 1;
        self.stats.bytes_in += payload.len() as u64;
        let msg = match wire::decode(payload) {
            Ok(m) => m,
            Err(err) => {
                self.stats.decode_errors += 1;
                tracing::debug!(peer = %from.short(), %err, "gossip decode error");
                self.strike(from, 4, now_ms);
                return out;
            }
        };
        match msg {
            Message::SyncMids { root, mids } => {
                self.on_sync_mids(from, root, &mids, now_ms, &mut out)
            }
            Message::SyncLeaves { mids } => self.on_sync_leaves(from, &mids, now_ms, &mut out),
            Message::SyncEntries { leaves } => {
                self.on_sync_entries(from, &leaves, now_ms, &mut out)
            }
            Message::Records { envelopes, want } => {
                for env in envelopes {
                    if let Ingest::Accepted =
                        self.ingest(Some(from), env, now_ms, &mut out.accepted)
                    {
                        self.pulled = self.pulled.saturating_add(1);
                    }
                }
                if !want.is_empty() {
                    self.send_wanted(from, &want, now_ms, &mut out);
                }
            }
            Message::Rumor { envelopes } => self.on_rumor(from, envelopes, now_ms, &mut out),
            Message::RumorFeedback { acks } => {
                for a in acks {
                    self.hot.feedback(&a.key, a.generation, a.known);
                }
            }
        }
        out
    }

    // ----- anti-entropy -----

    fn on_sync_mids(
        &mut self,
        from: NodeId,
        root: u64,
        mids: &[u64; MID_COUNT],
        now_ms: u64,
        out: &mut Output,
    ) {
        if root == self.store.root() {
            self.stats.exchanges_in_sync += 1;
            return;
        }
        let differing: Vec<usize> = (0..MID_COUNT)
            .filter(|&i| mids[i] != self.store.mids()[i])
            .collect();
        let room = self.room(&from);
        let fit = room.saturating_sub(HEADER_BYTES + 1) / MID_LEAVES_BYTES;
        let take = differing.len().min(self.cfg.max_mids_per_exchange).min(fit);
        if take == 0 {
            return;
        }
        // Rotate the start so that when many mids differ (cold start),
        // successive exchanges work on different parts of the key space.
        let start = self.rng.below(differing.len() as u64) as usize;
        let mut chosen: Vec<usize> = (0..take)
            .map(|i| differing[(start + i) % differing.len()])
            .collect();
        chosen.sort_unstable();
        let mids = chosen
            .into_iter()
            .map(|m| {
                let mut leaves = Box::new([0u64; LEAVES_PER_MID]);
                for (j, l) in leaves.iter_mut().enumerate() {
                    *l = self.store.leaf_hash((m * LEAVES_PER_MID + j) as u16);
                }
                MidLeaves {
                    mid: m as u8,
                    leaves,
                }
            })
            .collect();
        self.send(
            from,
            &Message::SyncLeaves { mids },
            now_ms,
            &mut out.outgoing,
        );
    }

    fn on_sync_leaves(&mut self, from: NodeId, mids: &[MidLeaves], now_ms: u64, out: &mut Output) {
        let mut differing = Vec::new();
        for m in mids {
            for (j, theirs) in m.leaves.iter().enumerate() {
                let leaf = (usize::from(m.mid) * LEAVES_PER_MID + j) as u16;
                if *theirs != self.store.leaf_hash(leaf) {
                    differing.push(leaf);
                }
            }
        }
        if differing.is_empty() {
            return;
        }
        let room = self.room(&from);
        let mut size = HEADER_BYTES + 2;
        let mut count = 0usize;
        let mut leaves = Vec::new();
        let start = self.rng.below(differing.len() as u64) as usize;
        for i in 0..differing.len() {
            let leaf = differing[(start + i) % differing.len()];
            // Expired entries awaiting the next sweep are left out, as if
            // already gone: listing them would only get them offered back.
            let entries: Vec<EntryDigest> = self
                .store
                .leaf_entries(leaf)
                .into_iter()
                .filter(|(_, e)| e.live(now_ms))
                .map(|(key, e)| EntryDigest {
                    key,
                    generation: e.generation(),
                })
                .collect();
            // Leaves are listed whole or not at all: the receiver treats a
            // listed leaf as complete, so a partial one would look like loss.
            let cost = 4 + entries.len() * ENTRY_DIGEST_BYTES;
            if size + cost > room || count + entries.len() > self.cfg.max_entries_per_exchange {
                break;
            }
            size += cost;
            count += entries.len();
            leaves.push(LeafEntries { leaf, entries });
        }
        if !leaves.is_empty() {
            self.send(
                from,
                &Message::SyncEntries { leaves },
                now_ms,
                &mut out.outgoing,
            );
        }
    }

    fn on_sync_entries(
        &mut self,
        from: NodeId,
        leaves: &[LeafEntries],
        now_ms: u64,
        out: &mut Output,
    ) {
        let mut give: Vec<KeyHash> = Vec::new();
        let mut want: Vec<KeyHash> = Vec::new();
        for l in leaves {
            if l.entries.iter().any(|e| e.key.leaf() != l.leaf) {
                // Cannot come from an honest encoder.
                self.strike(from, 4, now_ms);
                return;
            }
            let mine = self.store.leaf_entries(l.leaf);
            let theirs: HashMap<KeyHash, u64> =
                l.entries.iter().map(|e| (e.key, e.generation)).collect();
            for (k, e) in &mine {
                // Never offer an expired record: the peer would refuse it.
                if e.live(now_ms) && theirs.get(k).is_none_or(|g| *g < e.generation()) {
                    give.push(*k);
                }
            }
            for e in &l.entries {
                let held = self.store.get(&e.key).map(Entry::generation);
                if held.is_none_or(|g| g < e.generation) {
                    want.push(e.key);
                }
            }
        }
        let room = self.room(&from);
        // Wants are cheap and make the exchange two-way; give them up to a
        // quarter of the room, records get the rest.
        let want_cap = (room / 4 / KEY_HASH_BYTES).min(self.cfg.max_want_per_exchange);
        want.truncate(want_cap);
        let mut size = HEADER_BYTES + 2 + 2 + want.len() * KEY_HASH_BYTES;
        let mut envelopes = Vec::new();
        for k in give {
            let Some(e) = self.store.get(&k).filter(|e| e.live(now_ms)) else {
                continue;
            };
            let len = envelope_len(&e.envelope);
            if size + len > room {
                break;
            }
            size += len;
            envelopes.push(e.envelope.clone());
        }
        if !envelopes.is_empty() || !want.is_empty() {
            self.send(
                from,
                &Message::Records { envelopes, want },
                now_ms,
                &mut out.outgoing,
            );
        }
    }

    fn send_wanted(&mut self, to: NodeId, want: &[KeyHash], now_ms: u64, out: &mut Output) {
        let room = self.room(&to);
        let mut size = HEADER_BYTES + 2 + 2;
        let mut envelopes = Vec::new();
        for k in want.iter().take(self.cfg.max_want_per_exchange) {
            // A want for a record that has expired here goes unanswered.
            let Some(e) = self.store.get(k).filter(|e| e.live(now_ms)) else {
                continue;
            };
            let len = envelope_len(&e.envelope);
            if size + len > room {
                break;
            }
            size += len;
            envelopes.push(e.envelope.clone());
        }
        if !envelopes.is_empty() {
            let msg = Message::Records {
                envelopes,
                want: Vec::new(),
            };
            self.send(to, &msg, now_ms, &mut out.outgoing);
        }
    }

    // ----- rumor wave -----

    fn on_rumor(&mut self, from: NodeId, envelopes: Vec<Envelope>, now_ms: u64, out: &mut Output) {
        let mut acks = Vec::with_capacity(envelopes.len());
        let mut newer = Vec::new();
        for env in envelopes {
            let key = env.key.hash();
            let generation = env.generation;
            let known = match self.ingest(Some(from), env, now_ms, &mut out.accepted) {
                Ingest::Accepted | Ingest::Skipped => false,
                Ingest::Known => true,
                Ingest::Rejected(_) => {
                    // A peer pushing an older generation is behind: hand it
                    // ours so the wave also repairs instead of only refusing.
                    if self
                        .store
                        .get(&key)
                        .is_some_and(|e| e.generation() > generation)
                    {
                        newer.push(key);
                    }
                    true
                }
            };
            acks.push(RumorAck {
                key,
                generation,
                known,
            });
        }
        let room = self.room(&from);
        let fit = room.saturating_sub(HEADER_BYTES + 2) / RUMOR_ACK_BYTES;
        acks.truncate(fit);
        if !acks.is_empty() {
            self.send(
                from,
                &Message::RumorFeedback { acks },
                now_ms,
                &mut out.outgoing,
            );
        }
        if !newer.is_empty() {
            self.send_wanted(from, &newer, now_ms, out);
        }
    }

    // ----- admission -----

    fn ingest(
        &mut self,
        from: Option<NodeId>,
        env: Envelope,
        now_ms: u64,
        accepted: &mut Vec<Accepted>,
    ) -> Ingest {
        if let Some(p) = from {
            let (round, max) = (self.round, self.cfg.peer_admissions_per_round);
            if !self.guard(p, now_ms).try_admit(round, max) {
                self.stats.admission_budget_skips += 1;
                return Ingest::Skipped;
            }
        }
        match self.check(&env, now_ms) {
            Ok(Checked::Duplicate) => {
                self.stats.duplicates += 1;
                Ingest::Known
            }
            Ok(Checked::New { expires_at_ms }) => {
                let key = env.key.hash();
                accepted.push(Accepted {
                    key: env.key.clone(),
                    generation: env.generation,
                });
                // Bulk catch-up (many records pulled this round) is old news
                // to the fleet: re-pushing it would mostly produce duplicates.
                if self.pulled < self.cfg.catch_up_threshold {
                    self.hot.add(key, env.generation);
                }
                self.store.put(key, Entry::new(key, env, expires_at_ms));
                self.stats.accepted += 1;
                Ingest::Accepted
            }
            Err(reason) => {
                self.stats.rejected[reason.index()] += 1;
                if let Some(p) = from {
                    tracing::debug!(peer = %p.short(), reason = reason.label(), "gossip record rejected");
                    self.strike(p, reason.strike_weight(), now_ms);
                }
                Ingest::Rejected(reason)
            }
        }
    }

    /// Cheap checks first, so junk costs no hashing and no admission call.
    fn check(&mut self, env: &Envelope, now_ms: u64) -> Result<Checked, RejectReason> {
        if env.key.name.len() > MAX_NAME_BYTES {
            return Err(RejectReason::Malformed);
        }
        if env.bytes.len() > self.cfg.max_record_bytes {
            return Err(RejectReason::Oversized);
        }
        let held = self
            .store
            .get(&env.key.hash())
            .map(|e| (e.generation(), e.envelope.digest));
        if let Some((g, d)) = held {
            if env.generation < g {
                return Err(RejectReason::Stale);
            }
            if env.generation == g && env.digest == d {
                // Same claim as held; nothing is stored, so unverified bytes
                // behind a copied digest cannot hurt.
                return Ok(Checked::Duplicate);
            }
        }
        if digest_of(&env.bytes) != env.digest {
            return Err(RejectReason::DigestMismatch);
        }
        let admitted = self.admission.admit(&env.bytes, held, now_ms)?;
        if admitted.key != env.key || admitted.generation != env.generation {
            return Err(RejectReason::KeyMismatch);
        }
        if admitted.expires_at_ms.is_some_and(|x| x <= now_ms) {
            // Admission may judge expiry at a coarser clock (whole seconds in
            // production); storing a record the sweep would drop at once
            // would only make it flicker in and out of the summary.
            return Err(RejectReason::Expired);
        }
        if held.is_some_and(|(g, _)| g == env.generation) {
            // Only a strictly higher generation replaces a held record.
            return Err(RejectReason::Conflict);
        }
        Ok(Checked::New {
            expires_at_ms: admitted.expires_at_ms,
        })
    }

    // ----- peers and budgets -----

    fn guard(&mut self, peer: NodeId, now_ms: u64) -> &mut PeerGuard {
        let cfg = &self.cfg;
        self.peers.entry(peer).or_insert_with(|| {
            PeerGuard::new(
                TokenBucket::new(
                    cfg.peer_in_burst_bytes,
                    cfg.peer_in_bytes_per_round,
                    cfg.round_ms,
                    now_ms,
                ),
                now_ms,
            )
        })
    }

    fn strike(&mut self, peer: NodeId, weight: u32, now_ms: u64) {
        let (threshold, ban_ms) = (self.cfg.ban_threshold, self.cfg.ban_ms);
        let g = self.guard(peer, now_ms);
        g.strikes = g.strikes.saturating_add(weight);
        if g.strikes >= threshold {
            g.strikes = 0;
            g.banned_until = now_ms.saturating_add(ban_ms);
            self.stats.bans += 1;
            tracing::warn!(peer = %peer.short(), ban_ms, "gossip peer banned after repeated invalid data");
        }
    }

    /// Up to `k` distinct random peers, excluding self and banned peers.
    fn pick_peers(&mut self, now_ms: u64, peers: &[NodeId], k: usize) -> Vec<NodeId> {
        let mut chosen = Vec::with_capacity(k);
        if peers.is_empty() || k == 0 {
            return chosen;
        }
        for _ in 0..(4 * k + 4) {
            if chosen.len() == k {
                break;
            }
            let p = peers[self.rng.below(peers.len() as u64) as usize];
            if p == self.id || chosen.contains(&p) || self.is_banned(&p, now_ms) {
                continue;
            }
            chosen.push(p);
        }
        chosen
    }

    /// Bytes that may still be sent to `to` this round.
    fn room(&self, to: &NodeId) -> usize {
        let round_left = self.cfg.round_budget_bytes.saturating_sub(self.round_sent);
        let peer_sent = self.peers.get(to).map_or(0, |g| g.sent_in(self.round));
        let peer_left = self.cfg.peer_round_budget_bytes.saturating_sub(peer_sent);
        MAX_MESSAGE_BYTES.min(round_left).min(peer_left)
    }

    fn send(&mut self, to: NodeId, msg: &Message, now_ms: u64, out: &mut Vec<Outgoing>) {
        match wire::encode(msg) {
            Ok(payload) => {
                let n = payload.len();
                self.round_sent += n;
                let round = self.round;
                self.guard(to, now_ms).add_sent(round, n);
                self.stats.msgs_out += 1;
                self.stats.bytes_out += n as u64;
                if let Some(i) = MESSAGE_TYPES.iter().position(|t| *t == msg.type_label()) {
                    self.stats.bytes_out_by_type[i] += n as u64;
                }
                out.push(Outgoing { to, payload });
            }
            Err(err) => {
                // Builders size messages to fit; reaching this is a bug here,
                // not peer input, so log loudly and drop the message.
                tracing::error!(peer = %to.short(), kind = msg.type_label(), %err, "gossip message not encodable");
                debug_assert!(false, "gossip builder exceeded wire limits: {err}");
            }
        }
    }
}

// Compile-time guard: a whole mid expansion must fit in one message.
const _: () = assert!(HEADER_BYTES + 1 + MID_COUNT * MID_LEAVES_BYTES <= MAX_MESSAGE_BYTES);
const _: () = assert!(LEAF_COUNT <= u16::MAX as usize);

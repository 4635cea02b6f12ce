//! The planner: from the directory and the observations to a ranked
//! [`PeerPlan`].
//!
//! 1. Classify every peer's endpoints and derive its facts (`PeerFacts`).
//! 2. Direct phase: greedily pick up to `desired_direct_peers` direct-viable
//!    peers by `score::direct_key`, recomputing coverage after each pick, so the
//!    second peer from an area already covered loses to a first one from
//!    another area (behaviours 1 and 2).
//! 3. Relay phase: greedily pick up to `desired_relay_peers` of the rest that
//!    have a relay (a ready relayed path, or a relay chosen in phase 2) by
//!    `score::relay_key`.
//! 4. Recovery floor (behaviour 4): if no chosen peer outside the local area
//!    has a ready path although one exists, add the best such peer; else if
//!    no chosen peer is outside the local area at all although a reachable
//!    one exists, add the best of those. The floor may exceed the desired
//!    counts by one: it is a minimum, not a preference.
//! 5. Everything else is `standby` (reachable, not needed) or `unreachable`.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::endpoint::ClassifiedEndpoint;
use super::input::{LocalNode, Observations, PeerCandidate, PlannerConfig};
use super::labels::IngressKey;
use super::metrics::{self, PathReadiness, PeerMetrics};
use super::score::{direct_key, relay_key, Coverage, DirectTier, PeerFacts};
use crate::topology::{EndpointCandidate, NodeId, TopologyLabels};

/// Why the planner cannot plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The directory is keyed by identity; two entries for one key mean the
    /// caller merged records wrongly, and picking either would make the plan
    /// depend on input order.
    #[error("peer directory lists node {peer} more than once; merge its records before planning")]
    DuplicateCandidate {
        /// The node listed more than once.
        peer: NodeId,
    },
}

/// The directory's candidates, keyed by `NodeId`, the local node left out
/// (the full-directory rule means it usually lists itself).
#[derive(Clone, Debug)]
pub(crate) struct Directory<'a> {
    peers: BTreeMap<NodeId, &'a PeerCandidate>,
}

impl<'a> Directory<'a> {
    pub(crate) fn new(
        local: &LocalNode,
        candidates: &'a [PeerCandidate],
    ) -> Result<Self, PlanError> {
        let mut peers = BTreeMap::new();
        for c in candidates.iter().filter(|c| c.id != local.id) {
            if peers.insert(c.id, c).is_some() {
                return Err(PlanError::DuplicateCandidate { peer: c.id });
            }
        }
        Ok(Directory { peers })
    }

    /// Peers in `NodeId` order.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &'a PeerCandidate> + '_ {
        self.peers.values().copied()
    }
}

/// How the plan keeps a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Assignment {
    /// Keep a direct path (probe its endpoints in order until one is ready).
    Direct,
    /// Keep a relayed path through `via`.
    Relay {
        /// The relay node carrying the path.
        via: NodeId,
    },
    /// Reachable but not needed now; first replacement when a kept peer fails.
    Standby,
    /// Neither a direct endpoint worth probing nor a relay to reach it through.
    Unreachable,
}

/// One element of a decision's explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum PickReason {
    /// Behaviour 1: first chosen peer of this area.
    NewArea {
        /// The newly covered area.
        area: String,
    },
    /// Behaviour 2: first chosen peer behind this public edge.
    NewIngress {
        /// The newly covered public edge.
        ingress: IngressKey,
    },
    /// Outside the local area, but the area was already covered.
    OutsideLocalArea,
    /// A direct path to it is established now ([`DirectTier::Ready`]).
    DirectReady,
    /// Our last probe of one of its endpoints succeeded ([`DirectTier::ProbeOk`]).
    ProbeOk,
    /// Some endpoint worth probing has no result yet ([`DirectTier::Untested`]).
    Untested,
    /// A relayed path to it is established now.
    RelayReady {
        /// The relay the ready path goes through.
        via: NodeId,
    },
    /// No relayed path is ready, but a relay this plan keeps directly can carry one.
    ThroughChosenRelay {
        /// The chosen relay (the first in pick order that is not the peer itself).
        via: NodeId,
    },
    /// Chosen early because relayed peers need a relay.
    RelayForOthers,
    /// The peer is marked critical (kept first among otherwise equal peers).
    CriticalPeer,
    /// Behaviour 4: kept so a path outside the local area exists.
    RecoveryPath,
    /// Reachable, but the desired number of peers is already kept.
    CapacityReached,
    /// Every endpoint is skipped as foreign-scope or failed its probe.
    NoDirectPath,
    /// No ready relayed path and no chosen relay to go through.
    NoRelay,
}

/// The plan for one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDecision {
    /// The peer decided on.
    pub peer: NodeId,
    /// The peer's labels, copied so the plan explains itself.
    pub labels: TopologyLabels,
    /// How the plan keeps it, if at all.
    pub assignment: Assignment,
    /// Why, in the order the planner found them.
    pub reasons: Vec<PickReason>,
    /// What is ready now (not what is planned).
    pub ready: PathReadiness,
    /// How good its best direct path looks.
    pub tier: DirectTier,
    /// Every endpoint classified: probe order first, skipped ones last.
    pub endpoints: Vec<ClassifiedEndpoint>,
}

impl PeerDecision {
    /// Just the endpoints to probe, in order.
    pub fn probe_order(&self) -> Vec<EndpointCandidate> {
        self.endpoints
            .iter()
            .filter(|e| e.is_probed())
            .map(|e| e.endpoint.clone())
            .collect()
    }

    /// The plan keeps a path to it (direct or relayed), rather than standby or unreachable.
    pub fn is_kept(&self) -> bool {
        matches!(
            self.assignment,
            Assignment::Direct | Assignment::Relay { .. }
        )
    }
}

/// Whether the plan keeps a path outside the local area (behaviour 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum RecoveryStatus {
    /// A kept peer outside the local area has a ready path now.
    Ready {
        /// That peer (the first such in plan order).
        peer: NodeId,
    },
    /// A kept peer outside the local area is planned, not ready yet.
    Planned {
        /// That peer (the first such in plan order).
        peer: NodeId,
    },
    /// Peers outside the local area exist, none is reachable.
    Unavailable,
    /// The directory has no peer in another known area.
    NoCandidateOutsideArea,
}

/// The ranked plan: kept direct peers in pick order, then kept relayed peers,
/// then the recovery-floor peer if one was added, then standby and unreachable
/// peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPlan {
    /// The node the plan was made for.
    pub local: NodeId,
    /// One decision per directory peer, in the order above.
    pub peers: Vec<PeerDecision>,
    /// Metrics of what is ready now, over the whole directory.
    pub metrics: PeerMetrics,
    /// Whether a path outside the local area is kept (behaviour 4).
    pub recovery: RecoveryStatus,
}

impl PeerPlan {
    /// Peers kept on a direct path, in pick order.
    pub fn direct_peers(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|d| d.assignment == Assignment::Direct)
            .map(|d| d.peer)
            .collect()
    }

    /// Peers kept on a relayed path, in pick order.
    pub fn relay_peers(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|d| matches!(d.assignment, Assignment::Relay { .. }))
            .map(|d| d.peer)
            .collect()
    }

    /// The decision for `peer`, if it is in the directory.
    pub fn decision(&self, peer: &NodeId) -> Option<&PeerDecision> {
        self.peers.iter().find(|d| d.peer == *peer)
    }
}

fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn tier_reason(tier: DirectTier) -> Option<PickReason> {
    match tier {
        DirectTier::Ready => Some(PickReason::DirectReady),
        DirectTier::ProbeOk => Some(PickReason::ProbeOk),
        DirectTier::Untested => Some(PickReason::Untested),
        DirectTier::NotViable => None,
    }
}

fn diversity_reasons(f: &PeerFacts<'_>, cov: &Coverage, own: &IngressKey) -> Vec<PickReason> {
    let mut r = Vec::new();
    if cov.new_area(f) {
        r.push(PickReason::NewArea {
            area: f.peer.labels.area.clone(),
        });
    } else if f.outside {
        r.push(PickReason::OutsideLocalArea);
    }
    if cov.new_ingress(f, own) {
        r.push(PickReason::NewIngress {
            ingress: f.ingress.clone(),
        });
    }
    r
}

struct Pick {
    idx: usize,
    assignment: Assignment,
    reasons: Vec<PickReason>,
}

/// Make the peer plan. Pure: the same inputs give the same plan, whatever the
/// order of `candidates`.
pub fn plan(
    local: &LocalNode,
    candidates: &[PeerCandidate],
    observations: &Observations,
    config: &PlannerConfig,
) -> Result<PeerPlan, PlanError> {
    let directory = Directory::new(local, candidates)?;
    let facts: Vec<PeerFacts<'_>> = directory
        .peers()
        .map(|p| PeerFacts::new(local, p, observations))
        .collect();
    let own = IngressKey::of(local.id, &local.labels);
    let want_relay = config.desired_relay_peers > 0;
    let mut taken = vec![false; facts.len()];
    let mut cov = Coverage::default();
    let mut picks: Vec<Pick> = Vec::new();

    // Phase 2: direct.
    for _ in 0..to_usize(config.desired_direct_peers).min(facts.len()) {
        let best = facts
            .iter()
            .enumerate()
            .filter(|(i, f)| !taken[*i] && f.direct_viable())
            .max_by_key(|(_, f)| direct_key(f, &cov, &own, want_relay));
        let Some((idx, f)) = best else { break };
        let mut reasons = diversity_reasons(f, &cov, &own);
        reasons.extend(tier_reason(f.tier));
        if want_relay && f.peer.roles.is_relay && !cov.has_relay {
            reasons.push(PickReason::RelayForOthers);
        }
        if f.peer.critical {
            reasons.push(PickReason::CriticalPeer);
        }
        taken[idx] = true;
        cov.add(f);
        picks.push(Pick {
            idx,
            assignment: Assignment::Direct,
            reasons,
        });
    }
    // Relays available to carry relayed paths, in pick order.
    let chosen_relays: Vec<NodeId> = picks
        .iter()
        .filter(|p| facts[p.idx].peer.roles.is_relay)
        .map(|p| facts[p.idx].id())
        .collect();
    let relay_for = |f: &PeerFacts<'_>| -> Option<(NodeId, PickReason)> {
        if let Some(via) = f.ready.relay_via {
            return Some((via, PickReason::RelayReady { via }));
        }
        chosen_relays
            .iter()
            .find(|r| **r != f.id())
            .map(|&via| (via, PickReason::ThroughChosenRelay { via }))
    };

    // Phase 3: relayed.
    for _ in 0..to_usize(config.desired_relay_peers).min(facts.len()) {
        let best = facts
            .iter()
            .enumerate()
            .filter(|(i, f)| !taken[*i] && relay_for(f).is_some())
            .max_by_key(|(_, f)| relay_key(f, &cov, &own));
        let Some((idx, f)) = best else { break };
        let Some((via, why)) = relay_for(f) else {
            break;
        };
        let mut reasons = diversity_reasons(f, &cov, &own);
        reasons.push(why);
        if f.peer.critical {
            reasons.push(PickReason::CriticalPeer);
        }
        taken[idx] = true;
        cov.add(f);
        picks.push(Pick {
            idx,
            assignment: Assignment::Relay { via },
            reasons,
        });
    }

    // Phase 4: recovery floor.
    let kept_outside = |picks: &[Pick], need_ready: bool| {
        picks
            .iter()
            .map(|p| &facts[p.idx])
            .find(|f| f.outside && (!need_ready || f.ready.any()))
            .map(PeerFacts::id)
    };
    let ready_outside_exists = facts.iter().any(|f| f.outside && f.ready.any());
    let reachable =
        |f: &PeerFacts<'_>| f.ready.any() || f.direct_viable() || relay_for(f).is_some();
    if ready_outside_exists && kept_outside(&picks, true).is_none() {
        // Keep a path that works now rather than one that might: prefer a
        // ready direct path, then diversity, then identity.
        let best = facts
            .iter()
            .enumerate()
            .filter(|(i, f)| !taken[*i] && f.outside && f.ready.any())
            .max_by_key(|(_, f)| {
                (
                    f.ready.direct,
                    cov.new_area(f),
                    cov.new_ingress(f, &own),
                    f.peer.critical,
                    Reverse(f.id()),
                )
            });
        if let Some((idx, f)) = best {
            let (assignment, how) = match f.ready.relay_via {
                Some(via) if !f.ready.direct => {
                    (Assignment::Relay { via }, PickReason::RelayReady { via })
                }
                _ => (Assignment::Direct, PickReason::DirectReady),
            };
            let mut reasons = vec![PickReason::RecoveryPath];
            reasons.extend(diversity_reasons(f, &cov, &own));
            reasons.push(how);
            taken[idx] = true;
            cov.add(f);
            picks.push(Pick {
                idx,
                assignment,
                reasons,
            });
        }
    } else if kept_outside(&picks, false).is_none() {
        let best = facts
            .iter()
            .enumerate()
            .filter(|(i, f)| !taken[*i] && f.outside && reachable(f))
            .max_by_key(|(_, f)| direct_key(f, &cov, &own, false));
        if let Some((idx, f)) = best {
            let mut reasons = vec![PickReason::RecoveryPath];
            reasons.extend(diversity_reasons(f, &cov, &own));
            let assignment = if f.direct_viable() {
                reasons.extend(tier_reason(f.tier));
                Some(Assignment::Direct)
            } else {
                relay_for(f).map(|(via, why)| {
                    reasons.push(why);
                    Assignment::Relay { via }
                })
            };
            if let Some(assignment) = assignment {
                taken[idx] = true;
                cov.add(f);
                picks.push(Pick {
                    idx,
                    assignment,
                    reasons,
                });
            }
        }
    }
    let recovery = if let Some(peer) = kept_outside(&picks, true) {
        RecoveryStatus::Ready { peer }
    } else if let Some(peer) = kept_outside(&picks, false) {
        RecoveryStatus::Planned { peer }
    } else if facts.iter().any(|f| f.outside) {
        RecoveryStatus::Unavailable
    } else {
        RecoveryStatus::NoCandidateOutsideArea
    };

    // Phase 5: the rest. Standby before unreachable; within each, peers
    // outside the area and with better direct paths first, then NodeId.
    let mut rest: Vec<(usize, Assignment, Vec<PickReason>)> = facts
        .iter()
        .enumerate()
        .filter(|(i, _)| !taken[*i])
        .map(|(i, f)| {
            if reachable(f) {
                (i, Assignment::Standby, vec![PickReason::CapacityReached])
            } else {
                (
                    i,
                    Assignment::Unreachable,
                    vec![PickReason::NoDirectPath, PickReason::NoRelay],
                )
            }
        })
        .collect();
    rest.sort_by_key(|(i, a, _)| {
        let f = &facts[*i];
        (
            *a == Assignment::Unreachable,
            !f.outside,
            Reverse(f.tier),
            f.id(),
        )
    });

    let decide = |idx: usize, assignment: Assignment, reasons: Vec<PickReason>| {
        let f = &facts[idx];
        PeerDecision {
            peer: f.id(),
            labels: f.peer.labels.clone(),
            assignment,
            reasons,
            ready: f.ready,
            tier: f.tier,
            endpoints: f.endpoints.clone(),
        }
    };
    let mut peers: Vec<PeerDecision> = picks
        .into_iter()
        .map(|p| decide(p.idx, p.assignment, p.reasons))
        .collect();
    peers.extend(rest.into_iter().map(|(i, a, r)| decide(i, a, r)));

    Ok(PeerPlan {
        local: local.id,
        peers,
        metrics: metrics::compute(local, &directory, observations),
        recovery,
    })
}

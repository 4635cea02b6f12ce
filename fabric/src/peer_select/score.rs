//! Per-peer facts and the greedy pick keys: behaviours 1 and 2 (diversity by
//! `area` and by public ingress), with readiness, role and RTT as tie-breaks.
//!
//! The keys are lexicographic tuples compared largest-first; the last element
//! is the reversed `NodeId`, so two distinct peers never tie and the result
//! does not depend on input order.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::endpoint::{classify_endpoints, ClassifiedEndpoint, EndpointHealth};
use super::input::{LocalNode, Observations, PeerCandidate};
use super::labels::{outside_area, IngressKey};
use super::metrics::PathReadiness;
use crate::topology::NodeId;

/// How good the best direct path to a peer looks. Declaration order is worst
/// first so `Ord` reads "better is greater".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectTier {
    /// No endpoint worth probing: all skipped, or every probed one failed.
    NotViable,
    /// Some probe-list endpoint has no result yet (or only an ignored hairpin failure).
    Untested,
    /// Our last probe of some probe-list endpoint succeeded.
    ProbeOk,
    /// A direct path is established now.
    Ready,
}

/// Everything the planner derives about one peer before choosing.
#[derive(Clone, Debug)]
pub(crate) struct PeerFacts<'a> {
    pub peer: &'a PeerCandidate,
    pub endpoints: Vec<ClassifiedEndpoint>,
    pub ready: PathReadiness,
    pub tier: DirectTier,
    pub outside: bool,
    pub ingress: IngressKey,
    /// Lowest RTT among endpoints that are ready or answered our last probe.
    pub rtt: Option<Duration>,
}

impl<'a> PeerFacts<'a> {
    pub(crate) fn new(
        local: &LocalNode,
        peer: &'a PeerCandidate,
        observations: &Observations,
    ) -> Self {
        let endpoints = classify_endpoints(&local.labels, peer, observations);
        let ready = PathReadiness::of(peer.id, observations);
        let best_probed = endpoints
            .iter()
            .filter(|e| e.is_probed())
            .map(|e| e.health)
            .min();
        // Behaviour 3: only a ready *direct* path makes the tier Ready; a
        // relayed path says nothing about the direct endpoints.
        let tier = if ready.direct {
            DirectTier::Ready
        } else {
            match best_probed {
                Some(EndpointHealth::Ready | EndpointHealth::Ok) => DirectTier::ProbeOk,
                Some(EndpointHealth::Unknown) => DirectTier::Untested,
                Some(EndpointHealth::Failed) | None => DirectTier::NotViable,
            }
        };
        let rtt = endpoints
            .iter()
            .filter(|e| e.health <= EndpointHealth::Ok)
            .filter_map(|e| e.rtt)
            .min();
        PeerFacts {
            outside: outside_area(&local.labels, &peer.labels),
            ingress: IngressKey::of(peer.id, &peer.labels),
            peer,
            endpoints,
            ready,
            tier,
            rtt,
        }
    }

    pub(crate) fn id(&self) -> NodeId {
        self.peer.id
    }

    pub(crate) fn direct_viable(&self) -> bool {
        self.tier > DirectTier::NotViable
    }
}

/// What the peers chosen so far already cover.
#[derive(Clone, Debug, Default)]
pub(crate) struct Coverage {
    pub areas: BTreeSet<String>,
    pub ingress: BTreeSet<IngressKey>,
    pub has_relay: bool,
}

impl Coverage {
    pub(crate) fn add(&mut self, f: &PeerFacts<'_>) {
        if f.outside {
            self.areas.insert(f.peer.labels.area.clone());
        }
        self.ingress.insert(f.ingress.clone());
        self.has_relay |= f.peer.roles.is_relay;
    }

    /// Behaviour 1: a known area other than ours that no chosen peer is in yet.
    pub(crate) fn new_area(&self, f: &PeerFacts<'_>) -> bool {
        f.outside && !self.areas.contains(&f.peer.labels.area)
    }

    /// Behaviour 2: a public edge that is neither ours nor any chosen peer's.
    pub(crate) fn new_ingress(&self, f: &PeerFacts<'_>, own: &IngressKey) -> bool {
        f.ingress != *own && !self.ingress.contains(&f.ingress)
    }
}

/// Key for the direct phase, compared largest-first:
/// new area, new ingress, outside the local area, direct tier, a relay while
/// relayed peers are wanted and none is chosen yet, critical, lower RTT, lower
/// `NodeId`.
pub(crate) type DirectKey = (
    bool,
    bool,
    bool,
    DirectTier,
    bool,
    bool,
    Reverse<Duration>,
    Reverse<NodeId>,
);

pub(crate) fn direct_key(
    f: &PeerFacts<'_>,
    cov: &Coverage,
    own: &IngressKey,
    want_relay: bool,
) -> DirectKey {
    (
        cov.new_area(f),
        cov.new_ingress(f, own),
        f.outside,
        f.tier,
        want_relay && f.peer.roles.is_relay && !cov.has_relay,
        f.peer.critical,
        Reverse(f.rtt.unwrap_or(Duration::MAX)),
        Reverse(f.id()),
    )
}

/// Key for the relay phase, compared largest-first: new area, new ingress,
/// outside the local area, relayed path already ready, critical, lower `NodeId`.
pub(crate) type RelayKey = (bool, bool, bool, bool, bool, Reverse<NodeId>);

pub(crate) fn relay_key(f: &PeerFacts<'_>, cov: &Coverage, own: &IngressKey) -> RelayKey {
    (
        cov.new_area(f),
        cov.new_ingress(f, own),
        f.outside,
        f.ready.relay_via.is_some(),
        f.peer.critical,
        Reverse(f.id()),
    )
}

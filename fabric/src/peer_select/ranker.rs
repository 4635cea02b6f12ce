//! The planner plugged into the transport: a [`PathRanker`] whose direct
//! probe order is [`rank_endpoints`] over shared, live [`Observations`].
//!
//! The transport asks it which endpoints of a peer to dial and in which order,
//! and tells it how every dial went ([`PathRanker::record_dial`]). The node
//! adds what the transport cannot see by itself: other observers' reports
//! about a peer's public endpoints (cross-area validations, gossip), ready
//! paths, and aged-out results. So a failed hairpin probe of a public endpoint
//! that a cross-area observer validated stays in the probe list (behaviour 6),
//! and a private endpoint of another NAT scope is never dialled (behaviour 8).
//!
//! ```
//! use std::sync::Arc;
//! use fabric::peer_select::PlannerRanker;
//! # fn plug(transport: &fabric::transport::Transport) {
//! let ranker = Arc::new(PlannerRanker::new());
//! transport.set_path_ranker(ranker.clone());
//! // later, from gossip: ranker.record_report(peer, addr, report);
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::{PoisonError, RwLock};

use super::endpoint::{classify_endpoints, rank_endpoints, ClassifiedEndpoint};
use super::input::{Observations, ObserverReport, PeerCandidate, PeerRoles, ProbeOutcome};
use crate::path::{DefaultPathRanker, DialOutcome, PathRanker, PeerInfo};
use crate::topology::{EndpointCandidate, NodeId, TopologyLabels};

/// The planner's view of a peer from what the transport's address book holds.
/// `critical` is unknown to the transport and does not affect endpoint order.
pub fn candidate_from_info(node: NodeId, info: &PeerInfo) -> PeerCandidate {
    PeerCandidate {
        id: node,
        labels: info.labels.clone(),
        endpoints: info.candidates.clone(),
        roles: PeerRoles {
            is_relay: info.is_relay,
            is_ingress: false,
        },
        critical: false,
    }
}

/// A [`PathRanker`] backed by the peer planner, holding the node's runtime
/// observations behind a lock shared by the transport (dial results) and the
/// node (reports from other observers, ready paths).
#[derive(Debug, Default)]
pub struct PlannerRanker {
    observations: RwLock<Observations>,
}

impl PlannerRanker {
    /// A ranker with no observations yet (a node without a peer cache).
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts from observations restored from the peer cache.
    pub fn with_observations(observations: Observations) -> Self {
        Self {
            observations: RwLock::new(observations),
        }
    }

    /// A copy of the current observations (for `plan` and `compute_metrics`).
    pub fn observations(&self) -> Observations {
        // Observations are plain data: a writer that panicked mid-update left
        // a valid (if partial) value, so poisoning is not a reason to lose it.
        self.observations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the observations under the lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut Observations) -> R) -> R {
        let mut obs = self
            .observations
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut obs)
    }

    /// Records another node's report about `(peer, addr)`: a cross-area
    /// validation (or failure) of a public endpoint.
    pub fn record_report(&self, node: NodeId, addr: SocketAddr, report: ObserverReport) {
        self.update(|o| o.record_report(node, addr, report));
    }

    /// Records our own probe of `(peer, addr)` made outside the transport.
    pub fn record_probe(
        &self,
        node: NodeId,
        addr: SocketAddr,
        outcome: ProbeOutcome,
        rtt: Option<std::time::Duration>,
    ) {
        self.update(|o| o.record_probe(node, addr, outcome, rtt));
    }

    /// Every endpoint of the peer classified, in probe order, skipped ones
    /// last with their reason: what the transport will (not) dial and why.
    pub fn classify(
        &self,
        local: &TopologyLabels,
        node: NodeId,
        info: &PeerInfo,
    ) -> Vec<ClassifiedEndpoint> {
        let obs = self
            .observations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        classify_endpoints(local, &candidate_from_info(node, info), &obs)
    }
}

impl PathRanker for PlannerRanker {
    /// Without the peer's `NodeId` no observation applies; the labels alone
    /// still decide classes (behaviours 5, 7, 8).
    fn rank_direct(&self, local: &TopologyLabels, peer: &PeerInfo) -> Vec<EndpointCandidate> {
        let candidate = candidate_from_info(NodeId([0; 32]), peer);
        rank_endpoints(local, &candidate, &Observations::default())
    }

    /// Relays are reached through their own direct probe order (the ladder
    /// dials each relay via `rank_direct_for`), so the relay order itself only
    /// needs nearness; the default's order is kept.
    fn rank_relays(&self, local: &TopologyLabels, relays: &[(NodeId, PeerInfo)]) -> Vec<NodeId> {
        DefaultPathRanker.rank_relays(local, relays)
    }

    fn rank_direct_for(
        &self,
        local: &TopologyLabels,
        node: NodeId,
        peer: &PeerInfo,
    ) -> Vec<EndpointCandidate> {
        let obs = self
            .observations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        rank_endpoints(local, &candidate_from_info(node, peer), &obs)
    }

    fn record_dial(&self, node: NodeId, addr: SocketAddr, outcome: DialOutcome) {
        match outcome {
            DialOutcome::Reached { rtt } => {
                self.record_probe(node, addr, ProbeOutcome::Ok, Some(rtt));
            }
            DialOutcome::Failed => self.record_probe(node, addr, ProbeOutcome::Failed, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::EndpointScope;

    fn labels(area: &str, lan: &str, nat: &str) -> TopologyLabels {
        TopologyLabels {
            area: area.into(),
            locality_group: lan.into(),
            nat_group: nat.into(),
            ..Default::default()
        }
    }

    fn ep(addr: &str, scope: EndpointScope) -> EndpointCandidate {
        EndpointCandidate {
            addr: addr.parse().expect("test literal"),
            scope,
            locality_group: None,
            nat_group: None,
        }
    }

    fn addrs(v: &[EndpointCandidate]) -> Vec<String> {
        v.iter().map(|c| c.addr.to_string()).collect()
    }

    #[test]
    fn foreign_private_is_never_ranked_and_same_nat_private_comes_first() {
        let local = labels("a", "lan-a", "nat-a");
        let r = PlannerRanker::new();
        let foreign = PeerInfo {
            candidates: vec![
                ep("10.2.0.11:7443", EndpointScope::Private),
                ep("198.51.100.2:7444", EndpointScope::Public),
            ],
            labels: labels("b", "lan-b", "nat-b"),
            is_relay: false,
        };
        assert_eq!(
            addrs(&r.rank_direct_for(&local, NodeId([2; 32]), &foreign)),
            ["198.51.100.2:7444"]
        );
        let same_nat = PeerInfo {
            candidates: vec![
                ep("198.51.100.1:7444", EndpointScope::Public),
                ep("10.1.0.12:7443", EndpointScope::Private),
            ],
            labels: labels("a", "lan-a", "nat-a"),
            is_relay: false,
        };
        assert_eq!(
            addrs(&r.rank_direct_for(&local, NodeId([3; 32]), &same_nat)),
            ["10.1.0.12:7443", "198.51.100.1:7444"]
        );
    }

    #[test]
    fn validated_public_endpoint_survives_a_hairpin_failure_reported_by_the_transport() {
        let local = labels("a", "lan-a", "nat-a");
        let peer = NodeId([3; 32]);
        let public: SocketAddr = "198.51.100.1:7444".parse().expect("test literal");
        let info = PeerInfo {
            candidates: vec![ep("198.51.100.1:7444", EndpointScope::Public)],
            labels: labels("a", "lan-a", "nat-a"),
            is_relay: false,
        };
        let r = PlannerRanker::new();
        r.record_dial(peer, public, DialOutcome::Failed);
        let before = r.classify(&local, peer, &info);
        assert_eq!(before[0].class.as_str(), "external-network-required");
        r.record_report(
            peer,
            public,
            ObserverReport {
                area: "p".into(),
                nat_group: String::new(),
                reached: true,
            },
        );
        let after = r.classify(&local, peer, &info);
        assert_eq!(after[0].class.as_str(), "public");
        assert_eq!(after[0].health, super::super::EndpointHealth::Unknown);
        assert_eq!(
            addrs(&r.rank_direct_for(&local, peer, &info)),
            ["198.51.100.1:7444"]
        );
    }

    #[test]
    fn a_failed_dial_demotes_the_endpoint_behind_the_others() {
        let local = labels("a", "lan-a", "nat-a");
        let peer = NodeId([4; 32]);
        let info = PeerInfo {
            candidates: vec![
                ep("10.1.0.12:7443", EndpointScope::Private),
                ep("198.51.100.9:7443", EndpointScope::Public),
            ],
            labels: labels("a", "lan-a", "nat-a2"),
            is_relay: false,
        };
        let r = PlannerRanker::new();
        r.record_dial(
            peer,
            "10.1.0.12:7443".parse().expect("test literal"),
            DialOutcome::Failed,
        );
        assert_eq!(
            addrs(&r.rank_direct_for(&local, peer, &info)),
            ["198.51.100.9:7443", "10.1.0.12:7443"]
        );
    }
}

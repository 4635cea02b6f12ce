//! The path ladder: which endpoint candidates of a peer to try, in which order, and
//! which relays to fall back to.
//!
//! Ranking is a trait so the real peer planner (`peer_select`) can replace the
//! default without the transport knowing how it decides.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topology::{EndpointCandidate, EndpointScope, NodeId, TopologyLabels};

/// How a connection to a peer is carried. For tests and metrics; services never
/// see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PathKind {
    /// QUIC straight to one of the peer's endpoint candidates.
    Direct {
        /// The peer address the connection goes to.
        addr: SocketAddr,
    },
    /// An end-to-end QUIC connection whose packets a relay node forwards.
    Relayed {
        /// The relay node forwarding the packets.
        via: NodeId,
    },
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathKind::Direct { addr } => write!(f, "direct {addr}"),
            PathKind::Relayed { via } => write!(f, "relayed via {}", via.short()),
        }
    }
}

/// What the caller knows about a peer from its signed node record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The addresses the peer advertises in its record.
    pub candidates: Vec<EndpointCandidate>,
    /// Where the peer sits; the ranker compares them with ours to pick paths.
    pub labels: TopologyLabels,
    /// The peer has the relay role and will forward tunnels for others.
    pub is_relay: bool,
}

impl PeerInfo {
    /// A peer known only by one public address (a bootstrap peer, a test
    /// peer): no labels, no relay role.
    pub fn public(addr: std::net::SocketAddr) -> PeerInfo {
        PeerInfo {
            candidates: vec![EndpointCandidate {
                addr,
                scope: crate::topology::EndpointScope::Public,
                locality_group: None,
                nat_group: None,
            }],
            ..PeerInfo::default()
        }
    }
}

/// What one direct dial (a path attempt or an explicit probe) of an endpoint
/// candidate found. Reported to the ranker so rankers that learn from the
/// runtime (the peer planner) can reorder the next attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialOutcome {
    /// The QUIC handshake completed and the peer proved the expected `NodeId`.
    Reached {
        /// QUIC's round-trip estimate for the connection just made.
        rtt: Duration,
    },
    /// Timeout, refusal, or a different node answering at that address.
    Failed,
}

/// Orders the ways to reach a peer.
pub trait PathRanker: Send + Sync + 'static {
    /// Direct candidates to try, best first. Candidates left out are not tried.
    fn rank_direct(&self, local: &TopologyLabels, peer: &PeerInfo) -> Vec<EndpointCandidate>;

    /// Relays to try when no direct candidate answered, best first.
    fn rank_relays(&self, local: &TopologyLabels, relays: &[(NodeId, PeerInfo)]) -> Vec<NodeId>;

    /// Like [`PathRanker::rank_direct`], knowing which node the peer is. The
    /// transport always calls this one; rankers that keep per-peer
    /// observations override it, stateless ones keep the default.
    fn rank_direct_for(
        &self,
        local: &TopologyLabels,
        node: NodeId,
        peer: &PeerInfo,
    ) -> Vec<EndpointCandidate> {
        let _ = node;
        self.rank_direct(local, peer)
    }

    /// Called by the transport after every direct dial of `(node, addr)`.
    /// The default ignores it: a stateless ranker has nothing to learn.
    fn record_dial(&self, node: NodeId, addr: SocketAddr, outcome: DialOutcome) {
        let _ = (node, addr, outcome);
    }
}

/// Scoped private endpoints first when we share the locality or NAT group they are
/// valid in, then public endpoints. Private endpoints of another scope are skipped:
/// the same private address elsewhere is a different machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPathRanker;

fn same_group(local: &str, theirs: Option<&String>) -> bool {
    !local.is_empty() && theirs.is_some_and(|g| g == local)
}

impl PathRanker for DefaultPathRanker {
    fn rank_direct(&self, local: &TopologyLabels, peer: &PeerInfo) -> Vec<EndpointCandidate> {
        let mut scoped = Vec::new();
        let mut public = Vec::new();
        for c in &peer.candidates {
            match c.scope {
                EndpointScope::Private => {
                    let in_scope = same_group(&local.locality_group, c.locality_group.as_ref())
                        || same_group(&local.nat_group, c.nat_group.as_ref());
                    if in_scope {
                        scoped.push(c.clone());
                    }
                }
                EndpointScope::Public => public.push(c.clone()),
            }
        }
        scoped.extend(public);
        scoped
    }

    fn rank_relays(&self, local: &TopologyLabels, relays: &[(NodeId, PeerInfo)]) -> Vec<NodeId> {
        // Nearer relays first (same locality, then same area), ties by NodeId so
        // every node with the same view makes the same choice.
        let mut ranked: Vec<(u8, NodeId)> = relays
            .iter()
            .map(|(id, info)| {
                let distance = if !local.locality_group.is_empty()
                    && info.labels.locality_group == local.locality_group
                {
                    0
                } else if !local.area.is_empty() && info.labels.area == local.area {
                    1
                } else {
                    2
                };
                (distance, *id)
            })
            .collect();
        ranked.sort();
        ranked.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(port: u16, scope: EndpointScope, locality: Option<&str>) -> EndpointCandidate {
        EndpointCandidate {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            scope,
            locality_group: locality.map(str::to_owned),
            nat_group: None,
        }
    }

    #[test]
    fn scoped_private_first_then_public_and_foreign_private_skipped() {
        let local = TopologyLabels {
            locality_group: "lan-a".into(),
            ..Default::default()
        };
        let peer = PeerInfo {
            candidates: vec![
                cand(1, EndpointScope::Public, None),
                cand(2, EndpointScope::Private, Some("lan-b")),
                cand(3, EndpointScope::Private, Some("lan-a")),
            ],
            ..Default::default()
        };
        let ports: Vec<u16> = DefaultPathRanker
            .rank_direct(&local, &peer)
            .iter()
            .map(|c| c.addr.port())
            .collect();
        assert_eq!(ports, vec![3, 1]);
    }

    #[test]
    fn empty_local_group_never_matches_private_candidates() {
        let peer = PeerInfo {
            candidates: vec![cand(2, EndpointScope::Private, Some(""))],
            ..Default::default()
        };
        assert!(DefaultPathRanker
            .rank_direct(&TopologyLabels::default(), &peer)
            .is_empty());
    }

    #[test]
    fn nearer_relays_rank_first() {
        let local = TopologyLabels {
            area: "eu".into(),
            locality_group: "lan-a".into(),
            ..Default::default()
        };
        let far = (NodeId([1; 32]), PeerInfo::default());
        let same_area = (
            NodeId([2; 32]),
            PeerInfo {
                labels: TopologyLabels {
                    area: "eu".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let same_lan = (
            NodeId([3; 32]),
            PeerInfo {
                labels: local.clone(),
                ..Default::default()
            },
        );
        let order = DefaultPathRanker
            .rank_relays(&local, &[far.clone(), same_area.clone(), same_lan.clone()]);
        assert_eq!(order, vec![same_lan.0, same_area.0, far.0]);
    }
}

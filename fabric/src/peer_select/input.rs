//! What the planner is given: the local node, the directory's candidate peers,
//! the runtime observations the transport made, and the operator's config.
//!
//! All of it is plain data. The node-agent fills these from the peer cache and
//! the transport; the planner never looks anything up itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topology::{EndpointCandidate, NodeId, TopologyLabels};

/// The node the plan is made for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNode {
    /// The local node's id; a candidate with this id is ignored.
    pub id: NodeId,
    /// Where the local node sits; every failure-domain comparison is against these.
    pub labels: TopologyLabels,
}

/// What a peer does for the fleet, as far as peer selection cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRoles {
    /// The peer splices streams for others; only relays can carry a relayed path.
    pub is_relay: bool,
    /// The peer terminates external ingress. Carried into the plan for
    /// operators; it does not change the score (its public edge is already
    /// described by `nat_group`).
    pub is_ingress: bool,
}

/// One node of the directory, as a possible peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCandidate {
    /// The peer's id.
    pub id: NodeId,
    /// Where the peer sits, from its signed node record.
    pub labels: TopologyLabels,
    /// The addresses its node record advertises; the planner classifies and orders them.
    pub endpoints: Vec<EndpointCandidate>,
    /// What the peer does for the fleet (relay, ingress).
    #[serde(default)]
    pub roles: PeerRoles,
    /// The peer is critical for the fleet (a core-service provider, say):
    /// among otherwise equal peers it is kept first.
    #[serde(default)]
    pub critical: bool,
}

/// The result of the local node's last probe of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeOutcome {
    /// Never probed (or the result has aged out of the peer cache).
    #[default]
    None,
    /// The probe completed a handshake with the expected node.
    Ok,
    /// The probe timed out, was refused, or a different node answered.
    Failed,
}

/// Another node's report about one public endpoint of a peer: whether that
/// observer reached it. Carried in the peer cache through gossip.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObserverReport {
    /// The observer's `area`.
    pub area: String,
    /// The observer's `nat_group`: an observer behind the endpoint owner's NAT
    /// reaches the public address only by hairpinning through that NAT.
    pub nat_group: String,
    /// The observer's last attempt on the endpoint succeeded.
    pub reached: bool,
}

/// What the runtime knows about one `(peer, endpoint)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointObservation {
    /// The local node's last probe of this endpoint.
    #[serde(default)]
    pub last_probe: ProbeOutcome,
    /// Round-trip time measured by the last successful probe or the live path.
    #[serde(default)]
    pub rtt: Option<Duration>,
    /// A direct QUIC path over this endpoint is established right now.
    #[serde(default)]
    pub direct_ready: bool,
    /// Reports from other observers (used only for public endpoints).
    #[serde(default)]
    pub reports: Vec<ObserverReport>,
}

/// What the runtime knows about one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerObservation {
    /// Keyed by address: an observation belongs to the address, whatever
    /// candidate record advertised it.
    #[serde(default)]
    pub endpoints: BTreeMap<SocketAddr, EndpointObservation>,
    /// A relayed path to the peer is established right now, through this relay.
    #[serde(default)]
    pub relay_ready_via: Option<NodeId>,
}

impl PeerObservation {
    /// A direct path to the peer is ready on some address.
    pub fn direct_ready(&self) -> bool {
        self.endpoints.values().any(|e| e.direct_ready)
    }

    /// The relay a ready relayed path goes through. A "relay" equal to the peer
    /// itself is a direct path misreported, so it does not count as relayed.
    pub fn relay_ready(&self, peer: NodeId) -> Option<NodeId> {
        self.relay_ready_via.filter(|via| *via != peer)
    }
}

/// Runtime observations for all peers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    /// Per peer; a peer without an entry has never been observed.
    #[serde(default)]
    pub peers: BTreeMap<NodeId, PeerObservation>,
}

impl Observations {
    /// What is known about peer `id`, if anything.
    pub fn peer(&self, id: &NodeId) -> Option<&PeerObservation> {
        self.peers.get(id)
    }

    /// What is known about peer `id` at `addr`, if anything.
    pub fn endpoint(&self, id: &NodeId, addr: &SocketAddr) -> Option<&EndpointObservation> {
        self.peers.get(id).and_then(|p| p.endpoints.get(addr))
    }

    /// The observation of `(peer, addr)`, created empty if absent (for drivers
    /// and tests that record results one at a time).
    pub fn endpoint_mut(&mut self, id: NodeId, addr: SocketAddr) -> &mut EndpointObservation {
        self.peers
            .entry(id)
            .or_default()
            .endpoints
            .entry(addr)
            .or_default()
    }

    /// Record the local node's probe of `(peer, addr)`.
    pub fn record_probe(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        outcome: ProbeOutcome,
        rtt: Option<Duration>,
    ) {
        let e = self.endpoint_mut(id, addr);
        e.last_probe = outcome;
        e.rtt = rtt;
    }

    /// Record that a direct path over `(peer, addr)` is ready.
    pub fn record_direct_ready(&mut self, id: NodeId, addr: SocketAddr, rtt: Option<Duration>) {
        let e = self.endpoint_mut(id, addr);
        e.direct_ready = true;
        e.last_probe = ProbeOutcome::Ok;
        if rtt.is_some() {
            e.rtt = rtt;
        }
    }

    /// Record that a relayed path to `peer` through `via` is ready.
    pub fn record_relay_ready(&mut self, id: NodeId, via: NodeId) {
        self.peers.entry(id).or_default().relay_ready_via = Some(via);
    }

    /// Record another observer's report about `(peer, addr)`.
    pub fn record_report(&mut self, id: NodeId, addr: SocketAddr, report: ObserverReport) {
        self.endpoint_mut(id, addr).reports.push(report);
    }
}

/// How many peers the node wants, by path kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Peers to keep on a direct path.
    pub desired_direct_peers: u32,
    /// Further peers to keep reachable through a relay.
    pub desired_relay_peers: u32,
}

impl Default for PlannerConfig {
    /// Four direct peers cover the local area plus three failure domains in the
    /// seed's fleet shape; two relayed peers keep the nodes that cannot be
    /// reached directly in the directory's live view.
    fn default() -> Self {
        PlannerConfig {
            desired_direct_peers: 4,
            desired_relay_peers: 2,
        }
    }
}

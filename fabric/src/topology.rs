//! Shared vocabulary of the runtime: who a node is ([`NodeId`]), where it sits
//! ([`TopologyLabels`]) and how it may be reached ([`EndpointCandidate`]).
//!
//! These types are deliberately plain data so the transport, the directory and
//! the peer planner can exchange them without depending on each other.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use fabric_proto::node_id::{NodeId, NodeIdParseError};

/// The failure-domain labels of the seed's P3: where a node sits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TopologyLabels {
    /// Failure-domain area (a region, provider or city); the widest domain.
    pub area: String,
    /// Physical or logical site inside the area (seed label `site_id`).
    pub site_id: String,
    /// Private/local reachability domain (a LAN segment, a VPC).
    pub locality_group: String,
    /// Shared public edge dependency (the NAT / router the node is behind).
    pub nat_group: String,
}

/// Whether an endpoint is only reachable inside its scope or from anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointScope {
    /// Reachable only inside its locality/NAT group (a LAN or VPC address).
    Private,
    /// Reachable from anywhere (a public address).
    Public,
}

/// One address a node may be reached at, with the scope it is valid in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointCandidate {
    /// The UDP address to dial.
    pub addr: SocketAddr,
    /// Where the address is valid.
    pub scope: EndpointScope,
    /// For private endpoints: the locality group in which the address is meaningful.
    pub locality_group: Option<String>,
    /// For private endpoints: the NAT group in which the address is meaningful.
    pub nat_group: Option<String>,
}

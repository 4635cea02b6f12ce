//! The edge-listener inventory as a node reports it (in its status and every
//! heartbeat) and the audit classifies it.
//!
//! The inventory itself (opening listeners, finding unregistered sockets) is
//! `fabric::edge`; only the report crosses process boundaries.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::node_id::NodeId;

/// The role as the inventory reports it: a declared role, or `unclassified` for a
/// listening socket found in the process that nobody registered (a bug).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportedRole {
    /// External clients reaching a fabric service (mapped into channels).
    ServiceIngress,
    /// The operators' Control API.
    ControlApiIngress,
    /// Artifact delivery to machines outside the fabric.
    ArtifactEdge,
    /// Temporary overlap with the legacy system during migration.
    CompatOverlap,
    /// A Prometheus `/metrics` endpoint (loopback by default).
    MetricsEdge,
    /// A listening socket nobody registered.
    Unclassified,
}

/// Where an edge's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum EdgeTarget {
    /// A fabric service on a node (ingress).
    FabricService {
        /// The node providing the service.
        node: NodeId,
        /// The fabric service name.
        service: String,
    },
    /// Served in this process, e.g. "control-api".
    Local {
        /// What serves it.
        handler: String,
    },
    /// Not known (only for unclassified anomalies).
    Unknown,
}

/// One line of the inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeEntry {
    /// Inventory-local id.
    pub id: u64,
    /// Why the listener exists.
    pub role: ReportedRole,
    /// The bound address.
    pub bind: SocketAddr,
    /// Where its traffic goes.
    pub target: EdgeTarget,
    /// RFC 3339 UTC time the listener was opened (or found, for anomalies).
    pub opened_at: String,
    /// Set when the entry is a problem the audit must report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
}

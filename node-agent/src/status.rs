//! What a node reports about itself: the seed's P1 fields, directory size,
//! rejections by reason, observations and edge listeners. Written to
//! `status.json` in the state directory (atomically) on every round.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use fabric::edge::EdgeEntry;
use fabric::peer_select::{PeerMetrics, ResilienceReport};
use fabric::topology::{NodeId, TopologyLabels};
use serde::{Deserialize, Serialize};

use crate::cache::Observation;
use crate::registry::{RegistryReport, RegistryStatus};

/// The status file's name inside the node's state directory.
pub const STATUS_FILE: &str = "status.json";

/// One status report of a node, as published on the status watch and written
/// to [`STATUS_FILE`]; the node core builds it every round and the driver adds
/// the updater, health and artifact fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name (its `FabricNode` metadata.name).
    pub name: String,
    /// The node's id, as text.
    pub node_id: String,
    /// The address the node's UDP socket is bound to.
    pub listen: String,
    /// The node's failure-domain area label.
    pub area: String,
    /// The node's site label.
    pub site_id: String,
    /// The node's NAT group label.
    pub nat_group: String,
    /// Unexpired records of every kind in the directory.
    pub directory_records: usize,
    /// Nodes in the directory.
    pub directory_nodes: usize,
    /// Services in the directory.
    pub directory_services: usize,
    /// Clashing records (two service records for one service, two node
    /// records with one key) and which one the directory kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directory_conflicts: Vec<String>,
    /// `fabric_registry_runtime_report`.
    pub registry: RegistryReport,
    /// Records refused, by `Rejection::reason()`.
    pub rejections: BTreeMap<String, u64>,
    /// Gossip-level refusals (includes oversize and digest mismatches).
    pub gossip_rejections: BTreeMap<String, u64>,
    /// Records the gossip core accepted so far.
    pub gossip_accepted: u64,
    /// How the peer cache was found at start (`fresh`, `restored N records`,
    /// `corrupt (...)`).
    pub peer_cache: String,
    /// What this node observed about each peer, keyed by node name.
    pub observations: BTreeMap<String, Observation>,
    /// The node's TCP edge listeners, as the transport reports them.
    pub edge_listeners: Vec<EdgeEntry>,
    /// The seed's P3 metrics: `direct_ready_count`, `relay_ready_count`, ...
    pub peer_metrics: PeerMetrics,
    /// Gossip/probe channels refused because the peer has no node record here.
    #[serde(default)]
    pub refused_channels: u64,
    /// Those refusals by reason (`no_proof`, `wrong_node`, `rejected`,
    /// `cooling`, ...; see `membership::Refusal`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub door_refusals: BTreeMap<String, u64>,
    /// Live connections the transport holds.
    #[serde(default)]
    pub connections: usize,
    /// The most connections the node should hold (planned peers, gossip
    /// partners, peers that chose it); idle ones beyond it are closed.
    #[serde(default)]
    pub connection_budget: usize,
    /// Gossip partners kept besides the planned peers.
    #[serde(default)]
    pub gossip_partners: usize,
    /// For a critical node with a resilience target: which targets are unmet.
    pub resilience: Option<ResilienceReport>,
    /// The node's own admission check of every lease it holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<crate::leases::LeaseCheck>,
    /// The current update attempt (`state`, `intent`, `generation`, `phase`,
    /// `lease_id`, `staged_sha256`, `reason`); `None` before any intent.
    #[serde(default)]
    pub update: Option<crate::update::updater::UpdateStatus>,
    /// The updater's measured liveness; `None` when this node runs no updater.
    #[serde(default)]
    pub updater: Option<crate::update::updater::UpdaterLiveness>,
    /// The node's own checks (transport, directory, registry, updater).
    #[serde(default)]
    pub health: Option<fabric_proto::heartbeat::HealthReport>,
    /// Artifact bytes this node served to others (`artifact` service).
    #[serde(default)]
    pub artifact_bytes_served: u64,
    /// What the supervising host agent reports (`host-status.json`, written
    /// by it); `None` when no host agent runs this node.
    #[serde(default)]
    pub host: Option<fabric_proto::host::HostStatus>,
    /// When the report was built, in Unix milliseconds (0 in the initial one).
    pub updated_ms: u64,
}

impl NodeStatus {
    /// The report a node publishes before its first round: its identity,
    /// address and labels, the peer cache state `cache`, an empty directory
    /// and a `missing` registry.
    pub fn initial(
        name: &str,
        id: NodeId,
        listen: SocketAddr,
        labels: &TopologyLabels,
        cache: &str,
    ) -> Self {
        NodeStatus {
            name: name.to_owned(),
            node_id: id.to_string(),
            listen: listen.to_string(),
            area: labels.area.clone(),
            site_id: labels.site_id.clone(),
            nat_group: labels.nat_group.clone(),
            directory_records: 0,
            directory_nodes: 0,
            directory_services: 0,
            directory_conflicts: Vec::new(),
            registry: RegistryReport {
                status: RegistryStatus::Missing,
                active_records: 0,
                candidate_records: 0,
                resolved_core_services: BTreeMap::new(),
                last_live_probe: None,
            },
            rejections: BTreeMap::new(),
            gossip_rejections: BTreeMap::new(),
            gossip_accepted: 0,
            peer_cache: cache.to_owned(),
            observations: BTreeMap::new(),
            edge_listeners: Vec::new(),
            peer_metrics: PeerMetrics::default(),
            refused_channels: 0,
            door_refusals: BTreeMap::new(),
            connections: 0,
            connection_budget: 0,
            gossip_partners: 0,
            resilience: None,
            leases: Vec::new(),
            update: None,
            updater: None,
            health: None,
            artifact_bytes_served: 0,
            host: None,
            updated_ms: 0,
        }
    }
}

/// Writes `status` atomically to [`STATUS_FILE`] in `state_dir` (pretty
/// JSON, mode 0644).
pub fn write(state_dir: &Path, status: &NodeStatus) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(status).map_err(|e| e.to_string())?;
    fabric_schemas::keys::write_atomic(&state_dir.join(STATUS_FILE), &bytes, 0o644)
        .map_err(|e| e.to_string())
}

/// Reads the status last written to [`STATUS_FILE`] in `state_dir`.
pub fn read(state_dir: &Path) -> Result<NodeStatus, String> {
    let bytes = std::fs::read(state_dir.join(STATUS_FILE)).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The node's own health checks, from its status: the transport holds a
/// connection (unless the node is alone), the directory holds the node's own
/// record, the registry is `active`, and the updater (when it runs) passed
/// recently. Each failing check names why.
pub fn health(status: &NodeStatus, own_record: bool) -> fabric_proto::heartbeat::HealthReport {
    let mut failing = BTreeMap::new();
    if status.connections == 0 && status.directory_nodes > 1 {
        failing.insert(
            "transport".to_owned(),
            "no live connection to any peer".to_owned(),
        );
    }
    if !own_record {
        failing.insert(
            "directory".to_owned(),
            format!(
                "the directory ({} records) holds no record of this node",
                status.directory_records
            ),
        );
    }
    if status.registry.status != RegistryStatus::Active {
        failing.insert(
            "registry".to_owned(),
            format!("registry runtime is {}", status.registry.status.as_str()),
        );
    }
    if let Some(u) = &status.updater {
        if !u.alive {
            failing.insert(
                "updater".to_owned(),
                match u.status_at_ms {
                    Some(at) => format!(
                        "no updater pass for {} ms",
                        status.updated_ms.saturating_sub(at)
                    ),
                    None => "the updater never ran".to_owned(),
                },
            );
        }
    }
    fabric_proto::heartbeat::HealthReport {
        healthy: failing.is_empty(),
        failing,
    }
}

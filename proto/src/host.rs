//! The host agent's status as it hands it to the node-agent, which carries it
//! in every heartbeat (`host_agent_version` and [`HostStatus`]).

use serde::{Deserialize, Serialize};

/// What the host agent knows of itself and of the node-agent it supervises.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host agent's own version.
    pub host_agent_version: String,
    /// SHA-256 (hex) of the running host-agent binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_agent_digest: Option<String>,
    /// The supervised node-agent's version, as it reported on readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_agent_version: Option<String>,
    /// SHA-256 (hex) of the node-agent binary the host agent executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_agent_digest: Option<String>,
    /// The slot the node-agent runs from (`current`, or its digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_agent_slot: Option<String>,
    /// Restarts of the node-agent since the host agent started.
    #[serde(default)]
    pub restarts: u64,
    /// Unix milliseconds of the last passing health probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_ms: Option<u64>,
}

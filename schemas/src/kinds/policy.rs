//! `RolloutPolicy`: how fast and in what shape an update may move through the fleet.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;
use super::update::Component;

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "fabric.dev",
    version = "v1alpha1",
    kind = "RolloutPolicy",
    status = "ObjectStatus",
    shortname = "frp",
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
    printcolumn = r#"{"name":"MaxParallel","type":"integer","jsonPath":".spec.maxParallel"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutPolicySpec {
    pub strategy: Strategy,
    /// Nodes leased at once across the fleet.
    pub max_parallel: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_per_area: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_per_site: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_per_nat_group: Option<u32>,
    /// Nodes leased + unhealthy + heartbeat-lost may never exceed this.
    pub max_unavailable: u32,
    /// Stop the rollout when this percentage of finished nodes failed.
    pub failure_rate_stop_percent: u32,
    /// Canary steps, in order; each step is gated on the health of the previous ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_steps: Vec<CanaryStep>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Which agent is updated first when an intent covers both phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_phase: Option<Component>,
    /// Nodes for the `pinned` strategy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned_nodes: Vec<String>,
    /// The node for the `forcedNode` strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_node: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    Canary,
    Rolling,
    Pinned,
    ForcedNode,
}

/// A canary step: either an absolute node count or a percentage of the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

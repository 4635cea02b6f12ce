//! `RolloutPolicy`: how fast and in what shape an update may move through the fleet.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;
use super::update::Component;

/// Desired pace and shape of the rollouts that name this policy.
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
    /// Which nodes go, in what order.
    pub strategy: Strategy,
    /// Nodes leased at once across the fleet.
    pub max_parallel: u32,
    /// Nodes leased at once within one area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_per_area: Option<u32>,
    /// Nodes leased at once within one site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_per_site: Option<u32>,
    /// Nodes leased at once within one NAT group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel_per_nat_group: Option<u32>,
    /// Nodes leased + unhealthy + heartbeat-lost may never exceed this.
    pub max_unavailable: u32,
    /// Stop the rollout when this percentage of finished nodes failed.
    pub failure_rate_stop_percent: u32,
    /// Canary steps, in order; each step is gated on the health of the previous ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_steps: Vec<CanaryStep>,
    /// While set, no new leases are granted; outstanding ones may finish.
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

/// How a rollout picks its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// In steps, each gated on the health of the earlier ones.
    Canary,
    /// Every targeted node, paced by the limits only.
    Rolling,
    /// Only `pinnedNodes` that the intent also targets.
    Pinned,
    /// Only `forcedNode`, now, without a canary.
    ForcedNode,
}

/// A canary step: either an absolute node count or a percentage of the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryStep {
    /// Absolute number of nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Percentage of the target, rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

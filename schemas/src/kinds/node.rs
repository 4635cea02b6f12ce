//! `FabricNode`: one machine of the fleet, its failure-domain labels, roles,
//! endpoint candidates and resilience target.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;

/// Desired description of a fleet node.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "fabric.dev",
    version = "v1alpha1",
    kind = "FabricNode",
    status = "FabricNodeStatus",
    shortname = "fnode",
    printcolumn = r#"{"name":"Area","type":"string","jsonPath":".spec.area"}"#,
    printcolumn = r#"{"name":"Site","type":"string","jsonPath":".spec.siteId"}"#,
    printcolumn = r#"{"name":"NAT","type":"string","jsonPath":".spec.natGroup"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FabricNodeSpec {
    /// Failure-domain area (region, provider, city).
    pub area: String,
    /// Physical or logical site (seed label `site_id`).
    pub site_id: String,
    /// Private/local reachability domain (seed label `locality_group`).
    pub locality_group: String,
    /// Shared public edge dependency (seed label `nat_group`).
    pub nat_group: String,
    /// The node's ed25519 public key, 64 hex digits: its identity on the fabric.
    /// May be empty in a manifest until the node has generated its key; a
    /// record is only published once it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Roles the node takes on for the fleet, such as `relay` or `update-cache`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<NodeRole>,
    /// Addresses the node may be reached at, each valid in its scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
    /// Critical nodes must meet their resilience target; the audit lists those that miss it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// Minimum failure-domain diversity (seed P3); the audit checks it for critical nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience_target: Option<ResilienceTargetSpec>,
}

/// What a node does for the fleet besides running workloads.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Serves the control API (a core service).
    ControlApi,
    /// Holds update artifacts (a core service).
    UpdateStore,
    /// Caches update artifacts for nearby nodes (a core service).
    UpdateCache,
    /// Relays traffic for peers without a direct path.
    Relay,
    /// Takes inbound traffic into the fabric.
    Ingress,
    /// Carries traffic out of the fabric.
    Egress,
}

impl NodeRole {
    /// Every role, in declaration order.
    pub const ALL: [NodeRole; 6] = [
        NodeRole::ControlApi,
        NodeRole::UpdateStore,
        NodeRole::UpdateCache,
        NodeRole::Relay,
        NodeRole::Ingress,
        NodeRole::Egress,
    ];

    /// The role's name as manifests spell it (kebab-case).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::ControlApi => "control-api",
            NodeRole::UpdateStore => "update-store",
            NodeRole::UpdateCache => "update-cache",
            NodeRole::Relay => "relay",
            NodeRole::Ingress => "ingress",
            NodeRole::Egress => "egress",
        }
    }
}

/// One endpoint candidate of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSpec {
    /// `ip:port` of the node's QUIC (UDP) socket.
    pub address: String,
    /// Whether the address is reachable from anywhere or only inside its groups.
    pub scope: EndpointScopeSpec,
    /// For private endpoints: the locality group the address is meaningful in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_group: Option<String>,
    /// For private endpoints: the NAT group the address is meaningful in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_group: Option<String>,
}

/// Where an endpoint address is reachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EndpointScopeSpec {
    /// Reachable only within its locality or NAT group.
    Private,
    /// Reachable from anywhere.
    Public,
}

/// Minimum failure-domain diversity a critical node must keep (seed P3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResilienceTargetSpec {
    /// Minimum peers with a confirmed direct path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_ready_count: Option<u32>,
    /// Minimum peers reachable through a ready relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ready_count: Option<u32>,
    /// Minimum ready peers in another area.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_area_ready_count: Option<u32>,
    /// Minimum ready peers behind independent ingress (different NAT groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub independent_ingress_ready_count: Option<u32>,
    /// Minimum independent ways back to the control edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_path_count: Option<u32>,
}

/// Observed state of a node, written by the control plane from heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FabricNodeStatus {
    /// Generation and conditions, as every kind reports them.
    #[serde(flatten)]
    pub common: ObjectStatus,
    /// `missing`, `candidate_only` or `active` (seed P1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_status: Option<String>,
    /// The node-agent version the node last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

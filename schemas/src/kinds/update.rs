//! `UpdateIntent`: the durable, signed description of "this component should
//! run this version on these nodes, rolled out under that policy".

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::node::NodeRole;
use super::status::ObjectStatus;

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "fabric.dev",
    version = "v1alpha1",
    kind = "UpdateIntent",
    status = "UpdateIntentStatus",
    shortname = "fui",
    printcolumn = r#"{"name":"Component","type":"string","jsonPath":".spec.component"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateIntentSpec {
    pub component: Component,
    pub version: String,
    pub artifact: ArtifactSpec,
    /// Which nodes the intent applies to; an empty selector selects nothing.
    pub target: TargetSelector,
    /// Name of the `RolloutPolicy` that paces the rollout.
    pub policy: String,
}

/// The two agents Fabric updates, in separate phases.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    NodeAgent,
    HostAgent,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::NodeAgent => "node-agent",
            Component::HostAgent => "host-agent",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactSpec {
    /// Lower-case hex SHA-256 of the artifact; nodes refuse anything else.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the artifact may be fetched; any mirror will do since the hash is pinned.
    pub mirrors: Vec<String>,
}

/// Node selection: a node matches when it matches every non-empty list.
/// `all: true` selects the whole fleet explicitly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSelector {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub areas: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<NodeRole>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl TargetSelector {
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.areas.is_empty()
            && self.sites.is_empty()
            && self.nat_groups.is_empty()
            && self.roles.is_empty()
            && self.nodes.is_empty()
    }

    /// Whether a node with these labels is selected.
    pub fn matches(&self, name: &str, node: &super::node::FabricNodeSpec) -> bool {
        if self.is_empty() {
            return false;
        }
        let list = |l: &[String], v: &str| l.is_empty() || l.iter().any(|x| x == v);
        list(&self.areas, &node.area)
            && list(&self.sites, &node.site_id)
            && list(&self.nat_groups, &node.nat_group)
            && list(&self.nodes, name)
            && (self.roles.is_empty() || self.roles.iter().any(|r| node.roles.contains(r)))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateIntentStatus {
    #[serde(flatten)]
    pub common: ObjectStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_nodes: Option<u32>,
}

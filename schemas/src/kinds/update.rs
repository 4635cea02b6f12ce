//! `UpdateIntent`: the durable, signed description of "this component should
//! run this version on these nodes, rolled out under that policy".

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::node::NodeRole;
use super::status::ObjectStatus;

/// Desired version of one component on a set of nodes.
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
    /// Which agent is updated.
    pub component: Component,
    /// The version to run.
    pub version: String,
    /// The artifact to install: hash, size, mirrors.
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
// No variant docs: schemars would turn documented variants into a `oneOf`,
// which changes the CRD schema of `Option<Component>` fields (`firstPhase`
// loses its `null` enum value and its own description).
#[allow(missing_docs)]
pub enum Component {
    // The node-agent itself.
    NodeAgent,
    // The per-machine supervisor that runs the node-agent.
    HostAgent,
}

impl Component {
    /// The component's name as manifests spell it (kebab-case).
    pub fn as_str(self) -> &'static str {
        match self {
            Component::NodeAgent => "node-agent",
            Component::HostAgent => "host-agent",
        }
    }
}

/// An update artifact, pinned by hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactSpec {
    /// Lower-case hex SHA-256 of the artifact; nodes refuse anything else.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the artifact may be fetched; any mirror will do since the hash is pinned.
    pub mirrors: Vec<String>,
    /// The artifact's pieces, pinned by their root: a node checks every piece
    /// it fetches against it before keeping it, so it can take pieces from
    /// several neighbours at once and drop one that serves a bad piece.
    /// `fabricctl artifact push` prints it. Without it a node can verify only
    /// the whole file, and fetches from one source at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<PieceSpec>,
}

/// How an artifact is cut into pieces, and the hash that pins them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PieceSpec {
    /// Bytes per piece (the last piece may be shorter): a power of two from
    /// 16 KiB to 16 MiB.
    pub piece_size: u64,
    /// Lower-case hex SHA-256 over the 32-byte SHA-256 digests of the pieces,
    /// concatenated in order.
    pub root: String,
}

impl PieceSpec {
    /// The smallest piece size allowed.
    pub const MIN_PIECE_SIZE: u64 = 16 * 1024;
    /// The largest piece size allowed.
    pub const MAX_PIECE_SIZE: u64 = 16 * 1024 * 1024;
}

/// Node selection: a node matches when it matches every non-empty list.
/// `all: true` selects the whole fleet explicitly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSelector {
    /// Selects the whole fleet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Only nodes in these areas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub areas: Vec<String>,
    /// Only nodes at these sites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Only nodes in these NAT groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat_groups: Vec<String>,
    /// Only nodes holding at least one of these roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<NodeRole>,
    /// Only these nodes, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl TargetSelector {
    /// True when nothing is set, so nothing is selected.
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

/// Observed progress of an update intent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateIntentStatus {
    /// Generation and conditions, as every kind reports them.
    #[serde(flatten)]
    pub common: ObjectStatus,
    /// Targeted nodes that have finished the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_nodes: Option<u32>,
    /// Nodes the target selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_nodes: Option<u32>,
}

//! `RolloutLease`: the orchestrator's permission for one node to apply one
//! phase of one intent. Operators never write these.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;
use super::update::Component;

#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "fabric.dev",
    version = "v1alpha1",
    kind = "RolloutLease",
    status = "ObjectStatus",
    shortname = "flease",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".spec.phase"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutLeaseSpec {
    /// The `FabricNode` allowed to apply.
    pub node: String,
    /// The `UpdateIntent` and the generation of it this lease is for.
    pub intent: String,
    pub intent_generation: u64,
    pub phase: Component,
    pub lease_id: String,
    /// RFC 3339; the node stops (and does not start) applying after this.
    pub expires_at: String,
    /// Set on leases of a farm-wide start; only valid with a recovery-admin signature.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovery_override: bool,
}

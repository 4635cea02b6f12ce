//! `RolloutLease`: the orchestrator's permission for one node to apply one
//! phase of one intent. Operators never write these.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;
use super::update::Component;

/// Desired state of a rollout lease, signed by the orchestrator.
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
    /// Generation of `intent` the lease is for.
    pub intent_generation: u64,
    /// Which agent the node may update.
    pub phase: Component,
    /// Id of the lease, a hash of intent, generation, node, phase and attempt.
    pub lease_id: String,
    /// RFC 3339; the node stops (and does not start) applying after this.
    pub expires_at: String,
    /// Set on leases of a farm-wide start; only valid with a recovery-admin signature.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovery_override: bool,
}

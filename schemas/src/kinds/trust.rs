//! `TrustRoot`: the role keys and thresholds every node checks records against.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;

/// The fleet's signing keys, with the roles they hold and how many must sign.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "fabric.dev",
    version = "v1alpha1",
    kind = "TrustRoot",
    status = "ObjectStatus",
    shortname = "ftrust",
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".spec.version"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustRootSpec {
    /// Monotonic; a node only moves to a higher version signed by the current root role.
    pub version: u64,
    /// RFC 3339. An expired trust root accepts nothing.
    pub expires_at: String,
    /// Every key, with its scope grant.
    pub keys: Vec<TrustKey>,
    /// Which keys hold each role, and the threshold of each.
    pub roles: TrustRoles,
}

/// One key of a trust root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustKey {
    /// Human-readable key id, referenced from `roles`.
    pub id: String,
    /// 64 hex digits: the ed25519 public key.
    pub public_key: String,
    /// What records this key may sign for: `*`, `area:NAME`, `site:NAME`,
    /// `nat:NAME` or `node:NAME`. Defaults to `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
}

/// The four roles, each a key list and a threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustRoles {
    /// Signs new trust-root versions.
    pub root: RoleKeys,
    /// Signs node and service records, update intents and rollout policies.
    pub control: RoleKeys,
    /// Signs rollout leases.
    pub orchestrator: RoleKeys,
    /// Co-signs overrides such as a farm-wide start.
    pub recovery_admin: RoleKeys,
}

/// The keys of one role and how many of them must sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleKeys {
    /// Ids (from `keys`) of the keys holding the role.
    pub key_ids: Vec<String>,
    /// Distinct keys that must sign; between 1 and the number of keys.
    pub threshold: u32,
}

//! `TrustRoot`: the role keys and thresholds every node checks records against.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;

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
    pub keys: Vec<TrustKey>,
    pub roles: TrustRoles,
}

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustRoles {
    pub root: RoleKeys,
    pub control: RoleKeys,
    pub orchestrator: RoleKeys,
    pub recovery_admin: RoleKeys,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleKeys {
    pub key_ids: Vec<String>,
    pub threshold: u32,
}

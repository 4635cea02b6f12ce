//! `ServiceRecord`: a named fabric service and the nodes that provide it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ObjectStatus;

/// The services every node must resolve before its registry is `active`.
pub const CORE_SERVICES: [&str; 3] = ["control-api", "update-store", "update-cache"];

/// Desired providers of a fabric service.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "fabric.dev",
    version = "v1alpha1",
    kind = "ServiceRecord",
    status = "ServiceRecordStatus",
    shortname = "fsvc",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRecordSpec {
    /// Service name as channels address it, e.g. `control-api`.
    pub service: String,
    /// Names of the `FabricNode`s that provide the service.
    pub providers: Vec<String>,
}

/// Observed state of a service record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecordStatus {
    /// Generation and conditions, as every kind reports them.
    #[serde(flatten)]
    pub common: ObjectStatus,
}

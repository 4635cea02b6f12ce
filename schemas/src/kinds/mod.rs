//! The declarative kinds, as Kubernetes custom resources in `fabric.dev/v1alpha1`.

pub mod lease;
pub mod node;
pub mod policy;
pub mod service;
pub mod status;
pub mod trust;
pub mod update;

pub use lease::{RolloutLease, RolloutLeaseSpec};
pub use node::{
    EndpointScopeSpec, EndpointSpec, FabricNode, FabricNodeSpec, FabricNodeStatus, NodeRole,
    ResilienceTargetSpec,
};
pub use policy::{CanaryStep, RolloutPolicy, RolloutPolicySpec, Strategy};
pub use service::{ServiceRecord, ServiceRecordSpec, ServiceRecordStatus, CORE_SERVICES};
pub use status::ObjectStatus;
pub use trust::{RoleKeys, TrustKey, TrustRoles, TrustRoot, TrustRootSpec};
pub use update::{
    ArtifactSpec, Component, TargetSelector, UpdateIntent, UpdateIntentSpec, UpdateIntentStatus,
};

use serde::{Deserialize, Serialize};

pub const API_GROUP: &str = "fabric.dev";
pub const API_VERSION: &str = "fabric.dev/v1alpha1";

/// Every kind Fabric knows, with its stable wire code for the canonical encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    FabricNode,
    ServiceRecord,
    UpdateIntent,
    RolloutPolicy,
    RolloutLease,
    TrustRoot,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::FabricNode,
        Kind::ServiceRecord,
        Kind::UpdateIntent,
        Kind::RolloutPolicy,
        Kind::RolloutLease,
        Kind::TrustRoot,
    ];

    /// Wire code; never renumber, only append.
    pub fn code(self) -> u8 {
        match self {
            Kind::FabricNode => 1,
            Kind::ServiceRecord => 2,
            Kind::UpdateIntent => 3,
            Kind::RolloutPolicy => 4,
            Kind::RolloutLease => 5,
            Kind::TrustRoot => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FabricNode => "FabricNode",
            Kind::ServiceRecord => "ServiceRecord",
            Kind::UpdateIntent => "UpdateIntent",
            Kind::RolloutPolicy => "RolloutPolicy",
            Kind::RolloutLease => "RolloutLease",
            Kind::TrustRoot => "TrustRoot",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed spec of any kind: what a signed record carries as its payload.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    FabricNode(FabricNodeSpec),
    ServiceRecord(ServiceRecordSpec),
    UpdateIntent(UpdateIntentSpec),
    RolloutPolicy(RolloutPolicySpec),
    RolloutLease(RolloutLeaseSpec),
    TrustRoot(TrustRootSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::FabricNode(_) => Kind::FabricNode,
            Spec::ServiceRecord(_) => Kind::ServiceRecord,
            Spec::UpdateIntent(_) => Kind::UpdateIntent,
            Spec::RolloutPolicy(_) => Kind::RolloutPolicy,
            Spec::RolloutLease(_) => Kind::RolloutLease,
            Spec::TrustRoot(_) => Kind::TrustRoot,
        }
    }

    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        match self {
            Spec::FabricNode(s) => serde_json::to_value(s),
            Spec::ServiceRecord(s) => serde_json::to_value(s),
            Spec::UpdateIntent(s) => serde_json::to_value(s),
            Spec::RolloutPolicy(s) => serde_json::to_value(s),
            Spec::RolloutLease(s) => serde_json::to_value(s),
            Spec::TrustRoot(s) => serde_json::to_value(s),
        }
    }

    /// Strictly parse a spec of `kind` from JSON (unknown fields are errors).
    pub fn from_json(kind: Kind, value: serde_json::Value) -> serde_json::Result<Spec> {
        Ok(match kind {
            Kind::FabricNode => Spec::FabricNode(serde_json::from_value(value)?),
            Kind::ServiceRecord => Spec::ServiceRecord(serde_json::from_value(value)?),
            Kind::UpdateIntent => Spec::UpdateIntent(serde_json::from_value(value)?),
            Kind::RolloutPolicy => Spec::RolloutPolicy(serde_json::from_value(value)?),
            Kind::RolloutLease => Spec::RolloutLease(serde_json::from_value(value)?),
            Kind::TrustRoot => Spec::TrustRoot(serde_json::from_value(value)?),
        })
    }
}

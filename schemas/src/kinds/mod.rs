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
    ArtifactSpec, Component, PieceSpec, TargetSelector, UpdateIntent, UpdateIntentSpec,
    UpdateIntentStatus,
};

use serde::{Deserialize, Serialize};

/// Kubernetes API group of every Fabric kind.
pub const API_GROUP: &str = "fabric.dev";
/// The `apiVersion` every Fabric manifest carries.
pub const API_VERSION: &str = "fabric.dev/v1alpha1";

/// Every kind Fabric knows, with its stable wire code for the canonical encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A fleet node ([`FabricNodeSpec`]).
    FabricNode,
    /// A service and its providers ([`ServiceRecordSpec`]).
    ServiceRecord,
    /// A component version to roll out ([`UpdateIntentSpec`]).
    UpdateIntent,
    /// The pace and shape of rollouts ([`RolloutPolicySpec`]).
    RolloutPolicy,
    /// The orchestrator's permission for one node to apply one phase ([`RolloutLeaseSpec`]).
    RolloutLease,
    /// The role keys and thresholds records are checked against ([`TrustRootSpec`]).
    TrustRoot,
}

impl Kind {
    /// Every kind, in wire-code order.
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

    /// The kind with wire code `code`, if any.
    pub fn from_code(code: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The kind's name as a manifest's `kind:` spells it.
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

    /// The kind a manifest's `kind:` names, if any.
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
    /// A node's labels, roles and endpoints.
    FabricNode(FabricNodeSpec),
    /// Which nodes provide a service.
    ServiceRecord(ServiceRecordSpec),
    /// A component version to roll out.
    UpdateIntent(UpdateIntentSpec),
    /// How fast and in what shape rollouts move.
    RolloutPolicy(RolloutPolicySpec),
    /// One node's permission to apply one phase.
    RolloutLease(RolloutLeaseSpec),
    /// The role keys and thresholds of the fleet.
    TrustRoot(TrustRootSpec),
}

impl Spec {
    /// The kind this spec is of.
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

    /// The spec as JSON, as manifests write it (not yet canonical).
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

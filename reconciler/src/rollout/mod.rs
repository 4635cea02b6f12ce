//! The update orchestrator's rollout planner (seed P5): a sans-IO core that
//! turns an `UpdateIntent`, its `RolloutPolicy`, the fleet, the heartbeats and
//! the outstanding leases into leases to grant, leases to revoke and a status.
//!
//! It does no I/O and reads no clock (`now` is an input); the driver loads the
//! inputs, signs the grants with the orchestrator key
//! (`fabric_schemas::Envelope::sign`), publishes and revokes leases, writes
//! the status and stores [`RolloutProgress`] for the next tick. The model,
//! limits, role rules and stop conditions are described in
//! `docs/orchestrator.md`.
//!
//! [`check_lease_admission`] is the node-side half: the check a node runs on
//! a verified lease before it stages anything.

mod input;
mod lease;
mod limits;
mod planner;
mod roles;
mod status;
mod strategy;

pub use fabric_schemas::lease::{
    check_lease_admission, AdmissionContext, HeldIntent, LeaseRefusal,
};
pub use input::{
    validate, Fleet, FleetNode, Health, IntentInput, LiveStates, NodeLive, OutstandingLease,
    PlanError, PlannerConfig, RolloutControl, RolloutProgress, SoleAreaProvider, StopCause,
    TickInput, UpdateReport, UpdateState, Versions,
};
pub use lease::{build_lease, lease_id, lease_record_name, LeaseParams};
pub use planner::{plan, plan_phases};
pub use roles::{is_core, roles_of, CORE_ROLES, EDGE_ROLES};
pub use status::{
    CanaryStatus, Condition, Counts, LeaseGrant, LeaseRevoke, Reason, RevokeReason, RolloutPhase,
    RolloutStatus, TickOutput,
};
pub use strategy::canary_targets;

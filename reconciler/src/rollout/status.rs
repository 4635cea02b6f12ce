//! What a tick produces: leases to grant, leases to revoke, the rollout's
//! status (phase, counts, canary step, conditions) and the progress to store.

use fabric_schemas::kinds::RolloutLeaseSpec;
use serde::{Deserialize, Serialize};

use super::input::RolloutProgress;

/// The result of one planner tick. Applying it twice changes nothing: the
/// grants are deterministic and a granted lease is an outstanding lease on the
/// next tick.
#[derive(Clone, Debug, PartialEq)]
pub struct TickOutput {
    pub grant: Vec<LeaseGrant>,
    pub revoke: Vec<LeaseRevoke>,
    pub status: RolloutStatus,
    /// Store this and pass it to the next tick.
    pub progress: RolloutProgress,
}

/// A lease to sign (orchestrator key, plus recovery-admin when
/// `spec.recovery_override`) and publish.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseGrant {
    pub spec: RolloutLeaseSpec,
    /// 1 for the first lease of this node in this rollout.
    pub attempt: u32,
}

/// A lease to withdraw: delete the record and tell the node to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRevoke {
    pub node: String,
    pub lease_id: String,
    pub reason: RevokeReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// The node runs the new version; the lease has done its job.
    Completed,
    /// Past `expiresAt`; the node has stopped by itself.
    Expired,
    /// The node reported `blocked`, `aborted` or `rolled_back` for this lease.
    AttemptFailed,
    /// The operator aborted the rollout.
    Aborted,
    /// The lease is for an older generation of the intent.
    Superseded,
    /// The node is no longer in the rollout's target set.
    NotTargeted,
}

/// Where a rollout is, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RolloutPhase {
    Progressing,
    Paused,
    /// Stopped by the planner (failure rate, heartbeat loss, rollback).
    Stopped,
    Aborted,
    /// Every targeted node runs the new version.
    Complete,
    /// Nothing left to do, but some nodes failed.
    Failed,
}

/// Node counts over the rollout's target set. `done + failed + in_flight +
/// remaining == target`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub target: u32,
    /// Runs the new version (including nodes that already did).
    pub done: u32,
    pub failed: u32,
    pub in_flight: u32,
    pub remaining: u32,
}

/// The canary step being filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// 1-based, for humans.
    pub step: u32,
    pub steps: u32,
    /// Nodes that must be touched (done, failed or in flight) when this step is full.
    pub step_target: u32,
}

/// Stable condition reasons (Kubernetes `reason` style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    Paused,
    Aborted,
    FailureRateExceeded,
    HeartbeatLost,
    RolledBack,
    Complete,
    /// The lease set would have started every targeted node at once.
    FarmWideStartRefused,
    /// Nodes wait on a role rule and nothing else is moving.
    RoleBlocked,
    /// The next canary step waits for the previous ones to be healthy.
    CanaryGated,
    /// Nodes wait for the other component's phase to finish on them.
    WaitingForPhase,
    /// A pinned or forced node is not in the fleet or not targeted.
    UnknownNode,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Paused => "Paused",
            Reason::Aborted => "Aborted",
            Reason::FailureRateExceeded => "FailureRateExceeded",
            Reason::HeartbeatLost => "HeartbeatLost",
            Reason::RolledBack => "RolledBack",
            Reason::Complete => "Complete",
            Reason::FarmWideStartRefused => "FarmWideStartRefused",
            Reason::RoleBlocked => "RoleBlocked",
            Reason::CanaryGated => "CanaryGated",
            Reason::WaitingForPhase => "WaitingForPhase",
            Reason::UnknownNode => "UnknownNode",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition: a reason and a message an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub reason: Reason,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub phase: RolloutPhase,
    pub counts: Counts,
    pub canary: Option<CanaryStatus>,
    pub conditions: Vec<Condition>,
}

impl RolloutStatus {
    pub fn has(&self, reason: Reason) -> bool {
        self.conditions.iter().any(|c| c.reason == reason)
    }

    pub fn condition(&self, reason: Reason) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.reason == reason)
    }
}

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
    /// Leases to sign and publish.
    pub grant: Vec<LeaseGrant>,
    /// Leases to withdraw.
    pub revoke: Vec<LeaseRevoke>,
    /// Where the rollout stands after this tick.
    pub status: RolloutStatus,
    /// Store this and pass it to the next tick.
    pub progress: RolloutProgress,
}

/// A lease to sign (orchestrator key, plus recovery-admin when
/// `spec.recovery_override`) and publish.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseGrant {
    /// The lease to sign.
    pub spec: RolloutLeaseSpec,
    /// 1 for the first lease of this node in this rollout.
    pub attempt: u32,
}

/// A lease to withdraw: delete the record and tell the node to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRevoke {
    /// The node holding the lease.
    pub node: String,
    /// The lease's id.
    pub lease_id: String,
    /// Why it is withdrawn.
    pub reason: RevokeReason,
}

/// Why a lease is withdrawn.
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
    /// Leases are being granted or are out.
    Progressing,
    /// Paused by the operator or the policy; no new leases.
    Paused,
    /// Stopped by the planner (failure rate, heartbeat loss, rollback).
    Stopped,
    /// Aborted by the operator; every outstanding lease is revoked.
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
    /// Nodes the intent's target selects.
    pub target: u32,
    /// Runs the new version (including nodes that already did).
    pub done: u32,
    /// Given up on.
    pub failed: u32,
    /// Hold a lease now.
    pub in_flight: u32,
    /// Not yet leased.
    pub remaining: u32,
}

/// The canary step being filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// 1-based, for humans.
    pub step: u32,
    /// How many steps there are, the implicit last one included.
    pub steps: u32,
    /// Nodes that must be touched (done, failed or in flight) when this step is full.
    pub step_target: u32,
}

/// Stable condition reasons (Kubernetes `reason` style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    /// The rollout is paused.
    Paused,
    /// The operator aborted the rollout.
    Aborted,
    /// Too many finished nodes failed; the rollout stopped.
    FailureRateExceeded,
    /// A leased node is heartbeat-lost; the rollout stopped.
    HeartbeatLost,
    /// A node rolled back; the rollout stopped.
    RolledBack,
    /// Every targeted node runs the new version.
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
    /// The reason as conditions spell it.
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
    /// The stable reason.
    pub reason: Reason,
    /// What an operator should know or do.
    pub message: String,
}

/// A rollout's status as one tick sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// Where the rollout is.
    pub phase: RolloutPhase,
    /// Node counts over the target set.
    pub counts: Counts,
    /// The canary step being filled, for the canary strategy.
    pub canary: Option<CanaryStatus>,
    /// Every reason that applies, with its message.
    pub conditions: Vec<Condition>,
}

impl RolloutStatus {
    /// Whether a condition with `reason` is set.
    pub fn has(&self, reason: Reason) -> bool {
        self.conditions.iter().any(|c| c.reason == reason)
    }

    /// The condition with `reason`, if set.
    pub fn condition(&self, reason: Reason) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.reason == reason)
    }
}

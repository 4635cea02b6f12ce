//! What the planner is given: the intent, its policy, the fleet, what the
//! heartbeats say, the leases that are out, what the operator decided and what
//! earlier ticks recorded. All of it is plain data; the driver gathers it.

use std::collections::{BTreeMap, BTreeSet};

use fabric_schemas::kinds::{
    Component, FabricNodeSpec, RolloutLeaseSpec, RolloutPolicySpec, Strategy, UpdateIntentSpec,
};
use fabric_schemas::time::{parse_rfc3339, TimeError};
use serde::{Deserialize, Serialize};

use super::status::Reason;

/// One `UpdateIntent` as the planner sees it: name, generation and spec.
#[derive(Clone, Debug, PartialEq)]
pub struct IntentInput {
    /// The intent's `metadata.name`.
    pub name: String,
    /// Its `metadata.generation`; leases are for one generation.
    pub generation: u64,
    /// What to roll out, to which nodes, under which policy.
    pub spec: UpdateIntentSpec,
}

impl IntentInput {
    /// The phase this intent's leases are for: an intent updates one component.
    pub fn phase(&self) -> Component {
        self.spec.component
    }
}

/// Versions a node currently runs, as its heartbeat reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    /// The node-agent version, if reported.
    pub node_agent: Option<String>,
    /// The host-agent version, if reported.
    pub host_agent: Option<String>,
}

impl Versions {
    /// The version of `component` the node runs, if reported.
    pub fn of(&self, component: Component) -> Option<&str> {
        match component {
            Component::NodeAgent => self.node_agent.as_deref(),
            Component::HostAgent => self.host_agent.as_deref(),
        }
    }
}

/// A fleet node: its `FabricNode` spec (labels and roles) and running versions.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetNode {
    /// Labels and roles, from the node's `FabricNode`.
    pub spec: FabricNodeSpec,
    /// What it runs now.
    pub versions: Versions,
}

/// The whole fleet by node name. A `BTreeMap` so every iteration, and so every
/// plan, has one order.
pub type Fleet = BTreeMap<String, FleetNode>;

/// Liveness as the heartbeat intake judges it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// A fresh heartbeat that reports the node healthy.
    #[default]
    Healthy,
    /// A fresh heartbeat that reports it unhealthy, or one that does not parse.
    Unhealthy,
    /// No fresh heartbeat within the intake's deadline.
    HeartbeatLost,
}

/// The node-side update states and the typed report are the wire contract's.
pub use fabric_proto::update::{UpdateReport, UpdateState};

/// What the latest heartbeat of a node says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeLive {
    /// Health judged from the latest heartbeat.
    pub health: Health,
    /// The node's report on its update, if it sent one.
    pub update: Option<UpdateReport>,
}

/// Live state by node name. A node missing here is treated as heartbeat-lost:
/// the planner never leases a node it has not heard from.
pub type LiveStates = BTreeMap<String, NodeLive>;

/// A lease that is out, of any intent (the planner needs the others' to keep
/// a node from holding two leases at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutstandingLease {
    /// The node the lease lets apply.
    pub node: String,
    /// The intent it is for.
    pub intent: String,
    /// The intent generation it is for.
    pub intent_generation: u64,
    /// The agent it lets the node update.
    pub phase: Component,
    /// The lease's id.
    pub lease_id: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl OutstandingLease {
    /// From a stored lease spec; fails only on an unreadable `expiresAt`.
    pub fn from_spec(spec: &RolloutLeaseSpec) -> Result<OutstandingLease, TimeError> {
        Ok(OutstandingLease {
            node: spec.node.clone(),
            intent: spec.intent.clone(),
            intent_generation: spec.intent_generation,
            phase: spec.phase,
            lease_id: spec.lease_id.clone(),
            expires_at: parse_rfc3339(&spec.expires_at)?,
        })
    }
}

/// What the operator decided (`fabricctl rollout pause/resume/abort`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutControl {
    /// No new leases; outstanding ones may finish.
    pub paused: bool,
    /// Set with the operator's reason; every outstanding lease is revoked.
    pub aborted: Option<String>,
    /// The rollout carries a recovery-admin override: a farm-wide start is
    /// allowed, and the leases of it are marked `recoveryOverride` (the caller
    /// must add a recovery-admin signature or nodes refuse them).
    pub recovery_override: bool,
}

/// Why the planner stopped a rollout by itself. Sticky: it stays until the
/// operator resumes with [`RolloutProgress::resume`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopCause {
    /// Which stop condition fired.
    pub reason: Reason,
    /// The details, for status and events.
    pub message: String,
}

/// What the planner records between ticks; the driver stores it durably and
/// hands it back. Pausing and resuming never loses it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// Nodes that reached the new version under a lease of this rollout.
    pub done: BTreeSet<String>,
    /// Nodes given up on, with why.
    pub failed: BTreeMap<String, String>,
    /// Leases granted per node so far; the next lease id uses attempt + 1.
    pub attempts: BTreeMap<String, u32>,
    /// Index of the canary step being filled (0-based).
    pub canary_step: u32,
    /// Set when the planner stopped the rollout by itself.
    pub stopped: Option<StopCause>,
}

impl RolloutProgress {
    /// The operator's resume after an automatic stop: clears the stop, keeps
    /// everything else (failed nodes stay failed, counts stay).
    pub fn resume(&mut self) {
        self.stopped = None;
    }

    /// The operator's "retry the failed nodes": they become pending again
    /// with fresh attempts (a failed canary node otherwise holds the canary
    /// gate shut for good).
    pub fn retry_failed(&mut self) {
        for node in std::mem::take(&mut self.failed).into_keys() {
            self.attempts.remove(&node);
        }
    }
}

/// What to do with the only relay / ingress / egress of an area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SoleAreaProvider {
    /// Lease it when another area has an unleased healthy provider of the
    /// role, so the fleet keeps one while this area's is updated. Without this
    /// an area with one relay could never be updated at all.
    #[default]
    CoverFromOtherArea,
    /// Never lease it; it must be updated with a forced-node intent after
    /// adding a second provider, or by hand.
    Never,
}

/// Knobs of the planner that are not part of the policy object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Lease lifetime: long enough to stage and apply, short enough that a
    /// vanished orchestrator does not leave nodes leased for long.
    pub lease_ttl_secs: i64,
    /// Leases a node may get before it counts as failed.
    pub max_attempts: u32,
    /// Finished nodes needed before the failure rate can stop a rollout (one
    /// early failure of two would otherwise read as 50 %). Capped at the
    /// number of nodes the rollout has to update.
    pub min_failure_sample: u32,
    /// What to do with the only relay, ingress or egress of an area.
    pub sole_area_provider: SoleAreaProvider,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            lease_ttl_secs: 15 * 60,
            max_attempts: 2,
            min_failure_sample: 5,
            sole_area_provider: SoleAreaProvider::CoverFromOtherArea,
        }
    }
}

/// Everything one tick of one rollout looks at.
#[derive(Clone, Copy, Debug)]
pub struct TickInput<'a> {
    /// Unix seconds; the planner never reads a clock.
    pub now: i64,
    /// The intent being rolled out.
    pub intent: &'a IntentInput,
    /// The `RolloutPolicy` it names.
    pub policy: &'a RolloutPolicySpec,
    /// Every node, by name.
    pub fleet: &'a Fleet,
    /// What the latest heartbeats say, by node.
    pub live: &'a LiveStates,
    /// Outstanding leases of every intent.
    pub leases: &'a [OutstandingLease],
    /// What the operator decided.
    pub control: &'a RolloutControl,
    /// What earlier ticks recorded.
    pub progress: &'a RolloutProgress,
    /// Planner knobs outside the policy.
    pub config: &'a PlannerConfig,
}

/// A policy the planner cannot act on. The manifest checks catch these at
/// `apply`; the planner checks again because it must never guess.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `maxParallel` is 0.
    #[error("RolloutPolicy {policy:?}: spec.maxParallel must be >= 1 (got 0)")]
    ZeroMaxParallel {
        /// The policy's name.
        policy: String,
    },
    /// A canary step sets both or neither of count and percent, or an out-of-range value.
    #[error("RolloutPolicy {policy:?}: spec.canarySteps[{index}] must set exactly one of count or percent (percent 1-100)")]
    BadCanaryStep {
        /// The policy's name.
        policy: String,
        /// The step's position in `canarySteps`.
        index: usize,
    },
    /// The strategy needs a field the policy leaves empty.
    #[error("RolloutPolicy {policy:?}: strategy {strategy:?} needs {field}")]
    MissingStrategyField {
        /// The policy's name.
        policy: String,
        /// Its strategy.
        strategy: Strategy,
        /// The missing field, as manifests spell it.
        field: &'static str,
    },
    /// A [`PlannerConfig`] value is out of range; says which.
    #[error("PlannerConfig: {0}")]
    Config(&'static str),
}

/// Checks the parts of the policy and config the planner relies on.
/// `policy_name` is only used in the error message.
pub fn validate(
    policy_name: &str,
    policy: &RolloutPolicySpec,
    config: &PlannerConfig,
) -> Result<(), PlanError> {
    let name = || policy_name.to_owned();
    if policy.max_parallel == 0 {
        return Err(PlanError::ZeroMaxParallel { policy: name() });
    }
    for (index, step) in policy.canary_steps.iter().enumerate() {
        let ok = matches!(
            (step.count, step.percent),
            (Some(c), None) if c >= 1
        ) || matches!((step.count, step.percent), (None, Some(p)) if (1..=100).contains(&p));
        if !ok {
            return Err(PlanError::BadCanaryStep {
                policy: name(),
                index,
            });
        }
    }
    let missing = |field| PlanError::MissingStrategyField {
        policy: name(),
        strategy: policy.strategy,
        field,
    };
    match policy.strategy {
        Strategy::Canary if policy.canary_steps.is_empty() => return Err(missing("canarySteps")),
        Strategy::Pinned if policy.pinned_nodes.is_empty() => return Err(missing("pinnedNodes")),
        Strategy::ForcedNode if policy.forced_node.is_none() => return Err(missing("forcedNode")),
        _ => {}
    }
    if config.lease_ttl_secs <= 0 {
        return Err(PlanError::Config("lease_ttl_secs must be positive"));
    }
    if config.max_attempts == 0 {
        return Err(PlanError::Config("max_attempts must be >= 1"));
    }
    Ok(())
}

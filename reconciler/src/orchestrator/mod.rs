//! The update orchestrator's driver (seed P5, issue 7 parts 3-5): the I/O
//! half around the sans-IO planner in [`crate::rollout`].
//!
//! - [`Orchestrator::tick`] loads every `UpdateIntent`, its `RolloutPolicy`,
//!   the fleet, heartbeats, leases and rollout state from a [`Store`], plans
//!   all rollouts together, signs the leases it grants (orchestrator key, plus
//!   recovery-admin only under an explicit override) and writes leases, lease
//!   records, rollout state, intent status and events in one atomic batch.
//!   State lives only in the store: a restarted driver continues exactly
//!   where it was, and lease ids are deterministic.
//! - [`control`]: pause / resume / abort / status as compare-and-set store
//!   operations on the rollout state.
//! - The compat bridge: nodes whose heartbeat says they cannot take leases
//!   are driven through the compat path one at a time ([`BridgeAction`]),
//!   with [`TickReport::bridge_hold_required`] when one needs an operator.
//!   [`bridge_command`] is its executor: the Control API puts the in-flight
//!   action into the named node's heartbeat reply.
//!
//! Design and field reference: `docs/orchestrator.md`, "Driver, durability
//! and control".
//!
//! [`Store`]: crate::store::Store

mod bridge;
pub mod control;
mod driver;
mod executor;
pub mod live;
mod state;

pub use control::{ConditionView, LeaseView, RolloutView};
pub use driver::{
    LeaseBody, LeaseReport, Orchestrator, OrchestratorConfig, OrchestratorKeys, RolloutReport,
    SkippedIntent, TickReport,
};
pub use executor::bridge_command;
pub use state::{BridgeAction, BridgeState, BridgeStatus, ExtraCondition, RolloutDoc};

use crate::rollout::PlanError;
use crate::store::StoreError;

/// What can go wrong driving rollouts.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No `UpdateIntent` of that name.
    #[error("UpdateIntent {0:?} not found")]
    IntentNotFound(String),
    /// A rollout's stored state, or its intent's spec, does not decode.
    #[error("rollout {intent:?}: stored state is unreadable: {reason}")]
    BadState {
        /// The rollout (intent) concerned.
        intent: String,
        /// Why it does not decode.
        reason: String,
    },
    /// A lease record could not be built or signed.
    #[error("signing lease {lease_id}: {reason}")]
    Sign {
        /// The lease concerned.
        lease_id: String,
        /// What failed.
        reason: String,
    },
    /// State or a lease body does not serialise to JSON.
    #[error("encoding {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The serialiser's error.
        reason: String,
    },
    /// The planner refused the policy or config.
    #[error("planning: {0}")]
    Plan(#[from] PlanError),
}

impl OrchestratorError {
    /// A concurrent writer won a compare-and-set: re-read and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, OrchestratorError::Store(e) if e.is_conflict())
    }
}

/// Shorthand for orchestrator results.
pub type Result<T, E = OrchestratorError> = std::result::Result<T, E>;

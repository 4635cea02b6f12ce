//! The node-side lease check: pure, run by a node after [`accept`](crate::accept)
//! has verified the lease envelope and before it stages anything.
//!
//! `accept` proves who signed; this decides whether the lease lets *this* node
//! apply *this* update *now*, and enforces the farm-wide start guard on the
//! node as well, so a compromised or buggy orchestrator alone cannot start the
//! whole fleet.

use std::collections::BTreeSet;

use crate::kinds::{Component, RolloutLeaseSpec};
use crate::time::parse_rfc3339;
use crate::Role;

/// The intent a node holds (accepted and stored), that a lease must match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldIntent<'a> {
    /// The intent's `metadata.name`.
    pub name: &'a str,
    /// The generation of it the node holds.
    pub generation: u64,
    /// The agent the intent updates.
    pub component: Component,
}

/// What the node knows when a lease arrives.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionContext<'a> {
    /// This node's `FabricNode` name.
    pub node: &'a str,
    /// The intent it holds for the lease's phase, if any.
    pub held_intent: Option<HeldIntent<'a>>,
    /// `Accepted::roles_met` of the lease envelope.
    pub roles_met: &'a BTreeSet<Role>,
    /// Unix seconds.
    pub now: i64,
    /// Nodes the intent targets, from the node's directory.
    pub fleet_size: u32,
    /// Live leases of this intent generation the node knows of (from lease
    /// records in its directory), this one included.
    pub concurrently_leased: u32,
}

/// Why a node refuses a lease; recorded as the journal's admission failure
/// reason and reported with state `blocked`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefusal {
    /// The lease names another node.
    #[error("lease {lease_id} is for node {lease_node:?}, this is {node:?}")]
    WrongNode {
        /// The refused lease's id.
        lease_id: String,
        /// The node the lease names.
        lease_node: String,
        /// This node.
        node: String,
    },
    /// No orchestrator threshold among the lease's signers.
    #[error("lease {lease_id} is not signed by the orchestrator role")]
    NotOrchestratorSigned {
        /// The refused lease's id.
        lease_id: String,
    },
    /// The lease's `expiresAt` does not parse.
    #[error("lease {lease_id}: expiresAt {expires_at:?} is not RFC 3339")]
    BadExpiry {
        /// The refused lease's id.
        lease_id: String,
        /// The `expiresAt` text as written.
        expires_at: String,
    },
    /// The lease has expired.
    #[error("lease {lease_id} expired at {expires_at} (now {now})")]
    Expired {
        /// The refused lease's id.
        lease_id: String,
        /// Its expiry (Unix seconds).
        expires_at: i64,
        /// The node's clock (Unix seconds).
        now: i64,
    },
    /// The lease is for another intent, generation or phase than the node holds.
    #[error("lease {lease_id} is for {intent:?} generation {generation} ({phase}), but this node holds {held}")]
    IntentMismatch {
        /// The refused lease's id.
        lease_id: String,
        /// The intent the lease names.
        intent: String,
        /// The intent generation the lease names.
        generation: u64,
        /// The phase the lease names.
        phase: &'static str,
        /// What the node holds instead, for the message.
        held: String,
    },
    /// `recoveryOverride` is set but no recovery-admin threshold signed.
    #[error("lease {lease_id} carries recoveryOverride without a recovery-admin signature")]
    OverrideWithoutRecoveryAdmin {
        /// The refused lease's id.
        lease_id: String,
    },
    /// Every targeted node would apply at once, with no recovery-admin override.
    #[error("lease {lease_id} would make {leased} of {fleet_size} nodes apply at once (a farm-wide start) without a recovery-admin override")]
    FarmWideStart {
        /// The refused lease's id.
        lease_id: String,
        /// Live leases of this intent generation, this one included.
        leased: u32,
        /// Nodes the intent targets.
        fleet_size: u32,
    },
}

impl LeaseRefusal {
    /// Stable snake_case label for the journal and counters.
    pub fn reason(&self) -> &'static str {
        match self {
            LeaseRefusal::WrongNode { .. } => "wrong_node",
            LeaseRefusal::NotOrchestratorSigned { .. } => "not_orchestrator_signed",
            LeaseRefusal::BadExpiry { .. } => "bad_expiry",
            LeaseRefusal::Expired { .. } => "expired",
            LeaseRefusal::IntentMismatch { .. } => "intent_mismatch",
            LeaseRefusal::OverrideWithoutRecoveryAdmin { .. } => "override_without_recovery_admin",
            LeaseRefusal::FarmWideStart { .. } => "farm_wide_start",
        }
    }
}

/// Decides whether a node may act on a verified lease.
pub fn check_lease_admission(
    lease: &RolloutLeaseSpec,
    ctx: &AdmissionContext<'_>,
) -> Result<(), LeaseRefusal> {
    let id = || lease.lease_id.clone();
    if lease.node != ctx.node {
        return Err(LeaseRefusal::WrongNode {
            lease_id: id(),
            lease_node: lease.node.clone(),
            node: ctx.node.to_owned(),
        });
    }
    if !ctx.roles_met.contains(&Role::Orchestrator) {
        return Err(LeaseRefusal::NotOrchestratorSigned { lease_id: id() });
    }
    let expires_at = parse_rfc3339(&lease.expires_at).map_err(|_| LeaseRefusal::BadExpiry {
        lease_id: id(),
        expires_at: lease.expires_at.clone(),
    })?;
    if expires_at <= ctx.now {
        return Err(LeaseRefusal::Expired {
            lease_id: id(),
            expires_at,
            now: ctx.now,
        });
    }
    let matches = ctx.held_intent.is_some_and(|h| {
        h.name == lease.intent
            && h.generation == lease.intent_generation
            && h.component == lease.phase
    });
    if !matches {
        let held = match ctx.held_intent {
            Some(h) => format!(
                "{:?} generation {} ({})",
                h.name,
                h.generation,
                h.component.as_str()
            ),
            None => "no intent for this phase".to_owned(),
        };
        return Err(LeaseRefusal::IntentMismatch {
            lease_id: id(),
            intent: lease.intent.clone(),
            generation: lease.intent_generation,
            phase: lease.phase.as_str(),
            held,
        });
    }
    if lease.recovery_override {
        if !ctx.roles_met.contains(&Role::RecoveryAdmin) {
            return Err(LeaseRefusal::OverrideWithoutRecoveryAdmin { lease_id: id() });
        }
        return Ok(());
    }
    if ctx.fleet_size > 1 && ctx.concurrently_leased >= ctx.fleet_size {
        return Err(LeaseRefusal::FarmWideStart {
            lease_id: id(),
            leased: ctx.concurrently_leased,
            fleet_size: ctx.fleet_size,
        });
    }
    Ok(())
}

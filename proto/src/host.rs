//! The local hand-over between the node-agent's updater and the host agent,
//! both sides of it: the request the updater writes ([`ApplyRequest`] in
//! [`APPLY_REQUEST_FILE`]), the host agent's answer ([`ApplyOutcome`] in
//! [`APPLY_RESULT_FILE`]), and the host agent's status as it hands it to the
//! node-agent, which carries it in every heartbeat ([`HostStatus`]).

use std::path::PathBuf;

use fabric_schemas::kinds::Component;
use serde::{Deserialize, Serialize};

/// The updater's request file, in the node-agent's `update/` folder.
pub const APPLY_REQUEST_FILE: &str = "apply-request.json";
/// The host agent's answer, beside it.
pub const APPLY_RESULT_FILE: &str = "apply-result.json";
/// The host agent's status, in the node-agent's state folder.
pub const HOST_STATUS_FILE: &str = "host-status.json";

/// What the updater asks the host agent to apply (written atomically, after
/// the journal says `applying`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The lease the apply runs under.
    pub lease_id: String,
    /// The intent.
    pub intent: String,
    /// Its generation.
    pub generation: u64,
    /// The component to replace.
    pub component: Component,
    /// The version it installs.
    pub version: String,
    /// The staged artifact's sha256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Where the staged artifact is (read-only, verified).
    pub artifact: PathBuf,
    /// The digest running before the apply (what a rollback restores).
    #[serde(default)]
    pub previous_sha256: Option<String>,
}

/// The host agent's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum ApplyOutcome {
    /// The new build runs and passed its probation.
    Committed {
        /// The lease the request named.
        lease_id: String,
        /// The digest now running.
        sha256: String,
    },
    /// The new build failed (or was refused); the previous one runs.
    RolledBack {
        /// The lease the request named.
        lease_id: String,
        /// The digest that failed.
        sha256: String,
        /// What failed (`exited_before_ready`, `no_readiness`, `denylisted`,
        /// `swap_refused: ...`, ...).
        reason: String,
    },
}

impl ApplyOutcome {
    /// `committed` or `rolled_back`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApplyOutcome::Committed { .. } => "committed",
            ApplyOutcome::RolledBack { .. } => "rolled_back",
        }
    }

    /// The lease of the request it answers.
    pub fn lease_id(&self) -> &str {
        match self {
            ApplyOutcome::Committed { lease_id, .. }
            | ApplyOutcome::RolledBack { lease_id, .. } => lease_id,
        }
    }

    /// The digest of the request it answers.
    pub fn sha256(&self) -> &str {
        match self {
            ApplyOutcome::Committed { sha256, .. } | ApplyOutcome::RolledBack { sha256, .. } => {
                sha256
            }
        }
    }

    /// Why it was rolled back.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ApplyOutcome::Committed { .. } => None,
            ApplyOutcome::RolledBack { reason, .. } => Some(reason),
        }
    }
}

/// What the host agent knows of itself and of the node-agent it supervises.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host agent's own version.
    pub host_agent_version: String,
    /// SHA-256 (hex) of the running host-agent binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_agent_digest: Option<String>,
    /// The supervised node-agent's version, as it reported on readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_agent_version: Option<String>,
    /// SHA-256 (hex) of the node-agent binary the host agent executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_agent_digest: Option<String>,
    /// The slot the node-agent runs from (`current`, or its digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_agent_slot: Option<String>,
    /// Restarts of the node-agent since the host agent started.
    #[serde(default)]
    pub restarts: u64,
    /// Unix milliseconds of the last passing health probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_ms: Option<u64>,
    /// The last apply's downtime: from stopping the old node-agent to the
    /// new one's `READY=1`, in milliseconds (measured by the host agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_swap_downtime_ms: Option<u64>,
}

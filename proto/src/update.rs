//! The node-side update states of the seed (P5) and the report a node makes
//! of its current update in every heartbeat.

use fabric_schemas::kinds::Component;
use serde::{Deserialize, Serialize};

/// The node-side update states of the seed (P5), spelled as it spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// The node will not act: lease admission failed (the reason is reported).
    Blocked,
    /// The node holds a valid lease for the intent.
    Leased,
    /// The artifact is fetched, verified and staged.
    Staged,
    /// The staged artifact is being applied.
    Applying,
    /// The new build runs and passed its checks.
    Healthy,
    /// The new build failed; the previous one runs again.
    RolledBack,
    /// The attempt was given up (bounded retries, operator abort).
    Aborted,
}

impl UpdateState {
    /// Every state, in the order of the happy path then the failures.
    pub const ALL: [UpdateState; 7] = [
        UpdateState::Blocked,
        UpdateState::Leased,
        UpdateState::Staged,
        UpdateState::Applying,
        UpdateState::Healthy,
        UpdateState::RolledBack,
        UpdateState::Aborted,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Blocked => "blocked",
            UpdateState::Leased => "leased",
            UpdateState::Staged => "staged",
            UpdateState::Applying => "applying",
            UpdateState::Healthy => "healthy",
            UpdateState::RolledBack => "rolled_back",
            UpdateState::Aborted => "aborted",
        }
    }

    /// Parses the wire spelling; `None` for a word this version does not know.
    pub fn parse(s: &str) -> Option<UpdateState> {
        UpdateState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What a node says about its current update attempt, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateReport {
    /// The `UpdateIntent` name.
    pub intent: String,
    /// The intent's generation.
    pub generation: u64,
    /// Which component is being updated.
    pub phase: Component,
    /// The lease the report is about; `blocked` and `aborted` only end the
    /// attempt whose lease they name, so a stale report cannot kill a retry.
    pub lease_id: Option<String>,
    /// Where the attempt is.
    pub state: UpdateState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_wire_spelling() {
        for st in UpdateState::ALL {
            assert_eq!(UpdateState::parse(st.as_str()), Some(st));
            let json = serde_json::to_value(st).expect("serialises");
            assert_eq!(json, serde_json::Value::String(st.as_str().to_owned()));
        }
        assert_eq!(UpdateState::parse("finished"), None);
    }
}

//! Heartbeats as the control plane sees them.
//!
//! The wire types are the node's (`fabric_node_agent::control`), re-exported
//! here so the intake, the audit and the rollout planner share one definition.
//! A heartbeat is node-authored data: it is never authoritative control-plane
//! state. What this module adds is the control plane's reading of it: the
//! versions and update report the rollout planner consumes.

pub use fabric_node_agent::control::{
    BridgeArtifact, BridgeCommand, ControlEndpoint, ControlRequest, DirectoryReport,
    EndpointParseError, HeartbeatBody, HeartbeatError, HeartbeatReply, HeartbeatUpdate, IntakePath,
    PeerMetrics, RegistryRuntimeReport, UpdaterReport, UpdaterSubscription, CONTROL_API_SERVICE,
    CONTROL_SERVICE, MAX_HEARTBEAT_BYTES, QUIC_UDP,
};

use fabric_schemas::kinds::Component;

use crate::rollout::{UpdateReport, UpdateState, Versions};

/// Versions a heartbeat reports, for the rollout planner.
pub fn versions(body: &HeartbeatBody) -> Versions {
    Versions {
        node_agent: Some(body.agent_version.clone()),
        host_agent: body.host_agent_version.clone(),
    }
}

/// The update report of a heartbeat, for the rollout planner; `None` when
/// absent or when its phase or state is not one the planner knows (an old
/// agent's vocabulary is not guessed at).
pub fn update_report(body: &HeartbeatBody) -> Option<UpdateReport> {
    let u = body.updater.update.as_ref()?;
    let phase: Component =
        serde_json::from_value(serde_json::Value::String(u.phase.clone())).ok()?;
    let state: UpdateState =
        serde_json::from_value(serde_json::Value::String(u.state.clone())).ok()?;
    Some(UpdateReport {
        intent: u.intent.clone(),
        generation: u.generation,
        phase,
        lease_id: u.lease_id.clone(),
        state,
    })
}

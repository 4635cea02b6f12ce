//! The heartbeat a node sends: built from its published status plus what the
//! status does not hold (versions, the updater plane).

use std::sync::Arc;

use fabric_proto::endpoint::ControlEndpoint;
use fabric_proto::heartbeat::{
    DirectoryReport, HeartbeatBody, HeartbeatUpdate, PeerMetrics, RegistryRuntimeReport,
    UpdaterReport, UpdaterSubscription, QUIC_UDP, SCHEMA_VERSION,
};
use tokio::sync::watch;

use crate::status::NodeStatus;

/// Builds the heartbeat for the live endpoint.
pub trait HeartbeatSource: Send + Sync + 'static {
    /// The heartbeat body to send now, naming `live` as the node's control
    /// endpoint (if a session is up) and `recovery` as its recovery endpoints.
    fn heartbeat(
        &self,
        live: Option<&ControlEndpoint>,
        recovery: &[ControlEndpoint],
    ) -> HeartbeatBody;
}

/// What a node-agent adds to its [`NodeStatus`] to make a heartbeat.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatExtras {
    /// This node-agent's version (the agent fills in its crate version).
    pub agent_version: String,
    /// The version of the host agent beside this node, if one is known.
    pub host_agent_version: Option<String>,
    /// Used when the status carries no peer plan yet (all zero); the agent's
    /// own planner metrics in [`NodeStatus::peer_metrics`] win otherwise.
    pub peer_metrics: PeerMetrics,
    /// The updater report sent when the status has no measured updater
    /// liveness (a node running without an updater).
    pub updater: UpdaterReport,
}

/// A heartbeat from a node's status report (registry, directory, edge
/// listeners) plus what the status does not hold.
pub fn heartbeat_from_status(
    status: &NodeStatus,
    extras: &HeartbeatExtras,
    live: Option<&ControlEndpoint>,
    recovery: &[ControlEndpoint],
) -> HeartbeatBody {
    HeartbeatBody {
        schema: SCHEMA_VERSION,
        node: status.name.clone(),
        node_id: status.node_id.clone(),
        agent_version: extras.agent_version.clone(),
        // What the supervising host agent wrote; absent without one.
        host_agent_version: status
            .host
            .as_ref()
            .map(|h| h.host_agent_version.clone())
            .or_else(|| extras.host_agent_version.clone()),
        host: status.host.clone(),
        fabric_control_endpoint: live.map(|e| e.to_string()),
        control_recovery_endpoints: recovery.iter().map(|e| e.to_string()).collect(),
        inter_node_transport: QUIC_UDP.to_owned(),
        fabric_registry_runtime_report: RegistryRuntimeReport {
            status: status.registry.status.as_str().to_owned(),
            active_records: status.registry.active_records,
            candidate_records: status.registry.candidate_records,
            resolved_core_services: status.registry.resolved_core_services.clone(),
            last_live_probe_ms: status.registry.last_live_probe.as_ref().map(|p| p.at_ms),
        },
        directory: DirectoryReport {
            records: status.directory_records,
            nodes: status.directory_nodes,
            services: status.directory_services,
            peer_cache: status.peer_cache.clone(),
        },
        peer_metrics: if status.peer_metrics == PeerMetrics::default() {
            extras.peer_metrics
        } else {
            status.peer_metrics
        },
        updater: match &status.updater {
            // Measured: the updater's last pass, judged by the agent.
            Some(u) => UpdaterReport {
                subscription: if u.alive {
                    UpdaterSubscription::Alive
                } else {
                    UpdaterSubscription::Gap
                },
                supports_hint_wake: u.supports_hint_wake,
                status_at_ms: u.status_at_ms,
                update: status.update.as_ref().map(|up| HeartbeatUpdate {
                    intent: up.intent.clone(),
                    generation: up.generation,
                    phase: up.phase.clone(),
                    lease_id: up.lease_id.clone(),
                    state: up.state.clone(),
                }),
            },
            None => extras.updater.clone(),
        },
        health: status.health.clone(),
        edge_listeners: status.edge_listeners.clone(),
        sent_at_ms: now_ms(),
        // This agent verifies leases; only legacy agents say otherwise.
        lease_support: None,
        received_via: None,
    }
}

/// A [`HeartbeatSource`] over a running agent's status.
pub struct StatusHeartbeat {
    /// The agent's status watch; each heartbeat reads its latest value.
    pub status: watch::Receiver<NodeStatus>,
    /// What the heartbeat adds to the status (shared, so it can be changed
    /// while the session runs).
    pub extras: Arc<std::sync::Mutex<HeartbeatExtras>>,
}

impl HeartbeatSource for StatusHeartbeat {
    fn heartbeat(
        &self,
        live: Option<&ControlEndpoint>,
        recovery: &[ControlEndpoint],
    ) -> HeartbeatBody {
        let status = self.status.borrow().clone();
        let extras = self.extras.lock().map(|e| e.clone()).unwrap_or_default();
        heartbeat_from_status(&status, &extras, live, recovery)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::updater::{UpdateStatus, UpdaterLiveness};
    use fabric::topology::{NodeId, TopologyLabels};

    fn status() -> NodeStatus {
        NodeStatus::initial(
            "n1",
            NodeId([3; 32]),
            "127.0.0.1:1".parse().expect("addr"),
            &TopologyLabels::default(),
            "fresh",
        )
    }

    fn extras() -> HeartbeatExtras {
        HeartbeatExtras {
            agent_version: "0.1.0".into(),
            host_agent_version: None,
            peer_metrics: PeerMetrics::default(),
            updater: UpdaterReport {
                subscription: UpdaterSubscription::Gap,
                supports_hint_wake: false,
                status_at_ms: None,
                update: None,
            },
        }
    }

    #[test]
    fn the_updater_report_is_measured_not_a_literal() {
        // No updater: a gap, no wake path.
        let hb = heartbeat_from_status(&status(), &extras(), None, &[]);
        assert_eq!(hb.updater.subscription, UpdaterSubscription::Gap);
        assert!(!hb.updater.supports_hint_wake);
        assert!(hb.health.is_none());

        // A live updater with its update and the node's checks.
        let mut s = status();
        s.updater = Some(UpdaterLiveness {
            alive: true,
            status_at_ms: Some(42),
            restarts: 1,
            supports_hint_wake: true,
            wakes: Default::default(),
        });
        s.update = Some(UpdateStatus {
            state: "staged".into(),
            intent: "i".into(),
            generation: 3,
            phase: "node-agent".into(),
            version: "0.3.0".into(),
            lease_id: None,
            staged_sha256: Some("ab".repeat(32)),
            reason: None,
        });
        s.health = Some(crate::status::health(&s, false));
        let hb = heartbeat_from_status(&s, &extras(), None, &[]);
        assert_eq!(hb.updater.subscription, UpdaterSubscription::Alive);
        assert!(hb.updater.supports_hint_wake);
        assert_eq!(hb.updater.status_at_ms, Some(42));
        let u = hb.updater.update.expect("update");
        assert_eq!((u.state.as_str(), u.generation), ("staged", 3));
        let health = hb.health.expect("health");
        assert!(!health.healthy);
        assert!(health.failing.contains_key("directory"), "{health:?}");
        assert!(health.failing.contains_key("registry"), "{health:?}");

        // A wedged updater in a build without the wake path: both show.
        s.updater = Some(UpdaterLiveness {
            alive: false,
            status_at_ms: Some(42),
            restarts: 1,
            supports_hint_wake: false,
            wakes: Default::default(),
        });
        s.health = Some(crate::status::health(&s, true));
        let hb = heartbeat_from_status(&s, &extras(), None, &[]);
        assert_eq!(hb.updater.subscription, UpdaterSubscription::Gap);
        assert!(!hb.updater.supports_hint_wake);
        assert!(hb.health.expect("health").failing.contains_key("updater"));
    }
}

//! The orchestrator's reading of heartbeats: liveness, running versions, the
//! last update report and whether the node can take leases at all.
//!
//! Heartbeats are node-authored; the intake validated them against the wire
//! contract (`fabric_proto::heartbeat::HeartbeatBody`) before storing them,
//! and the orchestrator reads them through that one type. A stored body that
//! does not parse as the contract (written by something else, or corrupted)
//! makes the node `Unhealthy` with nothing known about it: the planner never
//! leases a node whose state it cannot read. The fields read are documented in
//! `docs/orchestrator.md` ("Heartbeat fields the driver reads").

use fabric_proto::heartbeat::HeartbeatBody;

use crate::rollout::{Health, NodeLive, Versions};
use crate::store::StoredHeartbeat;

/// What one heartbeat tells the orchestrator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatView {
    /// Health and the update report.
    pub live: NodeLive,
    /// Running versions.
    pub versions: Versions,
    /// The node predates the orchestrator: it cannot verify or hold leases,
    /// so it is updated through the compat bridge, one node at a time.
    pub compat: bool,
    /// When the intake stored the heartbeat, Unix seconds.
    pub received_at: i64,
    /// Heartbeats stored for this node so far: orders reports exactly, where
    /// `received_at` (whole seconds) cannot tell two heartbeats of one second apart.
    pub received_count: u64,
}

/// Reads a stored heartbeat as of `now` (Unix seconds). A heartbeat older than
/// `timeout_secs` makes the node `HeartbeatLost` whatever it says.
pub fn view(hb: &StoredHeartbeat, now: i64, timeout_secs: i64) -> HeartbeatView {
    let received_at = hb.received_at.div_euclid(1000);
    let lost = now.saturating_sub(received_at) > timeout_secs;
    let base = HeartbeatView {
        received_at,
        received_count: hb.received_count,
        ..HeartbeatView::default()
    };
    let Ok(body) = serde_json::from_value::<HeartbeatBody>(hb.body.clone()) else {
        return HeartbeatView {
            live: NodeLive {
                health: if lost {
                    Health::HeartbeatLost
                } else {
                    Health::Unhealthy
                },
                update: None,
            },
            ..base
        };
    };
    let health = if lost {
        Health::HeartbeatLost
    } else if body.healthy() {
        Health::Healthy
    } else {
        Health::Unhealthy
    };
    HeartbeatView {
        live: NodeLive {
            health,
            update: body.update_report(),
        },
        versions: Versions {
            node_agent: Some(body.agent_version.clone()).filter(|v| !v.is_empty()),
            host_agent: body.host_agent_version.clone().filter(|v| !v.is_empty()),
        },
        compat: !body.lease_capable(),
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::UpdateState;
    use fabric_proto::heartbeat::{HealthReport, HeartbeatUpdate};
    use fabric_proto::UpdateReport;
    use fabric_schemas::kinds::Component;
    use serde_json::json;

    fn hb(body: serde_json::Value, received_secs: i64) -> StoredHeartbeat {
        StoredHeartbeat {
            node: "n".into(),
            body,
            received_at: received_secs * 1000,
            first_seen: 0,
            received_count: 1,
        }
    }

    fn body() -> HeartbeatBody {
        HeartbeatBody::new("alpha-1", &"0".repeat(64), "0.2.0")
    }

    fn stored(b: &HeartbeatBody, received_secs: i64) -> StoredHeartbeat {
        hb(serde_json::to_value(b).expect("serialises"), received_secs)
    }

    #[test]
    fn node_agent_heartbeat_body_is_read() {
        let mut b = body();
        b.host_agent_version = Some("0.1.0".into());
        b.updater.update = Some(HeartbeatUpdate::from_report(&UpdateReport {
            intent: "i".into(),
            generation: 2,
            phase: Component::HostAgent,
            lease_id: Some("lease-9".into()),
            state: UpdateState::Staged,
        }));
        let v = view(&stored(&b, 100), 100, 90);
        assert_eq!(v.live.health, Health::Healthy);
        assert_eq!(v.versions.node_agent.as_deref(), Some("0.2.0"));
        assert_eq!(v.versions.host_agent.as_deref(), Some("0.1.0"));
        let u = v.live.update.expect("updater.update");
        assert_eq!(
            (u.phase, u.state, u.lease_id.as_deref()),
            (Component::HostAgent, UpdateState::Staged, Some("lease-9"))
        );
        assert!(!v.compat);
    }

    #[test]
    fn stale_heartbeat_is_lost_and_an_unreadable_one_is_unhealthy_and_unknown() {
        let v = view(&stored(&body(), 100), 200, 90);
        assert_eq!(v.live.health, Health::HeartbeatLost);
        // Not the contract's shape: nothing is guessed, and the node is not leased.
        let v = view(
            &hb(json!({"health": "healthy", "versions": 3}), 100),
            100,
            90,
        );
        assert_eq!(v.live.health, Health::Unhealthy);
        assert_eq!(v.live.update, None);
        assert_eq!(v.versions, Versions::default());
    }

    #[test]
    fn an_update_report_in_words_this_version_does_not_know_is_absent() {
        let mut b = body();
        b.updater.update = Some(HeartbeatUpdate {
            intent: "i".into(),
            generation: 1,
            phase: "node-agent".into(),
            lease_id: None,
            state: "weird".into(),
        });
        assert_eq!(view(&stored(&b, 1), 1, 90).live.update, None);
    }

    #[test]
    fn failing_health_checks_make_the_node_unhealthy() {
        let mut b = body();
        b.health = Some(HealthReport {
            healthy: false,
            failing: [("directory".to_owned(), "stale".to_owned())].into(),
        });
        assert_eq!(view(&stored(&b, 1), 1, 90).live.health, Health::Unhealthy);
    }

    #[test]
    fn compat_is_lease_support_false() {
        let mut b = body();
        assert!(!view(&stored(&b, 1), 1, 90).compat);
        b.lease_support = Some(false);
        assert!(view(&stored(&b, 1), 1, 90).compat);
    }
}

//! The orchestrator's reading of heartbeats: liveness, running versions, the
//! last update report and whether the node can take leases at all.
//!
//! Heartbeats are node-authored JSON written by whatever intake runs; the
//! orchestrator never trusts their shape. Every field is optional, both
//! `camelCase` and `snake_case` spellings are read, and anything unreadable is
//! treated as absent (a bad field never fails a tick, it only makes the node
//! look less ready). The fields read are documented in `docs/orchestrator.md`
//! ("Heartbeat fields the driver reads").

use fabric_schemas::kinds::Component;
use serde_json::Value;

use crate::rollout::{Health, NodeLive, UpdateReport, UpdateState, Versions};
use crate::store::StoredHeartbeat;

/// What one heartbeat tells the orchestrator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatView {
    pub live: NodeLive,
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
    let body = &hb.body;
    let received_at = hb.received_at.div_euclid(1000);
    let health = if now.saturating_sub(received_at) > timeout_secs {
        Health::HeartbeatLost
    } else {
        read_health(body)
    };
    HeartbeatView {
        live: NodeLive {
            health,
            update: read_update(body),
        },
        versions: read_versions(body),
        compat: read_compat(body),
        received_at,
        received_count: hb.received_count,
    }
}

/// `field` under either spelling.
fn get<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn get_str<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a str> {
    get(v, camel, snake)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `health: "healthy" | "unhealthy" | "degraded"` or `healthy: bool`. A
/// heartbeat that says nothing about health counts as healthy: the node is
/// alive enough to report, and a missing field must not stall every rollout.
fn read_health(body: &Value) -> Health {
    if let Some(s) = body.get("health").and_then(Value::as_str) {
        return match s.to_ascii_lowercase().as_str() {
            "healthy" | "ok" | "ready" => Health::Healthy,
            // Anything else (unhealthy, degraded, unknown words) is not healthy:
            // the planner must not lease a node whose state it cannot read.
            _ => Health::Unhealthy,
        };
    }
    match body.get("healthy").and_then(Value::as_bool) {
        Some(false) => Health::Unhealthy,
        _ => Health::Healthy,
    }
}

/// `versions: {nodeAgent, hostAgent}` or top-level `nodeAgentVersion` /
/// `hostAgentVersion` (`agentVersion` as the node-agent's, as `FabricNode`
/// status names it).
fn read_versions(body: &Value) -> Versions {
    let nested = body.get("versions");
    let pick = |camel: &str, snake: &str, flat_camel: &str, flat_snake: &str| {
        nested
            .and_then(|v| get_str(v, camel, snake))
            .or_else(|| get_str(body, flat_camel, flat_snake))
            .map(str::to_owned)
    };
    Versions {
        node_agent: pick(
            "nodeAgent",
            "node_agent",
            "nodeAgentVersion",
            "node_agent_version",
        )
        .or_else(|| get_str(body, "agentVersion", "agent_version").map(str::to_owned)),
        host_agent: pick(
            "hostAgent",
            "host_agent",
            "hostAgentVersion",
            "host_agent_version",
        ),
    }
}

/// `updater.update` (the node-agent's `HeartbeatBody`) or a top-level
/// `update`: `{intent, generation, phase, leaseId, state}`. `None` when any
/// required part is missing or unknown (a half-read report could end a lease
/// attempt by mistake).
fn read_update(body: &Value) -> Option<UpdateReport> {
    let u = body
        .get("updater")
        .and_then(|u| u.get("update"))
        .or_else(|| body.get("update"))?;
    let intent = get_str(u, "intent", "intent")?.to_owned();
    let generation = u.get("generation").and_then(Value::as_u64)?;
    let phase: Component = serde_json::from_value(u.get("phase")?.clone()).ok()?;
    let state: UpdateState = serde_json::from_value(u.get("state")?.clone()).ok()?;
    let lease_id = get_str(u, "leaseId", "lease_id").map(str::to_owned);
    Some(UpdateReport {
        intent,
        generation,
        phase,
        lease_id,
        state,
    })
}

/// `leaseSupport: false` or `compat: true` marks a node that predates the
/// orchestrator. Absent means lease-capable: every current agent is.
fn read_compat(body: &Value) -> bool {
    let no_leases =
        get(body, "leaseSupport", "lease_support").and_then(Value::as_bool) == Some(false);
    let compat = body.get("compat").and_then(Value::as_bool) == Some(true);
    no_leases || compat
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hb(body: Value, received_secs: i64) -> StoredHeartbeat {
        StoredHeartbeat {
            node: "n".into(),
            body,
            received_at: received_secs * 1000,
            first_seen: 0,
            received_count: 1,
        }
    }

    #[test]
    fn full_heartbeat_is_read_in_either_spelling() {
        let camel = json!({
            "health": "healthy",
            "versions": {"nodeAgent": "0.2.0", "hostAgent": "0.1.0"},
            "update": {"intent": "i", "generation": 3, "phase": "node-agent",
                       "leaseId": "lease-1", "state": "applying"},
            "leaseSupport": true,
        });
        let snake = json!({
            "health": "healthy",
            "node_agent_version": "0.2.0",
            "host_agent_version": "0.1.0",
            "update": {"intent": "i", "generation": 3, "phase": "node-agent",
                       "lease_id": "lease-1", "state": "applying"},
            "lease_support": true,
        });
        let a = view(&hb(camel, 100), 110, 90);
        let b = view(&hb(snake, 100), 110, 90);
        assert_eq!(a, b);
        assert_eq!(a.live.health, Health::Healthy);
        assert_eq!(a.versions.node_agent.as_deref(), Some("0.2.0"));
        let u = a.live.update.expect("update report");
        assert_eq!(u.state, UpdateState::Applying);
        assert_eq!(u.lease_id.as_deref(), Some("lease-1"));
        assert!(!a.compat);
    }

    #[test]
    fn node_agent_heartbeat_body_is_read() {
        // The shape of `fabric_node_agent::control::HeartbeatBody`.
        let body = json!({
            "node": "alpha-1", "node_id": "00", "agent_version": "0.2.0",
            "host_agent_version": "0.1.0",
            "updater": {"subscription": "alive", "supports_hint_wake": true,
                        "update": {"intent": "i", "generation": 2, "phase": "host-agent",
                                   "lease_id": "lease-9", "state": "staged"}},
            "received_via": "fabric",
        });
        let v = view(&hb(body, 100), 100, 90);
        assert_eq!(v.live.health, Health::Healthy);
        assert_eq!(v.versions.node_agent.as_deref(), Some("0.2.0"));
        assert_eq!(v.versions.host_agent.as_deref(), Some("0.1.0"));
        let u = v.live.update.expect("updater.update");
        assert_eq!(
            (u.phase, u.state),
            (Component::HostAgent, UpdateState::Staged)
        );
        assert!(!v.compat);
    }

    #[test]
    fn stale_heartbeat_is_lost_and_garbage_is_absent() {
        let v = view(&hb(json!({"health": "healthy"}), 100), 200, 90);
        assert_eq!(v.live.health, Health::HeartbeatLost);
        let v = view(
            &hb(
                json!({"health": 7, "update": {"state": "weird"}, "versions": 3}),
                100,
            ),
            100,
            90,
        );
        assert_eq!(v.live.health, Health::Healthy);
        assert_eq!(v.live.update, None);
        assert_eq!(v.versions, Versions::default());
        let v = view(&hb(json!({"health": "degraded"}), 100), 100, 90);
        assert_eq!(v.live.health, Health::Unhealthy);
    }

    #[test]
    fn compat_is_read_from_either_flag() {
        assert!(view(&hb(json!({"leaseSupport": false}), 1), 1, 90).compat);
        assert!(view(&hb(json!({"lease_support": false}), 1), 1, 90).compat);
        assert!(view(&hb(json!({"compat": true}), 1), 1, 90).compat);
        assert!(!view(&hb(json!({"compat": "yes"}), 1), 1, 90).compat);
    }
}

//! The fleet audit, one field at a time. `audit::compute` is pure, so every
//! test builds stored heartbeats and `FabricNode`s by hand.

use std::net::SocketAddr;

use fabric::edge::{EdgeEntry, EdgeTarget, ReportedRole};
use fabric_proto::heartbeat::{
    DirectoryReport, HeartbeatBody, IntakePath, PeerMetrics, UpdaterSubscription,
};
use fabric_reconciler::audit::{compute, AuditConfig, AuditInput, AuditReport, ListenerClass};
use fabric_reconciler::store::{StoredHeartbeat, StoredObject};
use fabric_schemas::kinds::Kind;
use fabric_schemas::manifest::Metadata;
use serde_json::json;

const NOW: i64 = 10_000_000;
const FABRIC_EP: &str =
    "fabric://0101010101010101010101010101010101010101010101010101010101010101/control";
const COMPAT_EP: &str = "http://vpn.example:19191/api/v1";

/// A healthy, converged node's heartbeat.
fn good(node: &str) -> HeartbeatBody {
    let mut hb = fabric_testkit::heartbeat(node, &"02".repeat(32));
    hb.fabric_control_endpoint = Some(FABRIC_EP.into());
    hb.control_recovery_endpoints = vec![FABRIC_EP.into()];
    hb.directory = DirectoryReport {
        records: 5,
        nodes: 2,
        services: 3,
        peer_cache: "restored 5 records".into(),
    };
    hb.peer_metrics = PeerMetrics {
        direct_ready_count: 3,
        relay_ready_count: 1,
        external_area_ready_count: 2,
        independent_ingress_ready_count: 2,
        recovery_path_count: 1,
    };
    hb.updater.status_at_ms = Some(NOW as u64);
    hb.sent_at_ms = NOW as u64;
    hb.received_via = Some(IntakePath::Fabric);
    hb
}

fn stored(body: &HeartbeatBody, age_ms: i64) -> StoredHeartbeat {
    StoredHeartbeat {
        node: body.node.clone(),
        body: serde_json::to_value(body).expect("heartbeat serializes"),
        received_at: NOW - age_ms,
        first_seen: NOW - age_ms,
        received_count: 1,
    }
}

fn node(name: &str, critical: bool, target: serde_json::Value) -> StoredObject {
    let mut spec = json!({
        "area": "alpha", "siteId": "s1", "localityGroup": "l1", "natGroup": "n1",
        "nodeId": format!("{:02x}", name.as_bytes()[0]).repeat(32),
    });
    if critical {
        spec["critical"] = json!(true);
        spec["resilienceTarget"] = target;
    }
    StoredObject {
        kind: Kind::FabricNode,
        metadata: Metadata {
            name: name.into(),
            generation: Some(1),
            ..Default::default()
        },
        resource_version: 1,
        spec,
        status: None,
        updated_at: NOW,
    }
}

fn fleet() -> Vec<StoredObject> {
    vec![node("a", false, json!({})), node("b", false, json!({}))]
}

fn audit(hbs: &[StoredHeartbeat], nodes: &[StoredObject], cp: &[EdgeEntry]) -> AuditReport {
    compute(AuditInput {
        now_ms: NOW,
        heartbeats: hbs,
        nodes,
        control_plane_listeners: cp,
        config: AuditConfig::default(),
    })
}

fn edge(role: ReportedRole, port: u16) -> EdgeEntry {
    EdgeEntry {
        id: u64::from(port),
        role,
        bind: SocketAddr::from(([127, 0, 0, 1], port)),
        target: EdgeTarget::Local {
            handler: "x".into(),
        },
        opened_at: "2026-05-19T00:00:00Z".into(),
        anomaly: None,
    }
}

fn criterion(r: &AuditReport, id: u8) -> &fabric_reconciler::audit::Criterion {
    r.acceptance_criteria
        .iter()
        .find(|c| c.id == id)
        .expect("criterion present")
}

#[test]
fn converged_fleet_passes_every_criterion_and_opens_the_recovery_gate() {
    let r = audit(
        &[stored(&good("a"), 0), stored(&good("b"), 0)],
        &fleet(),
        &[],
    );
    assert!(r.compat_control_dependency_nodes.is_empty());
    assert_eq!(r.fabric_registry_runtime_report.status, "active");
    assert_eq!(r.acceptance_criteria.len(), 6);
    for c in &r.acceptance_criteria {
        assert!(
            c.passed,
            "criterion {} {} failed: {}",
            c.id, c.name, c.detail
        );
    }
    assert!(r.converged);
    assert!(
        r.fabric_only_recovery_gate.open,
        "{:?}",
        r.fabric_only_recovery_gate
    );
    assert!(!r.bridge_hold_required);
}

#[test]
fn compat_endpoint_or_compat_intake_is_a_compat_control_dependency() {
    let mut on_compat_url = good("a");
    on_compat_url.fabric_control_endpoint = Some(COMPAT_EP.into());
    let mut via_compat_listener = good("b");
    via_compat_listener.received_via = Some(IntakePath::CompatOverlap);
    let r = audit(
        &[stored(&on_compat_url, 0), stored(&via_compat_listener, 0)],
        &fleet(),
        &[],
    );
    assert_eq!(r.compat_control_dependency_nodes, vec!["a", "b"]);
    let c = criterion(&r, 2);
    assert!(!c.passed);
    assert_eq!(c.failing_nodes, vec!["a", "b"]);
    assert!(r.bridge_hold_required);
    assert!(!r.fabric_only_recovery_gate.open);
    assert!(!r.fabric_only_recovery_gate.compat_control_dependency_zero);
    assert_eq!(r.nodes[0].control_contract, "compat");
}

#[test]
fn stale_heartbeats_do_not_count_as_live_and_are_listed() {
    let mut old = good("a");
    old.fabric_control_endpoint = Some(COMPAT_EP.into());
    let r = audit(
        &[stored(&old, 200_000), stored(&good("b"), 0)],
        &fleet(),
        &[],
    );
    assert!(
        r.compat_control_dependency_nodes.is_empty(),
        "stale nodes are not live"
    );
    assert_eq!(r.stale_heartbeats.len(), 1);
    assert_eq!(r.stale_heartbeats[0].node, "a");
    assert_eq!(r.stale_heartbeats[0].age_ms, 200_000);
    assert!(!r.nodes[0].fresh);
}

#[test]
fn freshness_is_configurable() {
    let hbs = [stored(&good("a"), 5_000)];
    let r = compute(AuditInput {
        now_ms: NOW,
        heartbeats: &hbs,
        nodes: &[],
        control_plane_listeners: &[],
        config: AuditConfig {
            freshness_ms: 1_000,
            ..AuditConfig::default()
        },
    });
    assert_eq!(r.stale_heartbeats.len(), 1);
}

#[test]
fn nodes_never_heard_from_are_listed() {
    let r = audit(&[stored(&good("a"), 0)], &fleet(), &[]);
    assert_eq!(r.nodes_without_heartbeat, vec!["b"]);
}

#[test]
fn registry_is_active_fleet_wide_only_when_every_live_node_is_active() {
    let mut cand = good("b");
    cand.fabric_registry_runtime_report.status = "candidate_only".into();
    let r = audit(&[stored(&good("a"), 0), stored(&cand, 0)], &fleet(), &[]);
    assert_eq!(r.registry_candidate_only_nodes, vec!["b"]);
    assert_eq!(r.fabric_registry_runtime_report.status, "candidate_only");
    assert_eq!(r.fabric_registry_runtime_report.active_nodes, 1);
    assert!(!criterion(&r, 3).passed);
    assert!(!r.fabric_only_recovery_gate.registry_active);

    let mut missing = good("a");
    missing.fabric_registry_runtime_report.status = "missing".into();
    let r = audit(&[stored(&missing, 0)], &fleet(), &[]);
    assert_eq!(r.fabric_registry_runtime_report.status, "missing");
    assert_eq!(r.registry_missing_nodes, vec!["a"]);

    let r = audit(&[], &fleet(), &[]);
    assert_eq!(r.fabric_registry_runtime_report.status, "missing");
    assert!(
        !criterion(&r, 3).passed,
        "no live node: nothing proves the registry"
    );
}

#[test]
fn updater_subscription_gap_on_a_live_node_is_an_alert() {
    let mut gap = good("a");
    gap.updater.subscription = UpdaterSubscription::Gap;
    let r = audit(&[stored(&gap, 0), stored(&good("b"), 0)], &fleet(), &[]);
    assert_eq!(r.updater_subscription_alert_nodes, vec!["a"]);
    assert_eq!(r.nodes[0].updater_subscription, "gap");
}

#[test]
fn wake_unsupported_counts_only_with_a_stale_update_status() {
    let mut old_agent = good("a");
    old_agent.updater.supports_hint_wake = false;
    old_agent.updater.status_at_ms = Some((NOW - 60_000) as u64);
    let r = audit(&[stored(&old_agent, 0)], &fleet(), &[]);
    assert!(
        r.updater_wake_unsupported_nodes.is_empty(),
        "status still fresh"
    );

    old_agent.updater.status_at_ms = Some((NOW - 16 * 60_000) as u64);
    let r = audit(&[stored(&old_agent, 0)], &fleet(), &[]);
    assert_eq!(r.updater_wake_unsupported_nodes, vec!["a"]);
    assert!(r.bridge_hold_required);
    assert_eq!(r.bridge_hold_reasons.len(), 1);

    old_agent.updater.status_at_ms = None;
    let r = audit(&[stored(&old_agent, 0)], &fleet(), &[]);
    assert_eq!(
        r.updater_wake_unsupported_nodes,
        vec!["a"],
        "no status is stale"
    );
}

#[test]
fn critical_nodes_below_their_resilience_target_are_listed_with_shortfalls() {
    let nodes = vec![
        node(
            "a",
            true,
            json!({"externalAreaReadyCount": 3, "recoveryPathCount": 1}),
        ),
        node("b", true, json!({"directReadyCount": 1})),
        node("c", true, json!({"directReadyCount": 1})),
    ];
    let r = audit(&[stored(&good("a"), 0), stored(&good("b"), 0)], &nodes, &[]);
    let below = &r.critical_nodes_below_resilience_target;
    assert_eq!(below.len(), 2, "{below:?}");
    assert_eq!(below[0].node, "a");
    assert_eq!(below[0].shortfalls.len(), 1);
    assert_eq!(below[0].shortfalls[0].metric, "external_area_ready_count");
    assert_eq!(
        (below[0].shortfalls[0].target, below[0].shortfalls[0].actual),
        (3, 2)
    );
    assert_eq!(below[1].node, "c", "no heartbeat: unknown is below target");
    let c = criterion(&r, 5);
    assert!(!c.passed);
    assert_eq!(c.failing_nodes, vec!["a", "c"]);
}

#[test]
fn tcp_listeners_are_reported_by_role_and_unclassified_ones_are_flagged() {
    let mut a = good("a");
    a.edge_listeners = vec![
        edge(ReportedRole::ServiceIngress, 8443),
        edge(ReportedRole::Unclassified, 7000),
    ];
    let cp = [
        edge(ReportedRole::ControlApiIngress, 9000),
        edge(ReportedRole::CompatOverlap, 19191),
    ];
    let r = audit(&[stored(&a, 0), stored(&good("b"), 0)], &fleet(), &cp);
    assert_eq!(r.tcp_listeners.len(), 4);
    assert_eq!(r.tcp_listeners_by_role.get("compat-overlap"), Some(&1));
    assert_eq!(r.tcp_listeners_by_role.get("control-api-ingress"), Some(&1));
    assert_eq!(r.tcp_listeners_by_role.get("service-ingress"), Some(&1));
    assert_eq!(r.tcp_listeners_by_role.get("unclassified"), Some(&1));
    assert_eq!(r.unclassified_tcp_listeners.len(), 1);
    let u = &r.unclassified_tcp_listeners[0];
    assert_eq!(
        (u.owner.as_str(), u.class),
        ("a", ListenerClass::Unclassified)
    );
    assert!(u.anomaly.is_some());
    assert_eq!(r.tcp_listeners[0].owner, "control-plane");
    assert!(!criterion(&r, 6).passed);
    assert!(
        !criterion(&r, 1).passed,
        "an unclassified listener may be hidden transport"
    );
    assert_eq!(criterion(&r, 6).failing_nodes, vec!["a"]);
}

#[test]
fn a_node_on_tcp_transport_fails_criterion_one() {
    let mut a = good("a");
    a.inter_node_transport = "tcp".into();
    let r = audit(&[stored(&a, 0), stored(&good("b"), 0)], &fleet(), &[]);
    assert_eq!(r.transport_tcp_nodes, vec!["a"]);
    assert_eq!(criterion(&r, 1).failing_nodes, vec!["a"]);
}

#[test]
fn partial_directory_fails_criterion_four() {
    let mut a = good("a");
    a.directory.nodes = 1;
    let r = audit(&[stored(&a, 0), stored(&good("b"), 0)], &fleet(), &[]);
    assert_eq!(criterion(&r, 4).failing_nodes, vec!["a"]);
}

#[test]
fn recovery_gate_stays_closed_while_a_recovery_path_names_the_compat_port() {
    let mut a = good("a");
    a.control_recovery_endpoints = vec![COMPAT_EP.into()];
    let r = audit(&[stored(&a, 0), stored(&good("b"), 0)], &fleet(), &[]);
    let g = &r.fabric_only_recovery_gate;
    assert!(g.compat_control_dependency_zero && g.registry_active);
    assert!(!g.recovery_path_independent_of_compat);
    assert_eq!(g.recovery_compat_nodes, vec!["a"]);
    assert!(!g.open);
    assert_eq!(g.blockers.len(), 1);
}

#[test]
fn unreadable_heartbeat_bodies_are_reported_not_fatal() {
    let bad = StoredHeartbeat {
        node: "a".into(),
        body: json!({"legacy": true}),
        received_at: NOW,
        first_seen: NOW,
        received_count: 1,
    };
    let r = audit(&[bad, stored(&good("b"), 0)], &fleet(), &[]);
    assert_eq!(r.unreadable_heartbeats, vec!["a"]);
    assert_eq!(r.nodes.len(), 1);
}

//! `GET /metrics`: the fleet audit and the rollouts in the Prometheus text
//! format, under the seed's names.
//!
//! Every figure is computed on the scrape from the same functions the audit
//! endpoint and `rollout status` use (`run_audit`, `control::status`), so a
//! scrape and `fabricctl audit` taken at the same moment agree. The endpoint
//! is served on the Control API's own listener (a registered
//! `control-api-ingress` service edge, loopback by default) and, like most
//! exporters, without a token: it carries counts and node names, never keys,
//! tokens or records.

use fabric_runtime::metrics::Exposition;

use crate::audit::AuditReport;
use crate::orchestrator::RolloutView;

/// The exposition for `report` and `rollouts`.
pub fn render(report: &AuditReport, rollouts: &[RolloutView]) -> String {
    let mut e = Exposition::new();
    let lists: [(&str, &str, usize); 6] = [
        (
            "compat_control_dependency_nodes",
            "Live nodes whose control session still depends on the compat contract.",
            report.compat_control_dependency_nodes.len(),
        ),
        (
            "registry_candidate_only_nodes",
            "Live nodes whose signed registry runtime is candidate_only.",
            report.registry_candidate_only_nodes.len(),
        ),
        (
            "registry_missing_nodes",
            "Live nodes whose signed registry runtime is missing.",
            report.registry_missing_nodes.len(),
        ),
        (
            "updater_subscription_alert_nodes",
            "Live nodes whose updater subscription has a gap.",
            report.updater_subscription_alert_nodes.len(),
        ),
        (
            "updater_wake_unsupported_nodes",
            "Live nodes whose updater cannot be woken by an update hint.",
            report.updater_wake_unsupported_nodes.len(),
        ),
        (
            "unclassified_tcp_listeners",
            "TCP listeners without a declared service-edge role.",
            report.unclassified_tcp_listeners.len(),
        ),
    ];
    for (name, help, n) in lists {
        e.gauge(name, help, &[], n as f64);
    }
    e.flag(
        "bridge_hold_required",
        "1 when a compat node needs an operator before the bridge can finish.",
        &[],
        report.bridge_hold_required,
    );
    let r = &report.fabric_registry_runtime_report;
    for status in ["active", "candidate_only", "missing"] {
        e.flag(
            "fabric_registry_runtime_report_status",
            "The fleet's signed registry runtime status (1 for the current one).",
            &[("status", status)],
            r.status == status,
        );
    }
    e.gauge(
        "fabric_registry_runtime_active_nodes",
        "Live nodes reporting an active registry.",
        &[],
        r.active_nodes as f64,
    );
    e.gauge(
        "fabric_fresh_nodes",
        "Nodes with a live heartbeat.",
        &[],
        report.nodes.iter().filter(|n| n.fresh).count() as f64,
    );
    e.gauge(
        "fabric_stale_heartbeats",
        "Nodes whose latest heartbeat is too old.",
        &[],
        report.stale_heartbeats.len() as f64,
    );
    e.gauge(
        "fabric_nodes_without_heartbeat",
        "Nodes of the desired state never heard from.",
        &[],
        report.nodes_without_heartbeat.len() as f64,
    );
    e.gauge(
        "critical_nodes_below_resilience_target",
        "Critical nodes below their resilienceTarget.",
        &[],
        report.critical_nodes_below_resilience_target.len() as f64,
    );
    for c in &report.acceptance_criteria {
        let id = c.id.to_string();
        e.flag(
            "fabric_acceptance_criterion",
            "1 when the seed's hard acceptance criterion holds.",
            &[("id", &id), ("name", &c.name)],
            c.passed,
        );
    }
    e.flag(
        "fabric_converged",
        "1 when all six acceptance criteria hold.",
        &[],
        report.converged,
    );
    for (role, n) in &report.tcp_listeners_by_role {
        e.gauge(
            "fabric_tcp_listeners",
            "TCP listeners by declared role.",
            &[("role", role)],
            *n as f64,
        );
    }
    let mut states: std::collections::BTreeMap<&str, usize> = Default::default();
    for n in &report.nodes {
        let node = n.node.as_str();
        for (name, help, v) in n.peer_metrics.named() {
            e.gauge(name, help, &[("node", node)], f64::from(v));
        }
        e.flag(
            "fabric_node_heartbeat_fresh",
            "1 when the node's latest heartbeat is live.",
            &[("node", node)],
            n.fresh,
        );
        e.gauge(
            "fabric_node_heartbeat_age_seconds",
            "Age of the node's latest heartbeat.",
            &[("node", node)],
            n.heartbeat_age_ms.max(0) as f64 / 1000.0,
        );
        e.flag(
            "fabric_node_registry_active",
            "1 when the node reports an active registry.",
            &[("node", node)],
            n.registry_status == "active",
        );
        if let Some(s) = &n.update_state {
            *states.entry(s.as_str()).or_default() += 1;
            e.flag(
                "fabric_node_update_state",
                "The node's update state (1 for the current one).",
                &[("node", node), ("state", s)],
                true,
            );
        }
    }
    for state in [
        "blocked",
        "leased",
        "staged",
        "applying",
        "healthy",
        "rolled_back",
        "aborted",
    ] {
        e.gauge(
            "fabric_update_state_nodes",
            "Nodes per update state, as their heartbeats report it.",
            &[("state", state)],
            states.get(state).copied().unwrap_or(0) as f64,
        );
    }
    for v in rollouts {
        let intent = v.intent.as_str();
        for (state, n) in [
            ("target", v.counts.target),
            ("done", v.counts.done),
            ("failed", v.counts.failed),
            ("in_flight", v.counts.in_flight),
            ("remaining", v.counts.remaining),
        ] {
            e.gauge(
                "fabric_rollout_nodes",
                "Nodes of a rollout by progress.",
                &[("intent", intent), ("state", state)],
                n as f64,
            );
        }
        let phase = v
            .phase
            .map_or("NotStarted".to_owned(), |p| format!("{p:?}"));
        e.flag(
            "fabric_rollout_phase",
            "The rollout's phase (1 for the current one).",
            &[("intent", intent), ("phase", &phase)],
            true,
        );
        e.gauge(
            "fabric_rollout_leases_outstanding",
            "Leases of the rollout not yet lapsed or revoked.",
            &[("intent", intent)],
            v.leases.len() as f64,
        );
    }
    e.render()
}

//! The fleet audit: a pure function from stored heartbeats, desired
//! `FabricNode`s and the control plane's own TCP listeners to the report the
//! seed asks for (Step B's re-check list, P3 resilience, P4 edge roles, the
//! P4.3 fabric-only recovery gate and the six hard acceptance criteria of
//! section 5).
//!
//! No I/O and no clock: `now_ms` is an input, so every field can be tested by
//! building inputs by hand (`reconciler/tests/audit_fields.rs`). The Control
//! API's `GET /api/v1/audit` loads the inputs from the store and calls
//! [`compute`]; `fabricctl audit` prints the result. Every field is described
//! in `docs/audit.md`.

use std::collections::BTreeMap;

use fabric::edge::{EdgeEntry, EdgeTarget, ReportedRole};
use fabric_schemas::kinds::{FabricNodeSpec, ResilienceTargetSpec};
use serde::{Deserialize, Serialize};

use crate::store::{StoredHeartbeat, StoredObject, UnixMillis};
use fabric_proto::heartbeat::{
    HeartbeatBody, IntakePath, PeerMetrics, UpdaterSubscription, QUIC_UDP,
};

/// Thresholds of the audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditConfig {
    /// A heartbeat older than this is stale: the node is not "live".
    pub freshness_ms: i64,
    /// An updater status older than this is stale (seed P0: "update status is
    /// stale" is what makes a wake-unsupported node a blocker).
    pub update_status_stale_ms: i64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            freshness_ms: 90_000,
            update_status_stale_ms: 15 * 60_000,
        }
    }
}

/// Everything [`compute`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct AuditInput<'a> {
    /// The audit's clock; heartbeat ages are measured against it.
    pub now_ms: UnixMillis,
    /// The latest stored heartbeat of every node.
    pub heartbeats: &'a [StoredHeartbeat],
    /// Stored `FabricNode` objects (other kinds are ignored).
    pub nodes: &'a [StoredObject],
    /// The control plane's own edge listeners (`EdgeInventory::audit()` of the
    /// reconciler process), reported under the owner `control-plane`.
    pub control_plane_listeners: &'a [EdgeEntry],
    /// Freshness thresholds.
    pub config: AuditConfig,
}

/// Owner name used for the reconciler's own listeners.
pub const CONTROL_PLANE_OWNER: &str = "control-plane";

/// The fleet-wide `fabric_registry_runtime_report`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRegistryReport {
    /// `active` only when every fresh node is `active` (and there is at least
    /// one); `missing` when no fresh node holds any record; else `candidate_only`.
    pub status: String,
    /// Live nodes counted.
    pub fresh_nodes: usize,
    /// Live nodes reporting `active`.
    pub active_nodes: usize,
    /// Live nodes reporting `candidate_only`.
    pub candidate_only_nodes: usize,
    /// Live nodes reporting anything else.
    pub missing_nodes: usize,
}

/// One node's line of the audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAudit {
    /// The node's name.
    pub node: String,
    /// Whether its heartbeat is live (within `freshness_ms`).
    pub fresh: bool,
    /// How old its latest heartbeat is.
    pub heartbeat_age_ms: i64,
    /// The node-agent version it reports.
    pub agent_version: String,
    /// The live session's endpoint as the heartbeat reports it (Step B:
    /// "current control URL in heartbeat").
    pub fabric_control_endpoint: Option<String>,
    /// `fabric`, `compat` or `none`.
    pub control_contract: String,
    /// `fabric`, `control-api` or `compat-overlap`.
    pub received_via: Option<String>,
    /// Its `fabric_registry_runtime_report.status`.
    pub registry_status: String,
    /// Its updater subscription: `alive` or `gap`.
    pub updater_subscription: String,
    /// Whether its updater can be woken by an update hint.
    pub supports_hint_wake: bool,
    /// The state of the update it reports, if any.
    pub update_state: Option<String>,
    /// Its P3 peer metrics.
    pub peer_metrics: PeerMetrics,
}

/// A stale heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleNode {
    /// The node's name.
    pub node: String,
    /// How old its latest heartbeat is.
    pub age_ms: i64,
    /// When that heartbeat was received.
    pub last_received_at: UnixMillis,
}

/// A resilience metric below its target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricShortfall {
    /// The metric's name (`direct_ready_count`, ...).
    pub metric: String,
    /// The node's target for it.
    pub target: u32,
    /// What the live heartbeat reports.
    pub actual: u32,
}

/// A critical node below its `resilienceTarget`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResilienceShortfall {
    /// The node's name.
    pub node: String,
    /// Empty when the node has no fresh heartbeat (see `reason`).
    pub shortfalls: Vec<MetricShortfall>,
    /// Why it is listed, in words.
    pub reason: String,
}

/// How a TCP listener is classified (seed P4.2: transport TCP vs service-edge TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerClass {
    /// A declared edge role: external service ingress, Control API ingress,
    /// artifact delivery or the temporary compat overlap.
    ServiceEdge,
    /// Nobody declared it: it may be hidden inter-node transport. A bug.
    Unclassified,
}

/// One TCP listener somewhere in the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerAudit {
    /// Node name, or `control-plane`.
    pub owner: String,
    /// `service-ingress`, `control-api-ingress`, `artifact-edge`,
    /// `compat-overlap` or `unclassified`.
    pub role: String,
    /// Whether a declared role covers it.
    pub class: ListenerClass,
    /// The address it listens on.
    pub bind: String,
    /// What it serves: `fabric://NODE/SERVICE`, `local:HANDLER` or `unknown`.
    pub target: String,
    /// What is wrong with it, if anything (always set for unclassified listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
}

/// One hard acceptance criterion of seed section 5.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Criterion {
    /// 1..=6, in the seed's order.
    pub id: u8,
    /// The criterion's name, e.g. `no_compat_control_dependency`.
    pub name: String,
    /// Whether it holds.
    pub passed: bool,
    /// The nodes that break it.
    pub failing_nodes: Vec<String>,
    /// Why it passes or fails, in words.
    pub detail: String,
}

/// The fabric-only recovery gate (seed P4.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryGate {
    /// The gate is open: the compat overlap may be removed.
    pub open: bool,
    /// No live node depends on the compat control contract.
    pub compat_control_dependency_zero: bool,
    /// The fleet-wide registry status is `active`.
    pub registry_active: bool,
    /// No live node's recovery endpoints name the compat contract.
    pub recovery_path_independent_of_compat: bool,
    /// Fresh nodes whose recovery endpoints still name the compat contract.
    pub recovery_compat_nodes: Vec<String>,
    /// Each condition that keeps the gate shut, in words.
    pub blockers: Vec<String>,
}

/// The audit report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// The audit's clock.
    pub generated_at_ms: UnixMillis,
    /// The thresholds used.
    pub config: AuditConfig,
    /// One row per readable heartbeat.
    pub nodes: Vec<NodeAudit>,
    /// Live nodes that depend on the compat control contract.
    pub compat_control_dependency_nodes: Vec<String>,
    /// Live nodes whose registry is `candidate_only`.
    pub registry_candidate_only_nodes: Vec<String>,
    /// Live nodes whose registry is neither `active` nor `candidate_only`.
    pub registry_missing_nodes: Vec<String>,
    /// Live nodes whose updater subscription has a gap.
    pub updater_subscription_alert_nodes: Vec<String>,
    /// Live nodes that cannot be woken by a hint and have a stale update status.
    pub updater_wake_unsupported_nodes: Vec<String>,
    /// The compat overlap / recovery bridge must be held.
    pub bridge_hold_required: bool,
    /// Why it must be held, in words.
    pub bridge_hold_reasons: Vec<String>,
    /// The fleet-wide registry status.
    pub fabric_registry_runtime_report: FleetRegistryReport,
    /// Heartbeats older than `freshness_ms`.
    pub stale_heartbeats: Vec<StaleNode>,
    /// `FabricNode`s with no stored heartbeat.
    pub nodes_without_heartbeat: Vec<String>,
    /// Heartbeats whose body does not parse (a node on an incompatible agent).
    pub unreadable_heartbeats: Vec<String>,
    /// Critical nodes that miss their `resilienceTarget` (or have no live heartbeat).
    pub critical_nodes_below_resilience_target: Vec<ResilienceShortfall>,
    /// Every TCP listener: the control plane's and each live node's.
    pub tcp_listeners: Vec<ListenerAudit>,
    /// How many listeners have each role.
    pub tcp_listeners_by_role: BTreeMap<String, usize>,
    /// Listeners nobody declared: possible hidden inter-node transport.
    pub unclassified_tcp_listeners: Vec<ListenerAudit>,
    /// Fresh nodes whose inter-node transport is not `quic-udp`.
    pub transport_tcp_nodes: Vec<String>,
    /// The six criteria of seed section 5, in order.
    pub acceptance_criteria: Vec<Criterion>,
    /// All six criteria pass.
    pub converged: bool,
    /// The fabric-only recovery gate (seed P4.3).
    pub fabric_only_recovery_gate: RecoveryGate,
}

struct Parsed<'a> {
    stored: &'a StoredHeartbeat,
    body: HeartbeatBody,
    fresh: bool,
    age_ms: i64,
}

/// Computes the audit. Pure; see the module docs and `docs/audit.md`.
pub fn compute(input: AuditInput<'_>) -> AuditReport {
    let cfg = input.config;
    let now = input.now_ms;

    let mut specs: BTreeMap<&str, FabricNodeSpec> = BTreeMap::new();
    for o in input
        .nodes
        .iter()
        .filter(|o| o.kind == fabric_schemas::Kind::FabricNode)
    {
        // A stored spec was validated on apply; one that no longer parses
        // (schema drift) is left out rather than failing the whole audit.
        if let Ok(s) = serde_json::from_value::<FabricNodeSpec>(o.spec.clone()) {
            specs.insert(o.name(), s);
        }
    }

    let mut parsed = Vec::new();
    let mut unreadable = Vec::new();
    let mut stale = Vec::new();
    for hb in input.heartbeats {
        let age_ms = now.saturating_sub(hb.received_at).max(0);
        let fresh = age_ms <= cfg.freshness_ms;
        if !fresh {
            stale.push(StaleNode {
                node: hb.node.clone(),
                age_ms,
                last_received_at: hb.received_at,
            });
        }
        match serde_json::from_value::<HeartbeatBody>(hb.body.clone()) {
            Ok(body) => parsed.push(Parsed {
                stored: hb,
                body,
                fresh,
                age_ms,
            }),
            Err(_) => unreadable.push(hb.node.clone()),
        }
    }
    let heard: std::collections::BTreeSet<&str> =
        input.heartbeats.iter().map(|h| h.node.as_str()).collect();
    let nodes_without_heartbeat: Vec<String> = specs
        .keys()
        .filter(|n| !heard.contains(*n))
        .map(|n| (*n).to_owned())
        .collect();

    let fresh: Vec<&Parsed<'_>> = parsed.iter().filter(|p| p.fresh).collect();
    let names = |f: &dyn Fn(&Parsed<'_>) -> bool| -> Vec<String> {
        fresh
            .iter()
            .filter(|p| f(p))
            .map(|p| p.stored.node.clone())
            .collect()
    };

    let compat_control_dependency_nodes = names(&|p| p.body.depends_on_compat_control());
    let registry_status = |p: &Parsed<'_>| p.body.fabric_registry_runtime_report.status.clone();
    let registry_candidate_only_nodes = names(&|p| registry_status(p) == "candidate_only");
    let registry_missing_nodes =
        names(&|p| registry_status(p) != "active" && registry_status(p) != "candidate_only");
    let updater_subscription_alert_nodes =
        names(&|p| p.body.updater.subscription == UpdaterSubscription::Gap);
    let updater_wake_unsupported_nodes = names(&|p| {
        let stale_status = p
            .body
            .updater
            .status_at_ms
            .is_none_or(|at| now.saturating_sub(at as i64) > cfg.update_status_stale_ms);
        !p.body.updater.supports_hint_wake && stale_status
    });

    let mut bridge_hold_reasons = Vec::new();
    if !compat_control_dependency_nodes.is_empty() {
        bridge_hold_reasons.push(format!(
            "{} node(s) still depend on the compat control contract: {}",
            compat_control_dependency_nodes.len(),
            compat_control_dependency_nodes.join(", ")
        ));
    }
    if !updater_wake_unsupported_nodes.is_empty() {
        bridge_hold_reasons.push(format!(
            "{} node(s) cannot wake their updater from hints and have a stale update status: {}",
            updater_wake_unsupported_nodes.len(),
            updater_wake_unsupported_nodes.join(", ")
        ));
    }

    let active = fresh
        .iter()
        .filter(|p| registry_status(p) == "active")
        .count();
    let fleet_registry = FleetRegistryReport {
        status: if fresh.is_empty() || active == 0 && registry_candidate_only_nodes.is_empty() {
            "missing"
        } else if active == fresh.len() {
            "active"
        } else {
            "candidate_only"
        }
        .to_owned(),
        fresh_nodes: fresh.len(),
        active_nodes: active,
        candidate_only_nodes: registry_candidate_only_nodes.len(),
        missing_nodes: registry_missing_nodes.len(),
    };

    // Resilience of critical nodes: the target against the latest fresh metrics.
    let mut below = Vec::new();
    for (name, spec) in &specs {
        if !spec.critical {
            continue;
        }
        let target = spec.resilience_target.clone().unwrap_or_default();
        match fresh.iter().find(|p| p.stored.node == *name) {
            None => below.push(ResilienceShortfall {
                node: (*name).to_owned(),
                shortfalls: Vec::new(),
                reason: "no fresh heartbeat: resilience unknown".into(),
            }),
            Some(p) => {
                let shortfalls = shortfalls(&target, &p.body.peer_metrics);
                if !shortfalls.is_empty() {
                    below.push(ResilienceShortfall {
                        node: (*name).to_owned(),
                        reason: format!("{} metric(s) below target", shortfalls.len()),
                        shortfalls,
                    });
                }
            }
        }
    }

    // Every TCP listener by role.
    let mut tcp_listeners = Vec::new();
    for e in input.control_plane_listeners {
        tcp_listeners.push(listener(CONTROL_PLANE_OWNER, e));
    }
    for p in &fresh {
        for e in &p.body.edge_listeners {
            tcp_listeners.push(listener(&p.stored.node, e));
        }
    }
    let mut tcp_listeners_by_role = BTreeMap::new();
    for l in &tcp_listeners {
        *tcp_listeners_by_role.entry(l.role.clone()).or_insert(0) += 1;
    }
    let unclassified: Vec<ListenerAudit> = tcp_listeners
        .iter()
        .filter(|l| l.class == ListenerClass::Unclassified)
        .cloned()
        .collect();
    let transport_tcp_nodes = names(&|p| p.body.inter_node_transport != QUIC_UDP);

    // The P4.3 gate.
    let recovery_compat_nodes = names(&|p| p.body.recovery_depends_on_compat());
    let gate = {
        let c0 = compat_control_dependency_nodes.is_empty();
        let ra = fleet_registry.status == "active";
        let rp = recovery_compat_nodes.is_empty();
        let mut blockers = Vec::new();
        if !c0 {
            blockers.push("compat control dependency is not zero".to_owned());
        }
        if !ra {
            blockers.push(format!(
                "fabric_registry_runtime_report.status is {}, not active",
                fleet_registry.status
            ));
        }
        if !rp {
            blockers.push(format!(
                "recovery path of {} still names the compat contract",
                recovery_compat_nodes.join(", ")
            ));
        }
        RecoveryGate {
            open: c0 && ra && rp,
            compat_control_dependency_zero: c0,
            registry_active: ra,
            recovery_path_independent_of_compat: rp,
            recovery_compat_nodes,
            blockers,
        }
    };

    // Section 5.
    let no_fresh = fresh.is_empty();
    let expected_nodes = specs
        .values()
        .filter(|s| s.node_id.is_some())
        .count()
        .max(1);
    let mut criteria = Vec::new();
    {
        let mut failing = transport_tcp_nodes.clone();
        failing.extend(unclassified.iter().map(|l| l.owner.clone()));
        dedup(&mut failing);
        criteria.push(criterion(
            1,
            "inter_node_transport_quic_udp_only",
            failing,
            no_fresh,
            "every live node reports quic-udp transport and no TCP listener is unclassified",
        ));
    }
    criteria.push(criterion(
        2,
        "no_compat_control_dependency",
        compat_control_dependency_nodes.clone(),
        false,
        "compat_control_dependency_nodes is empty",
    ));
    {
        let mut failing = registry_candidate_only_nodes.clone();
        failing.extend(registry_missing_nodes.iter().cloned());
        failing.sort();
        criteria.push(criterion(
            3,
            "signed_registry_runtime_active",
            failing,
            no_fresh,
            "fabric_registry_runtime_report.status = active on every live node",
        ));
    }
    criteria.push(criterion(
        4,
        "distributed_directory_in_use",
        names(&|p| {
            let d = &p.body.directory;
            d.nodes < expected_nodes || d.services == 0 || d.peer_cache.is_empty()
        }),
        no_fresh,
        &format!(
            "every live node holds the full directory ({expected_nodes} node record(s)) and service records, kept in its peer cache"
        ),
    ));
    criteria.push(criterion(
        5,
        "critical_nodes_meet_resilience_targets",
        below.iter().map(|b| b.node.clone()).collect(),
        false,
        "every critical node meets its resilienceTarget",
    ));
    {
        let mut failing: Vec<String> = unclassified.iter().map(|l| l.owner.clone()).collect();
        dedup(&mut failing);
        criteria.push(criterion(
            6,
            "tcp_listeners_are_service_edge_only",
            failing,
            false,
            "every TCP listener has a declared service-edge role",
        ));
    }
    let converged = criteria.iter().all(|c| c.passed);

    let nodes = parsed
        .iter()
        .map(|p| NodeAudit {
            node: p.stored.node.clone(),
            fresh: p.fresh,
            heartbeat_age_ms: p.age_ms,
            agent_version: p.body.agent_version.clone(),
            fabric_control_endpoint: p.body.fabric_control_endpoint.clone(),
            control_contract: match p.body.control_endpoint() {
                None if p.body.received_via == Some(IntakePath::CompatOverlap) => "compat",
                None => "none",
                Some(e) if e.is_compat() => "compat",
                Some(_) => "fabric",
            }
            .to_owned(),
            received_via: p.body.received_via.map(|v| v.as_str().to_owned()),
            registry_status: registry_status(p),
            updater_subscription: match p.body.updater.subscription {
                UpdaterSubscription::Alive => "alive",
                UpdaterSubscription::Gap => "gap",
            }
            .to_owned(),
            supports_hint_wake: p.body.updater.supports_hint_wake,
            update_state: p
                .body
                .updater
                .update
                .as_ref()
                .map(|u| u.state.as_str().to_owned()),
            peer_metrics: p.body.peer_metrics,
        })
        .collect();

    AuditReport {
        generated_at_ms: now,
        config: cfg,
        nodes,
        compat_control_dependency_nodes,
        registry_candidate_only_nodes,
        registry_missing_nodes,
        updater_subscription_alert_nodes,
        updater_wake_unsupported_nodes,
        bridge_hold_required: !bridge_hold_reasons.is_empty(),
        bridge_hold_reasons,
        fabric_registry_runtime_report: fleet_registry,
        stale_heartbeats: stale,
        nodes_without_heartbeat,
        unreadable_heartbeats: unreadable,
        critical_nodes_below_resilience_target: below,
        tcp_listeners,
        tcp_listeners_by_role,
        unclassified_tcp_listeners: unclassified,
        transport_tcp_nodes,
        acceptance_criteria: criteria,
        converged,
        fabric_only_recovery_gate: gate,
    }
}

fn dedup(v: &mut Vec<String>) {
    v.sort();
    v.dedup();
}

fn criterion(id: u8, name: &str, failing: Vec<String>, no_fresh: bool, what: &str) -> Criterion {
    let passed = failing.is_empty() && !no_fresh;
    let detail = if no_fresh {
        format!("{what}: no live (fresh) heartbeat to judge by")
    } else if passed {
        what.to_owned()
    } else {
        format!("{what}: fails on {}", failing.join(", "))
    };
    Criterion {
        id,
        name: name.to_owned(),
        passed,
        failing_nodes: failing,
        detail,
    }
}

/// Every metric of the target that the observed metrics do not reach.
pub fn shortfalls(target: &ResilienceTargetSpec, m: &PeerMetrics) -> Vec<MetricShortfall> {
    let pairs = [
        (
            "direct_ready_count",
            target.direct_ready_count,
            m.direct_ready_count,
        ),
        (
            "relay_ready_count",
            target.relay_ready_count,
            m.relay_ready_count,
        ),
        (
            "external_area_ready_count",
            target.external_area_ready_count,
            m.external_area_ready_count,
        ),
        (
            "independent_ingress_ready_count",
            target.independent_ingress_ready_count,
            m.independent_ingress_ready_count,
        ),
        (
            "recovery_path_count",
            target.recovery_path_count,
            m.recovery_path_count,
        ),
    ];
    pairs
        .into_iter()
        .filter_map(|(metric, target, actual)| {
            let target = target?;
            (actual < target).then(|| MetricShortfall {
                metric: metric.to_owned(),
                target,
                actual,
            })
        })
        .collect()
}

fn listener(owner: &str, e: &EdgeEntry) -> ListenerAudit {
    let (role, class) = match e.role {
        ReportedRole::ServiceIngress => ("service-ingress", ListenerClass::ServiceEdge),
        ReportedRole::ControlApiIngress => ("control-api-ingress", ListenerClass::ServiceEdge),
        ReportedRole::ArtifactEdge => ("artifact-edge", ListenerClass::ServiceEdge),
        ReportedRole::CompatOverlap => ("compat-overlap", ListenerClass::ServiceEdge),
        ReportedRole::MetricsEdge => ("metrics-edge", ListenerClass::ServiceEdge),
        ReportedRole::Unclassified => ("unclassified", ListenerClass::Unclassified),
    };
    let anomaly = match class {
        ListenerClass::Unclassified => Some(e.anomaly.clone().unwrap_or_else(|| {
            "TCP listener not opened through the edge inventory: possible hidden transport".into()
        })),
        ListenerClass::ServiceEdge => e.anomaly.clone(),
    };
    ListenerAudit {
        owner: owner.to_owned(),
        role: role.to_owned(),
        class,
        bind: e.bind.to_string(),
        target: match &e.target {
            EdgeTarget::FabricService { node, service } => format!("fabric://{node}/{service}"),
            EdgeTarget::Local { handler } => format!("local:{handler}"),
            EdgeTarget::Unknown => "unknown".into(),
        },
        anomaly,
    }
}

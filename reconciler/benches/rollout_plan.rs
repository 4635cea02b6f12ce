//! Rollout planner simulation: a 1,000-node fleet in 3 areas rolled with
//! `maxParallel 50`, `maxParallelPerArea 20` (rolling; every leased node
//! finishes within one tick), then the same at 10,000 nodes. Prints a
//! markdown table: waves used against the optimum, limit violations found by
//! an independent check, planning time per tick.
//!
//! Run: `cargo bench -p fabric-reconciler --bench rollout_plan`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fabric_reconciler::rollout::{
    plan, Fleet, FleetNode, IntentInput, LiveStates, NodeLive, OutstandingLease, PlannerConfig,
    RolloutControl, RolloutPhase, RolloutProgress, TickInput, Versions,
};
use fabric_schemas::kinds::{
    ArtifactSpec, Component, FabricNodeSpec, NodeRole, RolloutPolicySpec, Strategy, TargetSelector,
    UpdateIntentSpec,
};
use fabric_schemas::time::parse_rfc3339;

const AREAS: [&str; 3] = ["alpha", "beta", "gamma"];

fn fleet(nodes: usize) -> Fleet {
    let mut fleet = Fleet::new();
    for i in 0..nodes {
        let area = AREAS[i % AREAS.len()];
        // A realistic sprinkle of roles: core services and edge roles in
        // every area, so the role rules are exercised on the way.
        let roles = match i / AREAS.len() {
            0 => vec![NodeRole::ControlApi],
            1 => vec![NodeRole::UpdateStore],
            2 => vec![NodeRole::UpdateCache],
            3..=5 => vec![NodeRole::Relay],
            6 | 7 => vec![NodeRole::Ingress, NodeRole::Egress],
            _ => vec![],
        };
        let spec = FabricNodeSpec {
            area: area.into(),
            site_id: format!("{area}-site-{}", i % 7),
            locality_group: format!("{area}-lan-{}", i % 7),
            nat_group: format!("{area}-nat-{}", i % 5),
            node_id: None,
            roles,
            endpoints: vec![],
            critical: false,
            resilience_target: None,
        };
        let versions = Versions {
            node_agent: Some("0.1.0".into()),
            host_agent: Some("0.1.0".into()),
        };
        fleet.insert(format!("node-{i:05}"), FleetNode { spec, versions });
    }
    fleet
}

fn policy() -> RolloutPolicySpec {
    RolloutPolicySpec {
        strategy: Strategy::Rolling,
        max_parallel: 50,
        max_parallel_per_area: Some(20),
        max_parallel_per_site: None,
        max_parallel_per_nat_group: None,
        max_unavailable: 50,
        failure_rate_stop_percent: 10,
        canary_steps: vec![],
        paused: false,
        first_phase: None,
        pinned_nodes: vec![],
        forced_node: None,
    }
}

struct Run {
    nodes: usize,
    waves: usize,
    optimum: usize,
    violations: usize,
    complete: bool,
    ticks: Vec<Duration>,
}

fn simulate(nodes: usize) -> Run {
    let mut fleet = fleet(nodes);
    let live: LiveStates = fleet
        .keys()
        .map(|n| (n.clone(), NodeLive::default()))
        .collect();
    let policy = policy();
    let intent = IntentInput {
        name: "node-agent-0-2-0".into(),
        generation: 1,
        spec: UpdateIntentSpec {
            component: Component::NodeAgent,
            version: "0.2.0".into(),
            artifact: ArtifactSpec {
                sha256: "00".repeat(32),
                size: 1,
                mirrors: vec![],
                pieces: None,
            },
            target: TargetSelector {
                all: true,
                ..TargetSelector::default()
            },
            policy: "bench".into(),
        },
    };
    let control = RolloutControl::default();
    let config = PlannerConfig::default();
    let mut progress = RolloutProgress::default();
    let mut leases: Vec<OutstandingLease> = Vec::new();
    let mut ticks = Vec::new();
    let mut waves = 0;
    let mut violations = 0;
    let mut complete = false;
    let per_wave = (policy.max_parallel as usize)
        .min(AREAS.len() * policy.max_parallel_per_area.unwrap_or(u32::MAX) as usize);
    let optimum = nodes.div_ceil(per_wave);
    for tick in 0..(optimum * 3 + 10) {
        let input = TickInput {
            now: 1_798_761_600 + tick as i64 * 60,
            intent: &intent,
            policy: &policy,
            fleet: &fleet,
            live: &live,
            leases: &leases,
            control: &control,
            progress: &progress,
            config: &config,
        };
        let started = Instant::now();
        let out = match plan(&input) {
            Ok(out) => out,
            Err(e) => panic!("bench policy is valid: {e}"),
        };
        ticks.push(started.elapsed());
        if out.status.phase == RolloutPhase::Complete {
            complete = true;
            break;
        }
        leases.retain(|l| !out.revoke.iter().any(|r| r.lease_id == l.lease_id));
        for g in &out.grant {
            leases.push(OutstandingLease {
                node: g.spec.node.clone(),
                intent: g.spec.intent.clone(),
                intent_generation: g.spec.intent_generation,
                phase: g.spec.phase,
                lease_id: g.spec.lease_id.clone(),
                expires_at: parse_rfc3339(&g.spec.expires_at).unwrap_or(i64::MAX),
            });
        }
        if !out.grant.is_empty() {
            waves += 1;
        }
        // Independent limit check over the leases now out.
        let mut per_area: BTreeMap<&str, u32> = BTreeMap::new();
        for l in &leases {
            if let Some(n) = fleet.get(&l.node) {
                *per_area.entry(n.spec.area.as_str()).or_default() += 1;
            }
        }
        if leases.len() as u32 > policy.max_parallel.min(policy.max_unavailable)
            || per_area
                .values()
                .any(|&n| n > policy.max_parallel_per_area.unwrap_or(u32::MAX))
        {
            violations += 1;
        }
        progress = out.progress;
        // Every leased node finishes within the tick.
        for l in &leases {
            if let Some(n) = fleet.get_mut(&l.node) {
                n.versions.node_agent = Some("0.2.0".into());
            }
        }
    }
    Run {
        nodes,
        waves,
        optimum,
        violations,
        complete,
        ticks,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    println!("| fleet | waves | optimum | ratio | limit violations | complete | ticks | plan/tick median | plan/tick p99 |");
    println!("|---:|---:|---:|---:|---:|:---:|---:|---:|---:|");
    for nodes in [1_000, 10_000] {
        let mut run = simulate(nodes);
        run.ticks.sort();
        println!(
            "| {} | {} | {} | {:.2}x | {} | {} | {} | {:.2} ms | {:.2} ms |",
            run.nodes,
            run.waves,
            run.optimum,
            run.waves as f64 / run.optimum as f64,
            run.violations,
            if run.complete { "yes" } else { "no" },
            run.ticks.len(),
            percentile(&run.ticks, 0.5).as_secs_f64() * 1e3,
            percentile(&run.ticks, 0.99).as_secs_f64() * 1e3,
        );
    }
}

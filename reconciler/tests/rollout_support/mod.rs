//! Shared builders for the rollout tests: a fleet builder, policies, and a
//! small simulator that applies a tick's output the way the driver would.
#![allow(dead_code)]

use fabric_reconciler::rollout::{
    plan, Fleet, FleetNode, Health, IntentInput, LiveStates, NodeLive, OutstandingLease,
    PlannerConfig, RolloutControl, RolloutProgress, TickInput, TickOutput, UpdateReport,
    UpdateState, Versions,
};
use fabric_schemas::kinds::{
    ArtifactSpec, CanaryStep, Component, FabricNodeSpec, NodeRole, RolloutPolicySpec, Strategy,
    TargetSelector, UpdateIntentSpec,
};
use fabric_schemas::time::parse_rfc3339;

pub(crate) const OLD: &str = "0.1.0";
pub(crate) const NEW: &str = "0.2.0";
pub(crate) const T0: i64 = 1_798_761_600;

pub(crate) fn spec(area: &str, site: &str, nat: &str, roles: &[NodeRole]) -> FabricNodeSpec {
    FabricNodeSpec {
        area: area.into(),
        site_id: site.into(),
        locality_group: site.into(),
        nat_group: nat.into(),
        node_id: None,
        roles: roles.to_vec(),
        endpoints: vec![],
        critical: false,
        resilience_target: None,
    }
}

/// `Fleet::new().areas(3).nodes_per_area(4)` in the style of STYLE.md.
#[derive(Default)]
pub(crate) struct FleetBuilder {
    fleet: Fleet,
}

impl FleetBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// `n` plain nodes per area named `<area>-<i>`, one site and NAT group per area.
    pub(crate) fn areas(mut self, areas: &[&str], n: usize) -> Self {
        for area in areas {
            for i in 1..=n {
                let name = format!("{area}-{i}");
                let s = spec(area, &format!("{area}-site"), &format!("{area}-nat"), &[]);
                self.fleet.insert(name, fleet_node(s));
            }
        }
        self
    }

    pub(crate) fn node(mut self, name: &str, area: &str, roles: &[NodeRole]) -> Self {
        let s = spec(area, &format!("{area}-site"), &format!("{area}-nat"), roles);
        self.fleet.insert(name.into(), fleet_node(s));
        self
    }

    pub(crate) fn spec_node(mut self, name: &str, s: FabricNodeSpec) -> Self {
        self.fleet.insert(name.into(), fleet_node(s));
        self
    }

    pub(crate) fn build(self) -> Fleet {
        self.fleet
    }
}

pub(crate) fn fleet_node(spec: FabricNodeSpec) -> FleetNode {
    FleetNode {
        spec,
        versions: Versions {
            node_agent: Some(OLD.into()),
            host_agent: Some(OLD.into()),
        },
    }
}

pub(crate) fn policy(
    strategy: Strategy,
    max_parallel: u32,
    max_unavailable: u32,
) -> RolloutPolicySpec {
    RolloutPolicySpec {
        strategy,
        max_parallel,
        max_parallel_per_area: None,
        max_parallel_per_site: None,
        max_parallel_per_nat_group: None,
        max_unavailable,
        failure_rate_stop_percent: 50,
        canary_steps: vec![],
        paused: false,
        first_phase: None,
        pinned_nodes: vec![],
        forced_node: None,
    }
}

pub(crate) fn count(c: u32) -> CanaryStep {
    CanaryStep {
        count: Some(c),
        percent: None,
    }
}

pub(crate) fn percent(p: u32) -> CanaryStep {
    CanaryStep {
        count: None,
        percent: Some(p),
    }
}

pub(crate) fn intent(name: &str, component: Component) -> IntentInput {
    IntentInput {
        name: name.into(),
        generation: 1,
        spec: UpdateIntentSpec {
            component,
            version: NEW.into(),
            artifact: ArtifactSpec {
                sha256: "00".repeat(32),
                size: 1,
                mirrors: vec!["fabric://update-cache/x".into()],
                pieces: None,
            },
            target: TargetSelector {
                all: true,
                ..TargetSelector::default()
            },
            policy: "test".into(),
        },
    }
}

pub(crate) fn all_healthy(fleet: &Fleet) -> LiveStates {
    fleet
        .keys()
        .map(|n| (n.clone(), NodeLive::default()))
        .collect()
}

/// One rollout and the world around it, advanced tick by tick.
pub(crate) struct Sim {
    pub fleet: Fleet,
    pub live: LiveStates,
    pub leases: Vec<OutstandingLease>,
    pub control: RolloutControl,
    pub progress: RolloutProgress,
    pub config: PlannerConfig,
    pub intent: IntentInput,
    pub policy: RolloutPolicySpec,
    pub now: i64,
    pub last: Option<TickOutput>,
}

impl Sim {
    pub(crate) fn new(fleet: Fleet, policy: RolloutPolicySpec) -> Sim {
        let live = all_healthy(&fleet);
        Sim {
            fleet,
            live,
            leases: vec![],
            control: RolloutControl::default(),
            progress: RolloutProgress::default(),
            config: PlannerConfig::default(),
            intent: intent("node-agent-0-2-0", Component::NodeAgent),
            policy,
            now: T0,
            last: None,
        }
    }

    pub(crate) fn input(&self) -> TickInput<'_> {
        TickInput {
            now: self.now,
            intent: &self.intent,
            policy: &self.policy,
            fleet: &self.fleet,
            live: &self.live,
            leases: &self.leases,
            control: &self.control,
            progress: &self.progress,
            config: &self.config,
        }
    }

    /// Plans and applies the output: revoked leases go, granted ones come,
    /// leased nodes report `leased`; time moves on by a minute.
    pub(crate) fn tick(&mut self) -> TickOutput {
        let out = plan(&self.input()).expect("valid policy");
        self.apply(&out);
        self.now += 60;
        self.last = Some(out.clone());
        out
    }

    pub(crate) fn apply(&mut self, out: &TickOutput) {
        let revoked: Vec<&str> = out.revoke.iter().map(|r| r.lease_id.as_str()).collect();
        self.leases
            .retain(|l| !revoked.contains(&l.lease_id.as_str()));
        for g in &out.grant {
            self.leases.push(OutstandingLease {
                node: g.spec.node.clone(),
                intent: g.spec.intent.clone(),
                intent_generation: g.spec.intent_generation,
                phase: g.spec.phase,
                lease_id: g.spec.lease_id.clone(),
                expires_at: parse_rfc3339(&g.spec.expires_at).expect("planner writes RFC 3339"),
            });
            self.report(&g.spec.node, UpdateState::Leased);
        }
        self.progress = out.progress.clone();
    }

    pub(crate) fn leased_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.leases.iter().map(|l| l.node.clone()).collect();
        v.sort();
        v
    }

    pub(crate) fn lease_of(&self, node: &str) -> Option<&OutstandingLease> {
        self.leases.iter().find(|l| l.node == node)
    }

    /// The node reports `state` for its current lease of this intent.
    pub(crate) fn report(&mut self, node: &str, state: UpdateState) {
        let lease_id = self.lease_of(node).map(|l| l.lease_id.clone());
        let live = self.live.entry(node.into()).or_default();
        live.update = Some(UpdateReport {
            intent: self.intent.name.clone(),
            generation: self.intent.generation,
            phase: self.intent.spec.component,
            lease_id,
            state,
        });
    }

    /// The node finished: it runs the new version and reports healthy.
    pub(crate) fn complete(&mut self, node: &str) {
        if let Some(n) = self.fleet.get_mut(node) {
            match self.intent.spec.component {
                Component::NodeAgent => n.versions.node_agent = Some(NEW.into()),
                Component::HostAgent => n.versions.host_agent = Some(NEW.into()),
            }
        }
        self.report(node, UpdateState::Healthy);
    }

    pub(crate) fn complete_all_leased(&mut self) {
        for n in self.leased_nodes() {
            self.complete(&n);
        }
    }

    pub(crate) fn set_health(&mut self, node: &str, h: Health) {
        self.live.entry(node.into()).or_default().health = h;
    }

    /// Ticks, completing every leased node each time, until nothing is
    /// leased and nothing was granted; returns the number of ticks.
    pub(crate) fn run_to_end(&mut self, max_ticks: usize) -> usize {
        for i in 0..max_ticks {
            let out = self.tick();
            if out.grant.is_empty() && self.leases.is_empty() {
                return i + 1;
            }
            self.complete_all_leased();
        }
        max_ticks
    }
}

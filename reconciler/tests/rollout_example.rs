//! The worked rollout of docs/orchestrator.md, generated from the example
//! fleet in manifests/examples so the document stays true.
//!
//! The table in the document must equal what this test renders. After a
//! deliberate planner change, regenerate it with
//! `FABRIC_BLESS=1 cargo test -p fabric-reconciler --test rollout_example`.

use std::fmt::Write as _;
use std::path::PathBuf;

use fabric_reconciler::rollout::{
    plan_phases, Fleet, FleetNode, IntentInput, LiveStates, NodeLive, OutstandingLease,
    PlannerConfig, RolloutControl, RolloutPhase, RolloutProgress, TickInput, TickOutput, Versions,
};
use fabric_schemas::kinds::{Component, Spec};
use fabric_schemas::manifest::load_path;
use fabric_schemas::time::parse_rfc3339;

const START: &str = "<!-- worked-example:start -->";
const END: &str = "<!-- worked-example:end -->";
const T0: i64 = 1_798_761_600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn render() -> String {
    let report = load_path(&root().join("manifests/examples"));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut fleet = Fleet::new();
    let mut node_intent = None;
    let mut policy = None;
    for obj in &report.objects {
        match &obj.spec {
            Spec::FabricNode(s) => {
                fleet.insert(
                    obj.name().to_owned(),
                    FleetNode {
                        spec: s.clone(),
                        versions: Versions {
                            node_agent: Some("0.1.0".into()),
                            host_agent: Some("0.1.0".into()),
                        },
                    },
                );
            }
            Spec::UpdateIntent(s) => {
                node_intent = Some(IntentInput {
                    name: obj.name().to_owned(),
                    generation: 1,
                    spec: s.clone(),
                })
            }
            Spec::RolloutPolicy(s) if obj.name() == "careful" => policy = Some(s.clone()),
            _ => {}
        }
    }
    let node_intent = node_intent.expect("example intent");
    let policy = policy.expect("policy careful");
    // The examples carry the node-agent intent; its host-agent twin shows
    // the phases (careful says host-agent goes first).
    let mut host_intent = node_intent.clone();
    host_intent.name = "host-agent-0-2-0".into();
    host_intent.spec.component = Component::HostAgent;
    let intents = [host_intent, node_intent];

    let live: LiveStates = fleet
        .keys()
        .map(|n| (n.clone(), NodeLive::default()))
        .collect();
    let control = RolloutControl::default();
    let config = PlannerConfig::default();
    let mut progress = [RolloutProgress::default(), RolloutProgress::default()];
    let mut leases: Vec<OutstandingLease> = Vec::new();
    let mut md = String::new();
    md.push_str("| tick | host-agent leases | node-agent leases | host-agent status | node-agent status |\n");
    md.push_str("|---:|---|---|---|---|\n");
    for tick in 0..60 {
        let inputs: Vec<TickInput<'_>> = intents
            .iter()
            .zip(&progress)
            .map(|(intent, pr)| TickInput {
                now: T0 + tick * 60,
                intent,
                policy: &policy,
                fleet: &fleet,
                live: &live,
                leases: &leases,
                control: &control,
                progress: pr,
                config: &config,
            })
            .collect();
        let outs = plan_phases(&inputs).expect("careful is valid");
        leases.retain(|l| {
            !outs
                .iter()
                .any(|o| o.revoke.iter().any(|r| r.lease_id == l.lease_id))
        });
        for o in &outs {
            for g in &o.grant {
                leases.push(OutstandingLease {
                    node: g.spec.node.clone(),
                    intent: g.spec.intent.clone(),
                    intent_generation: g.spec.intent_generation,
                    phase: g.spec.phase,
                    lease_id: g.spec.lease_id.clone(),
                    expires_at: parse_rfc3339(&g.spec.expires_at).expect("rfc3339"),
                });
            }
        }
        let _ = writeln!(
            md,
            "| {tick} | {} | {} | {} | {} |",
            grants(&outs[0]),
            grants(&outs[1]),
            status(&outs[0]),
            status(&outs[1])
        );
        for (i, o) in outs.iter().enumerate() {
            progress[i] = o.progress.clone();
        }
        if outs
            .iter()
            .all(|o| o.status.phase == RolloutPhase::Complete)
        {
            break;
        }
        // Every leased node applies and reports healthy before the next tick.
        for l in &leases {
            if let Some(n) = fleet.get_mut(&l.node) {
                match l.phase {
                    Component::HostAgent => n.versions.host_agent = Some("0.2.0".into()),
                    Component::NodeAgent => n.versions.node_agent = Some("0.2.0".into()),
                }
            }
        }
    }
    md
}

fn grants(o: &TickOutput) -> String {
    if o.grant.is_empty() {
        return "-".into();
    }
    o.grant
        .iter()
        .map(|g| g.spec.node.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn status(o: &TickOutput) -> String {
    let c = o.status.counts;
    let mut s = format!("{:?} {}/{} done", o.status.phase, c.done, c.target);
    if let Some(canary) = o.status.canary {
        let _ = write!(s, ", step {}/{}", canary.step, canary.steps);
    }
    let reasons: Vec<&str> = o
        .status
        .conditions
        .iter()
        .filter(|c| c.reason != fabric_reconciler::rollout::Reason::Complete)
        .map(|c| c.reason.as_str())
        .collect();
    if !reasons.is_empty() {
        let _ = write!(s, " ({})", reasons.join(", "));
    }
    s
}

#[test]
fn worked_example_in_docs_matches_the_planner() {
    let table = render();
    let path = root().join("docs/orchestrator.md");
    let doc = std::fs::read_to_string(&path).expect("docs/orchestrator.md exists");
    let (Some(a), Some(b)) = (doc.find(START), doc.find(END)) else {
        panic!("docs/orchestrator.md lacks the {START} / {END} markers");
    };
    let current = doc[a + START.len()..b].trim();
    if std::env::var_os("FABRIC_BLESS").is_some() {
        let updated = format!("{}{START}\n{}\n{}", &doc[..a], table.trim(), &doc[b..]);
        std::fs::write(&path, updated).expect("write docs/orchestrator.md");
        return;
    }
    assert_eq!(
        current,
        table.trim(),
        "docs/orchestrator.md is stale; rerun with FABRIC_BLESS=1"
    );
}

//! Which intents this node holds, checked on the node (pure).
//!
//! Every envelope here was admitted by `accept` on its way in (signature,
//! role, the signer's scope, expiry, generation), whichever source brought
//! it: the Control API, a neighbour's gossip, `update-store`. On top of that
//! the node checks that it is itself in the intent's target and in the
//! record's scope, so a neighbour relaying an intent can neither forge it nor
//! make it reach a node it was not meant for.

use std::collections::{BTreeMap, BTreeSet};

use fabric::gossip::Envelope;
use fabric::topology::NodeId;
use fabric_schemas::kinds::{Component, FabricNodeSpec, PieceSpec, Spec};
use fabric_schemas::{Envelope as SignedEnvelope, ScopeTerm};

use super::machine::{IntentRef, LeaseView};
use crate::directory::Directory;
use crate::leases::LeaseCheck;

use fabric_schemas::RESIGN_BITS;

/// An intent the node holds for one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldIntent {
    /// What the state machine reads.
    pub intent: IntentRef,
    /// The artifact's pinned pieces.
    pub pieces: Option<PieceSpec>,
    /// The artifact's mirrors (the last fallback).
    pub mirrors: Vec<String>,
    /// This node's place among the intent's targets in its area, in an order
    /// every node computes alike (by sha256 of the artifact digest and the
    /// node name): 0 is the area's seed, which fetches first.
    pub area_rank: usize,
    /// The nodes ranked before this one in its area (at most
    /// [`AREA_SOURCES`]), best first: where its artifact will come from.
    pub area_sources: Vec<NodeId>,
}

/// Area peers asked for an artifact before the general sources.
pub const AREA_SOURCES: usize = 8;

/// What the updater reads from the node core: intents, lease checks and
/// where artifacts may come from. Published when any of it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateInputs {
    /// The newest intent per component for this node.
    pub intents: BTreeMap<Component, HeldIntent>,
    /// Intents that name this node's fleet but not this node, by name, with
    /// why (`not_in_target`, `out_of_scope`).
    pub refused: BTreeMap<String, String>,
    /// The node's lease checks.
    pub leases: Vec<LeaseCheck>,
    /// Artifact sources besides the area: the neighbours.
    pub sources: Vec<NodeId>,
    /// The origin tier, asked only when no peer holds the artifact:
    /// `update-cache` providers, then `update-store` providers.
    pub fallback: Vec<NodeId>,
}

impl UpdateInputs {
    /// The lease view for `intent` in `phase`: an admitted lease wins over
    /// refused ones.
    pub fn lease_for(&self, intent: &IntentRef) -> LeaseView {
        let mine = self.leases.iter().filter(|l| {
            l.intent == intent.name
                && l.intent_generation == intent.generation
                && l.phase == intent.component.as_str()
        });
        let mut refused = LeaseView::None;
        for l in mine {
            if l.admitted {
                return LeaseView::Admitted {
                    lease_id: l.lease_id.clone(),
                };
            }
            refused = LeaseView::Refused {
                lease_id: l.lease_id.clone(),
                reason: l.reason.clone().unwrap_or_else(|| "refused".into()),
            };
        }
        // A refused lease of another generation says nothing about this one.
        refused
    }
}

fn in_scope(terms: &[ScopeTerm], name: &str, spec: &FabricNodeSpec) -> bool {
    terms.iter().any(|t| match t {
        ScopeTerm::Any => true,
        ScopeTerm::Area(a) => *a == spec.area,
        ScopeTerm::Site(s) => *s == spec.site_id,
        ScopeTerm::NatGroup(g) => *g == spec.nat_group,
        ScopeTerm::Node(n) => n == name,
    })
}

/// The newest unexpired intent per component that names this node, and the
/// ones that do not (with why).
pub fn intents_for(
    name: &str,
    spec: &FabricNodeSpec,
    envelopes: &[Envelope],
    dir: Option<&Directory>,
    now: i64,
) -> (BTreeMap<Component, HeldIntent>, BTreeMap<String, String>) {
    let mut held: BTreeMap<Component, HeldIntent> = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for e in envelopes {
        let Ok(signed) = SignedEnvelope::decode(&e.bytes) else {
            continue;
        };
        let r = &signed.record;
        if r.expires_at <= now {
            continue;
        }
        let Ok(Spec::UpdateIntent(i)) = r.spec() else {
            continue;
        };
        if !in_scope(r.scope.terms(), name, spec) {
            refused.insert(r.name.clone(), "out_of_scope".to_owned());
            continue;
        }
        if !i.target.matches(name, spec) {
            refused.insert(r.name.clone(), "not_in_target".to_owned());
            continue;
        }
        let (area_rank, area_sources) = dir.map_or((0, Vec::new()), |d| {
            area_plan(name, spec, &i.artifact.sha256, &i.target, d)
        });
        let candidate = HeldIntent {
            intent: IntentRef {
                name: r.name.clone(),
                generation: r.generation >> RESIGN_BITS,
                component: i.component,
                version: i.version.clone(),
                sha256: i.artifact.sha256.clone(),
                size: i.artifact.size,
            },
            pieces: i.artifact.pieces.clone(),
            mirrors: i.artifact.mirrors.clone(),
            area_rank,
            area_sources,
        };
        // Two intents for one component: the newer generation, then the name,
        // so every node picks the same one.
        let newer = held.get(&i.component).is_none_or(|h| {
            (candidate.intent.generation, &candidate.intent.name)
                > (h.intent.generation, &h.intent.name)
        });
        if newer {
            held.insert(i.component, candidate);
        }
    }
    (held, refused)
}

/// This node's rank among the targets of an intent in its own area, and the
/// nodes ranked before it. One copy per area comes from the store (the
/// seed's); the others take it from the seed and from each other.
pub fn area_plan(
    name: &str,
    spec: &FabricNodeSpec,
    artifact: &str,
    target: &fabric_schemas::kinds::TargetSelector,
    dir: &Directory,
) -> (usize, Vec<NodeId>) {
    use sha2::{Digest, Sha256};
    let key = |n: &str| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(artifact.as_bytes());
        h.update([0]);
        h.update(n.as_bytes());
        h.finalize().into()
    };
    let mut area: Vec<([u8; 32], &str, NodeId)> = dir
        .nodes
        .values()
        .filter(|n| n.spec.area == spec.area && target.matches(&n.name, &n.spec))
        .map(|n| (key(&n.name), n.name.as_str(), n.node_id))
        .collect();
    area.sort();
    let rank = area.iter().position(|(_, n, _)| *n == name).unwrap_or(0);
    let before = area[..rank.min(area.len())]
        .iter()
        .take(AREA_SOURCES)
        .map(|(_, _, id)| *id)
        .collect();
    (rank, before)
}

/// Where this node may fetch artifacts: its neighbours (close, and every
/// node serves what it staged), and apart from them the origin tier, the
/// providers of `update-cache` then `update-store`. Never itself, never
/// twice.
pub fn artifact_sources(
    own: NodeId,
    neighbours: &BTreeSet<NodeId>,
    dir: &Directory,
) -> (Vec<NodeId>, Vec<NodeId>) {
    let mut origin: Vec<NodeId> = Vec::new();
    for service in ["update-cache", "update-store"] {
        if let Some(s) = dir.services.get(service) {
            for p in &s.spec.providers {
                if let Some(n) = dir.nodes.get(p) {
                    if n.node_id != own && !origin.contains(&n.node_id) {
                        origin.push(n.node_id);
                    }
                }
            }
        }
    }
    let peers = neighbours
        .iter()
        .copied()
        .filter(|id| *id != own && !origin.contains(id))
        .collect();
    (peers, origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::gossip::RecordKey;
    use fabric_schemas::kinds::{ArtifactSpec, TargetSelector, UpdateIntentSpec};
    use fabric_schemas::{Record, Scope};

    fn node(area: &str) -> FabricNodeSpec {
        FabricNodeSpec {
            area: area.into(),
            site_id: format!("{area}-s"),
            locality_group: "l".into(),
            nat_group: "g".into(),
            node_id: None,
            roles: vec![],
            endpoints: vec![],
            critical: false,
            resilience_target: None,
        }
    }

    fn intent(name: &str, generation: u64, target: TargetSelector, scope: Scope) -> Envelope {
        let spec = Spec::UpdateIntent(UpdateIntentSpec {
            component: Component::NodeAgent,
            version: "1".into(),
            artifact: ArtifactSpec {
                sha256: "ab".repeat(32),
                size: 5,
                mirrors: vec![],
                pieces: None,
            },
            target,
            policy: "p".into(),
        });
        let rec = Record::new(&spec, name, generation << RESIGN_BITS, 0, 100, scope).expect("rec");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        Envelope::new(
            RecordKey::new(spec.kind().code(), name),
            generation << RESIGN_BITS,
            SignedEnvelope::sign(rec, &[&key]).encode(),
        )
    }

    #[test]
    fn the_node_keeps_only_intents_that_target_it_within_their_scope() {
        let areas = |a: &[&str]| TargetSelector {
            areas: a.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let env = vec![
            intent("for-alpha", 3, areas(&["alpha"]), Scope::any()),
            intent("for-beta", 4, areas(&["beta"]), Scope::any()),
            intent(
                "widened",
                5,
                TargetSelector {
                    all: true,
                    ..Default::default()
                },
                Scope::new(vec![ScopeTerm::Area("beta".into())]).expect("scope"),
            ),
        ];
        let (held, refused) = intents_for("a1", &node("alpha"), &env, None, 10);
        let got = held.get(&Component::NodeAgent).expect("held");
        assert_eq!(got.intent.name, "for-alpha");
        assert_eq!(got.intent.generation, 3);
        assert_eq!(
            refused.get("for-beta").map(String::as_str),
            Some("not_in_target")
        );
        assert_eq!(
            refused.get("widened").map(String::as_str),
            Some("out_of_scope")
        );
        // Expired intents are gone.
        let (held, _) = intents_for("a1", &node("alpha"), &env, None, 100);
        assert!(held.is_empty());
    }

    #[test]
    fn of_two_intents_for_one_component_the_newer_generation_wins() {
        let all = TargetSelector {
            all: true,
            ..Default::default()
        };
        let env = vec![
            intent("b", 2, all.clone(), Scope::any()),
            intent("a", 7, all, Scope::any()),
        ];
        let (held, _) = intents_for("n", &node("x"), &env, None, 10);
        assert_eq!(held[&Component::NodeAgent].intent.name, "a");
    }

    #[test]
    fn an_admitted_lease_wins_and_other_generations_do_not_count() {
        let i = IntentRef {
            name: "up".into(),
            generation: 2,
            component: Component::NodeAgent,
            version: "1".into(),
            sha256: "ab".repeat(32),
            size: 1,
        };
        let check = |id: &str, generation: u64, admitted: bool| LeaseCheck {
            lease_id: id.into(),
            intent: "up".into(),
            intent_generation: generation,
            phase: "node-agent".into(),
            admitted,
            reason: (!admitted).then(|| "expired".into()),
            detail: None,
        };
        let mut inputs = UpdateInputs {
            leases: vec![check("old", 1, true), check("l1", 2, false)],
            ..Default::default()
        };
        assert_eq!(
            inputs.lease_for(&i),
            LeaseView::Refused {
                lease_id: "l1".into(),
                reason: "expired".into()
            }
        );
        inputs.leases.push(check("l2", 2, true));
        assert_eq!(
            inputs.lease_for(&i),
            LeaseView::Admitted {
                lease_id: "l2".into()
            }
        );
    }
}

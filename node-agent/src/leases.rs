//! The node's own check of every rollout lease it holds.
//!
//! `accept` (in the record store) proved who signed a lease; this runs the
//! node-side lease admission (`fabric_schemas::lease::check_lease_admission`)
//! on every unexpired lease addressed to this node, with what the node knows
//! from its own directory: the intent it holds for the lease's phase, the
//! nodes that intent targets, and how many live leases of that intent
//! generation it can see. Pure: the driver calls it when the directory
//! changes and publishes the result in the node's status. The node acts on
//! nothing yet (the update plane will act only on admitted leases).

use std::collections::{BTreeMap, BTreeSet};

use fabric::gossip::Envelope;
use fabric_schemas::accept::NothingHeld;
use fabric_schemas::kinds::{RolloutLeaseSpec, Spec, UpdateIntentSpec};
use fabric_schemas::lease::{check_lease_admission, AdmissionContext, HeldIntent};
use fabric_schemas::time::parse_rfc3339;
use fabric_schemas::{accept, Envelope as SignedEnvelope, TrustAnchor};
use serde::{Deserialize, Serialize};

use crate::directory::Directory;

/// Record generations of published objects are `object generation << 20`
/// plus re-signs (see the reconciler's publisher): a lease names the object
/// generation.
const RESIGN_BITS: u32 = 20;

/// The outcome of the node's admission check on one lease it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCheck {
    /// The lease id.
    pub lease_id: String,
    /// The `UpdateIntent` it is for.
    pub intent: String,
    /// The intent generation it is for.
    pub intent_generation: u64,
    /// `node-agent` or `host-agent`.
    pub phase: String,
    /// True when the node may act on it.
    pub admitted: bool,
    /// Why not: a stable label (`LeaseRefusal::reason` or the acceptance
    /// rejection), then the full message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The refusal's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Checks every unexpired lease for `node` among `envelopes` (the node's
/// admitted records) as of `now` (Unix seconds). Sorted by lease id.
pub fn check_held_leases(
    node: &str,
    trust: &TrustAnchor,
    envelopes: &[Envelope],
    dir: &Directory,
    now: i64,
) -> Vec<LeaseCheck> {
    let mut intents: BTreeMap<String, (UpdateIntentSpec, u64)> = BTreeMap::new();
    let mut leases: Vec<(RolloutLeaseSpec, &[u8])> = Vec::new();
    for e in envelopes {
        let Ok(signed) = SignedEnvelope::decode(&e.bytes) else {
            continue;
        };
        if signed.record.expires_at <= now {
            continue;
        }
        match signed.record.spec() {
            Ok(Spec::UpdateIntent(i)) => {
                intents.insert(
                    signed.record.name.clone(),
                    (i, signed.record.generation >> RESIGN_BITS),
                );
            }
            Ok(Spec::RolloutLease(l)) => leases.push((l, &e.bytes)),
            _ => {}
        }
    }
    // Live leases per (intent, generation), by node: what the node can see of
    // how many apply at once.
    let mut live: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for (l, _) in &leases {
        if parse_rfc3339(&l.expires_at).is_ok_and(|t| t > now) {
            live.entry((l.intent.clone(), l.intent_generation))
                .or_default()
                .insert(l.node.clone());
        }
    }
    let mut out = Vec::new();
    for (lease, bytes) in leases.iter().filter(|(l, _)| l.node == node) {
        let base = LeaseCheck {
            lease_id: lease.lease_id.clone(),
            intent: lease.intent.clone(),
            intent_generation: lease.intent_generation,
            phase: lease.phase.as_str().to_owned(),
            admitted: false,
            reason: None,
            detail: None,
        };
        let accepted = match accept(trust, &NothingHeld, bytes, now) {
            Ok(a) => a,
            Err(r) => {
                out.push(LeaseCheck {
                    reason: Some(r.reason().to_owned()),
                    detail: Some(r.to_string()),
                    ..base
                });
                continue;
            }
        };
        let held = intents
            .get(&lease.intent)
            .filter(|(spec, _)| spec.component == lease.phase);
        let fleet_size = held.map_or(0, |(spec, _)| {
            dir.nodes
                .values()
                .filter(|n| spec.target.matches(&n.name, &n.spec))
                .count() as u32
        });
        let concurrently_leased = live
            .get(&(lease.intent.clone(), lease.intent_generation))
            .map_or(0, |s| s.len() as u32);
        let ctx = AdmissionContext {
            node,
            held_intent: held.map(|(spec, generation)| HeldIntent {
                name: &lease.intent,
                generation: *generation,
                component: spec.component,
            }),
            roles_met: &accepted.roles_met,
            now,
            fleet_size,
            concurrently_leased,
        };
        out.push(match check_lease_admission(lease, &ctx) {
            Ok(()) => LeaseCheck {
                admitted: true,
                ..base
            },
            Err(refusal) => LeaseCheck {
                reason: Some(refusal.reason().to_owned()),
                detail: Some(refusal.to_string()),
                ..base
            },
        });
    }
    out.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::gossip::RecordKey;
    use fabric_schemas::keys::{generate_trust_root, RoleKey, TrustRootPlan};
    use fabric_schemas::kinds::{
        ArtifactSpec, Component, FabricNodeSpec, TargetSelector, UpdateIntentSpec,
    };
    use fabric_schemas::time::format_rfc3339;
    use fabric_schemas::{Record, Role, Scope};

    const NOW: i64 = 1_000_000;

    struct World {
        trust: TrustAnchor,
        keys: Vec<RoleKey>,
        envelopes: Vec<Envelope>,
    }

    impl World {
        fn new() -> World {
            let (spec, keys) = generate_trust_root(&TrustRootPlan::single_keys(NOW + 86_400));
            let trust = TrustAnchor::from_spec(&spec).expect("trust root");
            let mut w = World {
                trust,
                keys,
                envelopes: Vec::new(),
            };
            for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
                let node = Spec::FabricNode(FabricNodeSpec {
                    area: "a".into(),
                    site_id: "s".into(),
                    locality_group: "l".into(),
                    nat_group: "g".into(),
                    node_id: Some(hex::encode([i as u8 + 1; 32])),
                    roles: vec![],
                    endpoints: vec![],
                    critical: false,
                    resilience_target: None,
                });
                w.add(Role::Control, &node, name, 1);
            }
            let intent = Spec::UpdateIntent(UpdateIntentSpec {
                component: Component::NodeAgent,
                version: "0.4.0".into(),
                artifact: ArtifactSpec {
                    sha256: "ab".repeat(32),
                    size: 10,
                    mirrors: vec![],
                    pieces: None,
                },
                target: TargetSelector {
                    all: true,
                    ..Default::default()
                },
                policy: "p".into(),
            });
            // Object generation 2, re-signed once.
            w.add(Role::Control, &intent, "up", (2 << RESIGN_BITS) + 1);
            w
        }

        fn key(&self, role: Role) -> &ed25519_dalek::SigningKey {
            &self
                .keys
                .iter()
                .find(|k| k.role == role)
                .expect("role key")
                .key
        }

        fn add(&mut self, role: Role, spec: &Spec, name: &str, generation: u64) {
            let rec = Record::new(spec, name, generation, NOW - 10, NOW + 3_600, Scope::any())
                .expect("record");
            let bytes = SignedEnvelope::sign(rec, &[self.key(role)]).encode();
            self.envelopes.push(Envelope::new(
                RecordKey::new(spec.kind().code(), name),
                generation,
                bytes,
            ));
        }

        fn lease(&mut self, role: Role, node: &str, id: &str, generation: u64, expires: i64) {
            let spec = Spec::RolloutLease(RolloutLeaseSpec {
                node: node.into(),
                intent: "up".into(),
                intent_generation: generation,
                phase: Component::NodeAgent,
                lease_id: id.into(),
                expires_at: format_rfc3339(expires),
                recovery_override: false,
            });
            self.add(role, &spec, &format!("lease-{id}"), 1);
        }

        fn check(&self, node: &str) -> Vec<LeaseCheck> {
            let dir = Directory::from_envelopes(&self.envelopes, NOW);
            check_held_leases(node, &self.trust, &self.envelopes, &dir, NOW)
        }
    }

    #[test]
    fn a_valid_lease_for_this_node_is_admitted() {
        let mut w = World::new();
        w.lease(Role::Orchestrator, "n1", "l1", 2, NOW + 600);
        let checks = w.check("n1");
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert!(checks[0].admitted, "{checks:?}");
        assert_eq!(checks[0].reason, None);
    }

    #[test]
    fn a_lease_for_another_node_is_not_held_here() {
        let mut w = World::new();
        w.lease(Role::Orchestrator, "n2", "l1", 2, NOW + 600);
        assert!(w.check("n1").is_empty());
        assert!(w.check("n2")[0].admitted);
    }

    #[test]
    fn a_lease_signed_by_the_control_key_is_refused_with_the_reason() {
        let mut w = World::new();
        w.lease(Role::Control, "n1", "l1", 2, NOW + 600);
        let c = &w.check("n1")[0];
        assert!(!c.admitted);
        assert!(c.reason.is_some() && c.detail.is_some(), "{c:?}");
    }

    #[test]
    fn a_lease_for_another_intent_generation_or_an_expired_lease_is_refused() {
        let mut w = World::new();
        w.lease(Role::Orchestrator, "n1", "old", 1, NOW + 600);
        w.lease(Role::Orchestrator, "n1", "over", 2, NOW - 1);
        let checks = w.check("n1");
        let reason = |id: &str| {
            checks
                .iter()
                .find(|c| c.lease_id == id)
                .and_then(|c| c.reason.clone())
        };
        assert_eq!(reason("old").as_deref(), Some("intent_mismatch"));
        assert_eq!(reason("over").as_deref(), Some("expired"));
    }

    #[test]
    fn leases_covering_the_whole_targeted_fleet_are_a_farm_wide_start() {
        let mut w = World::new();
        for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
            w.lease(Role::Orchestrator, n, &format!("l{i}"), 2, NOW + 600);
        }
        let c = &w.check("n1")[0];
        assert_eq!(c.reason.as_deref(), Some("farm_wide_start"), "{c:?}");
    }
}

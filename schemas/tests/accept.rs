//! Every `Rejection` reason, produced on purpose, plus the acceptance paths.

mod common;

use std::collections::BTreeMap;

use common::*;
use fabric_schemas::accept::{HeldRecord, NothingHeld, RecordKey};
use fabric_schemas::kinds::update::Component;
use fabric_schemas::kinds::{Kind, RolloutLeaseSpec, Spec};
use fabric_schemas::trust::Role;
use fabric_schemas::{
    accept, accept_batch, Envelope, Novelty, Record, Rejection, Scope, ScopeTerm,
};

fn held_from(bytes: &[u8]) -> BTreeMap<RecordKey, HeldRecord> {
    let env = Envelope::decode(bytes).expect("decodes");
    let mut m = BTreeMap::new();
    m.insert(
        (env.record.kind, env.record.name.clone()),
        HeldRecord::of(&env),
    );
    m
}

#[test]
fn a_control_signed_node_record_is_accepted() {
    let f = Fixture::new();
    let bytes = signed(
        &Spec::FabricNode(node_spec("alpha")),
        "alpha-1",
        1,
        &[f.control()],
    );
    let acc = accept(&f.trust, &NothingHeld, &bytes, NOW).expect("accepted");
    assert_eq!(acc.novelty, Novelty::New);
    assert_eq!(acc.signers, vec!["control-1".to_owned()]);
    assert!(acc.roles_met.contains(&Role::Control));
    assert_eq!(acc.envelope.encode(), bytes, "carried byte-for-byte");
}

#[test]
fn malformed_garbage_and_truncation() {
    let f = Fixture::new();
    let bytes = signed(&service_spec(), "control-api", 1, &[f.control()]);
    for bad in [&b"not an envelope"[..], &bytes[..bytes.len() - 1], &[]] {
        let r = accept(&f.trust, &NothingHeld, bad, NOW).expect_err("rejected");
        assert!(matches!(r, Rejection::Malformed(_)), "{r}");
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    let r = accept(&f.trust, &NothingHeld, &trailing, NOW).expect_err("rejected");
    assert!(r.to_string().contains("trailing"), "{r}");
}

#[test]
fn malformed_non_canonical_payload() {
    let f = Fixture::new();
    let mut rec = record(&service_spec(), "control-api", 1);
    // Same meaning, different bytes: must not be a second valid encoding.
    rec.payload = br#"{"service":"control-api","providers":["alpha-1"]}"#.to_vec();
    let bytes = Envelope::sign(rec, &[f.control()]).encode();
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert!(r.to_string().contains("canonical"), "{r}");
}

#[test]
fn malformed_unknown_payload_field() {
    let f = Fixture::new();
    let mut rec = record(&service_spec(), "control-api", 1);
    rec.payload = br#"{"bogus":1,"providers":["alpha-1"],"service":"control-api"}"#.to_vec();
    let bytes = Envelope::sign(rec, &[f.control()]).encode();
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert!(r.to_string().contains("unknown field `bogus`"), "{r}");
}

#[test]
fn unknown_signer() {
    let f = Fixture::new();
    let stranger = fabric_schemas::keys::generate();
    let bytes = signed(&service_spec(), "control-api", 1, &[&stranger]);
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert_eq!(r.reason(), "unknown_signer", "{r}");
}

#[test]
fn wrong_role_for_kind() {
    let f = Fixture::new();
    // The orchestrator may sign leases, not registry records.
    let bytes = signed(
        &service_spec(),
        "control-api",
        1,
        &[f.key(Role::Orchestrator)],
    );
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert!(
        matches!(
            &r,
            Rejection::WrongRole {
                kind: Kind::ServiceRecord,
                required: Role::Control,
                ..
            }
        ),
        "{r}"
    );
    // And the control key may not sign a lease.
    let lease = Spec::RolloutLease(RolloutLeaseSpec {
        node: "alpha-1".into(),
        intent: "i".into(),
        intent_generation: 1,
        phase: Component::NodeAgent,
        lease_id: "l-1".into(),
        expires_at: "2027-01-01T00:00:00Z".into(),
        recovery_override: false,
    });
    let bytes = signed(&lease, "l-1", 1, &[f.control()]);
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert_eq!(r.reason(), "wrong_role");
}

#[test]
fn bad_signature() {
    let f = Fixture::new();
    let mut bytes = signed(&service_spec(), "control-api", 1, &[f.control()]);
    let last = bytes.len() - 10; // inside the signature
    bytes[last] ^= 0x01;
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert_eq!(
        r,
        Rejection::BadSignature {
            key_id: "control-1".into()
        }
    );
}

#[test]
fn signature_over_another_body_is_bad() {
    let f = Fixture::new();
    let a = Envelope::sign(record(&service_spec(), "control-api", 1), &[f.control()]);
    let mut b = Envelope::sign(record(&service_spec(), "control-api", 2), &[f.control()]);
    b.signatures = a.signatures.clone();
    let r = accept(&f.trust, &NothingHeld, &b.encode(), NOW).expect_err("rejected");
    assert_eq!(r.reason(), "bad_signature");
}

#[test]
fn below_threshold() {
    let f = Fixture::with_control(3, 2);
    let control = f.keys_of(Role::Control);
    let one = signed(&service_spec(), "control-api", 1, &control[..1]);
    let r = accept(&f.trust, &NothingHeld, &one, NOW).expect_err("rejected");
    assert_eq!(
        r,
        Rejection::BelowThreshold {
            role: Role::Control,
            have: 1,
            need: 2
        }
    );
    let two = signed(&service_spec(), "control-api", 1, &control[..2]);
    let acc = accept(&f.trust, &NothingHeld, &two, NOW).expect("threshold met");
    assert_eq!(acc.signers.len(), 2);
}

#[test]
fn the_same_key_twice_does_not_meet_a_threshold() {
    let f = Fixture::with_control(2, 2);
    let k = f.keys_of(Role::Control)[0];
    let bytes = signed(&service_spec(), "control-api", 1, &[k, k]);
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert!(
        matches!(r, Rejection::Malformed(ref m) if m.contains("signed twice")),
        "{r}"
    );
}

#[test]
fn expired() {
    let f = Fixture::new();
    let bytes = signed(&service_spec(), "control-api", 1, &[f.control()]);
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW + 3600).expect_err("rejected");
    assert_eq!(
        r,
        Rejection::Expired {
            expires_at: NOW + 3600,
            now: NOW + 3600
        }
    );
}

#[test]
fn not_yet_valid() {
    let f = Fixture::new();
    let rec = Record::new(
        &service_spec(),
        "control-api",
        1,
        NOW + 600,
        NOW + 3600,
        Scope::any(),
    )
    .expect("record");
    let bytes = Envelope::sign(rec, &[f.control()]).encode();
    let r = accept(&f.trust, &NothingHeld, &bytes, NOW).expect_err("rejected");
    assert_eq!(r.reason(), "not_yet_valid");
    // Within the allowed clock skew it is fine.
    accept(&f.trust, &NothingHeld, &bytes, NOW + 580).expect("within skew");
}

#[test]
fn generation_rollback_and_conflict_and_duplicate() {
    let f = Fixture::new();
    let v2 = signed(&service_spec(), "control-api", 2, &[f.control()]);
    let held = held_from(&v2);
    let v1 = signed(&service_spec(), "control-api", 1, &[f.control()]);
    let r = accept(&f.trust, &held, &v1, NOW).expect_err("rejected");
    assert_eq!(
        r,
        Rejection::GenerationRollback {
            held: 2,
            offered: 1
        }
    );

    let acc = accept(&f.trust, &held, &v2, NOW).expect("same bytes again");
    assert_eq!(acc.novelty, Novelty::Duplicate);

    let other = Spec::ServiceRecord(fabric_schemas::kinds::ServiceRecordSpec {
        service: "control-api".into(),
        providers: vec!["beta-1".into()],
    });
    let fork = signed(&other, "control-api", 2, &[f.control()]);
    let r = accept(&f.trust, &held, &fork, NOW).expect_err("rejected");
    assert_eq!(r.reason(), "conflicting_generation");

    let v3 = signed(&service_spec(), "control-api", 3, &[f.control()]);
    let acc = accept(&f.trust, &held, &v3, NOW).expect("newer");
    assert_eq!(
        acc.novelty,
        Novelty::Replaces {
            previous_generation: 2
        }
    );
}

#[test]
fn scope_wider_than_signer_may_grant() {
    let plan = fabric_schemas::keys::TrustRootPlan::single_keys(NOW + 86_400);
    let (mut spec, keys) = fabric_schemas::keys::generate_trust_root(&plan);
    for k in &mut spec.keys {
        if k.id == "control-1" {
            k.scope = vec!["area:alpha".into()];
        }
    }
    let trust = fabric_schemas::TrustAnchor::from_spec(&spec).expect("valid");
    let control = &keys.iter().find(|k| k.id == "control-1").expect("key").key;
    let node = Spec::FabricNode(node_spec("alpha"));

    let wide = Envelope::sign(record(&node, "alpha-1", 1), &[control]).encode();
    let r = accept(&trust, &NothingHeld, &wide, NOW).expect_err("rejected");
    assert_eq!(
        r,
        Rejection::ScopeTooWide {
            key_id: "control-1".into(),
            term: "*".into()
        }
    );

    let scoped = Scope::new(vec![ScopeTerm::Area("alpha".into())]).expect("scope");
    let rec = Record::new(&node, "alpha-1", 1, NOW, NOW + 60, scoped).expect("record");
    accept(
        &trust,
        &NothingHeld,
        &Envelope::sign(rec, &[control]).encode(),
        NOW,
    )
    .expect("inside the grant");

    // A key scoped to alpha cannot vouch for a node that claims another area.
    let beta_node = Spec::FabricNode(node_spec("beta"));
    let scoped = Scope::new(vec![ScopeTerm::Area("alpha".into())]).expect("scope");
    let rec = Record::new(&beta_node, "beta-1", 1, NOW, NOW + 60, scoped).expect("record");
    let r = accept(
        &trust,
        &NothingHeld,
        &Envelope::sign(rec, &[control]).encode(),
        NOW,
    )
    .expect_err("rejected");
    assert_eq!(r.reason(), "malformed", "{r}");
}

#[test]
fn trust_root_expired() {
    let f = Fixture::new();
    let rec = Record::new(
        &service_spec(),
        "control-api",
        1,
        NOW,
        NOW + 86_400 * 800,
        Scope::any(),
    )
    .expect("record");
    let bytes = Envelope::sign(rec, &[f.control()]).encode();
    let late = f.trust.expires_at + 1;
    let r = accept(&f.trust, &NothingHeld, &bytes, late).expect_err("rejected");
    assert_eq!(r.reason(), "trust_root_expired");
}

#[test]
fn recovery_admin_cosign_is_reported() {
    let f = Fixture::new();
    let lease = Spec::RolloutLease(RolloutLeaseSpec {
        node: "alpha-1".into(),
        intent: "i".into(),
        intent_generation: 1,
        phase: Component::NodeAgent,
        lease_id: "l-1".into(),
        expires_at: "2027-01-01T00:00:00Z".into(),
        recovery_override: true,
    });
    let bytes = signed(
        &lease,
        "l-1",
        1,
        &[f.key(Role::Orchestrator), f.key(Role::RecoveryAdmin)],
    );
    let acc = accept(&f.trust, &NothingHeld, &bytes, NOW).expect("accepted");
    assert!(acc.roles_met.contains(&Role::RecoveryAdmin));
    assert!(acc.roles_met.contains(&Role::Orchestrator));
}

#[test]
fn batch_matches_single_on_a_mixed_set() {
    let f = Fixture::new();
    let stranger = fabric_schemas::keys::generate();
    let good: Vec<Vec<u8>> = (0..20)
        .map(|i| signed(&service_spec(), &format!("svc-{i}"), 1, &[f.control()]))
        .collect();
    let mut inputs = good.clone();
    let mut bad = good[3].clone();
    let at = bad.len() - 5;
    bad[at] ^= 0x80;
    inputs.push(bad);
    inputs.push(signed(&service_spec(), "x", 1, &[&stranger]));
    inputs.push(b"junk".to_vec());
    let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let batch = accept_batch(&f.trust, &NothingHeld, &refs, NOW);
    let single: Vec<_> = refs
        .iter()
        .map(|b| accept(&f.trust, &NothingHeld, b, NOW))
        .collect();
    assert_eq!(batch, single);
    assert_eq!(batch.iter().filter(|r| r.is_ok()).count(), 20);
    // All good: the batch path alone decides.
    let good_refs: Vec<&[u8]> = good.iter().map(Vec::as_slice).collect();
    assert!(accept_batch(&f.trust, &NothingHeld, &good_refs, NOW)
        .iter()
        .all(Result::is_ok));
}

#[test]
fn a_scoped_key_cannot_replace_a_record_outside_its_grant() {
    let plan = fabric_schemas::keys::TrustRootPlan {
        control_keys: 2,
        ..fabric_schemas::keys::TrustRootPlan::single_keys(NOW + 86_400)
    };
    let (mut spec, keys) = fabric_schemas::keys::generate_trust_root(&plan);
    for k in &mut spec.keys {
        if k.id == "control-2" {
            k.scope = vec!["area:eu".into()];
        }
    }
    let trust = fabric_schemas::TrustAnchor::from_spec(&spec).expect("valid");
    let key = |id: &str| &keys.iter().find(|k| k.id == id).expect("key").key;
    // The real node record, fleet-wide, signed by the unscoped control key.
    let us = Spec::FabricNode(node_spec("us"));
    let real = Envelope::sign(record(&us, "us-node-1", 1), &[key("control-1")]).encode();
    let held = held_from(&real);
    // The eu-scoped key renames it into its own area at a higher generation.
    let hijack = Spec::FabricNode(node_spec("eu"));
    let scoped = Scope::new(vec![ScopeTerm::Area("eu".into())]).expect("scope");
    let rec = Record::new(&hijack, "us-node-1", 2, NOW, NOW + 60, scoped.clone()).expect("record");
    let bytes = Envelope::sign(rec, &[key("control-2")]).encode();
    let r = accept(&trust, &held, &bytes, NOW).expect_err("refused");
    assert_eq!(r.reason(), "scope_too_wide", "{r}");
    assert!(r.to_string().contains("record it would replace"), "{r}");
    // A brand-new eu node is within its grant.
    let rec = Record::new(&hijack, "eu-node-9", 1, NOW, NOW + 60, scoped).expect("record");
    accept(
        &trust,
        &NothingHeld,
        &Envelope::sign(rec, &[key("control-2")]).encode(),
        NOW,
    )
    .expect("inside the grant");
}

#[test]
fn fleet_wide_kinds_refuse_a_narrow_scope_and_intents_stay_in_their_areas() {
    let f = Fixture::new();
    let scoped = Scope::new(vec![ScopeTerm::Area("eu".into())]).expect("scope");
    let rec = Record::new(
        &service_spec(),
        "control-api",
        1,
        NOW,
        NOW + 60,
        scoped.clone(),
    )
    .expect("record");
    let r = accept(
        &f.trust,
        &NothingHeld,
        &Envelope::sign(rec, &[f.control()]).encode(),
        NOW,
    )
    .expect_err("refused");
    assert!(r.to_string().contains("fleet-wide"), "{r}");

    let intent = |areas: Vec<String>, all: bool| {
        Spec::UpdateIntent(fabric_schemas::kinds::UpdateIntentSpec {
            component: Component::NodeAgent,
            version: "1".into(),
            artifact: fabric_schemas::kinds::ArtifactSpec {
                sha256: "a".repeat(64),
                size: 1,
                mirrors: vec!["https://example.com/a".into()],
                pieces: None,
            },
            target: fabric_schemas::kinds::TargetSelector {
                all,
                areas,
                ..Default::default()
            },
            policy: "p".into(),
        })
    };
    let sign = |spec: &Spec| {
        let rec = Record::new(spec, "i", 1, NOW, NOW + 60, scoped.clone()).expect("record");
        Envelope::sign(rec, &[f.control()]).encode()
    };
    accept(
        &f.trust,
        &NothingHeld,
        &sign(&intent(vec!["eu".into()], false)),
        NOW,
    )
    .expect("eu only");
    for bad in [
        intent(vec!["eu".into(), "us".into()], false),
        intent(vec![], true),
    ] {
        let r = accept(&f.trust, &NothingHeld, &sign(&bad), NOW).expect_err("refused");
        assert!(
            r.to_string().contains("must target only those areas"),
            "{r}"
        );
    }
}

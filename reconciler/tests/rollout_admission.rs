//! The node-side lease check, end to end: the planner's lease is signed with
//! real role keys, accepted with `fabric_schemas::accept`, and admitted (or
//! refused) by `check_lease_admission` with the roles `accept` reports.

use std::collections::BTreeSet;

use fabric_reconciler::rollout::{
    build_lease, check_lease_admission, lease_record_name, AdmissionContext, HeldIntent,
    LeaseParams, LeaseRefusal,
};
use fabric_schemas::accept::NothingHeld;
use fabric_schemas::keys::{generate_trust_root, RoleKey, TrustRootPlan};
use fabric_schemas::kinds::{Component, RolloutLeaseSpec, Spec};
use fabric_schemas::scope::ScopeTerm;
use fabric_schemas::{accept, Envelope, Record, Role, Scope, TrustAnchor};

const NOW: i64 = 1_800_000_000;
const INTENT: &str = "node-agent-0-2-0";

struct Keys {
    trust: TrustAnchor,
    keys: Vec<RoleKey>,
}

impl Keys {
    fn new() -> Keys {
        let (spec, keys) = generate_trust_root(&TrustRootPlan::single_keys(NOW + 86_400));
        let trust = TrustAnchor::from_spec(&spec).expect("valid trust root");
        Keys { trust, keys }
    }

    /// Signs `lease` with the keys of `roles`, accepts it, returns `roles_met`.
    fn accept(&self, lease: &RolloutLeaseSpec, roles: &[Role]) -> BTreeSet<Role> {
        let record = Record::new(
            &Spec::RolloutLease(lease.clone()),
            &lease_record_name(&lease.node, lease.phase),
            1,
            NOW - 5,
            NOW + 900,
            Scope::new(vec![ScopeTerm::Node(lease.node.clone())]).expect("non-empty"),
        )
        .expect("record");
        let signers: Vec<_> = self
            .keys
            .iter()
            .filter(|k| roles.contains(&k.role))
            .map(|k| &k.key)
            .collect();
        let bytes = Envelope::sign(record, &signers).encode();
        accept(&self.trust, &NothingHeld, &bytes, NOW)
            .expect("accepted")
            .roles_met
    }
}

fn lease(node: &str, recovery_override: bool) -> RolloutLeaseSpec {
    build_lease(&LeaseParams {
        intent: INTENT,
        generation: 4,
        node,
        phase: Component::NodeAgent,
        attempt: 1,
        now: NOW,
        ttl_secs: 900,
        recovery_override,
    })
}

fn ctx<'a>(roles: &'a BTreeSet<Role>, leased: u32) -> AdmissionContext<'a> {
    AdmissionContext {
        node: "alpha-1",
        held_intent: Some(HeldIntent {
            name: INTENT,
            generation: 4,
            component: Component::NodeAgent,
        }),
        roles_met: roles,
        now: NOW,
        fleet_size: 12,
        concurrently_leased: leased,
    }
}

#[test]
fn ordinary_orchestrator_lease_is_admitted() {
    let k = Keys::new();
    let l = lease("alpha-1", false);
    let roles = k.accept(&l, &[Role::Orchestrator]);
    assert_eq!(check_lease_admission(&l, &ctx(&roles, 2)), Ok(()));
}

#[test]
fn farm_wide_lease_without_override_is_refused_by_the_node() {
    let k = Keys::new();
    let l = lease("alpha-1", false);
    let roles = k.accept(&l, &[Role::Orchestrator]);
    let err = check_lease_admission(&l, &ctx(&roles, 12)).expect_err("farm-wide");
    assert!(matches!(
        err,
        LeaseRefusal::FarmWideStart {
            leased: 12,
            fleet_size: 12,
            ..
        }
    ));
    assert_eq!(err.reason(), "farm_wide_start");
}

#[test]
fn override_lease_without_recovery_admin_signature_is_refused() {
    let k = Keys::new();
    let l = lease("alpha-1", true);
    let roles = k.accept(&l, &[Role::Orchestrator]);
    assert!(!roles.contains(&Role::RecoveryAdmin));
    let err = check_lease_admission(&l, &ctx(&roles, 12)).expect_err("no recovery-admin");
    assert!(
        matches!(err, LeaseRefusal::OverrideWithoutRecoveryAdmin { .. }),
        "{err}"
    );
}

#[test]
fn farm_wide_override_lease_with_recovery_admin_signature_is_admitted() {
    let k = Keys::new();
    let l = lease("alpha-1", true);
    let roles = k.accept(&l, &[Role::Orchestrator, Role::RecoveryAdmin]);
    assert!(roles.contains(&Role::RecoveryAdmin));
    assert_eq!(check_lease_admission(&l, &ctx(&roles, 12)), Ok(()));
}

#[test]
fn expired_lease_is_refused() {
    let roles = BTreeSet::from([Role::Orchestrator]);
    let l = lease("alpha-1", false);
    let mut c = ctx(&roles, 1);
    c.now = NOW + 900;
    assert!(matches!(
        check_lease_admission(&l, &c),
        Err(LeaseRefusal::Expired { .. })
    ));
}

#[test]
fn lease_for_another_node_is_refused() {
    let roles = BTreeSet::from([Role::Orchestrator]);
    let l = lease("beta-1", false);
    assert!(matches!(
        check_lease_admission(&l, &ctx(&roles, 1)),
        Err(LeaseRefusal::WrongNode { .. })
    ));
}

#[test]
fn lease_for_an_intent_generation_the_node_does_not_hold_is_refused() {
    let roles = BTreeSet::from([Role::Orchestrator]);
    let mut l = lease("alpha-1", false);
    l.intent_generation = 5;
    let err = check_lease_admission(&l, &ctx(&roles, 1)).expect_err("generation");
    assert!(
        matches!(err, LeaseRefusal::IntentMismatch { generation: 5, .. }),
        "{err}"
    );
    let mut c = ctx(&roles, 1);
    c.held_intent = None;
    assert!(check_lease_admission(&lease("alpha-1", false), &c).is_err());
}

#[test]
fn lease_without_orchestrator_role_is_refused() {
    let roles = BTreeSet::from([Role::Control]);
    assert!(matches!(
        check_lease_admission(&lease("alpha-1", false), &ctx(&roles, 1)),
        Err(LeaseRefusal::NotOrchestratorSigned { .. })
    ));
}

//! Test fixtures: a trust root with fresh keys, generated at test time.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use fabric_schemas::keys::{generate_trust_root, RoleKey, TrustRootPlan};
use fabric_schemas::kinds::{FabricNodeSpec, ServiceRecordSpec, Spec};
use fabric_schemas::trust::Role;
use fabric_schemas::{Envelope, Record, Scope, TrustAnchor};

pub(crate) const NOW: i64 = 1_800_000_000;

pub(crate) struct Fixture {
    pub trust: TrustAnchor,
    pub keys: Vec<RoleKey>,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Self::with_control(1, 1)
    }

    pub(crate) fn with_control(keys: u32, threshold: u32) -> Self {
        let plan = TrustRootPlan {
            control_keys: keys,
            control_threshold: threshold,
            ..TrustRootPlan::single_keys(NOW + 86_400 * 365)
        };
        let (spec, keys) = generate_trust_root(&plan);
        let trust = TrustAnchor::from_spec(&spec).expect("fixture trust root is valid");
        Fixture { trust, keys }
    }

    pub(crate) fn key(&self, role: Role) -> &SigningKey {
        &self
            .keys
            .iter()
            .find(|k| k.role == role)
            .expect("fixture has every role")
            .key
    }

    pub(crate) fn keys_of(&self, role: Role) -> Vec<&SigningKey> {
        self.keys
            .iter()
            .filter(|k| k.role == role)
            .map(|k| &k.key)
            .collect()
    }

    pub(crate) fn control(&self) -> &SigningKey {
        self.key(Role::Control)
    }
}

pub(crate) fn node_spec(area: &str) -> FabricNodeSpec {
    FabricNodeSpec {
        area: area.into(),
        site_id: format!("{area}-site-1"),
        locality_group: format!("{area}-lan-1"),
        nat_group: format!("{area}-nat-1"),
        node_id: None,
        roles: vec![],
        endpoints: vec![],
        critical: false,
        resilience_target: None,
    }
}

pub(crate) fn service_spec() -> Spec {
    Spec::ServiceRecord(ServiceRecordSpec {
        service: "control-api".into(),
        providers: vec!["alpha-1".into()],
    })
}

pub(crate) fn record(spec: &Spec, name: &str, generation: u64) -> Record {
    Record::new(spec, name, generation, NOW - 10, NOW + 3600, Scope::any()).expect("valid record")
}

pub(crate) fn signed(spec: &Spec, name: &str, generation: u64, keys: &[&SigningKey]) -> Vec<u8> {
    Envelope::sign(record(spec, name, generation), keys).encode()
}

//! A world for the orchestrator tests: a store (embedded or PostgreSQL), the
//! trust root and role keys, and builders for nodes, policies, intents and
//! heartbeats. PostgreSQL worlds read `FABRIC_PG_URL`: unset, they fail under
//! `CI=true` and skip loudly elsewhere (the store conformance suite's rule).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use fabric_reconciler::orchestrator::{
    LeaseBody, Orchestrator, OrchestratorConfig, OrchestratorKeys, TickReport,
};
use fabric_reconciler::rollout::{
    check_lease_admission, AdmissionContext, HeldIntent, LeaseRefusal,
};
use fabric_reconciler::store::{
    EmbeddedStore, PostgresConfig, PostgresStore, PutObject, Store, PG_URL_ENV,
};
use fabric_schemas::keys::{generate_trust_root, TrustRootPlan};
use fabric_schemas::kinds::{Component, Kind, RolloutLeaseSpec};
use fabric_schemas::{accept, Accepted, Role, Spec, TrustAnchor};
use serde_json::{json, Value};

pub(crate) const OLD: &str = "0.1.0";
pub(crate) const NEW: &str = "0.2.0";
pub(crate) const T0: i64 = 1_798_761_600;
pub(crate) const INTENT: &str = "node-agent-0-2-0";
pub(crate) const POLICY: &str = "careful";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Postgres,
}

pub struct World {
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
    pg: Option<PostgresConfig>,
    store: Option<Arc<dyn Store>>,
    pub trust: TrustAnchor,
    pub orchestrator_key: SigningKey,
    pub recovery_admin_key: SigningKey,
}

impl World {
    /// `None`: PostgreSQL is not configured and this is not CI.
    pub async fn new(backend: Backend, test: &str) -> Option<World> {
        let (spec, keys) = generate_trust_root(&TrustRootPlan::single_keys(T0 + 10 * 365 * 86_400));
        let trust = TrustAnchor::from_spec(&spec).expect("generated trust root is valid");
        let key = |role: Role| {
            keys.iter()
                .find(|k| k.role == role)
                .map(|k| k.key.clone())
                .expect("role key generated")
        };
        let mut w = World {
            backend,
            _dir: None,
            path: PathBuf::new(),
            pg: None,
            store: None,
            trust,
            orchestrator_key: key(Role::Orchestrator),
            recovery_admin_key: key(Role::RecoveryAdmin),
        };
        match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("temp dir");
                w.path = dir.path().join("store.redb");
                w._dir = Some(dir);
            }
            Backend::Postgres => {
                let config = pg_config(test)?;
                PostgresStore::drop_schema(&config)
                    .await
                    .expect("drop the test schema");
                w.pg = Some(config);
            }
        }
        w.reopen().await;
        Some(w)
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("store is open")
    }

    /// Closes the store and opens it again (a reconciler restart).
    pub async fn reopen(&mut self) {
        self.store = None;
        self.store = Some(match self.backend {
            Backend::Embedded => Arc::new(
                EmbeddedStore::open(&self.path)
                    .await
                    .expect("open embedded store"),
            ),
            Backend::Postgres => Arc::new(
                PostgresStore::connect(self.pg.clone().expect("pg config"))
                    .await
                    .expect("connect to postgres"),
            ),
        });
    }

    /// A fresh driver instance (nothing carried over from an earlier one).
    pub fn orchestrator(&self, recovery_admin: bool, config: OrchestratorConfig) -> Orchestrator {
        Orchestrator::new(
            OrchestratorKeys {
                orchestrator: self.orchestrator_key.clone(),
                recovery_admin: recovery_admin.then(|| self.recovery_admin_key.clone()),
            },
            config,
        )
    }

    pub async fn node(&self, name: &str, area: &str, roles: &[&str]) {
        let spec = json!({
            "area": area,
            "siteId": format!("{area}-site"),
            "localityGroup": format!("{area}-site"),
            "natGroup": format!("{area}-nat"),
            "roles": roles,
        });
        self.store()
            .put_object(PutObject::new(Kind::FabricNode, name, spec))
            .await
            .expect("put node");
    }

    /// `n` plain nodes per area, `<area>-<i>`.
    pub async fn nodes(&self, areas: &[&str], n: usize) -> Vec<String> {
        let mut names = Vec::new();
        for area in areas {
            for i in 1..=n {
                let name = format!("{area}-{i}");
                self.node(&name, area, &[]).await;
                names.push(name);
            }
        }
        names
    }

    pub async fn policy(&self, spec: Value) {
        self.store()
            .put_object(PutObject::new(Kind::RolloutPolicy, POLICY, spec))
            .await
            .expect("put policy");
    }

    pub async fn intent(&self, name: &str, component: Component, version: &str) {
        let spec = json!({
            "component": component.as_str(),
            "version": version,
            "artifact": {"sha256": "00".repeat(32), "size": 1, "mirrors": ["fabric://update-cache/x"]},
            "target": {"all": true},
            "policy": POLICY,
        });
        self.store()
            .put_object(PutObject::new(Kind::UpdateIntent, name, spec))
            .await
            .expect("put intent");
    }

    /// A heartbeat received at `now` (Unix seconds).
    pub async fn heartbeat(&self, node: &str, body: Value, now: i64) {
        self.store()
            .record_heartbeat(node, body, now * 1000)
            .await
            .expect("record heartbeat");
    }

    /// Every node healthy on `version` of the node-agent, at `now`.
    pub async fn all_report(&self, nodes: &[String], now: i64) {
        for n in nodes {
            self.heartbeat(n, hb(OLD), now).await;
        }
    }

    /// Lease rows of one rollout: (node, lease id, body).
    pub async fn leases(&self, rollout: &str) -> Vec<(String, String, LeaseBody)> {
        self.store()
            .list_leases(Some(rollout))
            .await
            .expect("list leases")
            .into_iter()
            .map(|l| {
                let body: LeaseBody = serde_json::from_value(l.body).expect("lease body");
                (l.node, l.id, body)
            })
            .collect()
    }

    pub async fn leased_nodes(&self, rollout: &str) -> BTreeSet<String> {
        self.leases(rollout)
            .await
            .into_iter()
            .map(|l| l.0)
            .collect()
    }

    /// The intent's status as stored.
    pub async fn intent_status(&self, name: &str) -> Value {
        self.store()
            .get_object(Kind::UpdateIntent, name)
            .await
            .expect("get intent")
            .expect("intent exists")
            .status
            .unwrap_or(Value::Null)
    }

    /// Verifies an envelope as a node would, returning what `accept` says.
    pub fn accept(&self, envelope: &[u8], now: i64) -> Accepted {
        accept(
            &self.trust,
            &fabric_schemas::accept::NothingHeld,
            envelope,
            now,
        )
        .expect("driver-signed lease is accepted")
    }

    /// A node's lease admission of an envelope the driver signed.
    pub fn admit(
        &self,
        envelope: &[u8],
        now: i64,
        fleet_size: u32,
        concurrently_leased: u32,
    ) -> Result<RolloutLeaseSpec, LeaseRefusal> {
        let accepted = self.accept(envelope, now);
        let Spec::RolloutLease(spec) = accepted.spec else {
            panic!("not a lease record");
        };
        let ctx = AdmissionContext {
            node: &spec.node,
            held_intent: Some(HeldIntent {
                name: &spec.intent,
                generation: spec.intent_generation,
                component: spec.phase,
            }),
            roles_met: &accepted.roles_met,
            now,
            fleet_size,
            concurrently_leased,
        };
        check_lease_admission(&spec, &ctx).map(|()| spec.clone())
    }
}

/// A healthy node-agent heartbeat, as the intake stores it.
pub(crate) fn hb(node_agent: &str) -> Value {
    fabric_testkit::heartbeat_json("n", node_agent, Some(OLD))
}

/// A heartbeat with an update report.
pub(crate) fn hb_report(node_agent: &str, lease_id: &str, state: &str) -> Value {
    let mut v = hb(node_agent);
    v["updater"]["update"] = json!({"intent": INTENT, "generation": 1, "phase": "node-agent",
                                    "lease_id": lease_id, "state": state});
    v
}

/// A compat node's heartbeat: no lease support.
pub(crate) fn hb_compat(node_agent: &str) -> Value {
    let mut v = fabric_testkit::heartbeat_json("n", node_agent, None);
    v["lease_support"] = json!(false);
    v
}

pub(crate) fn rolling(max_parallel: u32, max_unavailable: u32) -> Value {
    json!({
        "strategy": "rolling",
        "maxParallel": max_parallel,
        "maxUnavailable": max_unavailable,
        "failureRateStopPercent": 50,
    })
}

/// Condition types in a stored intent status.
pub(crate) fn condition_types(status: &Value) -> Vec<String> {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("type").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn granted_nodes(report: &TickReport, intent: &str) -> BTreeSet<String> {
    report
        .rollout(intent)
        .map(|r| r.granted.iter().map(|g| g.node.clone()).collect())
        .unwrap_or_default()
}

fn pg_config(test: &str) -> Option<PostgresConfig> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.is_empty() => {
            // PostgreSQL identifiers stop at 63 bytes.
            let mut schema = format!("fabric_t_orch_{test}");
            schema.truncate(63);
            Some(PostgresConfig::new(url).with_schema(schema))
        }
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{PG_URL_ENV} is not set but CI=true: PostgreSQL orchestrator tests must run in \
                 CI. Run `export {PG_URL_ENV}=\"$(.ci/postgres.sh | tail -n 1)\"` first."
            );
            // Past libtest's capture: a skip must be visible in a normal run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!! SKIPPED postgres::{test}: {PG_URL_ENV} is not set. \
                 Run `export {PG_URL_ENV}=\"$(.ci/postgres.sh | tail -n 1)\"` to test the \
                 orchestrator on PostgreSQL. !!!!\n"
            );
            None
        }
    }
}

pub(crate) fn phase_of(component: Component) -> &'static str {
    component.as_str()
}

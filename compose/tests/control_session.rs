//! The control-session driver against a real Control API on loopback: a
//! legacy node heartbeats on the compat overlap listener (and shows in
//! `compat_control_dependency_nodes`), its config is rewritten to identical
//! bytes, and it still ends up on the canonical fabric endpoint; the audit
//! then reports zero compat dependency and criterion 2 passes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric::edge::{EdgeInventory, ReportedRole};
use fabric::identity::NodeIdentity;
use fabric::path::PeerInfo;
use fabric::transport::{Transport, TransportConfig};
use fabric_node_agent::control::{CanonicalSource, ControlDriver, HeartbeatSource};
use fabric_proto::endpoint::ControlEndpoint;
use fabric_proto::heartbeat::HeartbeatBody;
use fabric_reconciler::api::{self, ApiClient, ApiConfig, ApplyOptions, CompatConfig, Token};
use fabric_reconciler::store::{EmbeddedStore, Store};

const TOKEN: &str = "operator-token-0123456789";
const COMPAT_TOKEN: &str = "legacy-node-token-0123456789";

struct Beats {
    node: String,
    node_id: String,
}

impl HeartbeatSource for Beats {
    fn heartbeat(
        &self,
        live: Option<&ControlEndpoint>,
        recovery: &[ControlEndpoint],
    ) -> HeartbeatBody {
        let mut hb = fabric_testkit::heartbeat(&self.node, &self.node_id);
        hb.fabric_control_endpoint = live.map(|e| e.to_string());
        hb.control_recovery_endpoints = recovery.iter().map(|e| e.to_string()).collect();
        hb
    }
}

/// Canonical endpoints the test controls (the signed directory in production).
struct Canon(Mutex<Vec<ControlEndpoint>>);

impl CanonicalSource for Canon {
    fn canonical(&self) -> Vec<ControlEndpoint> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn test_transport() -> TransportConfig {
    let mut tc = TransportConfig::new("127.0.0.1:0".parse().expect("addr"));
    tc.connect_timeout = Duration::from_secs(2);
    tc
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("bounded wait")
}

#[tokio::test]
async fn compat_node_converges_to_the_canonical_fabric_endpoint_after_a_noop_config_rewrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("store"),
    );

    // The control plane: HTTP ingress, compat overlap (port from config, here
    // an ephemeral one) and the `control` fabric service.
    let ctl_identity = NodeIdentity::generate();
    let ctl = Transport::bind(&ctl_identity, test_transport())
        .await
        .expect("control transport");
    let inventory = EdgeInventory::new();
    let mut cfg = ApiConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Token::new(TOKEN).expect("token"),
    );
    cfg.compat = Some(CompatConfig {
        bind: "127.0.0.1:0".parse().expect("addr"),
        token: Some(Token::new(COMPAT_TOKEN).expect("token")),
    });
    let handle = api::serve(store.clone(), inventory.clone(), cfg, Some(ctl.clone()))
        .await
        .expect("serve");
    let compat_addr = handle.compat_addr().expect("compat listener");
    let roles: Vec<_> = inventory.entries().into_iter().map(|e| e.role).collect();
    assert!(roles.contains(&ReportedRole::CompatOverlap));
    assert!(roles.contains(&ReportedRole::ControlApiIngress));

    // The legacy node.
    let node_identity = NodeIdentity::generate();
    let node = Transport::bind(&node_identity, test_transport())
        .await
        .expect("node transport");
    node.set_peer(
        ctl.node_id(),
        PeerInfo::public(ctl.local_addr().expect("addr")),
    );

    let operator =
        ApiClient::new(&format!("http://{}", handle.addr()), Some(TOKEN.into())).expect("client");
    let manifests = format!(
        r#"apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata: {{name: ctl}}
spec: {{area: a, siteId: s, localityGroup: l, natGroup: n, nodeId: "{}", roles: [control-api]}}
---
apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata: {{name: legacy}}
spec: {{area: b, siteId: s2, localityGroup: l2, natGroup: n2, nodeId: "{}"}}
---
apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata: {{name: control-api}}
spec: {{service: control-api, providers: [ctl]}}
"#,
        ctl.node_id(),
        node.node_id()
    );
    within(operator.apply_text(&manifests, ApplyOptions::default()))
        .await
        .expect("apply");

    // The node's config names the compat URL; its live session is there.
    let compat_url = format!("http://{compat_addr}/api/v1");
    let config_path = dir.path().join("control.json");
    let config_bytes =
        format!(r#"{{"fallback_endpoints":["{compat_url}"],"compat_token":"{COMPAT_TOKEN}"}}"#);
    std::fs::write(&config_path, &config_bytes).expect("write config");
    let canon = Arc::new(Canon(Mutex::new(Vec::new())));
    let mut driver = ControlDriver::new(
        node.clone(),
        config_path.clone(),
        canon.clone(),
        Arc::new(Beats {
            node: "legacy".into(),
            node_id: node.node_id().to_string(),
        }),
    )
    .with_request_timeout(Duration::from_secs(5));
    let compat_ep: ControlEndpoint = compat_url.parse().expect("endpoint");
    driver.assume_live(compat_ep.clone());

    // Registry not resolved yet: the driver keeps the compat session.
    let st = within(driver.tick()).await;
    assert_eq!(st.endpoint.as_ref(), Some(&compat_ep), "{st:?}");
    assert_eq!(st.heartbeats_ok, 1, "{st:?}");
    let canonical = ControlEndpoint::fabric(ctl.node_id());
    // A plain-HTTP compat reply is unauthenticated: it must not steer the session.
    assert!(st.advertised_endpoints.is_empty(), "{st:?}");
    let audit = within(operator.audit(None)).await.expect("audit");
    assert_eq!(audit.compat_control_dependency_nodes, vec!["legacy"]);
    let c2 = audit
        .acceptance_criteria
        .iter()
        .find(|c| c.id == 2)
        .expect("criterion 2");
    assert!(!c2.passed);
    assert_eq!(c2.failing_nodes, vec!["legacy"]);
    assert!(audit.bridge_hold_required);

    // The signed directory now resolves control-api, and the control-endpoint
    // rewrite writes the very same bytes: nothing "changed" on disk.
    *canon.0.lock().expect("lock") = vec![canonical.clone()];
    std::fs::write(&config_path, &config_bytes).expect("rewrite config");
    assert_eq!(
        std::fs::read(&config_path).expect("read"),
        config_bytes.as_bytes()
    );

    let st = within(driver.tick()).await;
    assert_eq!(st.endpoint.as_ref(), Some(&canonical), "{st:?}");
    assert_eq!(st.reconnects, 1);
    assert_eq!(st.heartbeats_ok, 2, "{st:?}");
    assert!(st
        .last_action
        .as_deref()
        .is_some_and(|a| a.starts_with("Reconnect")));

    // Level-triggered and stable: further ticks keep the fabric session.
    let st = within(driver.tick()).await;
    assert_eq!(st.last_action.as_deref(), Some("Keep"));
    assert_eq!(st.heartbeats_ok, 3);

    let audit = within(operator.audit(None)).await.expect("audit");
    assert!(
        audit.compat_control_dependency_nodes.is_empty(),
        "{audit:?}"
    );
    let c2 = audit
        .acceptance_criteria
        .iter()
        .find(|c| c.id == 2)
        .expect("criterion 2");
    assert!(c2.passed, "{c2:?}");
    let legacy = audit
        .nodes
        .iter()
        .find(|n| n.node == "legacy")
        .expect("row");
    assert_eq!(legacy.control_contract, "fabric");
    assert_eq!(legacy.received_via.as_deref(), Some("fabric"));
    // Its recovery path still names the compat URL: the P4.3 gate stays shut.
    assert!(!audit.fabric_only_recovery_gate.open);
    assert_eq!(
        audit.fabric_only_recovery_gate.recovery_compat_nodes,
        vec!["legacy"]
    );

    handle.stop().await;
    node.shutdown().await;
    ctl.shutdown().await;
}

#[tokio::test]
async fn a_heartbeat_claiming_another_nodes_key_on_the_control_channel_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("store"),
    );
    let ctl = Transport::bind(&NodeIdentity::generate(), test_transport())
        .await
        .expect("transport");
    let handle = api::serve(
        store.clone(),
        EdgeInventory::new(),
        ApiConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            Token::new(TOKEN).expect("token"),
        ),
        Some(ctl.clone()),
    )
    .await
    .expect("serve");
    let node = Transport::bind(&NodeIdentity::generate(), test_transport())
        .await
        .expect("transport");
    node.set_peer(
        ctl.node_id(),
        PeerInfo::public(ctl.local_addr().expect("addr")),
    );
    let config_path = dir.path().join("control.json");
    std::fs::write(&config_path, "{}").expect("config");
    let canonical = ControlEndpoint::fabric(ctl.node_id());
    let c2 = canonical.clone();
    let mut driver = ControlDriver::new(
        node.clone(),
        config_path,
        Arc::new(move || vec![c2.clone()]),
        Arc::new(Beats {
            node: "impostor".into(),
            node_id: "ab".repeat(32),
        }),
    );
    let st = within(driver.tick()).await;
    assert_eq!(st.heartbeats_ok, 0);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("may only report itself")),
        "{st:?}"
    );
    assert!(store.list_heartbeats().await.expect("list").is_empty());
    handle.stop().await;
    node.shutdown().await;
    ctl.shutdown().await;
}

//! The Control API over real HTTP on loopback with the embedded store:
//! apply, generation, validation, auth, get, dry run, prune.

use std::sync::Arc;
use std::time::Duration;

use fabric::edge::{EdgeInventory, ReportedRole};
use fabric_reconciler::api::{self, ApiClient, ApiConfig, ApplyAction, ApplyOptions, Token};
use fabric_reconciler::store::{EmbeddedStore, Store};
use fabric_schemas::kinds::Kind;

const TOKEN: &str = "operator-token-0123456789";

const NODES: &str = r#"
apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: n1
spec:
  area: alpha
  siteId: s1
  localityGroup: l1
  natGroup: nat1
  roles: [control-api]
---
apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: n2
spec:
  area: beta
  siteId: s2
  localityGroup: l2
  natGroup: nat2
---
apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: control-api
spec:
  service: control-api
  providers: [n1]
"#;

struct Api {
    store: Arc<dyn Store>,
    handle: api::ApiHandle,
    inventory: EdgeInventory,
    _dir: tempfile::TempDir,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("open store"),
    );
    let inventory = EdgeInventory::new();
    let cfg = ApiConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        Token::new(TOKEN).expect("token"),
    );
    let handle = api::serve(store.clone(), inventory.clone(), cfg, None)
        .await
        .expect("serve");
    Api {
        store,
        handle,
        inventory,
        _dir: dir,
    }
}

fn client(api: &Api, token: Option<&str>) -> ApiClient {
    ApiClient::new(
        &format!("http://{}", api.handle.addr()),
        token.map(str::to_owned),
    )
    .expect("client")
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("bounded wait")
}

#[tokio::test]
async fn apply_stores_objects_and_the_same_apply_again_changes_nothing() {
    let api = start().await;
    let c = client(&api, Some(TOKEN));
    let r = within(c.apply_text(NODES, ApplyOptions::default()))
        .await
        .expect("apply");
    assert_eq!(r.items.len(), 3);
    assert!(r.items.iter().all(|i| i.action == ApplyAction::Created));
    assert!(r.items.iter().all(|i| i.generation == Some(1)));
    let stored = api
        .store
        .list_objects(Kind::FabricNode)
        .await
        .expect("list");
    assert_eq!(stored.len(), 2);
    let events_before = api.store.list_events(0, 100).await.expect("events").len();

    let again = within(c.apply_text(NODES, ApplyOptions::default()))
        .await
        .expect("apply again");
    assert!(again.unchanged(), "{again:?}");
    let after = api
        .store
        .list_objects(Kind::FabricNode)
        .await
        .expect("list");
    assert_eq!(stored, after, "identical apply rewrote nothing");
    assert_eq!(
        api.store.list_events(0, 100).await.expect("events").len(),
        events_before,
        "no event for a no-op apply"
    );
    // The API's listener is in the inventory with its role.
    let roles: Vec<_> = api
        .inventory
        .entries()
        .into_iter()
        .map(|e| e.role)
        .collect();
    assert_eq!(roles, vec![ReportedRole::ControlApiIngress]);
    api.handle.stop().await;
}

#[tokio::test]
async fn editing_a_spec_field_advances_generation_and_nothing_else_moves() {
    let api = start().await;
    let c = client(&api, Some(TOKEN));
    within(c.apply_text(NODES, ApplyOptions::default()))
        .await
        .expect("apply");
    let edited = NODES.replacen("siteId: s2", "siteId: s9", 1);
    let r = within(c.apply_text(&edited, ApplyOptions::default()))
        .await
        .expect("apply edit");
    let n2 = r.items.iter().find(|i| i.name == "n2").expect("n2");
    assert_eq!(
        (n2.action, n2.generation),
        (ApplyAction::Configured, Some(2))
    );
    let n1 = r.items.iter().find(|i| i.name == "n1").expect("n1");
    assert_eq!(
        (n1.action, n1.generation),
        (ApplyAction::Unchanged, Some(1))
    );
    let got = within(c.get("FabricNode", "n2")).await.expect("get");
    assert_eq!(got.generation(), 2);
    assert_eq!(got.spec["siteId"], "s9");
    api.handle.stop().await;
}

#[tokio::test]
async fn malformed_apply_is_refused_with_file_and_field_errors_and_changes_nothing() {
    let api = start().await;
    let c = client(&api, Some(TOKEN));
    within(c.apply_text(NODES, ApplyOptions::default()))
        .await
        .expect("apply");
    let before = api
        .store
        .list_objects(Kind::FabricNode)
        .await
        .expect("list");

    // One good edit, one unknown field, one dangling reference: all refused.
    let bad = format!(
        "{}---\n{}",
        NODES.replacen("siteId: s2", "siteId: s9", 1),
        r#"apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: update-store
spec:
  service: update-store
  providers: [ghost]
  bogus: 1
"#
    );
    let files = vec![api::ManifestFile {
        name: "prod/bad.yaml".into(),
        text: bad,
    }];
    let e = within(c.apply(files, ApplyOptions::default()))
        .await
        .expect_err("refused");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422));
    let fabric_reconciler::api::ClientError::Status { errors, .. } = &e else {
        panic!("expected a status error, got {e}");
    };
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|m| m.file == "prod/bad.yaml"),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|m| m.field.contains("bogus") || m.message.contains("bogus")),
        "unknown field named: {errors:?}"
    );
    assert_eq!(
        api.store
            .list_objects(Kind::FabricNode)
            .await
            .expect("list"),
        before,
        "the good edit in the same request was not applied either"
    );
    assert!(api
        .store
        .get_object(Kind::ServiceRecord, "update-store")
        .await
        .expect("get")
        .is_none());

    // A reference to a stored object is fine; to a missing one is not.
    let dangling = r#"apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: update-cache
spec:
  service: update-cache
  providers: [n2, nobody]
"#;
    let e = within(c.apply_text(dangling, ApplyOptions::default()))
        .await
        .expect_err("dangling provider");
    let fabric_reconciler::api::ClientError::Status { errors, .. } = &e else {
        panic!("expected a status error, got {e}");
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.providers[1]");
    api.handle.stop().await;
}

#[tokio::test]
async fn anonymous_and_wrong_token_writes_are_refused_and_change_nothing() {
    let api = start().await;
    for token in [None, Some("not-the-operator-token-at-all")] {
        let c = client(&api, token);
        let e = within(c.apply_text(NODES, ApplyOptions::default()))
            .await
            .expect_err("refused");
        assert_eq!(e.status().map(|s| s.as_u16()), Some(401), "{e}");
        let e = within(c.list("FabricNode"))
            .await
            .expect_err("reads need a token too");
        assert_eq!(e.status().map(|s| s.as_u16()), Some(401));
    }
    assert!(api
        .store
        .list_objects(Kind::FabricNode)
        .await
        .expect("list")
        .is_empty());
    assert!(api
        .store
        .list_events(0, 10)
        .await
        .expect("events")
        .is_empty());
    api.handle.stop().await;
}

#[tokio::test]
async fn get_round_trips_what_apply_stored() {
    let api = start().await;
    let c = client(&api, Some(TOKEN));
    within(c.apply_text(NODES, ApplyOptions::default()))
        .await
        .expect("apply");
    for kind in ["FabricNode", "fabricnodes", "fnode"] {
        let list = within(c.list(kind)).await.expect("list");
        let names: Vec<_> = list.iter().map(|o| o.name().to_owned()).collect();
        assert_eq!(names, vec!["n1", "n2"], "kind spelled {kind}");
    }
    let svc = within(c.get("ServiceRecord", "control-api"))
        .await
        .expect("get");
    assert_eq!(svc.spec["providers"][0], "n1");
    let direct = api
        .store
        .get_object(Kind::ServiceRecord, "control-api")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(svc, direct);
    let e = within(c.get("FabricNode", "nope")).await.expect_err("404");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    let e = within(c.list("Gadget")).await.expect_err("unknown kind");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(404));
    api.handle.stop().await;
}

#[tokio::test]
async fn dry_run_writes_nothing_and_prune_deletes_only_listed_kinds() {
    let api = start().await;
    let c = client(&api, Some(TOKEN));
    let dry = within(c.apply_text(
        NODES,
        ApplyOptions {
            dry_run: true,
            prune: false,
        },
    ))
    .await
    .expect("dry run");
    assert!(dry.dry_run);
    assert!(dry.items.iter().all(|i| i.action == ApplyAction::Created));
    assert!(api
        .store
        .list_objects(Kind::FabricNode)
        .await
        .expect("list")
        .is_empty());

    within(c.apply_text(NODES, ApplyOptions::default()))
        .await
        .expect("apply");
    // Only n2 (and no ServiceRecord in the request): prune removes n1 only if
    // nothing refers to it; the control-api record still does, so refuse.
    let only_n2 = NODES.split("---").nth(1).expect("second doc").to_owned();
    let e = within(c.apply_text(
        &only_n2,
        ApplyOptions {
            dry_run: false,
            prune: true,
        },
    ))
    .await
    .expect_err("prune would leave a dangling provider");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(422));

    let no_svc_ref = format!(
        "{only_n2}---\n{}",
        r#"apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: control-api
spec:
  service: control-api
  providers: [n2]
"#
    );
    let r = within(c.apply_text(
        &no_svc_ref,
        ApplyOptions {
            dry_run: false,
            prune: true,
        },
    ))
    .await
    .expect("prune");
    let pruned: Vec<_> = r
        .items
        .iter()
        .filter(|i| i.action == ApplyAction::Pruned)
        .map(|i| i.name.clone())
        .collect();
    assert_eq!(pruned, vec!["n1"]);
    let names: Vec<_> = api
        .store
        .list_objects(Kind::FabricNode)
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.name().to_owned())
        .collect();
    assert_eq!(names, vec!["n2"]);
    api.handle.stop().await;
}

//! `fabricctl apply/get/audit` against a real Control API on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use fabric::edge::EdgeInventory;
use fabric_reconciler::api::{self, ApiConfig, Token};
use fabric_reconciler::store::{EmbeddedStore, Store};

const TOKEN: &str = "operator-token-0123456789";

fn fabricctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .args(args)
        .output()
        .expect("fabricctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_and_audit_through_the_control_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(dir.path().join("store.redb"))
            .await
            .expect("store"),
    );
    let handle = api::serve(
        store.clone(),
        EdgeInventory::new(),
        ApiConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            Token::new(TOKEN).expect("token"),
        ),
        None,
    )
    .await
    .expect("serve");
    let server = format!("http://{}", handle.addr());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let ex = examples();
    let tf = token_file.clone();
    let srv = server.clone();
    let auth = move |args: &[&str]| -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--server", &srv, "--token-file", s(&tf)]);
        fabricctl(&a)
    };

    // Blocking child processes run off the server's worker threads.
    let (auth, server, ex, dir_path) = (Arc::new(auth), server, ex, dir.path().to_owned());
    tokio::task::spawn_blocking(move || {
        let out = auth(&["apply", "-f", s(&ex)]);
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
        assert!(text(&out.stdout).contains("FabricNode/alpha-1 created (generation 1)"), "{}", text(&out.stdout));

        let out = auth(&["apply", "-f", s(&ex)]);
        assert!(out.status.success());
        assert!(!text(&out.stdout).contains("created") && !text(&out.stdout).contains("configured"), "{}", text(&out.stdout));

        let out = auth(&["get", "FabricNode", "alpha-1", "-o", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(doc["spec"]["area"], "alpha");
        assert_eq!(doc["metadata"]["generation"], 1);

        let out = auth(&["get", "fnode", "-o", "yaml"]);
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("kind: FabricNode"));
        assert_eq!(text(&out.stdout).matches("kind: FabricNode").count(), 12);

        let out = auth(&["get", "ServiceRecord"]);
        assert!(out.status.success());
        assert!(text(&out.stdout).starts_with("NAME"), "{}", text(&out.stdout));
        assert!(text(&out.stdout).contains("control-api"));

        let out = auth(&["get", "FabricNode", "nope"]);
        assert_eq!(out.status.code(), Some(1));

        // A malformed manifest: refused with file and field, exit 1.
        let bad = dir_path.join("bad.yaml");
        std::fs::write(
            &bad,
            "apiVersion: fabric.dev/v1alpha1\nkind: ServiceRecord\nmetadata:\n  name: x\nspec:\n  service: x\n  providers: [ghost]\n",
        )
        .expect("write");
        let out = auth(&["apply", "-f", s(&bad)]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("bad.yaml") && err.contains("spec.providers[0]"), "{err}");

        // No token: a clear error, exit 2, nothing written.
        let out = fabricctl(&["apply", "-f", s(&bad), "--server", &server]);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("--token-file"), "{}", text(&out.stderr));

        // The audit: no heartbeats yet, so not converged (exit 1), but complete.
        let out = auth(&["audit", "-o", "json"]);
        assert_eq!(out.status.code(), Some(1));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["acceptance_criteria"].as_array().map(Vec::len), Some(6));
        assert_eq!(report["nodes_without_heartbeat"].as_array().map(Vec::len), Some(12));
        let out = auth(&["audit"]);
        let table = text(&out.stdout);
        for field in [
            "compat_control_dependency_nodes",
            "registry_candidate_only_nodes",
            "updater_subscription_alert_nodes",
            "updater_wake_unsupported_nodes",
            "bridge_hold_required",
            "fabric_registry_runtime_report",
            "control-api-ingress",
        ] {
            assert!(table.contains(field), "{field} missing from:\n{table}");
        }
    })
    .await
    .expect("cli steps");
    assert!(store
        .get_object(fabric_schemas::Kind::ServiceRecord, "x")
        .await
        .expect("get")
        .is_none());
    handle.stop().await;
}

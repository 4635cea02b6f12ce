//! `fabricctl up` runs the production shape, and operator commands against it
//! need no flags: the context file it writes is all `get`, `apply` and
//! `rollout` need. Editing the watched folder reaches the rollout driver.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::{ctl, text, wait_until, Up, BIN};
const INTENT: &str = "node-agent-0-2-0";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

#[test]
fn operator_commands_need_only_the_context_file_and_an_edited_folder_reaches_the_rollout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples"),
        &manifests,
    );
    let ctx = dir.path().join("ctx/context.json");
    let state = dir.path().join("up");
    let up = Up(Command::new(BIN)
        .arg("up")
        .arg("-f")
        .arg(&manifests)
        .arg("--state-dir")
        .arg(&state)
        .env("FABRIC_CONTEXT", &ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("up runs"));

    // Without a context, the commands say where they looked.
    let missing = ctl(&dir.path().join("nowhere.json"), &["get", "nodes"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("fabricctl up"),
        "{}",
        text(&missing)
    );

    wait_until("the context file", Duration::from_secs(60), || {
        ctx.exists().then_some(()).ok_or_else(|| "absent".into())
    });
    let context: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ctx).expect("read")).expect("json");
    assert!(context["server"]
        .as_str()
        .is_some_and(|s| s.starts_with("http://127.0.0.1:")));
    assert!(Path::new(context["tokenFile"].as_str().expect("token file")).is_file());
    // The same context is kept in the state folder.
    assert!(state.join("context.json").is_file());

    // Every node reports itself active through its heartbeats; `nodes`,
    // `no` and `node` are all FabricNodes.
    wait_until("12 active nodes", Duration::from_secs(90), || {
        let o = ctl(&ctx, &["get", "nodes"]);
        let t = text(&o);
        let active = t.lines().filter(|l| l.contains(" active ")).count();
        (o.status.success() && active == 12).then_some(()).ok_or(t)
    });
    // The reconciler's /metrics (no token) carries the audit's figures
    // under the seed's names.
    let server = context["server"].as_str().expect("server").to_owned();
    let audit = ctl(&ctx, &["audit", "-o", "json"]);
    let a: serde_json::Value = serde_json::from_slice(&audit.stdout).expect("audit json");
    let (status, body) = fabric_testkit::http_get(server.trim_start_matches("http://"), "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let samples = fabric_runtime::metrics::parse(&body);
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
    };
    for list in [
        "compat_control_dependency_nodes",
        "registry_candidate_only_nodes",
        "updater_subscription_alert_nodes",
        "updater_wake_unsupported_nodes",
    ] {
        let want = a[list].as_array().map(Vec::len).expect(list) as f64;
        assert_eq!(value(list, None), Some(want), "{list}\n{body}");
    }
    assert_eq!(
        value("bridge_hold_required", None),
        Some(if a["bridge_hold_required"] == true {
            1.0
        } else {
            0.0
        })
    );
    assert_eq!(
        value("fabric_converged", None),
        Some(if a["converged"] == true { 1.0 } else { 0.0 })
    );
    for n in a["nodes"].as_array().expect("nodes") {
        let node = n["node"].as_str().expect("name");
        for m in ["direct_ready_count", "recovery_path_count"] {
            assert!(
                value(m, Some(("node", node))).is_some(),
                "{m} {node}\n{body}"
            );
        }
    }
    assert_eq!(
        value("fabric_rollout_nodes", Some(("state", "target"))),
        Some(12.0),
        "{body}"
    );
    let wide = ctl(&ctx, &["get", "no", "-o", "wide"]);
    let t = text(&wide);
    assert!(wide.status.success(), "{t}");
    assert!(t.contains("NODE-ID") && t.contains("127.0.0.1:"), "{t}");
    let one = ctl(&ctx, &["get", "node", "alpha-1", "-o", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&one.stdout).expect("json");
    assert_eq!(doc["kind"], "FabricNode");
    // The stored node carries its live key and loopback endpoint (the
    // folder's documentation address is overlaid), as the fabric needs.
    assert!(doc["spec"]["nodeId"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
    assert!(doc["spec"]["endpoints"][0]["address"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));

    // The rollout of the example intent is driven and controlled through
    // the Control API.
    wait_until("the rollout planned", Duration::from_secs(60), || {
        let o = ctl(&ctx, &["rollout", "status", INTENT, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|_| text(&o))?;
        (v["observedGeneration"] == 1 && v["counts"]["target"] == 12)
            .then_some(())
            .ok_or(v.to_string())
    });
    let paused = ctl(&ctx, &["rollout", "pause", INTENT]);
    assert!(text(&paused).contains("paused=yes"), "{}", text(&paused));
    let resumed = ctl(&ctx, &["rollout", "resume", INTENT]);
    assert!(text(&resumed).contains("paused=no"), "{}", text(&resumed));
    let unknown = ctl(&ctx, &["rollout", "status", "no-such-intent"]);
    assert_ne!(unknown.status.code(), Some(0));
    assert!(text(&unknown).contains("not found"), "{}", text(&unknown));

    // An edit of the watched folder is a new generation of the intent.
    let intent_file = manifests.join("rollout/intent.yaml");
    let edited = std::fs::read_to_string(&intent_file)
        .expect("read")
        .replace("version: 0.2.0", "version: 0.2.1");
    std::fs::write(&intent_file, edited).expect("write");
    wait_until("generation 2 planned", Duration::from_secs(60), || {
        let o = ctl(&ctx, &["rollout", "status", INTENT, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|_| text(&o))?;
        (v["generation"] == 2 && v["version"] == "0.2.1")
            .then_some(())
            .ok_or(v.to_string())
    });

    // `apply` with no flags goes to the same Control API.
    let extra = dir.path().join("extra.yaml");
    std::fs::write(
        &extra,
        "apiVersion: fabric.dev/v1alpha1\nkind: RolloutPolicy\nmetadata:\n  name: fast\nspec:\n  strategy: rolling\n  maxParallel: 4\n  maxUnavailable: 4\n  failureRateStopPercent: 50\n",
    )
    .expect("write");
    let applied = ctl(&ctx, &["apply", "-f", extra.to_str().expect("utf8")]);
    assert!(applied.status.success(), "{}", text(&applied));
    let policies = ctl(&ctx, &["get", "policies"]);
    assert!(text(&policies).contains("fast"), "{}", text(&policies));

    // Ctrl-C stops the fleet and takes the shared context with it.
    drop(up);
    assert!(!ctx.exists(), "the shared context names a stopped fleet");
}

//! `fabricctl` end to end: the binary, real files, real keys.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fabricctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabricctl"))
        .args(args)
        .output()
        .expect("fabricctl runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

#[test]
fn validate_accepts_the_examples() {
    let out = fabricctl(&["validate", "-f", examples().to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("12 FabricNode"), "{}", stdout(&out));
}

#[test]
fn validate_reports_every_broken_object_with_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("nodes.yaml"),
        "apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: good
spec:
  area: a
  siteId: s
  localityGroup: l
  natGroup: g
---
apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: typo
spec:
  area: a
  siteID: s
  localityGroup: l
  natGroup: g
---
apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: bad-endpoint
spec:
  area: a
  siteId: s
  localityGroup: l
  natGroup: g
  endpoints:
  - address: not-an-address
    scope: public
",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: fabric.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: fast
spec:
  strategy: rolling
  maxParallel: 0
  maxUnavailable: 1
  failureRateStopPercent: 10
",
    )
    .expect("write");
    let out = fabricctl(&["validate", "-f", dir.path().to_str().expect("utf8")]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("nodes.yaml:17:3: FabricNode \"typo\": spec.siteID: unknown field `siteID`"),
        "{text}"
    );
    assert!(
        text.contains("nodes.yaml:21: FabricNode \"bad-endpoint\": spec.endpoints[0].address: \"not-an-address\" is not ip:port"),
        "{text}"
    );
    assert!(
        text.contains(
            "policy.yaml:1: RolloutPolicy \"fast\": spec.maxParallel: must be at least 1"
        ),
        "{text}"
    );
    assert!(text.contains("1 valid object(s)"), "{text}");
    assert!(text.contains("3 error(s)"), "{text}");

    let json = fabricctl(&[
        "validate",
        "-f",
        dir.path().to_str().expect("utf8"),
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(3));
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
}

#[test]
fn keys_init_sign_and_verify_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let trust = d.join("trust");
    let out = fabricctl(&[
        "keys",
        "init",
        trust.to_str().expect("utf8"),
        "--root-keys",
        "3",
        "--root-threshold",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [
        "root-1",
        "root-2",
        "root-3",
        "control-1",
        "orchestrator-1",
        "recovery-admin-1",
    ] {
        assert_eq!(mode(&trust.join(format!("keys/{id}.pem"))), 0o600, "{id}");
    }
    let trust_yaml = trust.join("trust-root.yaml");
    let t = trust_yaml.to_str().expect("utf8");
    assert!(fabricctl(&["validate", "-f", t]).status.success());

    // Refuses to overwrite a trust root by accident.
    let again = fabricctl(&["keys", "init", trust.to_str().expect("utf8")]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // The root-signed trust root verifies against itself (2 of 3 root keys signed).
    let env = trust.join("trust-root.fabenv");
    let out = fabricctl(&["verify", "--trust-root", t, env.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stdout(&out));

    let signed = d.join("signed");
    let services = examples().join("services");
    let out = fabricctl(&[
        "sign",
        "-f",
        services.to_str().expect("utf8"),
        "--key",
        trust.join("keys/control-1.pem").to_str().expect("utf8"),
        "--out-dir",
        signed.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = signed.join("ServiceRecord-control-api.fabenv");
    let e = env.to_str().expect("utf8");
    let out = fabricctl(&["verify", "--trust-root", t, e, "-o", "json"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["signers"][0], "control-1");

    // Signed by the wrong role: refused, with the reason.
    let wrong = d.join("wrong");
    let out = fabricctl(&[
        "sign",
        "-f",
        services.to_str().expect("utf8"),
        "--key",
        trust
            .join("keys/orchestrator-1.pem")
            .to_str()
            .expect("utf8"),
        "--out-dir",
        wrong.to_str().expect("utf8"),
    ]);
    assert!(out.status.success());
    let out = fabricctl(&[
        "verify",
        "--trust-root",
        t,
        wrong
            .join("ServiceRecord-control-api.fabenv")
            .to_str()
            .expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("rejected (wrong_role)"),
        "{}",
        stdout(&out)
    );

    // Tampered bytes: refused.
    let mut bytes = std::fs::read(&env).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    std::fs::write(&env, bytes).expect("write");
    let out = fabricctl(&["verify", "--trust-root", t, e]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

#[test]
fn crds_prints_every_kind() {
    let out = fabricctl(&["crds"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for plural in [
        "fabricnodes",
        "servicerecords",
        "updateintents",
        "rolloutpolicies",
        "rolloutleases",
        "trustroots",
    ] {
        assert!(
            text.contains(&format!("name: {plural}.fabric.dev")),
            "{plural}"
        );
    }
}

#[test]
fn up_until_converged_runs_the_example_fleet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("up");
    let out = fabricctl(&[
        "up",
        "-f",
        examples().to_str().expect("utf8"),
        "--state-dir",
        state.to_str().expect("utf8"),
        "--until-converged",
        "--timeout",
        "90s",
        "--context",
        dir.path().join("context.json").to_str().expect("utf8"),
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("converged: 12/12 nodes active with 17/17 records"),
        "{text}"
    );
    for name in ["alpha-1", "beta-4", "gamma-2"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l.contains("active")),
            "{name}: {text}"
        );
    }
    // Each node kept its own key and cache.
    assert!(state.join("nodes/alpha-1/node.key").exists());
    assert!(state.join("nodes/gamma-4/peer-cache.json").exists());
}

#[test]
fn up_scales_with_nodes_and_names_laggards_on_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("up");
    let out = fabricctl(&[
        "up",
        "--nodes",
        "8",
        "--state-dir",
        state.to_str().expect("utf8"),
        "--until-converged",
        "--timeout",
        "90s",
        "--context",
        dir.path().join("context.json").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("converged: 8/8 nodes"),
        "{}",
        stdout(&out)
    );

    // Nodes without any core ServiceRecord can never become active.
    let only_nodes = dir.path().join("nodes-only");
    std::fs::create_dir_all(&only_nodes).expect("mkdir");
    std::fs::copy(
        examples().join("nodes/alpha.yaml"),
        only_nodes.join("alpha.yaml"),
    )
    .expect("copy");
    let out = fabricctl(&[
        "up",
        "-f",
        only_nodes.to_str().expect("utf8"),
        "--state-dir",
        state.to_str().expect("utf8"),
        "--until-converged",
        "--timeout",
        "3s",
        "--context",
        dir.path().join("context.json").to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not converged after 3s: alpha-1 (missing"),
        "{err}"
    );
}

#[test]
fn up_refuses_to_wipe_a_folder_it_did_not_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("precious.txt"), b"keep me").expect("write");
    let out = fabricctl(&[
        "up",
        "--nodes",
        "2",
        "--state-dir",
        dir.path().to_str().expect("utf8"),
        "--until-converged",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to wipe"));
    assert!(dir.path().join("precious.txt").exists());
}

use std::path::Path;

use super::*;

const NODE: &str = "apiVersion: fabric.dev/v1alpha1
kind: FabricNode
metadata:
  name: n1
spec:
  area: a
  siteId: s
  localityGroup: l
  natGroup: g
";

fn parse(text: &str) -> (Vec<Object>, Vec<ManifestError>) {
    parse_str(Path::new("t.yaml"), text)
}

#[test]
fn a_valid_node_parses() {
    let (objs, errs) = parse(NODE);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].kind, Kind::FabricNode);
    assert_eq!(objs[0].source.line, 1);
}

#[test]
fn unknown_field_names_path_line_and_column() {
    let text = NODE.replace("  natGroup: g\n", "  natGroup: g\n  natgroup: h\n");
    let (_, errs) = parse(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!(e.kind.as_deref(), Some("FabricNode"));
    assert_eq!(e.name.as_deref(), Some("n1"));
    assert!(e.field.starts_with("spec"), "{e}");
    assert!(e.message.contains("unknown field `natgroup`"), "{e}");
    assert_eq!(e.line, Some(10), "{e}");
    assert!(e.column.is_some());
}

#[test]
fn errors_in_later_documents_carry_their_own_lines() {
    let second = NODE.replace("n1", "n2").replace("area: a", "area: [1]");
    let text = format!("{NODE}---\n{second}");
    let (objs, errs) = parse(&text);
    assert_eq!(objs.len(), 1);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].name.as_deref(), Some("n2"));
    assert_eq!(errs[0].field, "spec.area");
    // Line 6 of the second document, which starts on line 11.
    assert_eq!(errs[0].line, Some(16), "{}", errs[0]);
}

#[test]
fn unknown_kind_and_wrong_api_version_are_named() {
    let text = NODE.replace("FabricNode", "FabricNod");
    let (_, errs) = parse(&text);
    assert!(
        errs[0].message.contains("unknown kind \"FabricNod\""),
        "{}",
        errs[0]
    );
    let text = NODE.replace("fabric.dev/v1alpha1", "fabric.dev/v2");
    let (_, errs) = parse(&text);
    assert_eq!(errs[0].field, "apiVersion");
}

#[test]
fn json_manifests_are_supported_with_locations() {
    let text = r#"{"apiVersion":"fabric.dev/v1alpha1","kind":"ServiceRecord",
"metadata":{"name":"control-api"},
"spec":{"service":"control-api","providers":["n1"],"extra":1}}"#;
    let (_, errs) = parse_str(Path::new("s.json"), text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, Some(3));
    assert!(errs[0].message.contains("unknown field `extra`"));
}

#[test]
fn syntax_errors_are_reported_not_panicked() {
    let (objs, errs) = parse("kind: [unclosed\n");
    assert!(objs.is_empty());
    assert!(errs[0].message.contains("not valid YAML"), "{}", errs[0]);
    assert_eq!(errs[0].line, Some(2));
}

#[test]
fn semantic_checks_name_the_field() {
    let text = "apiVersion: fabric.dev/v1alpha1
kind: RolloutPolicy
metadata:
  name: p
spec:
  strategy: canary
  maxParallel: 0
  maxUnavailable: 1
  failureRateStopPercent: 120
";
    let (objs, errs) = parse(text);
    assert!(errs.is_empty());
    let errs = check_object(&objs[0]);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.maxParallel",
            "spec.failureRateStopPercent",
            "spec.canarySteps"
        ]
    );
}

#[test]
fn operators_cannot_write_leases() {
    let text = "apiVersion: fabric.dev/v1alpha1
kind: RolloutLease
metadata:
  name: l
spec:
  node: n1
  intent: i
  intentGeneration: 1
  phase: node-agent
  leaseId: x
  expiresAt: 2027-01-01T00:00:00Z
";
    let (objs, _) = parse(text);
    let errs = check_object(&objs[0]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("orchestrator"));
}

#[test]
fn references_must_resolve_and_names_be_unique() {
    let svc = "apiVersion: fabric.dev/v1alpha1
kind: ServiceRecord
metadata:
  name: control-api
spec:
  service: control-api
  providers: [n1, ghost]
";
    let text = format!("{NODE}---\n{NODE}---\n{svc}");
    let (objs, errs) = parse(&text);
    assert!(errs.is_empty());
    let errs = check_references(&objs);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].message.contains("duplicate FabricNode \"n1\""));
    assert_eq!(errs[1].field, "spec.providers[1]");
}

const INTENT: &str = "apiVersion: fabric.dev/v1alpha1
kind: UpdateIntent
metadata:
  name: agent-0-3
spec:
  component: node-agent
  version: 0.3.0
  artifact:
    sha256: PLACEHOLDER
    size: 100000
    mirrors: [\"fabric://update-store/agent-0-3\"]
    pieces:
      pieceSize: PIECE
      root: ROOT
  target:
    all: true
  policy: p
";

#[test]
fn an_intent_with_a_piece_root_parses_and_bad_pieces_are_named() {
    let good = INTENT
        .replace("PLACEHOLDER", &"ab".repeat(32))
        .replace("PIECE", "65536")
        .replace("ROOT", &"cd".repeat(32));
    let (objs, errs) = parse(&good);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(objs.len(), 1);
    assert!(check_object(&objs[0]).is_empty());
    let bad = INTENT
        .replace("PLACEHOLDER", &"ab".repeat(32))
        .replace("PIECE", "1000")
        .replace("ROOT", "XYZ");
    let (objs, errs) = parse(&bad);
    assert!(errs.is_empty(), "{errs:?}");
    let errs = check_object(&objs[0]);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"spec.artifact.pieces.pieceSize"),
        "{errs:?}"
    );
    assert!(fields.contains(&"spec.artifact.pieces.root"), "{errs:?}");
}

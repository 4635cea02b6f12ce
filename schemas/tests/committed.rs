//! What is committed under `manifests/` must match what the code says.

use std::path::PathBuf;

use fabric_schemas::crd;
use fabric_schemas::kinds::{Kind, Spec, CORE_SERVICES};
use fabric_schemas::manifest::load_path;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_match_generated() {
    let dir = repo().join("manifests/crds");
    let mut expected = Vec::new();
    for (_, c) in crd::all() {
        let name = crd::file_name(&c);
        let want = crd::to_yaml(&c).expect("yaml");
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
            panic!("manifests/crds/{name}: {e}; run `fabricctl crds --out-dir manifests/crds`")
        });
        assert_eq!(
            have, want,
            "manifests/crds/{name} is stale; run `fabricctl crds --out-dir manifests/crds`"
        );
        expected.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(
        present, expected,
        "manifests/crds holds files the code does not generate"
    );
}

#[test]
fn examples_are_valid_and_describe_the_promised_fleet() {
    let report = load_path(&repo().join("manifests/examples"));
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    let nodes: Vec<_> = report
        .objects
        .iter()
        .filter_map(|o| match &o.spec {
            Spec::FabricNode(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(nodes.len(), 12);
    let mut areas = std::collections::BTreeMap::new();
    for n in &nodes {
        *areas.entry(n.area.as_str()).or_insert(0) += 1;
    }
    assert_eq!(areas.len(), 3);
    assert!(areas.values().all(|c| *c == 4), "{areas:?}");
    let sites: std::collections::BTreeSet<_> = nodes.iter().map(|n| &n.site_id).collect();
    let nats: std::collections::BTreeSet<_> = nodes.iter().map(|n| &n.nat_group).collect();
    assert!(
        sites.len() >= 6 && nats.len() >= 6,
        "sites {sites:?} nats {nats:?}"
    );
    for svc in CORE_SERVICES {
        assert!(
            report
                .objects
                .iter()
                .any(|o| matches!(&o.spec, Spec::ServiceRecord(s) if s.service == svc)),
            "no ServiceRecord for {svc}"
        );
    }
    assert!(report.objects.iter().any(|o| o.kind == Kind::RolloutPolicy));
    assert!(report.objects.iter().any(|o| o.kind == Kind::UpdateIntent));
}

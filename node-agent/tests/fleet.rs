//! Real node-agents on loopback: the directory spreads by gossip, survives the
//! loss of the control edge, and refuses what it must refuse.

use std::time::{Duration, Instant};

use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::registry::RegistryStatus;
use fabric_node_agent::status::NodeStatus;
use fabric_schemas::kinds::{ServiceRecordSpec, Spec};

async fn wait_for(
    fleet: &LocalFleet,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&NodeStatus) -> bool,
) {
    let start = Instant::now();
    loop {
        let statuses = fleet.statuses();
        let laggards: Vec<&str> = statuses
            .iter()
            .filter(|s| !ok(s))
            .map(|s| s.name.as_str())
            .collect();
        if laggards.is_empty() && !statuses.is_empty() {
            return;
        }
        if start.elapsed() > timeout {
            let detail: Vec<String> = statuses
                .iter()
                .filter(|s| !ok(s))
                .map(|s| {
                    format!(
                        "{}: {} records, registry {:?}, refused {}",
                        s.name, s.directory_records, s.registry.status, s.refused_channels
                    )
                })
                .collect();
            panic!("{what}: still waiting on {laggards:?} after {timeout:?}: {detail:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn providers(fleet: &LocalFleet, service: &str) -> Vec<String> {
    fleet
        .records
        .iter()
        .filter_map(|b| {
            let e = fabric_schemas::Envelope::decode(b).ok()?;
            match e.record.spec().ok()? {
                Spec::ServiceRecord(s) if s.service == service => Some(s.providers),
                _ => None,
            }
        })
        .next()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_one_nodes_converge_replace_and_refuse_rollback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = synthetic_nodes(21);
    let mut fleet = LocalFleet::start(&objects, FleetOptions::new(dir.path().to_path_buf()))
        .await
        .expect("fleet starts");
    let total = fleet.expected_records();
    wait_for(
        &fleet,
        "full directory and active registry",
        Duration::from_secs(60),
        |s| s.directory_records == total && s.registry.status == RegistryStatus::Active,
    )
    .await;

    // A newer generation injected at one (non-seed) node replaces the old one everywhere.
    let newer = Spec::ServiceRecord(ServiceRecordSpec {
        service: "update-cache".into(),
        // A different provider list, so every node's resolution shows which generation it holds.
        providers: providers(&fleet, "update-cache")
            .into_iter()
            .take(1)
            .collect(),
    });
    let gen_now = fabric_schemas::time::now_unix() as u64;
    let v2 = fleet
        .sign(&newer, "update-cache", gen_now + 10)
        .expect("sign");
    let injector = &fleet.members[7].name.clone();
    assert_eq!(
        fleet.handle(injector).expect("up").inject(v2).await,
        Ok(true)
    );
    let want = providers_of(&newer);
    wait_for(
        &fleet,
        "newer generation everywhere",
        Duration::from_secs(30),
        |s| {
            s.registry
                .resolved_core_services
                .get("update-cache")
                .is_some_and(|p| {
                    let mut p = p.clone();
                    p.sort();
                    p == want
                })
        },
    )
    .await;
    // ... and an older generation injected later is refused at every node.
    let old = fleet
        .sign(&newer, "update-cache", gen_now + 5)
        .expect("sign");
    for m in &fleet.members {
        let h = m.handle.as_ref().expect("up");
        let r = h.inject(old.clone()).await;
        assert!(
            r.is_err(),
            "{} accepted a rolled-back record: {r:?}",
            m.name
        );
        assert!(r.expect_err("refused").contains("stale"));
    }
    fleet.stop_all().await;
}

fn providers_of(spec: &Spec) -> Vec<String> {
    match spec {
        Spec::ServiceRecord(s) => {
            let mut p = s.providers.clone();
            p.sort();
            p
        }
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_control_edge_keeps_every_other_node_active() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = synthetic_nodes(9);
    let mut fleet = LocalFleet::start(&objects, FleetOptions::new(dir.path().to_path_buf()))
        .await
        .expect("fleet starts");
    let total = fleet.expected_records();
    wait_for(&fleet, "converged", Duration::from_secs(60), |s| {
        s.directory_records == total && s.registry.status == RegistryStatus::Active
    })
    .await;
    let control = providers(&fleet, "control-api");
    assert!(!control.is_empty());
    for name in &control {
        fleet.stop_node(name).await.expect("stop");
    }
    // Let several probe intervals pass so every probe of the stopped nodes fails.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for s in fleet.statuses() {
        assert_eq!(
            s.registry.status,
            RegistryStatus::Active,
            "{}: {:?}",
            s.name,
            s.registry
        );
        for svc in ["update-store", "update-cache"] {
            let live = s
                .registry
                .resolved_core_services
                .get(svc)
                .cloned()
                .unwrap_or_default();
            assert!(!live.is_empty(), "{} cannot resolve {svc}", s.name);
            assert!(live.iter().all(|p| !control.contains(p)));
        }
    }
    // A directory change still spreads without the control edge.
    let extra = Spec::ServiceRecord(ServiceRecordSpec {
        service: "extra".into(),
        providers: providers(&fleet, "update-store"),
    });
    let rec = fleet.sign(&extra, "extra", 1).expect("sign");
    let live = fleet.statuses()[0].name.clone();
    fleet
        .handle(&live)
        .expect("up")
        .inject(rec)
        .await
        .expect("accepted");
    wait_for(&fleet, "new record spreads", Duration::from_secs(30), |s| {
        s.directory_records == total + 1
    })
    .await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_comes_back_from_its_cache_without_the_control_plane() {
    let dir = tempfile::tempdir().expect("tempdir");
    let objects = synthetic_nodes(6);
    let mut fleet = LocalFleet::start(&objects, FleetOptions::new(dir.path().to_path_buf()))
        .await
        .expect("fleet starts");
    let total = fleet.expected_records();
    wait_for(&fleet, "converged", Duration::from_secs(60), |s| {
        s.directory_records == total && s.registry.status == RegistryStatus::Active
    })
    .await;
    let victim = fleet.members[5].name.clone();
    fleet.stop_node(&victim).await.expect("stop");
    for name in providers(&fleet, "control-api") {
        fleet.stop_node(&name).await.expect("stop control");
    }
    fleet.restart_node(&victim).await.expect("restart");
    let s = fleet.handle(&victim).expect("up").status();
    assert!(s.peer_cache.starts_with("restored"), "{}", s.peer_cache);
    wait_for(
        &fleet,
        "restarted node active",
        Duration::from_secs(30),
        |s| {
            s.name != victim
                || (s.directory_records == total && s.registry.status == RegistryStatus::Active)
        },
    )
    .await;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_nodes_of_the_example_fleet_meet_their_resilience_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let report = fabric_schemas::manifest::load_path(&examples);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut fleet = LocalFleet::start(&report.objects, FleetOptions::new(dir.path().to_path_buf()))
        .await
        .expect("fleet starts");
    let critical: Vec<String> = fleet
        .members
        .iter()
        .filter(|m| m.spec.critical)
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(critical.len(), 4);
    wait_for(
        &fleet,
        "critical nodes meet their targets",
        Duration::from_secs(60),
        |s| {
            if critical.contains(&s.name) {
                s.resilience.as_ref().is_some_and(|r| r.is_met())
            } else {
                s.resilience.is_none()
            }
        },
    )
    .await;
    fleet.stop_all().await;
}

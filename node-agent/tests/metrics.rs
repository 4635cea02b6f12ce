//! A node's `/metrics` scrape carries the seed's P3 peer metrics and its
//! directory and registry figures, equal to what its status reports, on a
//! listener its edge inventory declares as a `metrics-edge`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::registry::RegistryStatus;
use fabric_proto::edge::ReportedRole;

fn scrape(addr: SocketAddr, path: &str) -> (String, String) {
    fabric_testkit::http_get(&addr.to_string(), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_scrape_matches_its_status_on_a_declared_metrics_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = FleetOptions::new(dir.path().to_path_buf());
    opts.metrics = true;
    let mut fleet = LocalFleet::start(&synthetic_nodes(3), opts)
        .await
        .expect("fleet");
    let total = fleet.expected_records();
    let start = Instant::now();
    let name = fleet.members[1].name.clone();
    let status = loop {
        let s = fleet.handle(&name).expect("up").status();
        if s.directory_records == total && s.registry.status == RegistryStatus::Active {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not converged: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let edge = status
        .edge_listeners
        .iter()
        .find(|e| e.role == ReportedRole::MetricsEdge)
        .expect("the metrics listener is in the node's edge inventory");
    assert!(edge.bind.ip().is_loopback());
    let addr = edge.bind;
    let (head, body) = tokio::task::spawn_blocking(move || scrape(addr, "/metrics"))
        .await
        .expect("scrape");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = fabric_runtime::metrics::parse(&body);
    let value = |metric: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == metric && l.get("node") == Some(&name))
            .map(|(_, _, v)| *v)
    };
    for metric in [
        "direct_ready_count",
        "relay_ready_count",
        "external_area_ready_count",
        "independent_ingress_ready_count",
        "recovery_path_count",
    ] {
        assert!(value(metric).is_some(), "{metric} missing:\n{body}");
    }
    assert_eq!(
        value("fabric_directory_records"),
        Some(total as f64),
        "{body}"
    );
    assert!(samples
        .iter()
        .any(|(n, l, v)| n == "fabric_registry_runtime_report_status"
            && l.get("status").map(String::as_str) == Some("active")
            && *v == 1.0));
    // The scrape reads the same status the node reports: its peers are the
    // status's, not a figure of its own.
    let now = fleet.handle(&name).expect("up").status();
    let direct = value("direct_ready_count").unwrap_or(-1.0);
    let seen = [
        status.peer_metrics.direct_ready_count,
        now.peer_metrics.direct_ready_count,
    ];
    assert!(
        seen.iter().any(|d| f64::from(*d) == direct),
        "scrape {direct}, status {seen:?}"
    );
    let (head, _) = tokio::task::spawn_blocking(move || scrape(addr, "/other"))
        .await
        .expect("scrape");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    fleet.stop_all().await;
}

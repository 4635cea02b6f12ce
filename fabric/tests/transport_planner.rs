//! The peer planner as the transport's path ranker (`PlannerRanker`), on real
//! sockets: dial order follows the planner, dial outcomes flow back into its
//! observations, and foreign-scope private endpoints are never dialled.

mod transport_support;

use std::sync::Arc;

use fabric::path::{PathKind, PeerInfo};
use fabric::peer_select::{EndpointHealth, PlannerRanker, ProbeOutcome};
use fabric::topology::{EndpointCandidate, EndpointScope, TopologyLabels};
use tokio::time::timeout;
use transport_support::*;

fn labels(lan: &str) -> TopologyLabels {
    TopologyLabels {
        area: "a".into(),
        locality_group: lan.into(),
        ..Default::default()
    }
}

fn endpoint(addr: std::net::SocketAddr, scope: EndpointScope, lan: &str) -> EndpointCandidate {
    EndpointCandidate {
        addr,
        scope,
        locality_group: Some(lan.into()).filter(|l: &String| !l.is_empty()),
        nat_group: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_ranker_orders_dials_learns_failures_and_never_dials_foreign_private() {
    let mut config = test_config(false);
    config.labels = labels("lan-a");
    // No background upgrades: every dial below is caused by the test.
    config.path_upgrade_interval = None;
    let a = node_with(fabric::identity::NodeIdentity::generate(), config).await;
    let b = node(false).await;
    let _echo = spawn_echo(&b.t, "echo");
    let ranker = Arc::new(PlannerRanker::new());
    a.t.set_path_ranker(ranker.clone());

    // Loopback is taken at its declared scope, so these model: a dead private
    // endpoint in our LAN (tried first), B's working public endpoint, and a
    // private endpoint of another LAN (never tried).
    let dead_private = closed_udp_port();
    let foreign_private = closed_udp_port();
    let info = PeerInfo {
        candidates: vec![
            endpoint(b.addr, EndpointScope::Public, ""),
            endpoint(foreign_private, EndpointScope::Private, "lan-b"),
            endpoint(dead_private, EndpointScope::Private, "lan-a"),
        ],
        labels: labels("lan-b"),
        is_relay: false,
    };
    a.t.set_peer(b.id, info.clone());

    let path = timeout(STEP, a.t.connect(b.id))
        .await
        .expect("in time")
        .expect("connect");
    assert_eq!(path, PathKind::Direct { addr: b.addr });
    assert_eq!(
        a.t.probe_count(b.id, dead_private),
        1,
        "preferred private first"
    );
    assert_eq!(a.t.probe_count(b.id, b.addr), 1);
    assert_eq!(
        a.t.probe_count(b.id, foreign_private),
        0,
        "foreign private dialled"
    );

    // The transport told the planner how both dials went.
    let obs = ranker.observations();
    let dead = obs.endpoint(&b.id, &dead_private).expect("dead observed");
    assert_eq!(dead.last_probe, ProbeOutcome::Failed);
    let live = obs.endpoint(&b.id, &b.addr).expect("live observed");
    assert_eq!(live.last_probe, ProbeOutcome::Ok);
    assert!(live.rtt.is_some());

    // Next time the failed endpoint is demoted: the working one is dialled
    // first and the dead one not at all.
    a.t.disconnect(b.id);
    let path = timeout(STEP, a.t.connect(b.id))
        .await
        .expect("in time")
        .expect("reconnect");
    assert_eq!(path, PathKind::Direct { addr: b.addr });
    assert_eq!(
        a.t.probe_count(b.id, dead_private),
        1,
        "demoted endpoint redialled"
    );
    assert_eq!(a.t.probe_count(b.id, b.addr), 2);
    let classified = ranker.classify(&labels("lan-a"), b.id, &info);
    assert_eq!(classified[0].endpoint.addr, b.addr);
    assert_eq!(classified[0].health, EndpointHealth::Ok);

    // An explicit probe is counted and reported too, and leaves the cached
    // connection alone.
    let rtt = timeout(STEP, a.t.probe(b.id, b.addr))
        .await
        .expect("in time")
        .expect("probe");
    assert!(rtt > std::time::Duration::ZERO);
    assert_eq!(a.t.probe_count(b.id, b.addr), 3);
    assert_eq!(a.t.path_to(b.id), Some(PathKind::Direct { addr: b.addr }));
    let counts = a.t.probe_counts();
    assert!(counts.iter().all(|(_, addr, _)| *addr != foreign_private));
}

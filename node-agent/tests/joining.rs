//! Joining at scale on real QUIC over loopback: membership proved at the
//! door, no single way in, a bounded connection set.

use std::net::SocketAddr;
use std::time::Duration;

use fabric::frame::write_frame;
use fabric::gossip::wire;
use fabric::identity::NodeIdentity;
use fabric::path::PeerInfo;
use fabric::transport::{Transport, TransportConfig};
use fabric_compose::fleet::{synthetic_nodes, FleetOptions, LocalFleet};
use fabric_node_agent::membership::{encode_hello, MAX_HELLO_BYTES};
use fabric_node_agent::status::NodeStatus;
use fabric_schemas::kinds::{EndpointScopeSpec, EndpointSpec, FabricNodeSpec, Spec};
use fabric_schemas::time::now_unix;
use fabric_schemas::{Envelope, Record, Scope};
use fabric_testkit::wait_until;
use tokio::io::AsyncWriteExt;

async fn wait_all(fleet: &LocalFleet, within: Duration, ok: impl Fn(&NodeStatus) -> bool) -> bool {
    wait_until(within, Duration::from_millis(100), || {
        let done = fleet.statuses().iter().all(&ok);
        async move { done }
    })
    .await
}

fn node_spec(id: &NodeIdentity, addr: SocketAddr) -> Spec {
    Spec::FabricNode(FabricNodeSpec {
        area: "alpha".into(),
        site_id: "alpha-site-9".into(),
        locality_group: "alpha-lan-9".into(),
        nat_group: "alpha-nat-9".into(),
        node_id: Some(id.node_id().to_string()),
        roles: vec![],
        endpoints: vec![EndpointSpec {
            address: addr.to_string(),
            scope: EndpointScopeSpec::Public,
            locality_group: None,
            nat_group: None,
        }],
        critical: false,
        resilience_target: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_whose_bootstrap_peer_is_unreachable_joins_from_members_pushing_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = LocalFleet::start(&synthetic_nodes(9), FleetOptions::new(dir.path().into()))
        .await
        .expect("fleet");
    let total = fleet.expected_records();
    assert!(
        wait_all(&fleet, Duration::from_secs(60), |s| s.directory_records
            == total)
        .await
    );

    // Wipe node 6's directory and point its only bootstrap peer at a key
    // nobody holds on a port nobody answers.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let name = fleet.members[6].name.clone();
    fleet.stop_node(&name).await.expect("stop");
    let cache = fleet.members[6].state_dir.join("peer-cache.json");
    std::fs::remove_file(&cache).expect("cache removed");
    fleet.members[6].bootstrap_override =
        Some(vec![(NodeIdentity::generate().node_id(), dead_addr)]);
    fleet.restart_node(&name).await.expect("restart");
    let h = fleet.handle(&name).expect("up");
    assert_eq!(h.status().peer_cache, "fresh");

    let joined = wait_until(Duration::from_secs(90), Duration::from_millis(100), || {
        let n = h.status().directory_records;
        async move { n == total }
    })
    .await;
    assert!(
        joined,
        "{name} holds {} of {total} records: {:?}",
        h.status().directory_records,
        h.status().door_refusals
    );
    fleet.stop_all().await;
}

/// Opens a gossip channel to `target` presenting `proof` and sends one
/// harmless gossip message behind it.
async fn knock(from: &Transport, target: &fabric_compose::fleet::Member, proof: Option<&[u8]>) {
    from.set_peer(target.node_id, PeerInfo::public(target.addr));
    let msg = wire::encode(&wire::Message::Rumor {
        envelopes: Vec::new(),
    })
    .expect("encode");
    if let Ok(mut ch) = from.open(target.node_id, "gossip").await {
        let _ = write_frame(&mut ch, &encode_hello(proof), MAX_HELLO_BYTES).await;
        let _ = write_frame(&mut ch, &msg, wire::MAX_MESSAGE_BYTES).await;
        let _ = ch.shutdown().await;
    }
}

async fn stranger() -> (NodeIdentity, Transport) {
    let id = NodeIdentity::generate();
    let t = Transport::bind(
        &id,
        TransportConfig::new("127.0.0.1:0".parse().expect("addr")),
    )
    .await
    .expect("binds");
    (id, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_refuses_strangers_impostors_and_self_signed_records_and_admits_a_signed_newcomer()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = LocalFleet::start(&synthetic_nodes(3), FleetOptions::new(dir.path().into()))
        .await
        .expect("fleet");
    let total = fleet.expected_records();
    assert!(
        wait_all(&fleet, Duration::from_secs(60), |s| s.directory_records
            == total)
        .await
    );
    let target = &fleet.members[1];
    let h = fleet.handle(&target.name).expect("up");
    let refusals = |reason: &str| h.status().door_refusals.get(reason).copied().unwrap_or(0);

    // A stranger with no record at all.
    let (_, t) = stranger().await;
    knock(&t, target, None).await;
    // An impostor presenting another member's genuine record.
    let (_, t2) = stranger().await;
    let other = fleet
        .records
        .iter()
        .find(|r| Envelope::decode(r).is_ok_and(|e| e.record.name == fleet.members[2].name))
        .expect("member 2's record")
        .clone();
    knock(&t2, target, Some(&other)).await;
    // A key presenting a node record for itself that it signed itself.
    let (id3, t3) = stranger().await;
    let now = now_unix();
    let rec = Record::new(
        &node_spec(&id3, t3.local_addr().expect("addr")),
        "self-made",
        1,
        now,
        now + 600,
        Scope::any(),
    )
    .expect("record");
    let self_signed = Envelope::sign(rec, &[id3.signing_key()]).encode();
    knock(&t3, target, Some(&self_signed)).await;

    let counted = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let ok =
            refusals("no_proof") >= 1 && refusals("wrong_node") >= 1 && refusals("rejected") >= 1;
        async move { ok }
    })
    .await;
    assert!(counted, "refusals: {:?}", h.status().door_refusals);
    assert_eq!(
        h.status().directory_records,
        total,
        "nothing of theirs was kept"
    );
    // Cooling down: a second knock from the stranger is dropped unread.
    knock(&t, target, None).await;
    let cooled = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let ok = refusals("cooling") >= 1;
        async move { ok }
    })
    .await;
    assert!(cooled, "refusals: {:?}", h.status().door_refusals);

    // A newcomer with a control-signed record is let in with an empty
    // directory of its own, and its record is kept: one more record.
    let (id4, t4) = stranger().await;
    let rec = fleet
        .sign(
            &node_spec(&id4, t4.local_addr().expect("addr")),
            "newcomer",
            1,
        )
        .expect("sign");
    knock(&t4, target, Some(&rec)).await;
    let admitted = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let ok = h.status().directory_nodes == 4;
        async move { ok }
    })
    .await;
    assert!(admitted, "status: {:?}", h.status().door_refusals);
    for t in [t, t2, t3, t4] {
        t.shutdown().await;
    }
    let mut fleet = fleet;
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_whose_seed_node_dies_converges_through_the_other_bootstrap_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = LocalFleet::start(&synthetic_nodes(24), FleetOptions::new(dir.path().into()))
        .await
        .expect("fleet");
    let total = fleet.expected_records();
    assert_eq!(fleet.bootstrap.len(), 3, "one bootstrap peer per area");
    // The seed holds every record; once the other two bootstrap peers have
    // them, it dies before the rest of the fleet is done.
    let (b1, b2) = (fleet.members[1].name.clone(), fleet.members[2].name.clone());
    let ready = wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
        let ok = [&b1, &b2].iter().all(|n| {
            fleet
                .handle(n)
                .is_some_and(|h| h.status().directory_records == total)
        });
        async move { ok }
    })
    .await;
    assert!(ready, "bootstrap peers never got the records");
    let seed = fleet.members[0].name.clone();
    fleet.stop_node(&seed).await.expect("stop seed");
    assert!(
        wait_all(&fleet, Duration::from_secs(90), |s| s.directory_records
            == total)
        .await,
        "laggards: {:?}",
        fleet
            .statuses()
            .iter()
            .filter(|s| s.directory_records < total)
            .map(|s| (s.name.clone(), s.directory_records))
            .collect::<Vec<_>>()
    );
    fleet.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stay_within_the_budget_in_a_fifty_node_fleet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = LocalFleet::start(&synthetic_nodes(50), FleetOptions::new(dir.path().into()))
        .await
        .expect("fleet");
    let total = fleet.expected_records();
    assert!(
        wait_all(&fleet, Duration::from_secs(180), |s| s.directory_records
            == total)
        .await,
        "fleet did not converge"
    );
    // Let a few rounds pass so over-budget connections are closed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let statuses = fleet.statuses();
    let mut worst = 0;
    for s in &statuses {
        assert!(s.connection_budget > 0, "{}: no budget computed", s.name);
        assert!(
            s.connections <= s.connection_budget,
            "{} holds {} connections, budget {}",
            s.name,
            s.connections,
            s.connection_budget
        );
        worst = worst.max(s.connections);
    }
    // Not a full mesh: most nodes hold far fewer than 49 connections.
    let median = {
        let mut c: Vec<usize> = statuses.iter().map(|s| s.connections).collect();
        c.sort();
        c[c.len() / 2]
    };
    assert!(
        median < 40,
        "median {median} connections of 49 possible (worst {worst})"
    );
    fleet.stop_all().await;
}
